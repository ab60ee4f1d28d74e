"""Loss modules and class weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finlora.errors import FinloraError
from finlora.losses import FocalLoss, build_loss, class_weights, resolve_loss_name


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
    with pytest.raises(FinloraError, match="balanced, inverse, none"):
        class_weights(counts, "heavy")


def test_auto_loss_follows_imbalance():
    assert resolve_loss_name("auto", imbalanced=True) == "weighted_ce"
    assert resolve_loss_name("auto", imbalanced=False) == "ce"
    assert resolve_loss_name("focal", imbalanced=False) == "focal"
