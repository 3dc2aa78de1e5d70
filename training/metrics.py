"""Classification and calibration metrics as pure numpy / scikit-learn functions.

Conventions: ``labels`` are integer class indices ``(N,)``; ``probs`` are
``(N, C)`` rows that sum to one; ``logits`` are raw ``(N, C)`` scores. Metrics
that are undefined for the given data (an AUC when only one class is present)
return ``nan`` rather than raising, so a subgroup table can still be written;
:func:`clean` turns ``nan`` into ``None`` for JSON.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)

    return exp / exp.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / t)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    true = shifted[np.arange(len(labels)), labels]

    return float(np.mean(log_norm - true))


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of exact matches; ``nan`` for an empty set."""
    if len(labels) == 0:
        return math.nan
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or predictions.

    Classes that appear in neither are left out rather than counted as zero,
    so a subgroup without, say, nodules is not penalised for them.
    """
    if len(labels) == 0:
        return math.nan
    present = sorted(set(np.asarray(labels).tolist()) | set(predicted.tolist()))
    present = [c for c in present if 0 <= c < num_classes]

    return float(
        f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
    )


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int
) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)

    return matrix


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for a boolean target; ``nan`` if one class only."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return math.nan

    return float(roc_auc_score(is_positive, scores))


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray, cls: int) -> float:
    """AUC of class ``cls`` against all other classes, scored by its probability."""
    return binary_auc(np.asarray(labels) == cls, probs[:, cls])


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes for which it is defined."""
    aucs = [one_vs_rest_auc(labels, probs, c) for c in range(probs.shape[1])]
    defined = [a for a in aucs if not math.isnan(a)]

    return float(np.mean(defined)) if defined else math.nan


def bootstrap_auc_ci(
    is_positive: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a binary AUC (resampling cases).

    Resamples that contain a single class are skipped (their AUC is undefined);
    ``(nan, nan)`` when fewer than half the resamples are usable.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or is_positive.all() or not is_positive.any():
        return math.nan, math.nan

    # All resamples at once: AUC = Mann-Whitney U / (n_pos * n_neg), computed
    # from mid-ranks (ties count one half), identical to roc_auc_score.
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(scores), size=(n_resamples, len(scores)))
    target = is_positive[index]
    ranks = rankdata(scores[index], axis=1)
    n_pos = target.sum(axis=1)
    n_neg = target.shape[1] - n_pos
    usable = (n_pos > 0) & (n_neg > 0)
    if usable.sum() < n_resamples / 2:
        return math.nan, math.nan
    rank_sum = np.where(target, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    values = values[usable]

    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])

    return float(low), float(high)


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence histogram behind ECE and the reliability diagram."""

    edges: np.ndarray  # (B + 1,) bin edges in [0, 1]
    confidence: np.ndarray  # (B,) mean top probability per bin (nan if empty)
    accuracy: np.ndarray  # (B,) fraction correct per bin (nan if empty)
    count: np.ndarray  # (B,) cases per bin


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> ReliabilityBins:
    """Bin cases by top-label confidence into ``n_bins`` equal-width bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 cannot occur for C >= 1.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)

    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, acc_sum / count, np.nan)

    return ReliabilityBins(edges, mean_conf, mean_acc, count)


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> float:
    """Top-label ECE: count-weighted mean |accuracy - confidence| over bins."""
    if len(labels) == 0:
        return math.nan
    bins = reliability_bins(labels, probs, n_bins)
    used = bins.count > 0
    gaps = np.abs(bins.accuracy[used] - bins.confidence[used])

    return float(np.sum(gaps * bins.count[used]) / bins.count.sum())


def roc_points(is_positive: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """False / true positive rates of a binary ROC curve, for plotting."""
    fpr, tpr, _ = roc_curve(np.asarray(is_positive, dtype=bool), scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def classification_summary(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The full metric set for one group of cases, JSON-ready (``nan`` kept)."""
    labels = np.asarray(labels)
    predicted = probs.argmax(axis=1)
    num_classes = len(class_names)

    per_class: dict[str, Any] = {}
    for index, name in enumerate(class_names):
        target = labels == index
        auc = binary_auc(target, probs[:, index])
        low, high = bootstrap_auc_ci(target, probs[:, index], n_resamples, seed)
        per_class[name] = {
            "auc": auc,
            "auc_ci95": [low, high],
            "support": int(target.sum()),
        }

    return {
        "n": len(labels),
        "accuracy": accuracy(labels, predicted),
        "macro_f1": macro_f1(labels, predicted, num_classes),
        "macro_auc": macro_auc(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, num_classes).tolist(),
    }


def clean(value: Any) -> Any:
    """Recursively replace float ``nan`` / ``inf`` by ``None`` for strict JSON."""
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)

    return value
