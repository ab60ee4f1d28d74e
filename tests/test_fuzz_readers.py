"""Property-based tests of the labelled-file readers: random bytes, encodings, quotes.

Whatever the file holds, `read_labelled` returns a text/label frame or raises FinloraError (a
one-line message for the user), never another exception and never a hang.
"""

from __future__ import annotations

import io
import json
import signal
from contextlib import contextmanager

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finlora.data.sources import read_labelled
from finlora.errors import FinloraError

FUZZ = settings(
    max_examples=50,
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
SUFFIXES = [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]
cells = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from(['"', "'", ",", "\t", "\n", "\r", "@", "\\", "\x00", "\ufeff"]),
    max_size=40,
)


@contextmanager
def time_limit(seconds: float):
    """Fail (inside the call) if the block runs longer than `seconds`: a hang, not slowness."""

    def timeout(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read(path, **options):
    with time_limit(10):
        try:
            frame = read_labelled(path, **options)
        except FinloraError as exc:
            assert str(exc) and "\n" not in str(exc).strip(), str(exc)
            return None
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:2]) == ["text", "label"]
    return frame


@pytest.fixture
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), data=st.binary(max_size=3000))
def test_random_bytes(workdir, suffix, data):
    path = workdir / f"data{suffix}"
    path.write_bytes(data)
    read(path)


@FUZZ
@given(
    rows=st.lists(st.tuples(cells, cells), max_size=20),
    header=st.sampled_from(["text,label", "label,text", "text,text", '"text","label"', "a,b", ""]),
    encoding=st.sampled_from(ENCODINGS),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    quote=st.booleans(),
)
def test_csv_with_quotes_encodings_and_newlines(workdir, rows, header, encoding, newline, quote):
    def cell(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if quote else value

    lines = [header] + [f"{cell(text)},{cell(label)}" for text, label in rows]
    path = workdir / "data.csv"
    path.write_bytes(newline.join(lines).encode(encoding, errors="replace"))
    frame = read(path)
    if frame is not None and quote and header == "text,label" and encoding == "utf-8":
        assert len(frame) <= len(rows)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | cells,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(cells, inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    records=st.lists(
        st.fixed_dictionaries({}, optional={"text": json_values, "label": json_values}),
        max_size=10,
    ),
    junk=st.sampled_from(["", "\n", "not json\n", "[1, 2]\n", "{" * 2000 + "\n"]),
    multi=st.booleans(),
)
def test_jsonl_with_any_values(workdir, records, junk, multi):
    path = workdir / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + junk, encoding="utf-8")
    read(path, label_delimiter="|" if multi else None)


@FUZZ
@given(
    texts=st.lists(cells, min_size=1, max_size=10),
    labels=st.one_of(
        st.lists(cells, min_size=10, max_size=10),
        st.lists(st.integers(-5, 5), min_size=10, max_size=10),
        st.lists(st.floats(), min_size=10, max_size=10),
        st.lists(st.lists(cells, max_size=3), min_size=10, max_size=10),
    ),
    cut=st.integers(0, 200),
)
def test_parquet_valid_and_truncated(workdir, texts, labels, cut):
    frame = pd.DataFrame({"text": texts, "label": labels[: len(texts)]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    data = buffer.getvalue()
    path = workdir / "data.parquet"
    path.write_bytes(data[: len(data) - cut] if cut else data)
    result = read(path)
    if not cut:
        assert result is not None and len(result) == len(texts)


@FUZZ
@given(
    lines=st.lists(st.tuples(cells, st.sampled_from(["@", "", "@@", " @ "]), cells), max_size=20),
    encoding=st.sampled_from(ENCODINGS),
)
def test_phrasebank_txt(workdir, lines, encoding):
    path = workdir / "data.txt"
    body = "\n".join(f"{text}{sep}{label}" for text, sep, label in lines)
    path.write_bytes(body.encode(encoding, errors="replace"))
    read(path)
