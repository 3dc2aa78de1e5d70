"""Tests for the hybrid distillation loss (training/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.errors import ConfigError
from training.losses import hybrid_loss, kd_term


def _softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_loss(
    student: list[list[float]],
    teacher: list[list[float]],
    labels: list[int],
    alpha: float,
    temperature: float,
) -> float:
    """The issue's formula written out with plain floats."""
    labelled = [i for i, y in enumerate(labels) if y >= 0]
    ce = sum(-math.log(_softmax(student[i])[labels[i]]) for i in labelled)
    ce = ce / len(labelled) if labelled else 0.0

    kl = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p = _softmax(t_row, temperature)
        q = _softmax(s_row, temperature)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    kl /= len(student)

    return (1 - alpha) * ce + alpha * temperature * temperature * kl


STUDENT = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0]]
TEACHER = [[3.0, 1.0, 0.0], [0.0, 2.0, -1.0], [1.0, 1.0, 1.0]]


def test_hybrid_loss_matches_hand_computation_when_all_labelled() -> None:
    """The loss equals the issue's formula computed by hand on a small batch."""
    labels = [0, 2, 1]
    expected = _hand_loss(STUDENT, TEACHER, labels, alpha=0.7, temperature=4.0)

    parts = hybrid_loss(
        torch.tensor(STUDENT), torch.tensor(labels), torch.tensor(TEACHER), 0.7, 4.0
    )

    assert parts.total.item() == pytest.approx(expected, rel=1e-5)


def test_hybrid_loss_uses_kd_alone_for_unlabelled_rows() -> None:
    """Unlabelled rows add only KD; CE is averaged over the labelled rows."""
    labels = [1, -1, -1]
    expected = _hand_loss(STUDENT, TEACHER, labels, alpha=0.5, temperature=2.0)

    parts = hybrid_loss(
        torch.tensor(STUDENT), torch.tensor(labels), torch.tensor(TEACHER), 0.5, 2.0
    )

    assert parts.total.item() == pytest.approx(expected, rel=1e-5)
    assert parts.ce.item() == pytest.approx(-math.log(_softmax(STUDENT[0])[1]))


def test_hybrid_loss_is_pure_kd_when_no_row_is_labelled() -> None:
    """A batch with no labels gives alpha * KD and still back-propagates."""
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER)

    parts = hybrid_loss(student, torch.tensor([-1, -1, -1]), teacher, 0.7, 4.0)
    parts.total.backward()

    assert parts.total.item() == pytest.approx(
        0.7 * kd_term(student, teacher, 4.0).item()
    )
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_hybrid_loss_equals_cross_entropy_when_alpha_is_zero() -> None:
    """alpha = 0 is plain (class-weighted) cross-entropy, no teacher needed."""
    student = torch.tensor(STUDENT)
    labels = torch.tensor([0, 2, 1])
    weight = torch.tensor([0.5, 1.0, 2.0])

    parts = hybrid_loss(student, labels, None, 0.0, 4.0, weight)

    assert parts.total.item() == pytest.approx(
        F.cross_entropy(student, labels, weight=weight).item()
    )


def test_kd_term_is_zero_when_student_matches_teacher() -> None:
    """KL of a distribution with itself is zero at any temperature."""
    logits = torch.tensor(TEACHER)

    value = kd_term(logits, logits.clone(), temperature=3.0)

    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_hybrid_loss_refuses_kd_without_teacher_logits() -> None:
    """alpha > 0 without teacher logits is a configuration error."""
    student = torch.tensor(STUDENT)

    with pytest.raises(ConfigError, match="teacher logits"):
        hybrid_loss(student, torch.tensor([0, 1, 2]), None, 0.7, 4.0)
