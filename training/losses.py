"""The hybrid distillation loss of issue 4, exactly as stated there.

For a batch of student logits ``s``, teacher logits ``t`` and labels ``y``::

    loss = (1 - alpha) * CE(s, y) + alpha * T*T * KL(softmax(t / T) || softmax(s / T))

``KL`` is in batch-mean form: the sum over classes and rows divided by the
number of rows (``F.kl_div(..., reduction="batchmean")``), which is the true
mathematical KL averaged per example. The ``T*T`` factor keeps the KD
gradients' scale independent of ``T`` (Hinton et al., 2015).

A batch may mix labelled rows and unlabelled rows (label ``-1``). Unlabelled
rows contribute the KD term alone. The two terms are averaged separately:

- the CE term is the mean over the *labelled* rows only (a class-weighted mean,
  normalised by the sum of the rows' class weights, as ``F.cross_entropy``
  does, when ``class_weight`` is given); it is 0 when no row is labelled;
- the KD term is the batch mean over *all* rows, labelled or not.

So ``alpha = 0`` is exactly plain (optionally class-weighted) cross-entropy on
the labelled rows, and a row's KD weight does not depend on whether the rows
beside it happen to have labels.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F

from training.errors import ConfigError

logger = logging.getLogger(__name__)

UNLABELLED = -1


class LossParts(NamedTuple):
    """The total loss and its two terms before weighting (for logging)."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def kd_term(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T*T * KL(softmax(t/T) || softmax(s/T))``, batch mean over all rows."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)

    return temperature * temperature * kl


def ce_term(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the labelled rows; 0 (with a graph) when there are none."""
    labelled = labels != UNLABELLED
    if not bool(labelled.any()):
        return student_logits.sum() * 0.0

    return F.cross_entropy(
        student_logits[labelled], labels[labelled], weight=class_weight
    )


def hybrid_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float,
    temperature: float,
    class_weight: torch.Tensor | None = None,
) -> LossParts:
    """``(1 - alpha) * CE + alpha * T*T * KL``; see the module docstring.

    ``student_logits`` and ``teacher_logits`` are ``(N, C)``; ``labels`` is
    ``(N,)`` with ``-1`` for unlabelled rows. With ``alpha == 0`` the teacher is
    not needed (pass ``None``) and the KD term is not computed.
    """
    ce = ce_term(student_logits, labels, class_weight)
    if alpha == 0.0:
        kd = torch.zeros((), dtype=student_logits.dtype)
        return LossParts(total=ce, ce=ce.detach(), kd=kd)

    if teacher_logits is None:
        raise ConfigError(f"alpha = {alpha} needs teacher logits, got None")
    kd = kd_term(student_logits, teacher_logits, temperature)
    total = (1.0 - alpha) * ce + alpha * kd

    return LossParts(total=total, ce=ce.detach(), kd=kd.detach())
