"""Logging of a finlora process: its own INFO lines, only errors from the libraries below it."""

from __future__ import annotations

import logging

NOISY_LIBRARIES = ("transformers", "peft", "accelerate", "httpx", "urllib3")


def configure_logging(level: int, format: str) -> None:
    """Above INFO (`-q`) there are no progress bars either: Hugging Face's loading, training
    and saving bars are switched off here, finlora's own bars follow the `finlora` logger."""
    logging.basicConfig(level=level, format=format, datefmt="%H:%M:%S")
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if level > logging.INFO:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
