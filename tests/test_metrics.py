"""Metrics against hand-computed values and scikit-learn's reference implementation."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import matthews_corrcoef as sklearn_mcc

from xmodal_ft import metrics


def t(values: list[int]) -> torch.Tensor:
    return torch.tensor(values)


def test_accuracy_is_the_fraction_correct() -> None:
    assert metrics.accuracy(t([1, 0, 2, 2]), t([1, 1, 2, 0])) == 0.5
    assert metrics.accuracy(t([3, 3, 3]), t([3, 3, 3])) == 1.0


def test_binary_mcc_by_hand() -> None:
    # tp=2 (idx 0,1), tn=3 (2,3,4), fp=1 (5), fn=2 (6,7):
    # (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
    pred = t([1, 1, 0, 0, 0, 1, 0, 0])
    target = t([1, 1, 0, 0, 0, 0, 1, 1])
    expected = (2 * 3 - 1 * 2) / math.sqrt(3 * 4 * 4 * 5)
    assert metrics.matthews_corrcoef(pred, target) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.2582, abs=1e-4)  # not plain accuracy (0.625)


def test_multiclass_mcc_by_hand() -> None:
    # Gorodkin's R_K: (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)).
    pred = t([0, 1, 2, 2, 1, 0])
    target = t([0, 1, 2, 1, 1, 2])
    c, s = 4, 6
    p, q = [2, 2, 2], [1, 3, 2]  # predicted and true counts per class
    cov = c * s - sum(a * b for a, b in zip(p, q, strict=True))
    expected = cov / math.sqrt((s**2 - sum(a * a for a in p)) * (s**2 - sum(b * b for b in q)))
    assert metrics.matthews_corrcoef(pred, target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_mcc_matches_scikit_learn(n_classes: int) -> None:
    g = torch.Generator().manual_seed(n_classes)
    for _ in range(5):
        target = torch.randint(0, n_classes, (200,), generator=g)
        noise = torch.randint(0, n_classes, (200,), generator=g)
        keep = torch.rand(200, generator=g) < 0.6
        pred = torch.where(keep, target, noise)
        expected = sklearn_mcc(target.numpy(), pred.numpy())
        assert metrics.matthews_corrcoef(pred, target) == pytest.approx(expected, abs=1e-12)


def test_mcc_of_perfect_inverted_and_constant_predictions() -> None:
    target = t([0, 1, 1, 0, 1])
    assert metrics.matthews_corrcoef(target, target) == 1.0
    assert metrics.matthews_corrcoef(1 - target, target) == -1.0
    # One predicted class (e.g. a model collapsed to the majority): no correlation, not nan.
    assert metrics.matthews_corrcoef(t([1, 1, 1, 1, 1]), target) == 0.0
    assert metrics.matthews_corrcoef(t([1, 0, 1, 0, 1]), t([1, 1, 1, 1, 1])) == 0.0


def test_mcc_when_the_highest_class_is_only_predicted_or_only_true() -> None:
    assert metrics.matthews_corrcoef(t([0, 1, 2]), t([0, 1, 1])) == pytest.approx(
        sklearn_mcc([0, 1, 1], [0, 1, 2]), abs=1e-12
    )
    assert metrics.matthews_corrcoef(t([0, 1, 1]), t([0, 1, 2])) == pytest.approx(
        sklearn_mcc([0, 1, 2], [0, 1, 1]), abs=1e-12
    )


def test_compute_returns_each_named_metric() -> None:
    pred, target = t([1, 1, 0, 0, 0, 1, 0, 0]), t([1, 1, 0, 0, 0, 0, 1, 1])
    values = metrics.compute(("mcc", "acc"), pred, target)
    assert list(values) == ["mcc", "acc"]
    assert values["acc"] == 0.625
    assert values["mcc"] == pytest.approx(4 / math.sqrt(240), abs=1e-12)
