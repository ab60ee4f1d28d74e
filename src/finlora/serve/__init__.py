"""The HTTP inference service (`finlora serve`): FastAPI app, settings, schemas."""
