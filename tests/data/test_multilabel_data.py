"""Multi-label input shapes, the CLAUDETTE reader, and group-aware splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from finlora.config import TrainConfig
from finlora.data import prepare_data
from finlora.data.sources import read_labelled, unescape_ptb
from finlora.data.split import split_frame
from finlora.data.validate import clean, resolve_labels
from finlora.errors import FinloraError

EXPECTED = [["LTD", "TER"], [], ["CH"], []]
TEXTS = ["we are not liable and may terminate", "you own your content", "we may change terms",
         "welcome"]  # fmt: skip


def test_jsonl_list_labels(tmp_path):
    path = tmp_path / "clauses.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(TEXTS, EXPECTED))
    )
    frame = read_labelled(path)
    assert frame["label"].tolist() == EXPECTED


def test_parquet_list_labels(tmp_path):
    path = tmp_path / "clauses.parquet"
    pd.DataFrame({"text": TEXTS, "label": EXPECTED}).to_parquet(path)
    assert [list(x) for x in read_labelled(path)["label"]] == EXPECTED


def test_csv_delimited_labels_with_empty_cells(tmp_path):
    path = tmp_path / "clauses.csv"
    pd.DataFrame({"text": TEXTS, "tags": ["LTD| TER", "", "CH", None]}).to_csv(path, index=False)
    frame = read_labelled(path, label_column="tags", label_delimiter="|")
    assert frame["label"].tolist() == EXPECTED


def test_label_columns_of_zeros_and_ones(tmp_path):
    path = tmp_path / "clauses.csv"
    pd.DataFrame(
        {"text": TEXTS, "CH": [0, 0, 1, 0], "LTD": [1, 0, 0, 0], "TER": [1, 0, 0, 0]}
    ).to_csv(path, index=False)
    frame = read_labelled(path, label_columns=["CH", "LTD", "TER"])
    assert [sorted(x) for x in frame["label"]] == EXPECTED
    pd.DataFrame({"text": TEXTS, "CH": [0, 2, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(FinloraError, match="'CH' must hold only 0 or 1"):
        read_labelled(path, label_columns=["CH"])


def test_clean_keeps_rows_without_labels_and_drops_conflicts():
    raw = pd.DataFrame(
        {
            "text": ["a", "b", "b", "c", "c", "d"],
            "label": [["X"], [], [], ["X", "Y"], ["Y", "X"], ["Y"]],
        }
    )
    frame, report = clean(raw)
    assert frame["label"].tolist() == [("X",), (), ("X", "Y"), ("Y",)]
    assert report.duplicates_dropped == 2 and report.missing_labels_dropped == 0
    conflicting, report = clean(pd.DataFrame({"text": ["e", "e", "f"], "label": [["X"], [], []]}))
    assert conflicting["text"].tolist() == ["f"] and report.conflicting_texts_dropped == 1
    assert resolve_labels(frame, None) == ["X", "Y"]


def test_claudette_reader_on_the_real_corpus(claudette_dir):
    root = claudette_dir
    frame = read_labelled(root, group_column="document")
    assert len(frame) == 9414 and frame["group"].nunique() == 50
    positives = frame["label"].explode().value_counts().to_dict()
    assert positives == {"LTD": 296, "TER": 236, "CH": 188, "CR": 118, "USE": 117, "LAW": 70,
                         "J": 68, "A": 44}  # fmt: skip
    assert (frame["label"].map(len) > 0).sum() == 1032
    assert not frame["text"].str.contains("-lrb-").any()
    assert unescape_ptb("9gag -lrb- the `` site '' -rrb-") == '9gag ( the " site " )'


def test_group_split_never_puts_a_document_in_two_splits(claudette_dir):
    for seed in (0, 1, 2):
        data = prepare_data(TrainConfig(dataset="claudette_tos", test_size=0.2, seed=seed))
        assert data.problem_type == "multi_label"
        docs = {name: set(getattr(data, name)["group"]) for name in ("train", "validation", "test")}
        assert not docs["train"] & docs["validation"]
        assert not docs["train"] & docs["test"]
        assert not docs["validation"] & docs["test"]
        assert len(set.union(*docs.values())) == 50
        # stratified by each row's rarest label: the rarest category reaches every split
        for name in ("train", "validation", "test"):
            assert data.class_counts(name)[data.labels.index("A")] > 0, (seed, name)
        assert data.info["rows_without_label"]["train"] > 0


def test_fewer_training_documents_keep_the_record_in_step(claudette_dir):
    data = prepare_data(TrainConfig(dataset="claudette_tos", test_size=0.2))
    kept = sorted(data.train["group"].unique())[:5]
    fewer = data.with_train(data.train[data.train["group"].isin(kept)], train_fraction=0.2)
    assert fewer.info["groups"]["train"] == kept
    assert fewer.info["groups"]["test"] == data.info["groups"]["test"]
    assert fewer.info["sizes"]["train"] == len(fewer.train) < len(data.train)
    assert fewer.info["split_class_counts"]["train"] == dict(
        zip(fewer.labels, fewer.class_counts("train"))
    )
    assert fewer.info["split_sha256"]["validation"] == data.info["split_sha256"]["validation"]
    assert fewer.info["split_sha256"]["train"] != data.info["split_sha256"]["train"]
    assert fewer.info["train_fraction"] == 0.2


def test_group_split_of_a_generic_file(tmp_path):
    rows = [(f"clause {i} of doc {d}", ["X"] if i % 3 == 0 else [], f"doc{d}")
            for d in range(12) for i in range(6)]  # fmt: skip
    path = tmp_path / "clauses.jsonl"
    pd.DataFrame(rows, columns=["text", "label", "doc"]).to_json(path, orient="records", lines=True)
    data = prepare_data(
        TrainConfig(data=str(path), group_column="doc", validation_size=0.2, test_size=0.2)
    )
    groups = [set(getattr(data, s)["group"]) for s in ("train", "validation", "test")]
    assert all(groups) and sum(map(len, groups)) == 12 == len(set.union(*groups))
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"], "group": ["g", "g"]})
    with pytest.raises(FinloraError, match="at least 2"):
        split_frame(frame, 0.5, 0.0, seed=0, stratify=False)


def test_problem_type_flags(tmp_path):
    path = tmp_path / "single.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["a", "b"] * 10}).to_csv(
        path, index=False
    )
    data = prepare_data(TrainConfig(data=str(path), problem_type="multi_label"))
    assert data.problem_type == "multi_label" and data.label_matrix("train").sum(axis=1).max() == 1
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"text": "x", "label": ["a"]}\n{"text": "y", "label": []}\n')
    with pytest.raises(FinloraError, match="--problem_type multi_label"):
        prepare_data(TrainConfig(data=str(lists), problem_type="single_label"))
    with pytest.raises(FinloraError, match="not both"):
        TrainConfig(label_delimiter="|", label_columns=["a"])
