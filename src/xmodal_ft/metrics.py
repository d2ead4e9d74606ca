"""Classification metrics computed from predicted and true labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of correct predictions."""
    return (pred == target).float().mean().item()


def matthews_corrcoef(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Matthews correlation (multiclass form, equal to the binary MCC GLUE reports for CoLA)."""
    n_classes = int(max(pred.max(), target.max()).item()) + 1
    confusion = torch.bincount(target * n_classes + pred, minlength=n_classes**2).double()
    confusion = confusion.reshape(n_classes, n_classes)
    total, correct = confusion.sum(), confusion.trace()
    true_counts, pred_counts = confusion.sum(dim=1), confusion.sum(dim=0)
    cov = correct * total - (true_counts * pred_counts).sum()
    denom = math.sqrt(
        float(total**2 - (pred_counts**2).sum()) * float(total**2 - (true_counts**2).sum())
    )
    return 0.0 if denom == 0 else float(cov) / denom


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "acc": accuracy,
    "mcc": matthews_corrcoef,
}


def compute(names: Sequence[str], pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The named metrics of `pred` against `target`."""
    return {name: METRICS[name](pred, target) for name in names}
