"""Zero-shot metrics of a teacher on manifest rows.

Per-class one-vs-rest AUC, macro AUC and accuracy over the whole split, and
nodule AUC *within JSRT* (nodule vs JSRT normal): every nodule image comes from
JSRT, so whole-split nodule AUC partly measures recognising the image source;
within JSRT only the finding separates the two groups.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from training.teacher_data import TeacherRow

logger = logging.getLogger(__name__)

JSRT = "JSRT"


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    if truth.min() == truth.max():
        return math.nan

    return float(roc_auc_score(truth, score))


def zero_shot_metrics(
    logits: torch.Tensor, rows: Sequence[TeacherRow], labels: Sequence[str]
) -> dict[str, Any]:
    """Metrics of ``logits`` ``(N, C)`` against the rows' labels (JSON-ready)."""
    if logits.shape != (len(rows), len(labels)):
        raise ValueError(
            f"expected logits ({len(rows)}, {len(labels)}), got {tuple(logits.shape)}"
        )
    probs = torch.softmax(logits.float(), dim=1).numpy()
    truth = np.array([labels.index(row.label) for row in rows])

    per_class = {
        label: _auc((truth == c).astype(int), probs[:, c])
        for c, label in enumerate(labels)
    }
    finite = [v for v in per_class.values() if not math.isnan(v)]
    accuracy = float((probs.argmax(1) == truth).mean())

    jsrt = np.array([row.source.upper().startswith(JSRT) for row in rows])
    nodule_jsrt = math.nan
    if "nodule" in labels and jsrt.any():
        nodule = labels.index("nodule")
        nodule_jsrt = _auc((truth[jsrt] == nodule).astype(int), probs[jsrt, nodule])

    return {
        "n": len(rows),
        "counts": dict(Counter(row.label for row in rows)),
        "macro_auc": float(np.mean(finite)) if finite else math.nan,
        "per_class_auc": per_class,
        "accuracy": accuracy,
        "nodule_auc_within_jsrt": nodule_jsrt,
        "n_jsrt": int(jsrt.sum()),
    }
