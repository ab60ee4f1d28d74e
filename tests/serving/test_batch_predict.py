"""`finlora predict --input`: chunked reading, every output format, both backends."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from finlora.cli import main
from finlora.predict_io import iter_chunks
from finlora.predictor import Predictor

ROWS = 130
CHUNK = 50


@pytest.fixture(scope="module")
def news_csv(tmp_path_factory, phrasebank_allagree):
    lines = phrasebank_allagree.read_text(encoding="iso-8859-1").splitlines()[:ROWS]
    frame = pd.DataFrame(
        {
            "id": range(ROWS),
            "headline": [line.rsplit("@", 1)[0] for line in lines],
            "source": ['wire, "quoted"'] * ROWS,
        }
    )
    frame.loc[7, "headline"] = ""  # empty text: still scored, row kept
    path = tmp_path_factory.mktemp("news") / "news.csv"
    frame.to_csv(path, index=False)
    return path


def test_input_is_read_in_chunks(news_csv):
    sizes = [len(c) for c in iter_chunks(news_csv, "headline", chunk_rows=CHUNK)]
    assert sizes == [50, 50, 30]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_file_larger_than_a_chunk_is_scored_row_for_row(exported_dir, news_csv, tmp_path, suffix):
    out = tmp_path / f"scored{suffix}"
    code = main(["-q", "predict", "--model", str(exported_dir), "--backend", "onnx",
                 "--input", str(news_csv), "--text_column", "headline", "--output", str(out),
                 "--chunk_rows", str(CHUNK)])  # fmt: skip
    assert code == 0
    scored = {
        ".parquet": pd.read_parquet,
        ".csv": lambda p: pd.read_csv(p, keep_default_na=False),
        ".jsonl": lambda p: pd.read_json(p, lines=True),
    }[suffix](out)
    labels = ["negative", "neutral", "positive"]
    assert list(scored.columns) == ["id", "headline", "source", "label"] + [
        f"prob_{name}" for name in labels
    ] + ["prediction_set", "needs_review"]
    assert scored["id"].tolist() == list(range(ROWS))
    assert (scored["source"] == 'wire, "quoted"').all()
    texts = pd.read_csv(news_csv, keep_default_na=False)["headline"].tolist()
    expected = Predictor.load(exported_dir, backend="onnx", precision="int8").probabilities(texts)
    assert scored["label"].tolist() == [labels[i] for i in expected.argmax(-1)]
    # int8 activations are quantized per batch, so chunking moves probabilities a little
    assert abs(scored[[f"prob_{n}" for n in labels]].to_numpy() - expected).max() < 1e-3
    assert not list(tmp_path.glob(".*tmp-*"))


def test_torch_and_onnx_backends_agree_on_a_file(exported_dir, news_csv, tmp_path):
    outputs = {}
    for backend, precision in (("torch", "auto"), ("onnx", "fp32")):
        out = tmp_path / f"{backend}.parquet"
        assert main(["-q", "predict", "--model", str(exported_dir), "--backend", backend,
                     "--precision", precision, "--input", str(news_csv),
                     "--text_column", "headline", "--output", str(out)]) == 0  # fmt: skip
        outputs[backend] = pd.read_parquet(out)
    assert outputs["torch"]["label"].tolist() == outputs["onnx"]["label"].tolist()
    diff = outputs["torch"].filter(like="prob_") - outputs["onnx"].filter(like="prob_")
    assert diff.abs().to_numpy().max() < 1e-5


def test_predict_texts_and_evaluate_with_the_onnx_backend(exported_dir, tmp_path, capsys):
    assert main(["-q", "predict", "--model", str(exported_dir), "--backend", "onnx",
                 "Profit rose.", "Sales fell."]) == 0  # fmt: skip
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and all("truncated" in r for r in records)
    labelled = tmp_path / "labelled.csv"
    pd.DataFrame(
        {"text": ["Profit rose.", "Sales fell."], "label": ["positive", "negative"]}
    ).to_csv(labelled, index=False)
    assert main(["-q", "evaluate", "--model", str(exported_dir), "--backend", "onnx",
                 "--data", str(labelled)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["size"] == 2


def test_bad_chunk_size_is_a_user_error(exported_dir, news_csv, capsys):
    assert main(["predict", "--model", str(exported_dir), "--input", str(news_csv),
                 "--text_column", "headline", "--chunk_rows", "0"]) == 2  # fmt: skip
    assert "--chunk_rows" in capsys.readouterr().err
