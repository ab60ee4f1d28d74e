"""From a config's data settings to clean, split, label-mapped frames plus their report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from finlora.config import DEFAULT_DATASET, TrainConfig
from finlora.data.sources import file_sha256, read_labelled, resolve_named_dataset
from finlora.data.split import imbalance_ratio, split_frame
from finlora.data.validate import check_known_labels, clean, resolve_labels
from finlora.errors import FinloraError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The three splits (columns `text`, `label`), the label order, and what was done."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    imbalanced: bool
    info: dict[str, Any] = field(default_factory=dict)

    def label_ids(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.labels)}
        return [index[lab] for lab in getattr(self, split)["label"]]

    def class_counts(self, split: str = "train") -> list[int]:
        counts = getattr(self, split)["label"].value_counts()
        return [int(counts.get(name, 0)) for name in self.labels]


def training_source(config: TrainConfig) -> Path:
    if config.data:
        return Path(config.data)
    return resolve_named_dataset(config.dataset or DEFAULT_DATASET, config.data_dir)


def _read_clean(path: Path, config: TrainConfig) -> tuple[pd.DataFrame, dict]:
    frame, report = clean(
        read_labelled(path, config.text_column, config.label_column), source=str(path)
    )
    return frame, {"path": str(path), "sha256": file_sha256(path), **report.to_dict()}


def prepare_data(config: TrainConfig) -> PreparedData:
    """Read, clean, de-duplicate and split; class weights and loss are decided downstream."""
    source = training_source(config)
    frame, train_report = _read_clean(source, config)
    files = {"train": train_report}

    explicit: dict[str, pd.DataFrame] = {}
    for split, path in (("validation", config.validation_data), ("test", config.test_data)):
        if path:
            explicit[split], files[split] = _read_clean(Path(path), config)

    # A text in an explicit validation/test file must not also be trained on.
    held_out = set().union(*(set(f["text"]) for f in explicit.values())) if explicit else set()
    leaked = frame["text"].isin(held_out)
    if leaked.any():
        log.warning("dropping %d training rows that also occur in validation/test", leaked.sum())
        frame = frame[~leaked].reset_index(drop=True)

    labels = resolve_labels(frame, config.labels)
    for split, part in explicit.items():
        check_known_labels(part, labels, str(getattr(config, f"{split}_data")))

    ratio = imbalance_ratio(frame["label"])
    imbalanced = ratio > config.imbalance_threshold
    splits = split_frame(
        frame,
        validation_size=0.0 if "validation" in explicit else config.validation_size,
        test_size=0.0 if "test" in explicit else config.test_size,
        seed=config.seed,
        stratify=imbalanced,
    )
    splits.update(explicit)
    if splits["validation"].empty:
        raise FinloraError(
            "no validation data: set --validation_size > 0 or pass --validation_data "
            "(model selection needs it)"
        )
    if splits["train"]["label"].nunique() < 2:
        raise FinloraError("the training split holds fewer than 2 classes; use more data")

    prepared = PreparedData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        labels=labels,
        imbalanced=imbalanced,
    )
    prepared.info = {
        "source": str(source),
        "dataset": None if config.data else (config.dataset or DEFAULT_DATASET),
        "files": files,
        "duplicates_dropped": sum(f["duplicates_dropped"] for f in files.values()),
        "conflicting_texts_dropped": sum(f["conflicting_texts_dropped"] for f in files.values()),
        "empty_texts_dropped": sum(f["empty_texts_dropped"] for f in files.values()),
        "leaked_rows_dropped": int(leaked.sum()),
        "class_counts": dict(zip(labels, [int((frame["label"] == lab).sum()) for lab in labels])),
        "imbalance_ratio": round(ratio, 4),
        "imbalanced": imbalanced,
        "split_strategy": "stratified" if imbalanced else "random",
        "sizes": {name: len(part) for name, part in splits.items()},
        "split_class_counts": {
            name: {lab: int((part["label"] == lab).sum()) for lab in labels}
            for name, part in splits.items()
        },
    }
    log.info(
        "data: %s | classes %s | imbalance %.2f (%s split) | train %d, validation %d, test %d",
        source.name,
        prepared.info["class_counts"],
        ratio,
        prepared.info["split_strategy"],
        len(prepared.train),
        len(prepared.validation),
        len(prepared.test),
    )
    return prepared
