"""Tests for the experiment table helpers (training/experiments.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.experiments import observations, render, reusable


def _report(macro_auc: float, jsrt_auc: float, accuracy: float) -> dict[str, Any]:
    per_class = {
        name: {"auc": macro_auc, "auc_ci95": [macro_auc - 0.05, macro_auc + 0.02]}
        for name in ("normal", "pneumonia", "nodule")
    }
    return {
        "overall": {
            "macro_auc": macro_auc,
            "accuracy": accuracy,
            "macro_f1": accuracy,
            "per_class": per_class,
        },
        "nodule_within_jsrt": {"auc": jsrt_auc, "auc_ci95": [0.5, 0.9]},
    }


def _finished_run(run_dir: Path, config: TrainConfig) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"x")
    config.save(run_dir / "config.json")
    epochs = [{"epoch": i + 1} for i in range(config.epochs)]
    (run_dir / "history.json").write_text(json.dumps({"epochs": epochs}))


def test_reusable_accepts_same_config_in_another_folder(tmp_path: Path) -> None:
    """A finished run is reused when only its output folder differs."""
    _finished_run(tmp_path / "run", TrainConfig(out_dir="elsewhere", alpha=0.0))

    same = reusable(tmp_path / "run", TrainConfig(out_dir="here", alpha=0.0))
    other = reusable(tmp_path / "run", TrainConfig(out_dir="here", alpha=0.7))

    assert same
    assert not other


def test_reusable_refuses_an_unfinished_run(tmp_path: Path) -> None:
    """A run with fewer epochs in its history than configured is retrained."""
    config = TrainConfig(epochs=4)
    _finished_run(tmp_path / "run", TrainConfig(epochs=2))

    assert not reusable(tmp_path / "run", config)


def test_observations_say_when_kd_hurts() -> None:
    """A KD run worse than CE by more than 0.01 is reported as hurting."""
    results = {
        "test": {
            "ce_100": _report(0.95, 0.70, 0.85),
            "kd_100": _report(0.90, 0.72, 0.85),
        }
    }

    notes = observations(results)

    assert any("macro AUC" in n and "KD hurts" in n for n in notes)
    assert any("within-JSRT" in n and "KD helps" in n for n in notes)
    assert any("accuracy" in n and "KD ties" in n for n in notes)


def test_render_lists_every_available_row_and_the_commands() -> None:
    """The results page has a table row per run and the reproduce commands."""
    results = {
        "test": {"teacher": _report(0.8, 0.6, 0.7), "ce_100": _report(0.9, 0.7, 0.8)},
        "sweep": {},
    }

    page = render(results, TrainConfig())

    assert "| teacher zero-shot |" in page
    assert "| student CE (alpha 0) | 100 % | 0.900 |" in page
    assert "KD (alpha 0.7" not in page
    assert "python -m training.pipeline" in page


def test_observations_report_sweep_spread_and_teacher_gap() -> None:
    """The notes name the best and worst sweep settings and the teacher's lead."""
    results = {
        "test": {"teacher": _report(0.95, 0.83, 0.8), "ce_100": _report(0.9, 0.7, 0.8)},
        "sweep": {
            "a": {"alpha": 0.5, "temperature": 2.0, "val": {"macro_auc": 0.957}},
            "b": {"alpha": 0.9, "temperature": 4.0, "val": {"macro_auc": 0.946}},
        },
    }

    notes = observations(results)

    assert any("0.946 (alpha 0.9, T 4) to 0.957 (alpha 0.5, T 2)" in n for n in notes)
    assert any("(0.830) is above every student's (best 0.700)" in n for n in notes)
