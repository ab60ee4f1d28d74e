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


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: list[str]) -> dict:
    """The metrics block of final_results.json (`test` / `validation`)."""
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
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
        "per_class": {
            labels[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in ids
        },
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
    return "\n".join(rows)
