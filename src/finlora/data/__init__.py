"""Data stage: read, clean and split labelled text (see `prepare_data`)."""

from finlora.data.prepare import PreparedData, prepare_data

__all__ = ["PreparedData", "prepare_data"]
