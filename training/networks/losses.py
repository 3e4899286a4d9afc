"""The methods' losses.

* AMLL: cross-entropy over two classes.
* NUS: ``BCE(sigmoid) - log(softIoU)``, softIoU computed from the probabilities and
  the ground truth, so the network is pushed towards the benchmark's own metric.
* ONERA: cross-entropy (NLL of the softmax) + lambda * L1 on the signed distance.
* Raisa: ``BCE + (1 - softIoU)``: the IoU term linear rather than logarithmic.
* Any of them: a consistency term between two views of one patch (not the papers').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits (N, 2, h, w)``, ``target (N, h, w)`` of class indices 0/1."""
    return F.cross_entropy(logits, target)


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable IoU over the whole batch: sum(p*t) / sum(p + t - p*t)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    union = (p + target - p * target).sum()
    return (inter + _EPS) / (union + _EPS)


def bce_soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NUS's loss on one-channel ``logits`` and a float 0/1 ``target`` of the same shape."""
    return F.binary_cross_entropy_with_logits(logits, target) - torch.log(soft_iou(logits, target))


def bce_jaccard(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Raisa's loss on one-channel ``logits`` and a float 0/1 ``target``."""
    return F.binary_cross_entropy_with_logits(logits, target) + 1 - soft_iou(logits, target)


def distance_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ONERA's regression term: mean absolute error of the normalised signed distance."""
    return F.l1_loss(predicted, target)


def _log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class log-probabilities ``(N, K, h, w)``: softmax over K >= 2 channels, or a
    one-channel logit's sigmoid as two classes (not building, building)."""
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def consistency_kl(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL(reference || other) of two heads' logits; ``reference`` is held
    fixed, so only ``other`` moves towards it."""
    ref = _log_probabilities(reference.detach())
    return (ref.exp() * (ref - _log_probabilities(other))).sum(dim=1).mean()
