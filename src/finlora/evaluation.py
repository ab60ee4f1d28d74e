"""Classification metrics: macro-F1 first, with the per-class detail that explains it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

log = logging.getLogger(__name__)


def macro_f1_metrics(eval_pred) -> dict[str, float]:
    """`compute_metrics` for the Trainer: what model selection looks at each epoch."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(-1)
    return {
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
    }


def per_class_scores(y_true, y_pred, labels: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support per class (single-label) or per label (multi-label)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), zero_division=0
    )
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: list[str]) -> dict:
    """The metrics block of final_results.json (`test` / `validation`)."""
    ids = list(range(len(labels)))
    per_class = per_class_scores(y_true, y_pred, labels)
    predicted = np.bincount(np.asarray(y_pred, dtype=int), minlength=len(labels))
    never = [labels[i] for i in ids if predicted[i] == 0]
    if never:
        log.warning("the model never predicts class(es) %s on this split", ", ".join(never))
    return {
        "size": len(y_true),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)
        ),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "prediction_distribution": {labels[i]: int(predicted[i]) for i in ids},
        "never_predicted": never,
    }


def format_report(block: dict, title: str = "test") -> str:
    """A short human-readable table of a metrics block."""
    rows = [
        f"{title}: macro-F1 {block['macro_f1']:.4f}  accuracy {block['accuracy']:.4f}  "
        f"weighted-F1 {block['weighted_f1']:.4f}  (n={block['size']})",
        f"  {'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'predicted':>10}",
    ]
    for name, row in block["per_class"].items():
        rows.append(
            f"  {name:<16}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
            f"{row['support']:>10}{block['prediction_distribution'][name]:>10}"
        )
    return "\n".join(rows + uncertainty_lines(block))


# --- multi-label ---------------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> list[float]:
    """Per label, the decision threshold that maximises that label's F1 on these rows.

    The threshold sits halfway between the lowest score kept positive and the next lower
    score, so it is not glued to one validation example. A label without positives here, or
    whose scores are all equal (a model that cannot rank, e.g. one that never saw the label),
    keeps 0.5: there is nothing to tune on.
    """
    y_true, scores = np.asarray(y_true) > 0.5, np.asarray(scores, dtype=np.float64)
    thresholds = []
    for j in range(y_true.shape[1]):
        truth, score = y_true[:, j], scores[:, j]
        if not truth.any() or score.min() == score.max():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-score, kind="stable")
        ranked, hits = score[order], np.cumsum(truth[order])
        # Only cut between distinct scores: rows with equal scores share a decision.
        last_of_value = np.r_[ranked[1:] != ranked[:-1], True]
        predicted = np.arange(1, len(ranked) + 1)
        f1 = np.where(last_of_value, 2 * hits / (predicted + truth.sum()), -1.0)
        cut = int(f1.argmax())
        below = ranked[cut + 1] if cut + 1 < len(ranked) else ranked[cut] - 1e-3
        thresholds.append(float((ranked[cut] + max(below, 0.0)) / 2))
    return thresholds


def apply_thresholds(scores: np.ndarray, thresholds) -> np.ndarray:
    return (np.asarray(scores) >= np.asarray(thresholds, dtype=np.float64)).astype(int)


def with_none_column(matrix: np.ndarray) -> np.ndarray:
    """LexGLUE's extra column: 1 where a row has no label (a "fair" clause in UNFAIR-ToS)."""
    matrix = np.asarray(matrix, dtype=int)
    return np.c_[matrix, (matrix.sum(axis=1) == 0).astype(int)]


def multilabel_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], thresholds=None
) -> dict:
    """The metrics block of a multi-label final_results.json.

    `micro_f1` / `macro_f1` are over the labels only; `lexglue` repeats them the way LexGLUE
    scores UNFAIR-ToS (an extra "no label" column), for comparison with published numbers.
    """
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    ids = list(range(len(labels)))
    per_label = per_class_scores(y_true, y_pred, labels)
    predicted = y_pred.sum(axis=0)
    never = [labels[i] for i in ids if predicted[i] == 0]
    if never:
        log.warning("the model never predicts label(s) %s on this split", ", ".join(never))
    lexglue_true, lexglue_pred = with_none_column(y_true), with_none_column(y_pred)
    block = {
        "size": len(y_true),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "samples_f1": float(
            f1_score(lexglue_true, lexglue_pred, average="samples", zero_division=0)
        ),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "lexglue": {
            "micro_f1": float(
                f1_score(lexglue_true, lexglue_pred, average="micro", zero_division=0)
            ),
            "macro_f1": float(
                f1_score(lexglue_true, lexglue_pred, average="macro", zero_division=0)
            ),
        },
        "per_label": per_label,
        "prediction_distribution": {labels[i]: int(predicted[i]) for i in ids},
        "rows_without_label": {
            "true": int((y_true.sum(axis=1) == 0).sum()),
            "predicted": int((y_pred.sum(axis=1) == 0).sum()),
        },
        "never_predicted": never,
    }
    if thresholds is not None:
        block["thresholds"] = {labels[i]: round(float(thresholds[i]), 6) for i in ids}
    return block


def multilabel_metrics(eval_pred) -> dict[str, float]:
    """`compute_metrics` for multi-label: macro-F1 with thresholds tuned on this split.

    Selecting on it matches what ships (thresholds are tuned on validation after training);
    the 0.5-threshold figure is logged next to it.
    """
    logits, labels = eval_pred.predictions, np.asarray(eval_pred.label_ids)
    if isinstance(logits, tuple):
        logits = logits[0]
    scores = sigmoid(logits)
    tuned = apply_thresholds(scores, tune_thresholds(labels, scores))
    fixed = apply_thresholds(scores, [DEFAULT_THRESHOLD] * scores.shape[1])
    return {
        "macro_f1": float(f1_score(labels, tuned, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, tuned, average="micro", zero_division=0)),
        "macro_f1_at_0.5": float(f1_score(labels, fixed, average="macro", zero_division=0)),
    }


def format_multilabel_report(block: dict, title: str = "test") -> str:
    rows = [
        f"{title}: macro-F1 {block['macro_f1']:.4f}  micro-F1 {block['micro_f1']:.4f}  "
        f"(LexGLUE-style micro {block['lexglue']['micro_f1']:.4f} / macro "
        f"{block['lexglue']['macro_f1']:.4f})  (n={block['size']})",
        f"  {'label':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'predicted':>10}",
    ]
    for name, row in block["per_label"].items():
        rows.append(
            f"  {name:<16}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
            f"{row['support']:>10}{block['prediction_distribution'][name]:>10}"
        )
    return "\n".join(rows + uncertainty_lines(block))


def uncertainty_lines(block: dict) -> list[str]:
    """The calibration and conformal figures of a metrics block, if it has them."""
    rows = []
    cal = block.get("calibration")
    if cal:
        rows.append(
            f"  calibration: ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, Brier "
            f"{cal['brier_before']:.4f} -> {cal['brier_after']:.4f}"
            + (f" (T={cal['temperature']:.3f})" if cal.get("temperature") else "")
        )
    conf = block.get("conformal")
    if conf:
        accepted = conf.get("accuracy_on_accepted")
        rows.append(
            f"  prediction sets at {conf['coverage_target']:.2f}: coverage {conf['coverage']:.4f}, "
            f"sent to review {100 * conf['review_share']:.1f}%, accuracy on the rest "
            + (f"{accepted:.4f}" if accepted is not None else "-")
        )
    return rows
