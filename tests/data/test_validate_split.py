"""Cleaning, label resolution, imbalance, splitting: counts, no leaks, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest

from finlora.config import TrainConfig
from finlora.data import prepare_data
from finlora.data.split import imbalance_ratio, split_frame
from finlora.data.validate import clean, resolve_labels
from finlora.errors import FinloraError


def frame(rows):
    return pd.DataFrame(rows, columns=["text", "label"])


def test_clean_counts_what_it_drops():
    raw = frame(
        [
            ("good", "pos"),
            ("good", "pos"),  # duplicate
            ("  ", "neg"),  # empty text
            (None, "neg"),  # missing text
            ("bad", None),  # missing label
            ("odd", "pos"),
            ("odd", "neg"),  # conflicting: both copies dropped
            ("meh", "neu"),
        ]
    )
    cleaned, report = clean(raw)
    assert sorted(cleaned["text"]) == ["good", "meh"]
    assert report.rows_read == 8
    assert report.duplicates_dropped == 1
    assert report.empty_texts_dropped == 2
    assert report.missing_labels_dropped == 1
    assert report.conflicting_texts_dropped == 1
    assert report.rows_kept == 2


def test_labels_order_and_errors():
    data = frame([("a", "2"), ("b", "10"), ("c", "1")])
    assert resolve_labels(data, None) == ["1", "2", "10"]
    assert resolve_labels(data, ["10", "2", "1"]) == ["10", "2", "1"]
    with pytest.raises(FinloraError, match="not in --labels"):
        resolve_labels(data, ["1", "2"])
    with pytest.raises(FinloraError, match="at least 2"):
        resolve_labels(frame([("a", "x"), ("b", "x")]), None)


def test_stratified_split_keeps_class_shares():
    data = frame([(f"t{i}", "rare" if i < 40 else "common") for i in range(400)])
    assert imbalance_ratio(data["label"]) == 9.0
    parts = split_frame(data, 0.1, 0.1, seed=0, stratify=True)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [320, 40, 40]
    for part in parts.values():
        assert (part["label"] == "rare").sum() == len(part) // 10
    texts = [set(p["text"]) for p in parts.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_split_is_seeded():
    data = frame([(f"t{i}", str(i % 2)) for i in range(100)])
    a = split_frame(data, 0.1, 0.1, seed=3, stratify=False)
    b = split_frame(data, 0.1, 0.1, seed=3, stratify=False)
    c = split_frame(data, 0.1, 0.1, seed=4, stratify=False)
    assert a["test"]["text"].tolist() == b["test"]["text"].tolist()
    assert a["test"]["text"].tolist() != c["test"]["text"].tolist()


def test_class_too_small_to_stratify():
    data = frame([(f"t{i}", "a") for i in range(50)] + [("lonely", "b"), ("pair", "b")])
    with pytest.raises(FinloraError, match="class 'b' has only 2 example"):
        split_frame(data, 0.1, 0.1, seed=0, stratify=True)


def test_prepare_phrasebank_dedupes_before_split(phrasebank_allagree):
    data = prepare_data(TrainConfig(data=str(phrasebank_allagree)))
    assert data.info["duplicates_dropped"] == 5
    assert data.info["imbalanced"] and data.info["split_strategy"] == "stratified"
    splits = [set(data.train["text"]), set(data.validation["text"]), set(data.test["text"])]
    assert sum(map(len, splits)) == 2259
    assert not (splits[0] & splits[2] or splits[0] & splits[1] or splits[1] & splits[2])
    assert data.labels == ["negative", "neutral", "positive"]


def test_prepare_balanced_data_uses_plain_split(tmp_path):
    path = tmp_path / "d.csv"
    frame([(f"text {i}", "ab"[i % 2]) for i in range(100)]).to_csv(path, index=False)
    data = prepare_data(TrainConfig(data=str(path)))
    assert not data.imbalanced and data.info["split_strategy"] == "random"


def test_explicit_test_file_removes_leaked_training_rows(tmp_path):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    frame([(f"text {i}", "ab"[i % 2]) for i in range(100)]).to_csv(train, index=False)
    frame([("text 1", "b"), ("text 2", "a"), ("fresh", "a")]).to_csv(test, index=False)
    data = prepare_data(TrainConfig(data=str(train), test_data=str(test)))
    assert data.info["leaked_rows_dropped"] == 2
    assert len(data.test) == 3
    assert not set(data.test["text"]) & set(data.train["text"])
    unknown = tmp_path / "unknown.csv"
    frame([("x", "c")]).to_csv(unknown, index=False)
    with pytest.raises(FinloraError, match="do not occur in the training labels"):
        prepare_data(TrainConfig(data=str(train), test_data=str(unknown)))
