"""Cloud I/O: S3 locations, SageMaker containers and launches, spot-safe checkpoint sync."""
