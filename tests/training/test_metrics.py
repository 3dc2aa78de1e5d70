"""Tests for the metric functions, on small hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics import (
    accuracy,
    binary_auc,
    bootstrap_auc_ci,
    classification_summary,
    clean,
    confusion_matrix,
    expected_calibration_error,
    macro_auc,
    macro_f1,
    nll,
    one_vs_rest_auc,
    reliability_bins,
    softmax,
)


def test_softmax_matches_hand_computation_with_temperature() -> None:
    """softmax([0, ln 3]) is [1/4, 3/4]; at t = 2 it is [1/(1+sqrt 3), ...]."""
    logits = np.array([[0.0, math.log(3.0)]])

    plain = softmax(logits)
    warm = softmax(logits, temperature=2.0)

    np.testing.assert_allclose(plain, [[0.25, 0.75]])
    root = math.sqrt(3.0)
    np.testing.assert_allclose(warm, [[1 / (1 + root), root / (1 + root)]])


def test_softmax_is_stable_when_logits_are_huge() -> None:
    """Very large logits give finite probabilities that sum to one."""
    logits = np.array([[1000.0, 999.0, -1000.0]])

    probs = softmax(logits)

    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), [1.0])


def test_nll_equals_log_classes_when_logits_are_uniform() -> None:
    """Equal logits over C classes cost ln C whatever the label."""
    logits = np.zeros((4, 3))
    labels = np.array([0, 1, 2, 1])

    value = nll(logits, labels)

    assert value == pytest.approx(math.log(3.0))


def test_accuracy_and_confusion_matrix_count_hand_example() -> None:
    """Four cases, three right: accuracy 0.75 and the matching 3x3 counts."""
    labels = np.array([0, 1, 2, 2])
    predicted = np.array([0, 1, 2, 0])

    acc = accuracy(labels, predicted)
    matrix = confusion_matrix(labels, predicted, 3)

    assert acc == 0.75
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])


def test_macro_f1_matches_hand_computation() -> None:
    """Class 0: F1 2/3, class 1: F1 4/5, so the macro mean is 11/15."""
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])

    value = macro_f1(labels, predicted, num_classes=3)

    assert value == pytest.approx(11 / 15)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([0.1, 0.2, 0.8, 0.9], 1.0), ([0.9, 0.8, 0.2, 0.1], 0.0), ([0.5] * 4, 0.5)],
)
def test_binary_auc_hits_extremes_when_ranking_is_perfect_reversed_or_tied(
    scores: list[float], expected: float
) -> None:
    """A perfect ranking scores 1, a reversed one 0, all ties 0.5."""
    target = np.array([False, False, True, True])

    value = binary_auc(target, np.array(scores))

    assert value == pytest.approx(expected)


def test_binary_auc_is_nan_when_one_class_only() -> None:
    """AUC is undefined without both positives and negatives."""
    target = np.array([True, True, True])

    value = binary_auc(target, np.array([0.1, 0.5, 0.9]))

    assert math.isnan(value)


def test_one_vs_rest_and_macro_auc_match_hand_example() -> None:
    """Class 0 is ranked 3 of 4 pairs right (0.75); the others perfectly."""
    labels = np.array([0, 0, 1, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.1, 0.6],
            [0.4, 0.5, 0.1],
            [0.1, 0.1, 0.8],
        ]
    )

    auc0 = one_vs_rest_auc(labels, probs, 0)
    auc1 = one_vs_rest_auc(labels, probs, 1)
    auc2 = one_vs_rest_auc(labels, probs, 2)
    overall = macro_auc(labels, probs)

    assert auc0 == pytest.approx(0.75)
    assert auc1 == pytest.approx(1.0)
    assert auc2 == pytest.approx(1.0)
    assert overall == pytest.approx((0.75 + 1.0 + 1.0) / 3)


def test_bootstrap_ci_brackets_point_estimate_and_is_seeded() -> None:
    """The interval contains the AUC and the same seed gives the same interval."""
    rng = np.random.default_rng(1)
    target = rng.random(200) < 0.4
    scores = target * 0.8 + rng.normal(0, 0.6, size=200)
    point = binary_auc(target, scores)

    first = bootstrap_auc_ci(target, scores, n_resamples=300, seed=7)
    second = bootstrap_auc_ci(target, scores, n_resamples=300, seed=7)
    other = bootstrap_auc_ci(target, scores, n_resamples=300, seed=8)

    assert first[0] < point < first[1]
    assert first == second
    assert first != other
    assert 0.05 < first[1] - first[0] < 0.3


def test_bootstrap_ci_is_one_when_separation_is_perfect() -> None:
    """Every resample of a perfectly separated set has AUC 1."""
    target = np.array([False] * 10 + [True] * 10)
    scores = np.arange(20, dtype=float)

    low, high = bootstrap_auc_ci(target, scores, n_resamples=100, seed=0)

    assert (low, high) == (1.0, 1.0)


def test_ece_is_zero_when_confident_and_always_right() -> None:
    """Confidence 1 with accuracy 1 is perfectly calibrated."""
    labels = np.array([0, 1, 2])
    probs = np.eye(3)

    value = expected_calibration_error(labels, probs)

    assert value == pytest.approx(0.0)


def test_ece_equals_gap_when_confidence_exceeds_accuracy() -> None:
    """Confidence 0.8 everywhere with half the cases right gives ECE 0.3."""
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.2]] * 4)

    value = expected_calibration_error(labels, probs, n_bins=10)
    bins = reliability_bins(labels, probs, n_bins=10)

    assert value == pytest.approx(0.3)
    assert bins.count.sum() == 4
    assert bins.count[7] == 4  # 0.8 falls in the (0.7, 0.8] bin


def test_classification_summary_is_strict_json_when_cleaned() -> None:
    """A group lacking a class yields None AUCs that still serialise as JSON."""
    labels = np.array([0, 0, 1, 1])
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]]
    )

    summary = clean(classification_summary(labels, probs, ("a", "b", "c"), 50, 0))
    text = json.dumps(summary, allow_nan=False)

    assert summary["per_class"]["c"]["auc"] is None
    assert summary["per_class"]["a"]["support"] == 2
    assert sum(map(sum, summary["confusion_matrix"])) == 4
    assert "NaN" not in text


def test_clean_converts_numpy_scalars_and_nan() -> None:
    """numpy ints become ints; nan and inf become None, nested anywhere."""
    value = {"a": [np.int64(3), float("nan")], "b": (np.float32(0.5), np.inf)}

    cleaned = clean(value)

    assert cleaned == {"a": [3, None], "b": [0.5, None]}
    assert isinstance(cleaned["a"][0], int)


def test_bootstrap_ci_equals_sklearn_loop_when_scores_tie() -> None:
    """The vectorised rank AUC matches roc_auc_score resample by resample."""
    rng = np.random.default_rng(3)
    target = rng.random(60) < 0.3
    scores = np.round(rng.random(60), 1)  # many ties
    index = np.random.default_rng(5).integers(0, 60, size=(200, 60))
    reference = [
        roc_auc_score(target[i], scores[i])
        for i in index
        if target[i].any() and not target[i].all()
    ]

    low, high = bootstrap_auc_ci(target, scores, n_resamples=200, seed=5)

    np.testing.assert_allclose([low, high], np.percentile(reference, [2.5, 97.5]))
