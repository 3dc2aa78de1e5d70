"""Tests for temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import _golden_section, fit_temperature
from training.metrics import softmax


def _sampled(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), returned with logits ``scale * z``."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(n, 3))
    probs = softmax(true_logits)
    labels = np.array([rng.choice(3, p=row) for row in probs])

    return scale * true_logits, labels


def test_fit_temperature_recovers_known_overconfidence() -> None:
    """Logits three times too sharp are undone by t close to 3."""
    logits, labels = _sampled(4000, scale=3.0)

    result = fit_temperature(logits, labels)

    assert result.temperature == pytest.approx(3.0, rel=0.1)
    assert result.nll_after < result.nll_before
    assert result.ece_after < result.ece_before


def test_fit_temperature_stays_near_one_when_already_calibrated() -> None:
    """Well-calibrated logits need no rescaling."""
    logits, labels = _sampled(4000, scale=1.0, seed=1)

    result = fit_temperature(logits, labels)

    assert result.temperature == pytest.approx(1.0, rel=0.1)
    assert result.nll_after <= result.nll_before + 1e-12


def test_fit_temperature_sharpens_when_underconfident() -> None:
    """Logits that are too flat get t < 1."""
    logits, labels = _sampled(3000, scale=0.4, seed=2)

    result = fit_temperature(logits, labels)

    assert result.temperature == pytest.approx(0.4, rel=0.15)


def test_as_dict_reports_every_field_as_float() -> None:
    """The summary used by the card is plain floats."""
    logits, labels = _sampled(200, scale=2.0, seed=3)

    summary = fit_temperature(logits, labels).as_dict()

    assert set(summary) == {
        "temperature",
        "nll_before",
        "nll_after",
        "ece_before",
        "ece_after",
        "n",
    }
    assert all(isinstance(value, float) for value in summary.values())
    assert summary["n"] == 200.0


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int)),
        (np.zeros((4, 3)), np.zeros(3, dtype=int)),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), np.array([0, 1])),
    ],
)
def test_fit_temperature_raises_value_error_when_input_unusable(
    logits: np.ndarray, labels: np.ndarray
) -> None:
    """Empty, mismatched or non-finite input is refused with a clear error."""
    with pytest.raises(ValueError):
        fit_temperature(logits, labels)


def test_golden_section_finds_minimum_of_parabola() -> None:
    """The 1-D search lands on the minimiser of a convex function."""
    best = _golden_section(lambda x: (x - 2.0) ** 2 + 1.0, 0.0, 10.0, tol=1e-8)

    assert best == pytest.approx(2.0, abs=1e-6)
