"""Tests for the model card dict and its Markdown rendering."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from training.card import build_card, render_markdown, write_model_card


def _card(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model_name": "vlkd-mobilenetv2-kd",
        "model_version": "1.0.0",
        "labels": ("normal", "pneumonia", "nodule"),
        "input_size": 224,
        "arch": "mobilenet_v2",
        "teacher": "vlkd",
        "kd_alpha": 0.7,
        "kd_temperature": 4.0,
        "training_data": {"label_fraction": 1.0},
        "metrics": {
            "split": "test",
            "overall": {
                "n": 177,
                "macro_auc": 0.91,
                "per_class": {"nodule": {"auc": 0.8, "auc_ci95": [0.7, float("nan")]}},
            },
            "nodule_within_jsrt": {"auc": 0.66, "auc_ci95": [0.5, 0.8]},
        },
        "calibration": {"temperature": 1.7, "ece_before": 0.12, "ece_after": 0.04},
    }
    values.update(overrides)
    return build_card(**values)


def test_build_card_is_strict_json_when_metrics_have_nan() -> None:
    """nan in the metrics becomes null so the card survives strict JSON."""
    card = _card()

    text = json.dumps(card, allow_nan=False)

    assert card["metrics"]["overall"]["per_class"]["nodule"]["auc_ci95"][1] is None
    assert card["labels"] == ["normal", "pneumonia", "nodule"]
    assert "not a diagnosis" in json.loads(text)["intended_use"]


def test_render_markdown_states_use_limits_and_honest_numbers() -> None:
    """The card names the intended use, the source confound and within-JSRT AUC."""
    card = _card()

    text = render_markdown(card)

    assert "## Intended use" in text and "adult frontal" in text
    assert "Source confound" in text
    assert "Paediatric" in text
    assert "| AUC nodule within JSRT [95 % CI] | 0.660 [0.500, 0.800] |" in text
    assert "Temperature t = 1.700" in text and "0.120 -> 0.040" in text


def test_render_markdown_lists_flat_metrics_when_not_an_evaluation() -> None:
    """Validation metrics from training (no 'overall') still appear as rows."""
    card = _card(metrics={"val": {"macro_auc": 0.8, "accuracy": 0.7}}, calibration={})

    text = render_markdown(card)

    assert "| val macro_auc | 0.800 |" in text
    assert "Not calibrated" in text


def test_write_model_card_writes_readable_file_atomically(tmp_path: Path) -> None:
    """The card lands complete, with open()'s usual mode and no temporary file."""
    path = tmp_path / "models" / "MODEL_CARD.md"

    write_model_card(_card(), path)

    assert path.read_text() == render_markdown(_card())
    assert os.listdir(path.parent) == ["MODEL_CARD.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_build_card_says_no_distillation_when_alpha_is_zero() -> None:
    """The CE-only baseline is not described as distilled."""
    card = _card(kd_alpha=0.0)

    method = card["training"]["method"]

    assert "no distillation" in method
    assert "KL" not in method
