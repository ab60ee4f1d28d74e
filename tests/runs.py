"""Short in-process trainings of the tiny test model, shared by the test modules."""

from __future__ import annotations

from pathlib import Path

from finlora.cli import main


def train_tiny(out: Path, tiny_model_dir: Path, data: Path, *extra: str) -> Path:
    """`finlora train` of the tiny model on `data` for 2 epochs into `out`; returns `out`."""
    code = main(
        [
            "-q", "train",
            "--data", str(data),
            "--model_name", str(tiny_model_dir),
            "--epochs", "2",
            "--batch_size", "32",
            "--learning_rate", "0.005",
            "--max_length", "48",
            "--output_dir", str(out),
            *extra,
        ]
    )  # fmt: skip
    assert code == 0
    return out
