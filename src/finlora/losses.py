"""Loss modules and class weights for imbalanced single- and multi-label classification."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finlora.config import SQRT_IS_MULTI_LABEL, explicit_weights
from finlora.errors import FinloraError


def class_weights(counts: Sequence[int], scheme: str) -> list[float] | None:
    """Per-class weights from training counts.

    - `balanced`: n / (k * n_c), scikit-learn's "balanced" (mean weight over samples = 1);
    - `inverse`: 1 / n_c rescaled so the weights average 1 over classes;
    - `none`: no weights;
    - `w1,w2,...`: given explicitly, one per class.
    """
    counts = [int(c) for c in counts]
    if scheme == "none":
        return None
    if any(c == 0 for c in counts):
        raise FinloraError(f"a class has no training examples (counts {counts}); cannot weight it")
    if scheme == "balanced":
        total, k = sum(counts), len(counts)
        return [total / (k * c) for c in counts]
    if scheme == "inverse":
        inverse = [1.0 / c for c in counts]
        mean = sum(inverse) / len(inverse)
        return [w / mean for w in inverse]
    weights = explicit_weights(scheme)
    if weights is None:  # sqrt: only pos_weights knows it
        raise FinloraError(SQRT_IS_MULTI_LABEL)
    if len(weights) != len(counts):
        raise FinloraError(
            f"--class_weights gives {len(weights)} weights for {len(counts)} classes"
        )
    return weights


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma.

    `alpha` holds per-class weights (the class weights); with gamma = 0 and no alpha this is
    exactly cross-entropy. Averaged like weighted cross-entropy: sum of alpha_t * loss over
    the sum of alpha_t, so the two losses are on the same scale.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise FinloraError(f"--focal_gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("alpha", alpha if alpha is None else alpha.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_pt.exp()).clamp(min=0) ** self.gamma) * log_pt
        if self.alpha is None:
            return loss.mean()
        alpha_t = self.alpha.to(logits.device)[target]
        return (alpha_t * loss).sum() / alpha_t.sum()


def pos_weights(positives: Sequence[int], total: int, scheme: str) -> list[float] | None:
    """Per-label `pos_weight` of `BCEWithLogitsLoss` from training label frequencies.

    - `balanced`: negatives / positives, so each label's positives weigh as much as its
      negatives (PyTorch's recommendation);
    - `sqrt`: the square root of that, a gentler push for very rare labels;
    - `none`: no weights; `w1,w2,...`: given explicitly, one per label.

    A label with no positive training example gets 1.0.
    """
    positives = [int(c) for c in positives]
    if scheme == "none":
        return None
    if scheme in ("balanced", "sqrt"):
        # A label without positives has nothing to up-weight (prepare_data warns about it).
        ratios = [(total - c) / c if c else 1.0 for c in positives]
        return [math.sqrt(r) for r in ratios] if scheme == "sqrt" else ratios
    return class_weights(positives, scheme)


class MultiLabelFocalLoss(nn.Module):
    """Sigmoid focal loss per label: binary cross-entropy scaled by (1 - p_t)^gamma.

    `pos_weight` multiplies the positive term as in `BCEWithLogitsLoss`; with gamma = 0 this
    is exactly `BCEWithLogitsLoss(pos_weight=...)` (mean over rows and labels).
    """

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise FinloraError(f"--focal_gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight if pos_weight is None else pos_weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = log_p.exp()
        positive = -((1.0 - p) ** self.gamma) * log_p
        negative = -(p**self.gamma) * log_not_p
        if self.pos_weight is not None:
            positive = positive * self.pos_weight.to(logits.device)
        return (target * positive + (1.0 - target) * negative).mean()


def resolve_loss_name(loss: str, imbalanced: bool, multi_label: bool = False) -> str:
    if multi_label:
        if loss in ("ce", "weighted_ce"):
            raise FinloraError(
                f"--loss {loss} is for single-label data; multi-label takes bce, weighted_bce "
                "or focal"
            )
        return "weighted_bce" if loss == "auto" else loss
    if loss in ("bce", "weighted_bce"):
        raise FinloraError(
            f"--loss {loss} is for multi-label data; single-label takes ce, weighted_ce or focal "
            "(or set --problem_type multi_label)"
        )
    if loss == "auto":
        return "weighted_ce" if imbalanced else "ce"
    return loss


def build_loss(
    loss: str,
    weights: Sequence[float] | None,
    focal_gamma: float = 2.0,
    multi_label: bool = False,
) -> nn.Module:
    """The loss module for a resolved loss name.

    Single-label: `ce`, `weighted_ce`, `focal` with class weights. Multi-label: `bce`,
    `weighted_bce`, `focal` with per-label `pos_weight`.
    """
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    if multi_label:
        if loss == "bce":
            return nn.BCEWithLogitsLoss()
        if loss == "weighted_bce":
            if weight is None:
                raise FinloraError("--loss weighted_bce needs pos_weight; not --class_weights none")
            return nn.BCEWithLogitsLoss(pos_weight=weight)
        if loss == "focal":
            return MultiLabelFocalLoss(gamma=focal_gamma, pos_weight=weight)
        raise FinloraError(f"unknown multi-label loss {loss!r}")
    if loss == "ce":
        return nn.CrossEntropyLoss()
    if loss == "weighted_ce":
        if weight is None:
            raise FinloraError("--loss weighted_ce needs class weights; not --class_weights none")
        return nn.CrossEntropyLoss(weight=weight)
    if loss == "focal":
        return FocalLoss(gamma=focal_gamma, alpha=weight)
    raise FinloraError(f"unknown loss {loss!r}")
