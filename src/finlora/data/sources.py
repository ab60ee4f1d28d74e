"""Reading labelled text from files and named datasets into a two-column frame.

Every reader returns a `pandas.DataFrame` with columns `text` and `label` (labels as
strings), so the later stages never care where the rows came from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from platformdirs import user_cache_dir

from finlora.errors import FinloraError

log = logging.getLogger(__name__)

PHRASEBANK_DIR = "FinancialPhraseBank-v1.0"
PHRASEBANK_FILES = {
    "phrasebank_allagree": "Sentences_AllAgree.txt",
    "phrasebank_75agree": "Sentences_75Agree.txt",
    "phrasebank_66agree": "Sentences_66Agree.txt",
    "phrasebank_50agree": "Sentences_50Agree.txt",
}
PHRASEBANK_HUB_REPO = "takala/financial_phrasebank"
PHRASEBANK_HUB_FILE = "data/FinancialPhraseBank-v1.0.zip"
PHRASEBANK_ENCODING = "iso-8859-1"

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")

CLAUDETTE_DIR = "claudette_tos"
# PTB escapes in the CLAUDETTE sentence files, mapped back to the characters a raw document
# holds, so a model trained on them reads real Terms of Service the same way.
PTB_ESCAPES = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
    "``": '"',
    "''": '"',
}


def default_data_dir() -> Path:
    """`FINLORA_DATA_DIR` if set, else the user's cache directory."""
    return Path(os.environ.get("FINLORA_DATA_DIR") or user_cache_dir("finlora"))


def named_datasets() -> list[str]:
    return sorted([*PHRASEBANK_FILES, CLAUDETTE_DIR])


def resolve_named_dataset(name: str, data_dir: str | Path | None = None) -> Path:
    """Path of a named dataset's file (or folder), downloading PhraseBank when online."""
    if name not in named_datasets():
        raise FinloraError(
            f"unknown dataset {name!r}; named datasets are: {', '.join(named_datasets())} "
            "(or pass your own file with --data)"
        )
    root = Path(data_dir) if data_dir else default_data_dir()
    if name == CLAUDETTE_DIR:
        path = root / CLAUDETTE_DIR
        if not is_claudette_dir(path):
            raise FinloraError(
                f"dataset folder {path} not found (needs Sentences/ and Labels_<TAG>/); point "
                "--data_dir / FINLORA_DATA_DIR at the folder that holds claudette_tos/"
            )
        return path
    path = root / PHRASEBANK_DIR / PHRASEBANK_FILES[name]
    if not path.is_file():
        _download_phrasebank(root, path)
    return path


def _download_phrasebank(root: Path, expected: Path) -> None:
    """Fetch the official PhraseBank zip from the Hugging Face hub and unpack it under root."""
    hint = (
        f"dataset file {expected} not found; put the {PHRASEBANK_DIR}/ folder there "
        "or point --data_dir / FINLORA_DATA_DIR at the folder that holds it"
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise FinloraError(f"{hint} (offline: HF_HUB_OFFLINE is set)")
    try:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from the hub dataset %s", PHRASEBANK_HUB_FILE, PHRASEBANK_HUB_REPO)
        archive = hf_hub_download(PHRASEBANK_HUB_REPO, PHRASEBANK_HUB_FILE, repo_type="dataset")
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(root)
    except Exception as exc:  # network, auth, bad archive: all end in the same advice
        raise FinloraError(f"{hint} (download failed: {type(exc).__name__})") from exc
    if not expected.is_file():
        raise FinloraError(f"{hint} (the downloaded archive did not contain it)")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder, over its files' relative names and contents."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_claudette_dir(path: Path) -> bool:
    return (path / "Sentences").is_dir() and any(path.glob("Labels_*"))


_PTB_ESCAPE = re.compile("|".join(map(re.escape, PTB_ESCAPES)))


def claudette_tags(root: Path) -> list[str]:
    """The categories of a CLAUDETTE folder, from its `Labels_<TAG>` folders."""
    return sorted(p.name.removeprefix("Labels_") for p in root.glob("Labels_*") if p.is_dir())


def unescape_ptb(text: str) -> str:
    return _PTB_ESCAPE.sub(lambda m: PTB_ESCAPES[m.group(0)], text).strip()


def read_claudette(root: str | Path) -> pd.DataFrame:
    """CLAUDETTE layout: columns `text`, `label` (list of tags, empty = fair), `document`.

    `Sentences/<Doc>.txt` holds one sentence per line and each `Labels_<TAG>/<Doc>.txt` a
    line-aligned 1 (the sentence is an unfair clause of that category) or -1.
    """
    root = Path(root)
    tags = claudette_tags(root)
    rows = []
    for sentences in sorted((root / "Sentences").glob("*.txt")):
        lines = sentences.read_text(encoding="utf-8").splitlines()
        flags = {}
        for tag in tags:
            values = (root / f"Labels_{tag}" / sentences.name).read_text().split()
            if len(values) != len(lines):
                raise FinloraError(
                    f"{root}/Labels_{tag}/{sentences.name} has {len(values)} labels for "
                    f"{len(lines)} sentences; the files must be line-aligned"
                )
            flags[tag] = values
        for i, line in enumerate(lines):
            labels = [tag for tag in tags if flags[tag][i].strip() == "1"]
            rows.append((unescape_ptb(line), labels, sentences.stem))
    if not rows:
        raise FinloraError(f"{root}/Sentences holds no .txt files")
    return pd.DataFrame(rows, columns=["text", "label", "document"])


def read_phrasebank(path: str | Path) -> pd.DataFrame:
    """`sentence@label` lines in ISO-8859-1 (the official release's encoding)."""
    rows = []
    with open(path, encoding=PHRASEBANK_ENCODING) as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            text, sep, label = line.rpartition("@")
            if not sep:
                raise FinloraError(
                    f"{path}:{number}: expected 'sentence@label', got {line[:60]!r}; "
                    "for other text files use .csv/.tsv/.jsonl/.parquet with --text_column"
                )
            rows.append((text.strip(), label.strip()))
    return pd.DataFrame(rows, columns=["text", "label"])


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a whole table file by its suffix, with clear errors for missing or bad files."""
    path = Path(path)
    if path.is_dir() and is_claudette_dir(path):
        return read_claudette(path)
    if not path.is_file():
        raise FinloraError(f"data file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise FinloraError(
            f"data file {path} is not UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from exc
    # TypeError: a JSON Lines line that is not an object (`[1, 2]`); RecursionError: nesting.
    except (ValueError, TypeError, RecursionError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FinloraError(f"cannot read {path} as {suffix[1:]}: {first}") from exc
    raise FinloraError(
        f"data file {path} has unsupported type {suffix or '(none)'}; "
        f"use one of {', '.join(TABLE_SUFFIXES)}"
    )


def require_columns(frame: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FinloraError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not found; columns are "
            f"{', '.join(map(repr, map(str, frame.columns)))} (set --text_column / --label_column)"
        )


def read_labelled(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_delimiter: str | None = None,
    label_columns: list[str] | None = None,
    group_column: str | None = None,
) -> pd.DataFrame:
    """A labelled file as a `text`, `label` (+ `group`) frame.

    Single-label: labels as strings, missing as NA. Multi-label (a list-valued label column,
    `label_delimiter`, or one 0/1 column per label in `label_columns`): `label` holds a list
    of label names, empty for a row with no label.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        return read_phrasebank(path)
    frame = read_frame(path)
    if label_columns:
        require_columns(frame, [text_column, *label_columns], path)
        labels = labels_from_columns(frame, label_columns, path)
    else:
        require_columns(frame, [text_column, label_column], path)
        column = frame[label_column]
        if label_delimiter:
            labels = split_label_strings(column, label_delimiter)
        elif is_list_column(column):
            labels = column.map(as_label_list)
        else:
            labels = labels_as_strings(column)
    out = pd.DataFrame({"text": frame[text_column], "label": labels})
    if group_column:
        require_columns(frame, [group_column], path)
        out["group"] = frame[group_column].astype(str)
    return out


def is_list_column(column: pd.Series) -> bool:
    """True when the cells are lists (JSON Lines arrays, Parquet lists): a multi-label column."""
    return any(isinstance(v, (list, tuple, np.ndarray)) for v in column.head(1000))


def as_label_list(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if str(v).strip()]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(value).strip()] if str(value).strip() else []


def split_label_strings(column: pd.Series, delimiter: str) -> pd.Series:
    """`"LTD|TER"` -> ["LTD", "TER"]; an empty or missing cell is a row with no label."""
    return column.map(
        lambda v: (
            []
            if v is None or (isinstance(v, float) and np.isnan(v))
            else [part.strip() for part in str(v).split(delimiter) if part.strip()]
        )
    )


def labels_from_columns(frame: pd.DataFrame, columns: list[str], path) -> pd.Series:
    """One 0/1 column per label -> the list of labels whose column is 1."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | ~values.isin([0, 1])
    if bad.any().any():
        column = columns[int(bad.any().to_numpy().argmax())]
        raise FinloraError(
            f"{path}: column {column!r} must hold only 0 or 1 (--label_columns takes 0/1 columns)"
        )
    names = np.array(columns, dtype=object)
    return pd.Series([list(names[row == 1]) for row in values.to_numpy()], index=frame.index)


def labels_as_strings(labels: pd.Series) -> pd.Series:
    """Integer-valued labels become '0', '1', ... (also when a float column held NaN)."""
    if pd.api.types.is_float_dtype(labels):
        whole = labels.dropna()
        if (whole == whole.round()).all():
            labels = labels.astype("Int64")
    return labels.astype("string").astype(object).where(labels.notna(), None)
