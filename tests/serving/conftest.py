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


class FakePredictor:
    """A stand-in for `Predictor` (no model): every text is "neutral" after `delay` seconds
    per batch, and every batch is recorded."""

    labels = ["negative", "neutral", "positive"]
    backend = "fake"
    precision = "fp32"
    max_length = 32

    class runner:
        threads = 1

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[str]] = []

    def predict(self, texts: list[str]) -> list[dict]:
        import time

        if texts != ["warm-up"]:
            self.batches.append(list(texts))
            time.sleep(self.delay)
        probabilities = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}
        return [{"label": "neutral", "probabilities": probabilities, "truncated": False}] * len(
            texts
        )


@pytest.fixture
def fake_service(monkeypatch, tmp_path):
    """`make(delay=..., api_keys=..., **settings)` -> (app, predictor): the real app (middleware,
    batcher, routes) over a FakePredictor; use it with `running(app)`."""
    import finlora.serve.app as app_module
    from finlora.serve.settings import ServeSettings

    def make(delay: float = 0.0, api_keys: list[str] | None = None, **settings):
        predictor = FakePredictor(delay)

        class Loader:
            @staticmethod
            def load(*args, **kwargs):
                return predictor

        monkeypatch.setattr(app_module, "Predictor", Loader)
        settings = ServeSettings(model_dir=tmp_path, **settings)
        return app_module.create_app(settings, api_keys=api_keys or []), predictor

    return make
