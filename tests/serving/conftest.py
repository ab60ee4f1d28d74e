"""A tiny classifier trained once per session (LoRA, 1 epoch, real PhraseBank lines)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finlora.config import TrainConfig
from finlora.training import train


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, tiny_model_dir: Path, phrasebank_slice: Path) -> Path:
    out = tmp_path_factory.mktemp("serving") / "tiny_lora"
    train(
        TrainConfig(
            data=str(phrasebank_slice),
            model_name=str(tiny_model_dir),
            epochs=1,
            batch_size=32,
            learning_rate=0.005,
            max_length=48,
            output_dir=str(out),
        )
    )
    return out


@pytest.fixture(scope="session")
def exported_dir(trained_dir: Path) -> Path:
    """`trained_dir` after `finlora export --format onnx --quantize int8`."""
    from finlora.cli import main

    assert main(["-q", "export", "--model", str(trained_dir), "--quantize", "int8"]) == 0
    return trained_dir


@pytest.fixture(scope="session")
def multilabel_exported(tmp_path_factory, multilabel_run: Path) -> Path:
    """A copy of the tiny multi-label run after `finlora export --format onnx` (fp32)."""
    from finlora.cli import main

    out = tmp_path_factory.mktemp("ml-export") / "run"
    shutil.copytree(multilabel_run, out)
    assert main(["-q", "export", "--model", str(out)]) == 0
    return out
