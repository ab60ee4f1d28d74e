"""Loss modules and class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from finlora.errors import FinloraError
from finlora.evaluation import apply_thresholds, multilabel_report, tune_thresholds
from finlora.losses import (
    FocalLoss,
    MultiLabelFocalLoss,
    build_loss,
    class_weights,
    pos_weights,
    resolve_loss_name,
)


def test_focal_with_gamma_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 3), torch.randint(0, 3, (32,))
    assert torch.allclose(
        FocalLoss(gamma=0.0)(logits, target), nn.CrossEntropyLoss()(logits, target)
    )
    weights = torch.tensor([2.0, 0.5, 1.0])
    assert torch.allclose(
        FocalLoss(gamma=0.0, alpha=weights)(logits, target),
        nn.CrossEntropyLoss(weight=weights)(logits, target),
    )


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0, 0.0]])
    target = torch.tensor([0])
    ce, focal = nn.CrossEntropyLoss(), FocalLoss(gamma=2.0)
    assert focal(easy, target) / ce(easy, target) < focal(hard, target) / ce(hard, target)


def test_class_weight_raises_gradient_on_its_class():
    logits = torch.zeros(2, 2, requires_grad=True)
    target = torch.tensor([0, 1])
    build_loss("weighted_ce", [3.0, 1.0])(logits, target).backward()
    grad = logits.grad.abs().sum(dim=1)
    assert grad[0] == pytest.approx(3 * grad[1])


def test_class_weight_schemes():
    counts = [10, 30, 60]
    balanced = class_weights(counts, "balanced")
    assert balanced == pytest.approx([100 / 30, 100 / 90, 100 / 180])
    assert sum(w * c for w, c in zip(balanced, counts)) == pytest.approx(sum(counts))
    inverse = class_weights(counts, "inverse")
    assert sum(inverse) / 3 == pytest.approx(1.0) and inverse[0] == pytest.approx(6 * inverse[2])
    assert class_weights(counts, "none") is None
    assert class_weights(counts, "1,2,3") == [1.0, 2.0, 3.0]
    with pytest.raises(FinloraError, match="3 classes"):
        class_weights(counts, "1,2")
    with pytest.raises(FinloraError, match="balanced, inverse, sqrt, none or positive numbers"):
        class_weights(counts, "heavy")
    with pytest.raises(FinloraError, match="sqrt is a multi-label pos_weight scheme"):
        class_weights(counts, "sqrt")


def test_auto_loss_follows_imbalance():
    assert resolve_loss_name("auto", imbalanced=True) == "weighted_ce"
    assert resolve_loss_name("auto", imbalanced=False) == "ce"
    assert resolve_loss_name("focal", imbalanced=False) == "focal"


# --- multi-label -----------------------------------------------------------------------------


def test_pos_weight_schemes_from_label_frequencies():
    assert pos_weights([10, 40], 100, "balanced") == pytest.approx([9.0, 1.5])
    assert pos_weights([10, 40], 100, "sqrt") == pytest.approx([3.0, 1.5**0.5])
    assert pos_weights([10, 40], 100, "none") is None
    assert pos_weights([10, 40], 100, "2,1") == [2.0, 1.0]
    assert pos_weights([0, 40], 100, "balanced") == pytest.approx([1.0, 1.5])


def test_weighted_bce_is_bce_with_logits_and_pos_weight():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), (torch.rand(16, 3) > 0.7).float()
    loss = build_loss("weighted_bce", [4.0, 1.0, 2.0], multi_label=True)
    assert isinstance(loss, nn.BCEWithLogitsLoss)
    p = torch.sigmoid(logits)
    w = torch.tensor([4.0, 1.0, 2.0])
    manual = -(w * target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.allclose(loss(logits, target), manual, atol=1e-6)


def test_pos_weight_raises_gradient_on_positives():
    logits = torch.zeros(1, 2, requires_grad=True)
    build_loss("weighted_bce", [3.0, 1.0], multi_label=True)(logits, torch.ones(1, 2)).backward()
    assert logits.grad[0, 0] == pytest.approx(3 * logits.grad[0, 1])


def test_multilabel_focal_reduces_to_bce_and_down_weights_easy_labels():
    torch.manual_seed(1)
    logits, target = torch.randn(8, 4), (torch.rand(8, 4) > 0.5).float()
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(
        MultiLabelFocalLoss(gamma=0.0, pos_weight=weight)(logits, target),
        nn.BCEWithLogitsLoss(pos_weight=weight)(logits, target),
        atol=1e-6,
    )
    focal, bce = MultiLabelFocalLoss(gamma=2.0), nn.BCEWithLogitsLoss()
    easy, hard, one = torch.tensor([[5.0]]), torch.tensor([[0.2]]), torch.ones(1, 1)
    assert focal(easy, one) / bce(easy, one) < focal(hard, one) / bce(hard, one)


def test_loss_names_follow_the_problem_type():
    assert resolve_loss_name("auto", imbalanced=False, multi_label=True) == "weighted_bce"
    assert isinstance(build_loss("bce", None, multi_label=True), nn.BCEWithLogitsLoss)
    with pytest.raises(FinloraError, match="multi-label takes bce"):
        resolve_loss_name("weighted_ce", imbalanced=True, multi_label=True)
    with pytest.raises(FinloraError, match="single-label takes"):
        resolve_loss_name("bce", imbalanced=True)


def test_thresholds_maximise_each_labels_f1():
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.2], [0.35, 0.2, 0.1], [0.3, 0.1, 0.3], [0.1, 0.05, 0.4],
                       [0.6, 0.3, 0.9]])  # fmt: skip
    thresholds = tune_thresholds(truth, scores)
    # label 0: positives 0.9, 0.6, 0.35 above the negatives 0.3, 0.1 -> cut between 0.35, 0.3
    assert thresholds[0] == pytest.approx(0.325)
    # label 1: its one positive scores lowest; F1 peaks (2/6) when everything is predicted
    assert thresholds[1] <= 0.05
    # label 2: no positive on this split -> the default
    assert thresholds[2] == 0.5
    decisions = apply_thresholds(scores, thresholds)
    from sklearn.metrics import f1_score

    for j in (0, 1):
        best = max(
            f1_score(truth[:, j], (scores[:, j] >= t).astype(int), zero_division=0)
            for t in np.r_[scores[:, j], 1.1]
        )
        assert f1_score(truth[:, j], decisions[:, j]) == pytest.approx(best)


def test_multilabel_report_and_lexglue_none_column():
    truth = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
    pred = np.array([[1, 0], [0, 0], [0, 0], [1, 0]])
    block = multilabel_report(truth, pred, ["A", "B"], [0.4, 0.6])
    assert block["per_label"]["A"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                       "support": 1}  # fmt: skip
    assert block["per_label"]["B"]["f1"] == 0 and block["never_predicted"] == ["B"]
    assert block["macro_f1"] == pytest.approx(1 / 3)
    assert block["micro_f1"] == pytest.approx(2 * 1 / (2 + 2))
    # LexGLUE adds a "no label" column: rows 1 (TP), 2 (FP: truth B missed)
    none_f1 = 2 * 1 / (2 * 1 + 1 + 1)
    assert block["lexglue"]["macro_f1"] == pytest.approx((2 / 3 + 0 + none_f1) / 3)
    assert block["thresholds"] == {"A": 0.4, "B": 0.6}
    assert block["rows_without_label"] == {"true": 2, "predicted": 2}
