"""Logging of a finlora process: its own INFO lines, only errors from the libraries below it."""

from __future__ import annotations

import logging
import warnings

NOISY_LIBRARIES = ("transformers", "peft", "accelerate", "httpx", "urllib3")
# Warning categories libraries use to announce their own API changes: not the user's business.
LIBRARY_WARNINGS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


def configure_logging(level: int, format: str) -> None:
    """Above INFO (`-q`) there are no progress bars, no library warnings either: Hugging Face's
    loading, training and saving bars and its reports (the "LOAD REPORT" table of a checkpoint
    whose keys do not match the model class, e.g. a sentence-transformers folder under a
    classification head) are switched off here, and so are FutureWarnings and
    DeprecationWarnings; finlora's own bars follow the `finlora` logger."""
    logging.basicConfig(level=level, format=format, datefmt="%H:%M:%S")
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if level > logging.INFO:
        quiet_libraries()


def quiet_libraries() -> None:
    """Only errors from Hugging Face's loggers, no progress bars, no API-change warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for category in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
