"""Temperature scaling: one scalar that makes the student's probabilities honest.

The service reports ``softmax(logits / t)``. We fit ``t`` on the validation
split by minimising the negative log-likelihood (Guo et al., 2017). Temperature
scaling never changes which class wins, so accuracy and AUC are untouched; only
confidence moves. The NLL is convex in ``beta = 1 / t`` (a log-sum-exp minus a
linear term), so a golden-section search over ``beta`` finds the global optimum
without gradients or tuning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from training.metrics import expected_calibration_error, nll, softmax

logger = logging.getLogger(__name__)

# Search range for t: far wider than any sensible calibration.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted temperature and what it did to NLL and ECE on the fit set."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON reports and the model card."""
        return {key: float(value) for key, value in asdict(self).items()}


def _golden_section(
    objective: Callable[[float], float], low: float, high: float, tol: float
) -> float:
    """Minimiser of a unimodal ``objective`` on ``[low, high]`` to within ``tol``."""
    a, b = low, high
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(200):  # bounded: the interval shrinks by 0.618 per step
        if b - a < tol:
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = objective(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = objective(d)

    return (a + b) / 2


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> CalibrationResult:
    """Fit ``t`` minimising NLL of ``softmax(logits / t)``; report ECE before / after.

    ``logits`` are raw ``(N, C)`` validation scores and ``labels`` integer
    classes ``(N,)``. Raises ``ValueError`` on empty or mismatched input.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(
            f"expected (N, C) logits and N labels with N > 0, got logits "
            f"{logits.shape} and {labels.shape[0]} labels"
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits contain nan or inf; cannot calibrate")

    beta = _golden_section(
        lambda b: nll(logits, labels, 1.0 / b),
        1.0 / MAX_TEMPERATURE,
        1.0 / MIN_TEMPERATURE,
        tol=1e-6,
    )
    temperature = 1.0 / beta
    if not MIN_TEMPERATURE * 1.01 < temperature < MAX_TEMPERATURE * 0.99:
        logger.warning(
            "fitted temperature %.3f sits at the search bound: the validation "
            "logits are degenerate (e.g. all predictions right or all wrong)",
            temperature,
        )

    result = CalibrationResult(
        temperature=temperature,
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        ece_before=expected_calibration_error(labels, softmax(logits), n_bins),
        ece_after=expected_calibration_error(
            labels, softmax(logits, temperature), n_bins
        ),
        n=len(labels),
    )
    logger.info(
        "calibration: t=%.3f, NLL %.4f -> %.4f, ECE %.4f -> %.4f on %d cases",
        result.temperature,
        result.nll_before,
        result.nll_after,
        result.ece_before,
        result.ece_after,
        result.n,
    )

    return result
