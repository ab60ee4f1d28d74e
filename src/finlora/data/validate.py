"""Cleaning labelled text before any split: empties, missing labels, duplicates, conflicts."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import pandas as pd

from finlora.errors import FinloraError

log = logging.getLogger(__name__)


@dataclass
class CleaningReport:
    """What cleaning removed, so a user can see it in the logs and in final_results.json."""

    rows_read: int = 0
    empty_texts_dropped: int = 0
    missing_labels_dropped: int = 0
    duplicates_dropped: int = 0
    conflicting_texts_dropped: int = 0
    conflicting_examples: list[str] = field(default_factory=list)
    rows_kept: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def is_multi_label(frame: pd.DataFrame) -> bool:
    """Labels held as lists (see `read_labelled`) mean a multi-label task."""
    return bool(len(frame)) and isinstance(frame["label"].iloc[0], (list, tuple))


def clean(frame: pd.DataFrame, source: str = "data") -> tuple[pd.DataFrame, CleaningReport]:
    """Drop empty texts and missing labels, de-duplicate exact texts, drop conflicting ones.

    A text that appears with two different labels cannot be learned or scored fairly, so
    every copy of it is dropped (and reported); a text repeated with one label is kept once,
    which is what keeps the same sentence out of both train and test. Multi-label rows keep
    their labels as a sorted tuple; an empty tuple (no label applies) is a valid row.
    """
    report = CleaningReport(rows_read=len(frame))
    multi_label = is_multi_label(frame)
    text = frame["text"].astype("string").str.strip()
    empty = text.isna() | (text == "")
    report.empty_texts_dropped = int(empty.sum())
    frame = pd.DataFrame({"text": text, **{c: frame[c] for c in frame if c != "text"}})[~empty]

    if multi_label:
        frame = frame.assign(label=frame["label"].map(lambda labels: tuple(sorted(set(labels)))))
    else:
        missing = frame["label"].isna() | (frame["label"].astype("string").str.strip() == "")
        report.missing_labels_dropped = int(missing.sum())
        frame = frame[~missing].assign(label=lambda f: f["label"].astype(str).str.strip())

    labels_per_text = frame.groupby("text", sort=False)["label"].nunique()
    conflicting = labels_per_text[labels_per_text > 1].index
    report.conflicting_texts_dropped = len(conflicting)
    report.conflicting_examples = [str(t)[:80] for t in conflicting[:5]]
    frame = frame[~frame["text"].isin(conflicting)]

    deduplicated = frame.drop_duplicates(subset="text", keep="first")
    report.duplicates_dropped = len(frame) - len(deduplicated)
    frame = deduplicated.reset_index(drop=True)
    frame["text"] = frame["text"].astype(str)
    report.rows_kept = len(frame)

    log.info(
        "%s: %d rows read, %d empty texts, %d missing labels, %d duplicates, "
        "%d conflicting texts dropped; %d kept",
        source,
        report.rows_read,
        report.empty_texts_dropped,
        report.missing_labels_dropped,
        report.duplicates_dropped,
        report.conflicting_texts_dropped,
        report.rows_kept,
    )
    if report.conflicting_texts_dropped:
        log.warning(
            "%s: %d texts had conflicting labels and were dropped, e.g. %r",
            source,
            report.conflicting_texts_dropped,
            report.conflicting_examples[0],
        )
    if frame.empty:
        raise FinloraError(
            f"{source}: no usable rows left after cleaning (all empty or unlabelled)"
        )
    return frame, report


def label_names(frame: pd.DataFrame) -> set[str]:
    """Every label that occurs: the classes, or the union of the multi-label sets."""
    if is_multi_label(frame):
        return {name for labels in frame["label"] for name in labels}
    return set(frame["label"])


def resolve_labels(frame: pd.DataFrame, labels: list[str] | None) -> list[str]:
    """The class names in id order: `--labels` if given, else sorted (numerically if numbers)."""
    present = sorted(label_names(frame))
    minimum = 1 if is_multi_label(frame) else 2
    if labels:
        if len(set(labels)) != len(labels):
            raise FinloraError(f"--labels has repeated names: {','.join(labels)}")
        unknown = [lab for lab in present if lab not in labels]
        if unknown:
            raise FinloraError(
                f"label(s) {', '.join(map(repr, unknown))} in the data are not in --labels "
                f"{','.join(labels)}; add them to --labels or remove those rows"
            )
        ordered = list(labels)
    else:
        numeric = all(lab.lstrip("-").isdigit() for lab in present)
        ordered = sorted(present, key=int) if numeric else present
    if len(present) < minimum:
        raise FinloraError(
            f"the data has {len(present)} class(es) ({', '.join(present) or 'none'}); "
            f"classification needs at least {minimum}: check --label_column"
        )
    return ordered


def check_known_labels(
    frame: pd.DataFrame, labels: list[str], source: str, fix: str = "list them with --labels"
) -> None:
    """Every label of `frame` is one the model knows; `fix` is the other way out."""
    unknown = sorted(label_names(frame) - set(labels))
    if unknown:
        raise FinloraError(
            f"{source}: label(s) {', '.join(map(repr, unknown))} do not occur in the training "
            f"labels {', '.join(labels)}; fix the file or {fix}"
        )
