"""final_results.json: the typed definition, the shipped JSON Schema, and reading it back.

Files of real runs are checked where those runs are trained (test_training.py,
test_multilabel.py, test_compare.py); here the tiny multi-label run of the session is reused
and hand-made files check that a wrong type or a missing key fails with a clear message.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields

import pytest

from finlora.errors import FinloraError
from finlora.results import (
    SCHEMA_VERSION,
    FinalResults,
    MultiLabelMetrics,
    SingleLabelMetrics,
    is_required,
    load_results,
    read_results,
    results_schema,
    validate_results,
    validation_errors,
)

SHA = "0" * 64
FILE = {"path": "train.csv", "sha256": SHA, "rows_read": 10, "empty_texts_dropped": 0,
        "missing_labels_dropped": 0, "duplicates_dropped": 0, "conflicting_texts_dropped": 0,
        "conflicting_examples": [], "rows_kept": 10}  # fmt: skip
SPLITS = ("train", "validation", "test")


def block(size: int) -> dict:
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": size // 2}
    return {
        "size": size,
        "macro_f1": 0.5,
        "accuracy": 0.5,
        "weighted_f1": 0.5,
        "per_class": {"down": scores, "up": scores},
        "confusion_matrix": [[1, 1], [1, 1]],
        "prediction_distribution": {"down": 2, "up": 2},
        "never_predicted": [],
    }


def lora_results() -> dict:
    """A small but complete single-label LoRA run, as the writer lays it out."""
    return {
        "schema_version": SCHEMA_VERSION,
        "task": "single_label",
        "labels": ["down", "up"],
        "base_model": "tiny-bert",
        "strategy": "lora",
        "pooling": "cls",
        "test": block(4),
        "validation": block(4),
        "best_epoch": 2.0,
        "history": [
            {
                "epoch": 1.0,
                "train_loss": 0.7,
                "validation_loss": 0.69,
                "macro_f1": 0.4,
                "accuracy": 0.5,
            },
            {
                "epoch": 2.0,
                "train_loss": 0.6,
                "validation_loss": 0.65,
                "macro_f1": 0.5,
                "accuracy": 0.5,
            },
        ],  # fmt: skip
        "trainable_params": 100,
        "total_params": 1000,
        "trainable_fraction": 0.1,
        "train_seconds": 1.5,
        "peak_memory_mb": 300.0,
        "device": "cpu (x86_64, 1 threads)",
        "distributed": {
            "world_size": 1,
            "backend": None,
            "per_device_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "global_batch_size": 8,
        },  # fmt: skip
        "precision": "fp32",
        "seed": 42,
        "loss": {"name": "ce", "class_weights": None, "focal_gamma": 2.0},
        "data": {
            "source": "train.csv",
            "dataset": None,
            "problem_type": "single_label",
            "files": {"train": FILE},
            "duplicates_dropped": 0,
            "conflicting_texts_dropped": 0,
            "empty_texts_dropped": 0,
            "leaked_rows_dropped": 0,
            "class_counts": {"down": 5, "up": 5},
            "imbalance_ratio": 1.0,
            "imbalanced": False,
            "split_strategy": "random",
            "sizes": {"train": 2, "validation": 4, "test": 4},
            "split_sha256": dict.fromkeys(SPLITS, SHA),
            "split_class_counts": {s: {"down": 1, "up": 1} for s in SPLITS},
            "train_fraction": 0.5,  # a key some caller added: kept, not refused
        },
        "train_token_lengths": {
            "min": 3,
            "mean": 5.5,
            "p50": 5.0,
            "p90": 8.0,
            "p95": 8.5,
            "p99": 9.0,
            "max": 9,
            "max_length": 48,
            "truncated": 0,
            "truncated_share": 0.0,
        },  # fmt: skip
        "warnings": [],
        "versions": {"finlora": "0.1.0", "torch": "2.13.0"},
    }


def test_the_schema_ships_with_the_package_and_declares_every_field():
    schema = results_schema()
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    declared = set(schema["properties"])
    keys = {f.metadata.get("key") or f.name for f in fields(FinalResults)}
    assert keys == declared


def test_every_block_of_the_typed_definition_is_in_the_schema():
    """Field by field, record by record: the dataclasses and the schema say the same keys."""
    defs = results_schema()["$defs"]
    pairs = {
        "SingleLabelMetrics": defs["single_label_metrics"],
        "MultiLabelMetrics": defs["multi_label_metrics"],
        "EpochRecord": defs["epoch"],
        "FileReport": defs["file"],
        "DataReport": defs["data"],
        "ClassScores": defs["class_scores"],
    }
    import finlora.results as module

    for name, schema in pairs.items():
        cls = getattr(module, name)
        keys = {f.metadata.get("key") or f.name for f in fields(cls) if f.name != "extra"}
        assert keys == set(schema["properties"]), name
        required = {f.metadata.get("key") or f.name for f in fields(cls) if is_required(f)}
        assert required == set(schema["required"]), name


def test_a_complete_file_validates_and_round_trips_through_the_typed_definition():
    payload = lora_results()
    assert validation_errors(payload) == []
    results = FinalResults.from_dict(payload)
    assert isinstance(results.test, SingleLabelMetrics) and results.test.per_class["up"].f1 == 0.5
    assert results.history[1].accuracy == 0.5 and results.history[1].micro_f1 is None
    assert results.data.extra == {"train_fraction": 0.5}
    assert results.loss.weights_key == "class_weights"
    assert not results.multi_label and not results.is_baseline
    assert results.to_dict() == payload
    assert list(results.to_dict()) == list(payload)  # the writer's key order, too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["test"].update(macro_f1="high"), "test.macro_f1: 'high' is not of type"),
        (lambda r: r.pop("validation"), "'validation' is a required property"),
        (lambda r: r["test"].pop("confusion_matrix"), "'confusion_matrix' is a required property"),
        (lambda r: r.pop("precision"), "'precision' is a required property"),
        (lambda r: r["history"][0].update(epoch=None), "history.0.epoch: None is not of type"),
        (lambda r: r.update(trainable_params=1.5), "trainable_params: 1.5 is not of type"),
        (lambda r: r["data"].pop("split_sha256"), "'split_sha256' is a required property"),
        (lambda r: r["loss"].pop("class_weights"), "loss:"),
        (lambda r: r.update(task="regression"), "task: 'regression' is not one of"),
    ],
)
def test_a_wrong_type_or_missing_key_fails_with_a_clear_message(change, message, tmp_path):
    payload = lora_results()
    change(payload)
    with pytest.raises(FinloraError, match="is not a valid final_results.json") as error:
        validate_results(payload)
    assert message in str(error.value)
    path = tmp_path / "final_results.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(FinloraError, match=f"{path} is not a valid final_results.json"):
        load_results(tmp_path)
    assert "\n" not in str(error.value)  # one line, as every finlora error


def test_schema_version_is_written_checked_and_defaulted_for_older_files(tmp_path):
    payload = lora_results()
    newer = {**payload, "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(FinloraError, match="written by a newer finlora"):
        validate_results(newer)
    assert "schema_version" in validation_errors({k: v for k, v in payload.items()
                                                  if k != "schema_version"})[0]  # fmt: skip
    older = {k: v for k, v in payload.items() if k != "schema_version"}
    (tmp_path / "final_results.json").write_text(json.dumps(older))
    assert read_results(tmp_path).schema_version == SCHEMA_VERSION  # read as version 1
    assert read_results(tmp_path / "absent") is None


def test_a_broken_file_is_a_one_line_error(tmp_path):
    (tmp_path / "final_results.json").write_text("{not json")
    with pytest.raises(FinloraError, match="is not JSON"):
        load_results(tmp_path)
    with pytest.raises(FinloraError, match="does not exist"):
        load_results(tmp_path / "nowhere" / "final_results.json")


def test_a_multilabel_run_validates_and_reads_back_typed(multilabel_run):
    payload = json.loads((multilabel_run / "final_results.json").read_text())
    assert payload["schema_version"] == SCHEMA_VERSION
    validate_results(payload)
    results = load_results(multilabel_run)
    assert results.multi_label and isinstance(results.test, MultiLabelMetrics)
    assert results.loss.weights_key == "pos_weight" and len(results.loss.weights) == 8
    assert results.test.thresholds and results.history[0].macro_f1_at_half is not None
    assert results.data.groups is not None and results.data.rows_without_label is not None
    assert results.to_dict() == payload

    broken = copy.deepcopy(payload)
    broken["test"]["per_label"]["A"]["support"] = "seven"
    with pytest.raises(FinloraError, match=r"test\.per_label\.A\.support: 'seven' is not of"):
        validate_results(broken)
    single_shaped = copy.deepcopy(payload)
    single_shaped["validation"] = block(4)  # a single-label block in a multi-label run
    with pytest.raises(FinloraError, match="validation"):
        validate_results(single_shaped)
