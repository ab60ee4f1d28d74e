"""One smoke run on the real packaged MiniLM (the default model) with a small slice."""

from __future__ import annotations

import json

import pytest

from finlora.cli import main

pytestmark = pytest.mark.slow  # the real 22.7M-parameter MiniLM, two epochs


def test_default_model_trains_on_a_phrasebank_slice(tmp_path, phrasebank_slice):
    out = tmp_path / "minilm"
    code = main(["-q", "train", "--data", str(phrasebank_slice), "--epochs", "2",
                 "--batch_size", "32", "--learning_rate", "0.002", "--max_length", "64",
                 "--bf16", "--output_dir", str(out)])  # fmt: skip
    assert code == 0
    results = json.loads((out / "final_results.json").read_text())
    assert results["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert results["total_params"] == 22_714_371  # 22.7M MiniLM + a 3-class head
    assert results["trainable_fraction"] < 0.01
    first, second = results["history"]
    assert second["train_loss"] < first["train_loss"]
    assert results["test"]["accuracy"] > 0.45  # a third is chance on this balanced slice
