"""From a config's data settings to clean, split, label-mapped frames plus their report."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from finlora.config import DEFAULT_DATASET, TrainConfig
from finlora.data.sources import (
    CLAUDETTE_DIR,
    as_label_list,
    claudette_tags,
    file_sha256,
    is_claudette_dir,
    read_labelled,
    resolve_named_dataset,
)
from finlora.data.split import (
    check_stratifiable,
    imbalance_ratio,
    label_counts,
    split_frame,
    stratification_key,
)
from finlora.data.validate import check_known_labels, clean, is_multi_label, resolve_labels
from finlora.errors import FinloraError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The three splits (columns `text`, `label`), the label order, and what was done.

    Multi-label splits hold a tuple of label names per row (empty: no label applies).
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    imbalanced: bool
    info: dict[str, Any] = field(default_factory=dict)
    problem_type: str = "single_label"

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label"

    def label_ids(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.labels)}
        return [index[lab] for lab in getattr(self, split)["label"]]

    def label_matrix(self, split: str) -> np.ndarray:
        """Multi-hot targets, shape (rows, labels), float32 as BCE expects."""
        return multi_hot(getattr(self, split)["label"], self.labels)

    def targets(self, split: str) -> list:
        """What the model trains on: class ids, or multi-hot rows for multi-label."""
        return self.label_matrix(split).tolist() if self.multi_label else self.label_ids(split)

    def with_train(self, train: pd.DataFrame, **note: Any) -> PreparedData:
        """The same split with other training rows (e.g. fewer documents); `info` follows."""
        splits = {"train": train, "validation": self.validation, "test": self.test}
        grouped = "groups" in self.info
        info = {**self.info, **note, **split_info(splits, self.labels, self.multi_label, grouped)}
        return replace(self, train=train, info=info)

    def class_counts(self, split: str = "train") -> list[int]:
        """Rows per class; for multi-label, positive rows per label."""
        counts = label_counts(getattr(self, split)["label"])
        return [int(counts.get(name, 0)) for name in self.labels]


def _counts(part: pd.DataFrame, labels: list[str]) -> dict[str, int]:
    found = label_counts(part["label"])
    return {lab: int(found.get(lab, 0)) for lab in labels}


def split_info(
    splits: dict[str, pd.DataFrame], labels: list[str], multi_label: bool, grouped: bool
) -> dict[str, Any]:
    """What `data` records of each split: sizes, text hashes, positives, rows without a label
    (multi-label) and documents (grouped data)."""
    info: dict[str, Any] = {
        "sizes": {name: len(part) for name, part in splits.items()},
        "split_sha256": {name: texts_sha256(part["text"]) for name, part in splits.items()},
        "split_class_counts": {name: _counts(part, labels) for name, part in splits.items()},
    }
    if multi_label:
        info["rows_without_label"] = {
            name: int((part["label"].map(len) == 0).sum()) for name, part in splits.items()
        }
    if grouped:
        info["groups"] = {
            name: sorted(part["group"].unique().tolist()) if "group" in part else []
            for name, part in splits.items()
        }
    return info


def multi_hot(label_sets, labels: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(label_sets), len(labels)), dtype=np.float32)
    for row, names in enumerate(label_sets):
        out[row, [index[n] for n in names]] = 1.0
    return out


def training_source(config: TrainConfig) -> Path:
    if config.data:
        return Path(config.data)
    return resolve_named_dataset(config.dataset or DEFAULT_DATASET, config.data_dir)


def group_column(config: TrainConfig) -> str | None:
    """`--group_column`, or the document id for CLAUDETTE (whose clauses repeat per document)."""
    if config.group_column:
        return config.group_column
    if config.dataset == CLAUDETTE_DIR or (
        config.data and Path(config.data).is_dir() and is_claudette_dir(Path(config.data))
    ):
        return "document"
    return None


def declared_labels(config: TrainConfig, source: Path) -> list[str] | None:
    """Label order fixed by the input itself: --label_columns, or CLAUDETTE's categories."""
    if config.label_columns:
        return config.label_columns
    if source.is_dir() and is_claudette_dir(source):
        return claudette_tags(source)
    return None


def _read_clean(path: Path, config: TrainConfig) -> tuple[pd.DataFrame, dict]:
    raw = read_labelled(
        path,
        config.text_column,
        config.label_column,
        label_delimiter=config.label_delimiter,
        label_columns=config.label_columns,
        group_column=group_column(config),
    )
    raw = _as_problem_type(raw, config.problem_type, path)
    frame, report = clean(raw, source=str(path))
    return frame, {"path": str(path), "sha256": file_sha256(path), **report.to_dict()}


def _as_problem_type(frame: pd.DataFrame, problem_type: str, path: Path) -> pd.DataFrame:
    """Honour an explicit --problem_type: single labels become one-element label lists."""
    if problem_type == "multi_label" and not is_multi_label(frame):
        return frame.assign(label=frame["label"].map(as_label_list))
    if problem_type == "single_label" and is_multi_label(frame):
        raise FinloraError(
            f"{path}: labels are lists (multi-label) but --problem_type is single_label; "
            "use --problem_type multi_label"
        )
    return frame


def texts_sha256(texts) -> str:
    """Fingerprint of a split's texts in order: equal fingerprints mean the very same rows."""
    return hashlib.sha256("\n".join(map(str, texts)).encode("utf-8")).hexdigest()


@dataclass
class CleanData:
    """The cleaned, de-duplicated training frame before any split, plus explicit held-out files."""

    frame: pd.DataFrame
    explicit: dict[str, pd.DataFrame]
    labels: list[str]
    files: dict[str, dict]
    source: Path
    leaked_rows_dropped: int


def load_clean(config: TrainConfig) -> CleanData:
    """Read and clean the training file (and explicit validation/test files); no split yet."""
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

    labels = resolve_labels(frame, config.labels or declared_labels(config, source))
    for split, part in explicit.items():
        check_known_labels(part, labels, str(getattr(config, f"{split}_data")))
    return CleanData(frame, explicit, labels, files, source, int(leaked.sum()))


def prepare_data(config: TrainConfig) -> PreparedData:
    """Read, clean, de-duplicate and split; class weights and loss are decided downstream."""
    clean_data = load_clean(config)
    frame, explicit = clean_data.frame, clean_data.explicit
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
    return _prepared(config, clean_data, splits, ratio, imbalanced)


def _prepared(
    config: TrainConfig,
    clean_data: CleanData,
    splits: dict[str, pd.DataFrame],
    ratio: float,
    imbalanced: bool,
    **extra_info: Any,
) -> PreparedData:
    frame, labels, files, source = (
        clean_data.frame,
        clean_data.labels,
        clean_data.files,
        clean_data.source,
    )
    if splits["validation"].empty:
        raise FinloraError(
            "no validation data: set --validation_size > 0 or pass --validation_data "
            "(model selection needs it)"
        )
    multi_label = is_multi_label(frame)
    train_counts = label_counts(splits["train"]["label"])
    if multi_label:
        absent = [lab for lab in labels if not train_counts.get(lab)]
        if absent:
            log.warning("label(s) %s have no positive training example", ", ".join(absent))
    elif len(train_counts) < 2:
        raise FinloraError("the training split holds fewer than 2 classes; use more data")

    prepared = PreparedData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        labels=labels,
        imbalanced=imbalanced,
        problem_type="multi_label" if multi_label else "single_label",
    )

    prepared.info = {
        "source": str(source),
        "dataset": None if config.data else (config.dataset or DEFAULT_DATASET),
        "problem_type": prepared.problem_type,
        "files": files,
        "duplicates_dropped": sum(f["duplicates_dropped"] for f in files.values()),
        "conflicting_texts_dropped": sum(f["conflicting_texts_dropped"] for f in files.values()),
        "empty_texts_dropped": sum(f["empty_texts_dropped"] for f in files.values()),
        "leaked_rows_dropped": clean_data.leaked_rows_dropped,
        "class_counts": _counts(frame, labels),
        "imbalance_ratio": round(ratio, 4),
        "imbalanced": imbalanced,
        "split_strategy": ("group " if "group" in frame else "")
        + ("stratified" if imbalanced else "random"),
        **extra_info,
        **({"group_column": group_column(config)} if "group" in frame else {}),
        **split_info(splits, labels, multi_label, grouped="group" in frame),
    }
    log.info(
        "data: %s | %s %s | imbalance %.2f (%s split) | train %d, validation %d, test %d",
        source.name,
        "label positives" if multi_label else "classes",
        prepared.info["class_counts"],
        ratio,
        prepared.info["split_strategy"],
        len(prepared.train),
        len(prepared.validation),
        len(prepared.test),
    )
    return prepared


def prepare_folds(config: TrainConfig, folds: int) -> list[PreparedData]:
    """Stratified K-fold splits of the cleaned data: fold k is the test set of the k-th item.

    Each fold carves its own validation slice (`validation_size` of all rows, stratified) out
    of its training part, so model selection never sees that fold's test rows. Multi-label
    rows stratify on their rarest label; grouped data (`--group_column`) uses
    `StratifiedGroupKFold`, so a group's rows are in one fold's test set and, within each fold,
    on one side of the train/validation cut. The folds depend only on the data and
    `config.seed`, so every strategy and seed gets exactly the same folds.
    """
    if folds < 2:
        raise FinloraError(f"--folds must be at least 2, got {folds}")
    if config.validation_data or config.test_data:
        raise FinloraError(
            "--folds builds its own validation and test parts; drop --validation_data/--test_data"
        )
    if config.validation_size <= 0:
        raise FinloraError("--folds needs --validation_size > 0 for model selection in each fold")
    clean_data = load_clean(config)
    frame = clean_data.frame
    key = stratification_key(frame)
    ratio = imbalance_ratio(frame["label"])
    imbalanced = ratio > config.imbalance_threshold
    grouped = "group" in frame
    if grouped:
        if frame["group"].nunique() < folds + 1:
            raise FinloraError(
                f"--group_column gives {frame['group'].nunique()} groups; {folds} folds with a "
                f"validation slice need at least {folds + 1}: use fewer --folds"
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        fold_indices = splitter.split(frame, key, frame["group"])
    else:
        if not is_multi_label(frame):
            check_stratifiable(key, folds)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        fold_indices = splitter.split(frame, key)
    kind = f"stratified {'group ' if grouped else ''}{folds}-fold"
    prepared = []
    for fold, (rest_index, test_index) in enumerate(fold_indices):
        rest = frame.iloc[rest_index]
        parts = split_frame(
            rest,
            validation_size=min(config.validation_size * len(frame) / len(rest), 0.5),
            test_size=0.0,
            seed=config.seed,
            stratify=True,
        )
        parts["test"] = frame.iloc[test_index].reset_index(drop=True)
        prepared.append(
            _prepared(
                config,
                clean_data,
                parts,
                ratio,
                imbalanced,
                split_strategy=kind,
                fold=fold,
                folds=folds,
            )
        )
    return prepared
