"""Data stage: read, clean and split labelled text (see `prepare_data`, `prepare_folds`)."""

from finlora.data.prepare import PreparedData, prepare_data, prepare_folds

__all__ = ["PreparedData", "prepare_data", "prepare_folds"]
