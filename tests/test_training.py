"""End to end on a tiny in-process BERT with real PhraseBank lines: train, artifacts, reuse."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from runs import train_tiny
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finlora.cli import main
from finlora.config import TrainConfig
from finlora.machine import cpu_supports_bf16, precision_policy
from finlora.results import SCHEMA_VERSION, load_results, validate_results
from finlora.run_artifacts import single_class_warning
from finlora.training import epoch_history, report_truncation

EXPECTED_LORA_FILES = {
    "README.md",
    "adapter/README.md",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "calibration.json",
    "config.json",
    "final_results.json",
    "finlora_config.yaml",
    "model.safetensors",
    "reliability.png",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.json",
}


UNCERTAINTY = ("calibration", "conformal")  # blocks only a calibrated model's results have


def files(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def train_cli(tmp_path, tiny_model_dir, data, name="run", *extra):
    return train_tiny(tmp_path / name, tiny_model_dir, data, *extra)


def results_of(run):
    return json.loads((run / "final_results.json").read_text())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, phrasebank_slice):
    return train_cli(tmp_path_factory.mktemp("lora"), tiny_model_dir, phrasebank_slice)


def test_artifact_file_set_is_exact(lora_run):
    assert files(lora_run) == EXPECTED_LORA_FILES
    assert not list(lora_run.parent.glob(".*tmp-*")), "staging dir left behind"


def test_final_results_schema(lora_run):
    results = json.loads((lora_run / "final_results.json").read_text())
    validate_results(results)  # the shipped JSON Schema
    assert results["schema_version"] == SCHEMA_VERSION
    assert load_results(lora_run).to_dict() == results  # the typed definition holds it all
    test = results["test"]
    for key in ("macro_f1", "accuracy", "weighted_f1", "per_class", "confusion_matrix",
                "prediction_distribution"):  # fmt: skip
        assert key in test
    assert set(test["per_class"]) == {"negative", "neutral", "positive"}
    assert sum(map(sum, test["confusion_matrix"])) == test["size"] == 30
    assert sum(test["prediction_distribution"].values()) == 30
    assert 0 < results["trainable_fraction"] < 0.5
    assert results["trainable_params"] < results["total_params"]
    assert results["validation"]["macro_f1"] >= 0
    assert results["data"]["sizes"] == {"train": 239, "validation": 30, "test": 30}
    assert results["data"]["files"]["train"]["sha256"]
    assert [row["epoch"] for row in results["history"]] == [1.0, 2.0]
    assert results["precision"] == ("bf16" if cpu_supports_bf16() else "fp32")
    assert results["seed"] == 42
    assert results["train_seconds"] > 0 and results["peak_memory_mb"] > 0
    assert {"torch", "transformers", "peft"} <= set(results["versions"])
    lengths = results["train_token_lengths"]
    assert lengths["max_length"] == 48 and lengths["min"] <= lengths["p50"] <= lengths["max"]
    predicted = [n for n in results["validation"]["prediction_distribution"].values() if n]
    assert bool(results["warnings"]) == (len(predicted) == 1)


def test_merged_model_loads_with_plain_transformers(lora_run):
    model = AutoModelForSequenceClassification.from_pretrained(lora_run)
    assert model.config.id2label[2] == "positive"
    assert not any("lora" in name for name, _ in model.named_parameters())
    from peft import PeftModel

    from finlora.modeling import load_classifier

    base = load_classifier(results_of(lora_run)["base_model"], model.config.id2label.values())
    adapter = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    batch = AutoTokenizer.from_pretrained(lora_run)(["Sales fell 20 % ."], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, adapter(**batch).logits, atol=1e-5)


def test_evaluate_reproduces_test_metrics(lora_run, tmp_path, capsys):
    import pandas as pd

    from finlora.config import TrainConfig
    from finlora.data import prepare_data

    config = TrainConfig(
        data=json.loads((lora_run / "final_results.json").read_text())["data"]["source"]
    )
    test_split = prepare_data(config).test
    path = tmp_path / "test.csv"
    pd.DataFrame(test_split).to_csv(path, index=False)
    assert main(["-q", "evaluate", "--model", str(lora_run), "--data", str(path),
                 "--output", str(tmp_path / "m.json")]) == 0  # fmt: skip
    written = json.loads((tmp_path / "m.json").read_text())
    expected = json.loads((lora_run / "final_results.json").read_text())["test"]
    assert written["confusion_matrix"] == expected["confusion_matrix"]
    assert written["macro_f1"] == pytest.approx(expected["macro_f1"])


def test_predict_texts_and_file(lora_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(lora_run), "Profit rose .", "Sales fell ."]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for record in lines:
        assert record["label"] in {"negative", "neutral", "positive"}
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    source = tmp_path / "news.csv"
    source.write_text("id,headline\n1,Profit rose .\n2,Sales fell .\n3,\n")
    out = tmp_path / "scored.parquet"
    assert main(["predict", "--model", str(lora_run), "--input", str(source),
                 "--text_column", "headline", "--output", str(out)]) == 0  # fmt: skip
    import pandas as pd

    scored = pd.read_parquet(out)
    assert scored.columns.tolist() == ["id", "headline", "label", "prob_negative", "prob_neutral",
                                       "prob_positive", "prediction_set",
                                       "needs_review"]  # fmt: skip
    assert len(scored) == 3


def test_outputs_go_into_new_folders_and_bad_inputs_are_one_line_errors(lora_run, tmp_path, capsys):
    model = ["--model", str(lora_run)]
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\nProfit rose .,positive\nSales fell .,negative\n")
    metrics = tmp_path / "new" / "deeper" / "m.json"
    assert main(["-q", "evaluate", *model, "--data", str(labelled), "--output", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["size"] == 2
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\nCaf\xe9 sales rose .\n".encode("latin-1"))
    no_text = tmp_path / "rows.json"
    no_text.write_text('[{"headline": "Profit rose ."}]')
    cases = [
        (["-q", "predict", *model, "--input", str(latin)], "is not UTF-8"),
        (["-q", "predict", *model, "--input", str(no_text)], "column(s) 'text' not found"),
        (["-q", "predict", *model, "--input", str(labelled), "--output", f"{labelled}/x.csv"],
         "cannot create its folder"),
        (["-q", "evaluate", *model, "--data", str(labelled), "--output", str(tmp_path)],
         "is a directory; give a file name"),
    ]  # fmt: skip
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_a_base_encoder_is_not_taken_for_a_trained_classifier(tiny_model_dir, capsys):
    assert main(["predict", "--model", str(tiny_model_dir), "Profit rose ."]) == 2
    err = capsys.readouterr().err
    assert "is not a trained classifier" in err and "classifier.weight" in err


def test_same_seed_same_metrics(lora_run, tmp_path, tiny_model_dir, phrasebank_slice):
    again = train_cli(tmp_path, tiny_model_dir, phrasebank_slice, "again")
    first = json.loads((lora_run / "final_results.json").read_text())
    second = json.loads((again / "final_results.json").read_text())
    assert first["test"]["confusion_matrix"] == second["test"]["confusion_matrix"]
    assert first["history"] == second["history"]


def test_full_fine_tuning_with_focal_loss(tmp_path, tiny_model_dir, phrasebank_slice):
    out = train_cli(tmp_path, tiny_model_dir, phrasebank_slice, "full", "--no_lora",
                    "--loss", "focal", "--epochs", "1")  # fmt: skip
    assert files(out) == {f for f in EXPECTED_LORA_FILES if not f.startswith("adapter/")}
    results = json.loads((out / "final_results.json").read_text())
    assert results["strategy"] == "full" and results["trainable_fraction"] == 1.0
    assert results["loss"]["name"] == "focal" and len(results["loss"]["class_weights"]) == 3


def test_full_fine_tuning_with_frozen_embeddings_saves_them_unchanged(
    tmp_path, tiny_model_dir, phrasebank_slice
):
    out = train_cli(tmp_path, tiny_model_dir, phrasebank_slice, "frozen", "--no_lora",
                    "--freeze_embeddings", "--epochs", "1")  # fmt: skip
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).state_dict()
    trained = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    embeddings = [name for name in base if ".embeddings." in name]
    assert embeddings and all(torch.equal(base[n], trained[n]) for n in embeddings)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(base[query], trained[query])
    assert 0.0 < results_of(out)["trainable_fraction"] < 1.0


def test_failed_run_leaves_previous_output_untouched(lora_run, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(20)))
    before = (lora_run / "final_results.json").read_text()
    code = main(["-q", "train", "--data", str(bad), "--model_name", str(tiny_model_dir),
                 "--output_dir", str(lora_run)])  # fmt: skip
    assert code == 2
    assert (lora_run / "final_results.json").read_text() == before


def test_fp16_without_cuda_falls_back(caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert precision_policy(fp16=True, bf16=False) in {"bf16", "fp32"}
    assert "needs a CUDA GPU" in caplog.text
    assert precision_policy(fp16=False, bf16=False) == "fp32"


def test_epoch_history_from_trainer_log():
    log = [
        {"loss": 0.9, "epoch": 1.0},
        {"eval_loss": 0.5, "eval_macro_f1": 0.7, "eval_accuracy": 0.8, "epoch": 1.0},
        {"train_runtime": 3.0, "epoch": 1.0},
    ]
    assert epoch_history(log) == [
        {"epoch": 1.0, "train_loss": 0.9, "validation_loss": 0.5, "macro_f1": 0.7, "accuracy": 0.8}
    ]


def test_truncating_many_training_texts_warns_with_a_covering_max_length(
    packaged_model_dir, caplog
):
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir)
    texts = ["profit rose"] * 8 + ["net sales " * 20] * 2  # 20% of texts are 42 tokens
    with caplog.at_level("WARNING", logger="finlora.training"):
        stats = report_truncation(tokenizer, texts, max_length=16, model_limit=512)
    assert stats["truncated"] == 2 and stats["truncated_share"] == 0.2
    assert "--max_length 48 keeps 99%" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="finlora.training"):
        assert report_truncation(tokenizer, texts, max_length=64, model_limit=512)["truncated"] == 0
    assert caplog.text == ""


def test_a_model_predicting_one_class_everywhere_gets_a_warning_naming_the_fix():
    collapsed = {"prediction_distribution": {"negative": 0, "neutral": 226, "positive": 0}}
    lora = single_class_warning(collapsed, TrainConfig(learning_rate=1e-3, loraplus_lr_ratio=8))
    assert "predicts 'neutral' for every validation text" in lora
    assert "--learning_rate (now 0.001) or --loraplus_lr_ratio (now 8)" in lora
    full = single_class_warning(collapsed, TrainConfig(use_lora=False))
    assert "--learning_rate (now 0.0001)" in full and "loraplus" not in full
    healthy = {"prediction_distribution": {"negative": 30, "neutral": 150, "positive": 46}}
    assert single_class_warning(healthy, TrainConfig()) is None
    one_class_data = {"prediction_distribution": {"neutral": 226}}
    assert single_class_warning(one_class_data, TrainConfig()) is None


@pytest.mark.slow  # two trainings: the selection again, then the refit
def test_refit_trains_the_selected_epoch_count_on_training_and_validation_rows(
    lora_run, tmp_path, tiny_model_dir, phrasebank_slice, monkeypatch
):
    """The selection is the same run as without --refit; the model shipped is a new one
    trained on more rows, and the results test that one. The selected model is freed
    before the refit trains, so a GPU holds one model (and optimizer state) at a time."""
    import finlora.training
    from finlora.predictor import Predictor

    weights_of_earlier_runs, alive_when_the_refit_starts = [], []
    real_fit = finlora.training.fit

    def watched_fit(*args, **kwargs):
        gc.collect()
        alive_when_the_refit_starts.extend(w() is not None for w in weights_of_earlier_runs)
        done = real_fit(*args, **kwargs)
        weights_of_earlier_runs.append(weakref.ref(next(done.model.parameters())))
        return done

    monkeypatch.setattr(finlora.training, "fit", watched_fit)
    plain = results_of(lora_run)
    out = train_cli(tmp_path, tiny_model_dir, phrasebank_slice, "refit", "--refit")
    assert alive_when_the_refit_starts == [False]
    results = results_of(out)
    assert results["history"] == plain["history"] and results["best_epoch"] == plain["best_epoch"]
    # the selected model's figures, less what calibration adds (a refit is not calibrated)
    uncalibrated = {k: v for k, v in plain["validation"].items() if k not in UNCERTAINTY}
    assert results["validation"] == uncalibrated
    refit = results["refit"]
    assert refit["epochs"] == plain["best_epoch"]
    sizes = plain["data"]["sizes"]
    assert refit["train_rows"] == sizes["train"] + sizes["validation"]
    assert results["data"] == plain["data"]  # the split, as `compare` checks it on reruns
    assert refit["selected_model_test"] == {
        k: v for k, v in plain["test"].items() if k not in UNCERTAINTY
    }
    assert files(out) == EXPECTED_LORA_FILES - {"calibration.json", "reliability.png"}
    assert load_results(out).refit.train_rows == refit["train_rows"]  # valid, typed

    shipped = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    selected = AutoModelForSequenceClassification.from_pretrained(lora_run).state_dict()
    assert not torch.equal(shipped["classifier.weight"], selected["classifier.weight"])
    assert results["test"]["size"] == plain["test"]["size"]
    # what the results say about test is what the saved model predicts
    from finlora.data import prepare_data

    data = prepare_data(TrainConfig(data=str(phrasebank_slice)))
    predicted = Predictor.load(out).predict_ids(data.test["text"])
    assert sum(p == t for p, t in zip(predicted, data.label_ids("test"))) == round(
        results["test"]["accuracy"] * len(predicted)
    )
