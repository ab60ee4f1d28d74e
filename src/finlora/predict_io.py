"""Batch prediction over files, chunk by chunk, so a file never has to fit in memory."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from finlora.artifacts import check_output_file, partial_file
from finlora.data.sources import read_frame, require_columns
from finlora.errors import FinloraError
from finlora.evaluation import apply_thresholds
from finlora.predictor import Predictor

CHUNK_ROWS = 4096
MULTI_LABEL_SEPARATOR = "|"


def iter_chunks(
    path: str | Path, text_column: str, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Chunks of an input file; `.txt` is one text per line (column `text`)."""
    path = Path(path)
    if not path.is_file():
        raise FinloraError(f"input file {path} does not exist; check the path")
    try:
        for chunk in _read_chunks(path, text_column, chunk_rows):
            require_columns(chunk, [text_column], path)
            yield chunk
    except UnicodeDecodeError as exc:
        raise FinloraError(
            f"input file {path} is not UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-save it as UTF-8"
        ) from exc


def _read_chunks(path: Path, text_column: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = (line.rstrip("\n") for line in fh)
            while chunk := [t for _, t in zip(range(chunk_rows), lines)]:
                yield pd.DataFrame({text_column: chunk})
    elif suffix in (".csv", ".tsv"):
        yield from pd.read_csv(
            path, sep="\t" if suffix == ".tsv" else ",", chunksize=chunk_rows, keep_default_na=False
        )
    elif suffix == ".jsonl":
        yield from pd.read_json(path, lines=True, chunksize=chunk_rows)
    elif suffix == ".parquet":
        yield from (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows))
    else:  # a whole-file type (.json), or read_frame's unsupported-type error
        yield read_frame(path)


OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")


def check_prediction_output(path: str | Path) -> None:
    """Before loading the model: `--output` names a table file that can be written."""
    if Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise FinloraError(f"--output {path}: use a .csv, .jsonl or .parquet file name")
    if not str(path).startswith("s3://"):  # uploaded from a local file at the end
        check_output_file(path)


class _Writer:
    """Appends prediction chunks to CSV / JSON Lines / Parquet, into a temp file renamed at end."""

    def __init__(self, path: str | Path) -> None:
        check_prediction_output(path)
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        self.tmp = partial_file(self.path)
        self.parquet: pq.ParquetWriter | None = None
        self.first = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.suffix == ".csv":
            frame.to_csv(self.tmp, mode="w" if self.first else "a", header=self.first, index=False)
        elif self.suffix == ".jsonl":
            frame.to_json(self.tmp, orient="records", lines=True, mode="w" if self.first else "a")
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        self.first = False

    def close(self, ok: bool) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.tmp == self.path:  # a stream, written directly
            return
        if ok and self.tmp.exists():
            self.tmp.replace(self.path.resolve())
        else:
            self.tmp.unlink(missing_ok=True)


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    text_column: str,
    output: str | None,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Score every row; write input columns + `label` + `prob_<class>`; return rows scored.

    Multi-label models write `labels` (the predicted labels joined by "|", empty when none
    applies) and `prob_<label>` sigmoid scores. A model with calibration.json adds
    `prediction_set` (labels joined by "|"; multi-label: the surely present ones), multi-label
    `unsure`, and `needs_review` (true/false); `prob_` columns are then calibrated.
    """
    writer = _Writer(output) if output else None
    rows = 0
    ok = False
    try:
        quiet = not logging.getLogger("finlora").isEnabledFor(logging.INFO)
        with tqdm(desc="predict", unit="text", disable=quiet or None, file=sys.stderr) as bar:
            for chunk in iter_chunks(input_path, text_column, chunk_rows):
                probs = predictor.probabilities(chunk[text_column].fillna("").astype(str).tolist())
                scored = chunk.reset_index(drop=True).copy()
                if predictor.multi_label:
                    hits = apply_thresholds(probs, predictor.thresholds)
                    scored["labels"] = [
                        MULTI_LABEL_SEPARATOR.join(np.asarray(predictor.labels)[row == 1])
                        for row in hits
                    ]
                else:
                    scored["label"] = [predictor.labels[i] for i in probs.argmax(-1)]
                for j, name in enumerate(predictor.labels):
                    scored[f"prob_{name}"] = probs[:, j]
                sets = predictor.prediction_sets(probs)
                if sets:  # "|"-joined like `labels`, so every format holds it
                    scored["prediction_set"] = [
                        MULTI_LABEL_SEPARATOR.join(s) for s in sets["prediction_set"]
                    ]
                    if "unsure" in sets:
                        scored["unsure"] = [MULTI_LABEL_SEPARATOR.join(s) for s in sets["unsure"]]
                    scored["needs_review"] = sets["needs_review"]
                if writer:
                    writer.write(scored)
                else:
                    for record in scored.to_dict(orient="records"):
                        print(json.dumps(record, default=str))
                rows += len(scored)
                bar.update(len(scored))
        ok = True
    finally:
        if writer:
            writer.close(ok)
    return rows
