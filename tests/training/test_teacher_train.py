"""Smoke tests of teacher training, resuming, saving, loading and evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from training.errors import ConfigError
from training.prompts import DEFAULT_CLASS_PROMPTS
from training.teacher import load_teacher
from training.teacher_data import preprocess_rows, read_rows
from training.teacher_eval import evaluate, render_card
from training.teacher_model import TeacherModelConfig, VlkdClip
from training.teacher_train import (
    TeacherTrainConfig,
    semantic_matching_loss,
    train,
    trunk_features,
)

PER_LABEL = {"train": 3, "val": 2}


@pytest.fixture(scope="module")
def tiny_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of a few real cxr3 images per label and split (absolute paths)."""
    source = shared_data / "cxr3" / "manifest.csv"
    with source.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    picked = []
    for split, count in PER_LABEL.items():
        for label in ("normal", "pneumonia", "nodule"):
            rows = [r for r in records if r["split"] == split and r["label"] == label]
            picked += rows[:count]
    # Within-JSRT nodule AUC needs a JSRT normal in val.
    picked += [
        r for r in records if r["split"] == "val" and r["findings"] == "No Nodule"
    ][:1]
    for row in picked:
        row["image"] = str(source.parent / row["image"])

    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(picked)

    return path


def tiny_config(manifest: Path, root: Path, **overrides: object) -> TeacherTrainConfig:
    """A config that trains in seconds: 32 px input, small batches, one epoch."""
    values: dict = {
        "manifest": str(manifest),
        "out_dir": str(root / "out"),
        "run_dir": str(root / "run"),
        "cache_dir": str(root / "cache"),
        "epochs": 1,
        "batch_size": 4,
        "captions_per_findings": 2,
        "model": {"input_size": 32, "embed_dim": 16},
    }
    values.update(overrides)

    return TeacherTrainConfig.from_dict(values)


@pytest.mark.slow
def test_one_epoch_writes_a_loadable_teacher(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """A one-epoch run saves fp16 weights + config that load_teacher can use."""
    config = tiny_config(tiny_manifest, tmp_path)

    summary = train(config)

    teacher = load_teacher("vlkd", tmp_path / "out")
    logits = teacher.logits(torch.randn(3, 3, 32, 32), DEFAULT_CLASS_PROMPTS)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert logits.shape == (3, 3)
    assert saved["model"]["input_size"] == 32
    assert saved["training"]["best_epoch"] == summary["training"]["best_epoch"] == 1
    assert (tmp_path / "run" / "last.pt").is_file()
    assert teacher.identity.startswith("vlkd:sha256=")


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """Stopping after epoch 1 and resuming gives the same weights as one run."""
    whole = tiny_config(tiny_manifest, tmp_path / "whole", epochs=2)
    split = tiny_config(tiny_manifest, tmp_path / "split", epochs=2)

    train(whole)
    train(split, stop_after=1)
    after_one = torch.load(tmp_path / "split" / "run" / "last.pt", weights_only=False)
    train(split, resume=True)

    expected = torch.load(tmp_path / "whole" / "run" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "split" / "run" / "last.pt", weights_only=False)
    assert after_one["state"]["epoch"] == 1
    assert resumed["state"]["epoch"] == 2
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, msg=name)


@pytest.mark.slow
def test_resume_refuses_a_changed_config(tiny_manifest: Path, tmp_path: Path) -> None:
    """Resuming with other settings would mix two runs: refuse it."""
    train(tiny_config(tiny_manifest, tmp_path, epochs=2), stop_after=1)

    with pytest.raises(ConfigError, match="different config"):
        train(tiny_config(tiny_manifest, tmp_path, epochs=2, lr=0.5), resume=True)


@pytest.mark.slow
def test_eval_reports_metrics_and_card_renders(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """Zero-shot eval gives per-class, macro and JSRT nodule AUC, shown in the card."""
    train(tiny_config(tiny_manifest, tmp_path))
    out = tmp_path / "out"

    metrics = evaluate("vlkd", out, tiny_manifest, "val", DEFAULT_CLASS_PROMPTS)
    (out / "metrics_val.json").write_text(json.dumps(metrics))
    card = render_card(out)

    assert metrics["n"] == 3 * PER_LABEL["val"] + 1
    assert set(metrics["per_class_auc"]) == {"normal", "pneumonia", "nodule"}
    assert 0.0 <= metrics["macro_auc"] <= 1.0
    assert not math.isnan(metrics["nodule_auc_within_jsrt"])
    assert f"{metrics['macro_auc']:.3f}" in card


@pytest.mark.slow
def test_cached_training_path_matches_the_saved_teacher(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """Embeddings via the training cache equal the loaded teacher's full forward."""
    train(tiny_config(tiny_manifest, tmp_path))
    teacher = load_teacher("vlkd", tmp_path / "out")
    model = teacher.model  # type: ignore[attr-defined]
    rows = read_rows(tiny_manifest, ["val"])

    cached = trunk_features(model, rows, tmp_path / "cache", "val")
    via_cache = model.encode_from_trunk(cached)
    full = model.encode_image(preprocess_rows(rows, 32))

    torch.testing.assert_close(via_cache, full, atol=2e-2, rtol=2e-2)


def test_frozen_trunk_stays_in_eval_mode() -> None:
    """The frozen blocks never use batch statistics, before or during training."""
    model = VlkdClip(TeacherModelConfig(input_size=32, frozen_blocks=10))
    fresh = model.trunk.training

    model.train()

    assert not fresh
    assert not model.trunk.training
    assert model.tail.training


def test_semantic_loss_treats_shared_findings_as_positives() -> None:
    """Two images with the same findings are not pushed apart, unlike plain CLIP."""
    findings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0, 1 embed alike
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scale = torch.tensor(10.0)

    loss_same = semantic_matching_loss(same, same, findings, findings, scale)
    loss_apart = semantic_matching_loss(apart, apart, findings, findings, scale)

    assert loss_same < loss_apart


def test_unknown_config_keys_are_refused(tiny_manifest: Path, tmp_path: Path) -> None:
    """A misspelt setting is an error naming the valid keys, not silently ignored."""
    with pytest.raises(ConfigError, match="unknown teacher config keys"):
        tiny_config(tiny_manifest, tmp_path, epoch=3)
