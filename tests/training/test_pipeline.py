"""Smoke test of the one-command pipeline (training/pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.contract import from_metadata
from training.config import TrainConfig
from training.pipeline import CARD_NAME, ONNX_NAME, run_pipeline


class TinyTeacher:
    """A stand-in teacher: fixed logits from each image's mean brightness."""

    identity = "test:pipeline-teacher"
    input_size = 32

    def logits(self, images: torch.Tensor, class_prompts: Any) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean, mean * 0.5], dim=1) * 5.0


@pytest.mark.slow
def test_pipeline_ships_a_checked_model_with_card(
    shared_data: Path, tmp_path: Path
) -> None:
    """Soft labels, train, calibrate, export, evaluate and ship on a few images."""
    import onnx

    config = TrainConfig(
        manifest=str(shared_data / "cxr3" / "manifest.csv"),
        out_dir=str(tmp_path / "run"),
        softlabel_cache=str(tmp_path / "cache"),
        max_images_per_split=9,
        epochs=1,
        batch_size=4,
        input_size=64,
        pretrained=False,
        progress=False,
        warmup_steps=1,
    )
    models = tmp_path / "models"

    summary = run_pipeline(config, models, teacher=TinyTeacher(), n_resamples=20)

    shipped = onnx.load(str(models / ONNX_NAME))
    contract = from_metadata({p.key: p.value for p in shipped.metadata_props})
    assert contract.labels == ("normal", "pneumonia", "nodule")
    assert contract.preprocess.size == 64
    assert contract.extra["vlkd.teacher"] == "test:pipeline-teacher"
    assert (models / CARD_NAME).read_text().strip()
    assert set(summary["steps"]) == {"soft_labels", "train", "export", "evaluate"}
    assert summary["teacher_zero_shot"]["test"]["overall"]["macro_auc"] is not None
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert saved["shipped"] == str(models / ONNX_NAME)
