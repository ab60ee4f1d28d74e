"""Reading labelled text from files and named datasets into a two-column frame.

Every reader returns a `pandas.DataFrame` with columns `text` and `label` (labels as
strings), so the later stages never care where the rows came from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

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


def default_data_dir() -> Path:
    """`FINLORA_DATA_DIR` if set, else the user's cache directory."""
    return Path(os.environ.get("FINLORA_DATA_DIR") or user_cache_dir("finlora"))


def named_datasets() -> list[str]:
    return sorted(PHRASEBANK_FILES)


def resolve_named_dataset(name: str, data_dir: str | Path | None = None) -> Path:
    """Path of a named dataset's file, downloading the official release when online."""
    if name not in PHRASEBANK_FILES:
        raise FinloraError(
            f"unknown dataset {name!r}; named datasets are: {', '.join(named_datasets())} "
            "(or pass your own file with --data)"
        )
    root = Path(data_dir) if data_dir else default_data_dir()
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
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    except (ValueError, OSError, pd.errors.ParserError) as exc:
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


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label"):
    """A labelled file as a `text`, `label` frame (labels as strings, missing as NA)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return read_phrasebank(path) if path.is_file() else read_frame(path)
    frame = read_frame(path)
    require_columns(frame, [text_column, label_column], path)
    return pd.DataFrame(
        {"text": frame[text_column], "label": labels_as_strings(frame[label_column])}
    )


def labels_as_strings(labels: pd.Series) -> pd.Series:
    """Integer-valued labels become '0', '1', ... (also when a float column held NaN)."""
    if pd.api.types.is_float_dtype(labels):
        whole = labels.dropna()
        if (whole == whole.round()).all():
            labels = labels.astype("Int64")
    return labels.astype("string").astype(object).where(labels.notna(), None)
