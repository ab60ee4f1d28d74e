"""The Python API as a user meets it: `from finlora import TrainConfig, train, Predictor`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finlora.config import TrainConfig
from finlora.errors import FinloraError

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Net loss widened to EUR 5.2 mn from EUR 1.1 mn.",
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.",
]


def test_import_finlora_is_cheap_and_exports_the_api():
    code = (
        "import sys, finlora\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from finlora import TrainConfig, train, evaluate, FinloraError\n"
        "assert 'torch' not in sys.modules, 'TrainConfig and train import no torch'\n"
        "assert 'Predictor' in dir(finlora) and callable(train)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_an_unknown_name_is_an_attribute_error():
    import finlora

    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        finlora.Trainer  # noqa: B018


def test_public_functions_document_args_and_returns():
    from finlora import Predictor, evaluate, train

    for function in (train, evaluate, Predictor.load, Predictor.predict, TrainConfig.resolve):
        doc = function.__doc__ or ""
        assert "Args:" in doc and "Returns:" in doc, function.__qualname__


def test_train_then_predict_and_evaluate_in_process(tmp_path, tiny_model_dir, phrasebank_slice):
    from finlora import Predictor, evaluate, train

    out = tmp_path / "run"
    config = TrainConfig(
        data=str(phrasebank_slice),
        model_name=str(tiny_model_dir),
        epochs=1,
        batch_size=32,
        max_length=32,
        output_dir=str(out),
    )
    result = train(config)
    assert result["strategy"] == "lora" and 0 <= result["test"]["macro_f1"] <= 1
    assert (out / "final_results.json").is_file()
    predictor = Predictor.load(out)
    records = predictor.predict(TEXTS)
    assert [set(r) for r in records] == [
        {"label", "probabilities", "truncated", "prediction_set", "needs_review"}
    ] * 2
    assert all(r["label"] in predictor.labels for r in records)
    metrics = evaluate(out, TEXTS, ["negative", "positive"])
    assert 0 <= metrics["macro_f1"] <= 1
    assert {"calibration", "conformal"} <= set(metrics)  # the block `finlora evaluate` prints
    with pytest.raises(FinloraError, match="unknown to the model"):
        evaluate(out, TEXTS[:1], ["bearish"])


def test_keyword_settings_resolve_like_flags(monkeypatch):
    """`train(epochs=1, ...)` without a config: flags, recipe= for --config, the preset."""
    import finlora.api as api

    seen = []
    monkeypatch.setattr(api, "run", lambda config: (seen.append(config) or {"ok": 1}, config))
    assert api.train(dataset="claudette_tos", epochs="2") == {"ok": 1}
    assert seen[-1].preset == "claudette_multilabel" and seen[-1].epochs == 2.0
    api.train(recipe="config/phrasebank_full.yaml", max_length=32)
    assert seen[-1].use_lora is False and seen[-1].max_length == 32
    api.train(TrainConfig(output_dir="o"), epochs=3)
    assert seen[-1].epochs == 3 and seen[-1].output_dir == "o"


def python_example() -> tuple[Path, str]:
    """The ```python block under README's heading that says "Python" (docs/api.md's when
    README has none yet)."""
    for path in (REPO / "README.md", REPO / "docs" / "api.md"):
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        for section in re.split(r"^#+ ", text, flags=re.M)[1:]:
            heading = section.splitlines()[0]
            block = re.search(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
            if "python" in heading.lower() and block:
                return path, block.group(1)
    pytest.fail("no ```python block under a heading with 'Python' in README.md or docs/api.md")


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path, phrasebank_allagree):
    """On `headlines.csv`: 120 real PhraseBank sentences (40 per class), packaged MiniLM."""
    path, code = python_example()
    lines = phrasebank_allagree.read_text(encoding="iso-8859-1").splitlines()
    by_label: dict[str, list[str]] = {}
    for line in lines:
        text, label = line.rsplit("@", 1)
        by_label.setdefault(label, []).append(text.strip())
    import pandas as pd

    rows = [(t, lab) for lab in sorted(by_label) for t in by_label[lab][:40]]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "headlines.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, f"{path.name}'s example failed:\n{proc.stderr[-3000:]}"
    assert "label" in proc.stdout and (tmp_path / "outputs" / "headlines").is_dir()
