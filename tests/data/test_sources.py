"""Readers: PhraseBank lines, table formats, named datasets, and their error messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from finlora.data.sources import read_labelled, resolve_named_dataset
from finlora.errors import FinloraError


def test_phrasebank_real_file_parses(phrasebank_allagree):
    frame = read_labelled(phrasebank_allagree)
    assert len(frame) == 2264
    assert frame["label"].value_counts().to_dict() == {
        "neutral": 1391,
        "positive": 570,
        "negative": 303,
    }
    assert not frame["text"].str.endswith("@").any()


def test_phrasebank_keeps_at_signs_inside_text(tmp_path):
    path = tmp_path / "pb.txt"
    path.write_text("Mail ir@firm.fi for details .@neutral\n", encoding="iso-8859-1")
    frame = read_labelled(path)
    assert frame.loc[0, "text"] == "Mail ir@firm.fi for details ."
    assert frame.loc[0, "label"] == "neutral"


def test_phrasebank_is_read_as_iso_8859_1(tmp_path):
    path = tmp_path / "pb.txt"
    path.write_bytes(
        "Profit rose 5 \u20ac .@positive\nK\u00e4rkk\u00e4inen .@neutral\n".encode(
            "cp1252", "replace"
        )
    )
    frame = read_labelled(path)
    assert frame.loc[1, "text"].startswith("K\u00e4rkk")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_table_formats_with_custom_columns(tmp_path, suffix):
    frame = pd.DataFrame({"headline": ["up", "down", "flat"], "y": [2, 0, 1]})
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    out = read_labelled(path, text_column="headline", label_column="y")
    assert out["text"].tolist() == ["up", "down", "flat"]
    assert out["label"].tolist() == ["2", "0", "1"]


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"sentence": ["a"], "label": ["x"]}).to_csv(path, index=False)
    with pytest.raises(FinloraError, match="'text' not found; columns are 'sentence', 'label'"):
        read_labelled(path)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(FinloraError, match="does not exist"):
        read_labelled(tmp_path / "nope.csv")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(FinloraError, match="unsupported type"):
        read_labelled(odd)


def test_non_utf8_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nK\u00e4rkk\u00e4inen,neutral\n".encode("latin-1"))
    with pytest.raises(FinloraError, match="not UTF-8"):
        read_labelled(path)


def test_float_labels_with_gaps_read_as_integers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,\nc,0\n")
    assert read_labelled(path)["label"].tolist() == ["1", None, "0"]


def test_named_dataset_resolves_under_data_dir(data_dir):
    path = resolve_named_dataset("phrasebank_50agree", data_dir)
    assert path.name == "Sentences_50Agree.txt"


def test_named_dataset_offline_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinloraError, match="FinancialPhraseBank-v1.0/ folder there"):
        resolve_named_dataset("phrasebank_allagree", tmp_path)
    with pytest.raises(FinloraError, match="unknown dataset"):
        resolve_named_dataset("imdb", tmp_path)
