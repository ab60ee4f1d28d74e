"""Multi-label end to end on a tiny BERT and real CLAUDETTE sentences: train, evaluate, predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoConfig

from finlora.cli import main
from finlora.predictor import Predictor
from finlora.results import validate_results


@pytest.fixture(scope="module")
def run(multilabel_run):
    return multilabel_run


def test_artifacts_of_a_multilabel_run(run, claudette_slice):
    results = json.loads((run / "final_results.json").read_text())
    validate_results(results)  # the shipped JSON Schema, multi-label variant
    labels = ["A", "CH", "CR", "J", "LAW", "LTD", "TER", "USE"]
    assert results["task"] == "multi_label" and results["labels"] == labels
    assert AutoConfig.from_pretrained(run).problem_type == "multi_label_classification"
    assert results["loss"]["name"] == "weighted_bce" and len(results["loss"]["pos_weight"]) == 8
    assert results["data"]["split_strategy"] == "group stratified"
    groups = results["data"]["groups"]
    documents = sorted(p.stem for p in (claudette_slice / "Sentences").glob("*.txt"))
    assert len(documents) == 6 and sorted(sum(groups.values(), [])) == documents
    assert all(len(docs) == 2 for docs in groups.values())
    test = results["test"]
    for key in ("micro_f1", "macro_f1", "lexglue", "per_label", "thresholds", "subset_accuracy"):
        assert key in test
    assert set(test["per_label"]) == set(labels)
    assert sum(row["support"] for row in test["per_label"].values()) > 0
    assert test["rows_without_label"]["true"] > 0  # fair clauses stay in the data
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["tuned_on"] == "validation"
    assert test["thresholds"] == pytest.approx(thresholds["thresholds"], abs=1e-6)
    for label, positives in thresholds["validation_positives"].items():
        if positives == 0:
            assert thresholds["thresholds"][label] == 0.5
    assert "macro_f1_at_0.5" in results["history"][0]


def test_mean_pooling_run_loads_in_plain_transformers_and_matches_its_adapter(run, tiny_model_dir):
    """The merged model carries its head's code; the adapter on a fresh base gives the same
    logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finlora.modeling import load_classifier

    results = json.loads((run / "final_results.json").read_text())
    assert results["pooling"] == "mean"
    assert (run / "mean_pooling.py").is_file()
    assert "trust_remote_code=True" in (run / "README.md").read_text()
    merged = AutoModelForSequenceClassification.from_pretrained(run, trust_remote_code=True)
    base = load_classifier(str(tiny_model_dir), results["labels"], "multi_label", "mean")
    adapter = PeftModel.from_pretrained(base, run / "adapter")
    texts = ["we may terminate your account .", "welcome to our site ."]
    batch = AutoTokenizer.from_pretrained(run)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = adapter.eval()(**batch).logits
        assert torch.allclose(merged.eval()(**batch).logits, expected, atol=1e-5)


def test_predictor_uses_the_saved_thresholds(run):
    predictor = Predictor.load(run)
    saved = json.loads((run / "thresholds.json").read_text())["thresholds"]
    assert predictor.multi_label
    assert predictor.raw_thresholds == [saved[lab] for lab in predictor.labels]
    texts = ["we may terminate your account at any time without notice .", "welcome ."]
    scores = predictor.probabilities(texts)
    assert scores.shape == (2, 8) and ((scores > 0) & (scores < 1)).all()
    assert not np.allclose(scores.sum(axis=1), 1.0)  # sigmoid per label, not softmax
    records = predictor.predict(texts)
    for record, row in zip(records, scores):
        expected = [lab for lab, s, t in zip(predictor.labels, row, predictor.thresholds) if s >= t]
        assert record["labels"] == expected


def test_evaluate_reproduces_the_test_metrics(run, tmp_path):
    from finlora.config import TrainConfig
    from finlora.data import prepare_data

    results = json.loads((run / "final_results.json").read_text())
    config = TrainConfig(data=results["data"]["source"], validation_size=0.34, test_size=0.34)
    test = prepare_data(config).test
    jsonl = tmp_path / "test.jsonl"
    test.assign(label=test["label"].map(list)).to_json(jsonl, orient="records", lines=True)
    assert main(["-q", "evaluate", "--model", str(run), "--data", str(jsonl),
                 "--output", str(tmp_path / "m.json")]) == 0  # fmt: skip
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["per_label"] == results["test"]["per_label"]
    assert written["macro_f1"] == pytest.approx(results["test"]["macro_f1"])
    # the same rows as 0/1 columns give the same report
    columns = tmp_path / "test.csv"
    wide = pd.DataFrame({"text": test["text"]})
    for label in results["labels"]:
        wide[label] = test["label"].map(lambda row, label=label: int(label in row))
    wide.to_csv(columns, index=False)
    assert main(["-q", "evaluate", "--model", str(run), "--data", str(columns),
                 "--label_columns", ",".join(results["labels"]),
                 "--output", str(tmp_path / "w.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "w.json").read_text())["per_label"] == written["per_label"]


def test_predict_texts_and_file(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "we may change these terms ."]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"labels", "scores", "truncated", "prediction_set", "unsure",
                           "needs_review"} and len(record["scores"]) == 8  # fmt: skip
    source = tmp_path / "clauses.csv"
    source.write_text("id,text\n1,we may change these terms .\n2,welcome .\n")
    out = tmp_path / "scored.csv"
    assert main(["predict", "--model", str(run), "--input", str(source), "--output", str(out)]) == 0
    scored = pd.read_csv(out, keep_default_na=False)
    assert scored.columns.tolist()[:3] == ["id", "text", "labels"]
    assert [c for c in scored.columns if c.startswith("prob_")] == [
        f"prob_{lab}" for lab in ["A", "CH", "CR", "J", "LAW", "LTD", "TER", "USE"]
    ]


def test_predict_document(run, tmp_path, capsys, claudette_dir):
    xml = claudette_dir / "OriginalTaggedDocuments" / "Atlas.xml"
    out = tmp_path / "doc.json"
    assert main(["-q", "predict", "--model", str(run), "--document", str(xml),
                 "--output", str(out), "--window", "24", "--stride", "12"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    from finlora.documents import read_document

    text = read_document(xml)
    assert result["characters"] == len(text) and result["pieces"] > 30
    assert result["window"] == 24 and result["stride"] == 12
    for span in result["spans"]:
        assert text[span["start"] : span["end"]] == span["text"]
        assert span["labels"]
    counts = {lab: v["count"] for lab, v in result["summary"]["per_label"].items()}
    assert sum(counts.values()) == sum(len(s["labels"]) for s in result["spans"])
    assert main(["-q", "predict", "--model", str(run), "--document", str(xml), "--window",
                 "999"]) == 2  # fmt: skip
    assert "--window must be between 1 and 38" in capsys.readouterr().err


@pytest.mark.slow  # two refit runs, the second resumed from checkpoints
def test_refit_keeps_the_thresholds_tuned_on_the_selected_model(
    run, tmp_path, multilabel_train_command
):
    """--refit ships a model trained on training + validation documents with the thresholds
    the selected model earned on validation (the refit model has seen validation); a rerun
    with the same --checkpoint_dir resumes both runs."""
    settings = json.loads((run / "final_results.json").read_text())
    command = [
        *multilabel_train_command,
        "--refit",
        "--checkpoint_dir", str(tmp_path / "checkpoints"),
        "--output_dir", str(tmp_path / "refit"),
    ]  # fmt: skip
    assert main(command) == 0
    out = tmp_path / "refit"
    results = json.loads((out / "final_results.json").read_text())
    validate_results(results)  # a multi-label refit: its selected_model_test block, too
    assert json.loads((out / "thresholds.json").read_text()) == json.loads(
        (run / "thresholds.json").read_text()
    )

    # the selected model's figures, less what calibration adds (a refit is not calibrated)
    def uncalibrated(block):
        return {k: v for k, v in block.items() if k not in ("calibration", "conformal")}

    assert results["validation"] == uncalibrated(settings["validation"])
    assert results["refit"]["selected_model_test"] == uncalibrated(settings["test"])
    assert results["data"] == settings["data"]  # the split: two documents per part
    sizes = settings["data"]["sizes"]
    assert results["refit"]["train_rows"] == sizes["train"] + sizes["validation"]
    assert len(list((tmp_path / "checkpoints" / "refit").glob("checkpoint-*"))) == 1

    assert main([*command[:-1], str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "final_results.json").read_text())
    assert again["test"] == results["test"]
