"""Imbalance measurement and seeded train/validation/test splitting."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from finlora.errors import FinloraError


def imbalance_ratio(labels: pd.Series) -> float:
    """Largest class count over smallest class count (1.0 is perfectly balanced)."""
    counts = labels.value_counts()
    return float(counts.max() / counts.min())


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
    if stratify:
        check_stratifiable(frame["label"], parts)
    empty = frame.iloc[:0]
    rest, test = frame, empty
    try:
        if test_size > 0:
            rest, test = train_test_split(
                frame,
                test_size=test_size,
                random_state=seed,
                stratify=frame["label"] if stratify else None,
            )
        train, validation = rest, empty
        if validation_size > 0:
            train, validation = train_test_split(
                rest,
                test_size=validation_size / (1.0 - test_size),
                random_state=seed,
                stratify=rest["label"] if stratify else None,
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
