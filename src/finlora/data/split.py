"""Imbalance measurement and seeded train/validation/test splitting (by row or by group)."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from finlora.data.validate import is_multi_label
from finlora.errors import FinloraError


def label_counts(labels: pd.Series) -> Counter:
    """Rows per class; for multi-label sets, positives per label."""
    if len(labels) and isinstance(labels.iloc[0], (list, tuple)):
        return Counter(name for row in labels for name in row)
    return Counter(labels)


def imbalance_ratio(labels: pd.Series) -> float:
    """Largest class (or label) count over the smallest (1.0 is perfectly balanced)."""
    counts = label_counts(labels).values()
    return float(max(counts) / min(counts)) if counts else 1.0


def stratification_key(frame: pd.DataFrame) -> pd.Series:
    """One class per row to stratify on: the label, or a multi-label row's rarest label."""
    if not is_multi_label(frame):
        return frame["label"]
    counts = label_counts(frame["label"])
    return frame["label"].map(lambda row: min(row, key=lambda n: (counts[n], n)) if row else "")


def _group_holdout(
    frame: pd.DataFrame, size: float, seed: int, stratify: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about `size` of the rows as whole groups (no group lands on both sides).

    Stratified: the first fold of a `StratifiedGroupKFold` with round(1/size) folds, which
    spreads each class (a multi-label row's rarest label) over the folds.
    """
    groups = frame["group"]
    if groups.nunique() < 2:
        raise FinloraError(
            f"--group_column gives {groups.nunique()} group(s); a group split needs at least 2 "
            "per split: use a column with more distinct values"
        )
    if stratify:
        folds = min(max(2, round(1.0 / size)), groups.nunique())
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        keep, held = next(splitter.split(frame, stratification_key(frame), groups))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
        keep, held = next(splitter.split(frame, groups=groups))
    return frame.iloc[keep], frame.iloc[held]


def check_stratifiable(labels: pd.Series, parts: int) -> None:
    counts = labels.value_counts()
    small = counts[counts < parts]
    if not small.empty:
        name, count = small.index[0], int(small.iloc[0])
        raise FinloraError(
            f"class {name!r} has only {count} example(s); a stratified split into {parts} parts "
            f"needs at least {parts} per class: add examples, or drop or merge that class"
        )


def split_frame(
    frame: pd.DataFrame,
    validation_size: float,
    test_size: float,
    seed: int,
    stratify: bool,
) -> dict[str, pd.DataFrame]:
    """Split into train / validation / test; a size of 0 gives an empty part."""
    parts = 1 + (validation_size > 0) + (test_size > 0)
    empty = frame.iloc[:0]
    if "group" in frame:
        rest, test = frame, empty
        if test_size > 0:
            rest, test = _group_holdout(frame, test_size, seed, stratify)
        train, validation = rest, empty
        if validation_size > 0:
            train, validation = _group_holdout(
                rest, validation_size / (1.0 - test_size), seed, stratify
            )
        return {
            "train": train.reset_index(drop=True),
            "validation": validation.reset_index(drop=True),
            "test": test.reset_index(drop=True),
        }
    if stratify:
        check_stratifiable(stratification_key(frame), parts)
    rest, test = frame, empty
    try:
        if test_size > 0:
            rest, test = train_test_split(
                frame,
                test_size=test_size,
                random_state=seed,
                stratify=stratification_key(frame) if stratify else None,
            )
        train, validation = rest, empty
        if validation_size > 0:
            train, validation = train_test_split(
                rest,
                test_size=validation_size / (1.0 - test_size),
                random_state=seed,
                stratify=stratification_key(rest) if stratify else None,
            )
    except ValueError as exc:
        raise FinloraError(
            f"cannot split {len(frame)} rows into train/validation/test ({exc}); "
            "use more data or smaller --validation_size/--test_size"
        ) from exc
    return {
        "train": train.reset_index(drop=True),
        "validation": validation.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }
