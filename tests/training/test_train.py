"""Smoke tests of the distillation training command (training/train.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO_ROOT
from training.config import TrainConfig
from training.train import CHECKPOINT_NAME, train

CHECKPOINT_KEYS = {
    "state_dict",
    "arch",
    "labels",
    "input_size",
    "config",
    "val_metrics",
}


class TinyTeacher:
    """A stand-in teacher: fixed logits from each image's mean brightness."""

    identity = "test:tiny-teacher"
    input_size = 32

    def __init__(self) -> None:
        self.calls = 0

    def logits(self, images: torch.Tensor, class_prompts: Any) -> torch.Tensor:
        self.calls += 1
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean, mean * 0.5], dim=1) * 5.0


def _smoke_config(shared_data: Path, tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "manifest": str(shared_data / "cxr3" / "manifest.csv"),
        "out_dir": str(tmp_path / "run"),
        "softlabel_cache": str(tmp_path / "cache"),
        "max_images_per_split": 6,
        "epochs": 2,
        "batch_size": 4,
        "input_size": 64,
        "pretrained": False,
        "progress": False,
        "warmup_steps": 1,
    }
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def kd_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One KD smoke run (half the labels, stand-in teacher) shared by several tests."""
    tmp_path = tmp_path_factory.mktemp("kd")
    config = _smoke_config(shared_data, tmp_path, label_fraction=0.5)
    teacher = TinyTeacher()
    result = train(config, teacher=teacher)
    return config, teacher, result


def test_train_writes_best_checkpoint_and_config_with_kd(kd_run: Any) -> None:
    """A KD smoke run leaves best.pt in the agreed format plus config and history."""
    config, teacher, result = kd_run
    run = Path(config.out_dir)

    checkpoint = torch.load(run / CHECKPOINT_NAME, weights_only=False)
    saved = json.loads((run / "config.json").read_text())

    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["labels"] == ["normal", "pneumonia", "nodule"]
    assert checkpoint["input_size"] == 64
    assert saved["alpha"] == 0.7
    assert saved["resolved"]["teacher_identity"] == "test:tiny-teacher"
    assert teacher.calls > 0
    assert len(result["epochs"]) == 2
    assert 1 <= result["best"]["epoch"] <= 2
    assert result["epochs"][0]["train_kd"] > 0
    assert (run / "history.json").is_file()


def test_checkpoint_loads_with_the_export_loader(kd_run: Any) -> None:
    """best.pt rebuilds through training.export.load_checkpoint."""
    from training.export import load_checkpoint

    config, _, _ = kd_run

    checkpoint = load_checkpoint(Path(config.out_dir) / CHECKPOINT_NAME)

    assert checkpoint.arch == "mobilenet_v2"
    assert checkpoint.input_size == 64
    assert list(checkpoint.labels) == ["normal", "pneumonia", "nodule"]


def test_train_reuses_cached_soft_labels_across_runs(
    kd_run: Any, tmp_path: Path
) -> None:
    """A second KD run over the same images and teacher never calls the teacher."""
    first, _, _ = kd_run
    teacher = TinyTeacher()
    config = TrainConfig.from_dict(
        {
            **json.loads(first.to_json()),
            "out_dir": str(tmp_path / "again"),
            "epochs": 1,
            "resolved": {},
        }
    )

    train(config, teacher=teacher)

    assert teacher.calls == 0


def test_train_is_reproducible_with_the_same_seed(
    shared_data: Path, tmp_path: Path
) -> None:
    """Two CE runs with one seed give identical weights."""
    first = _smoke_config(shared_data, tmp_path / "a", alpha=0.0, epochs=1)
    second = _smoke_config(shared_data, tmp_path / "b", alpha=0.0, epochs=1)

    train(first)
    train(second)

    state_a = torch.load(Path(first.out_dir) / CHECKPOINT_NAME)["state_dict"]
    state_b = torch.load(Path(second.out_dir) / CHECKPOINT_NAME)["state_dict"]
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


@pytest.mark.slow
def test_train_runs_under_torchrun_with_two_processes(
    shared_data: Path, tmp_path: Path
) -> None:
    """torchrun --nproc_per_node 2 trains with DDP + gloo and rank 0 writes once."""
    out_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",
        "-m",
        "training.train",
        "--manifest",
        str(shared_data / "cxr3" / "manifest.csv"),
        "--out-dir",
        str(out_dir),
        "--alpha",
        "0",
        "--max-images-per-split",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--input-size",
        "64",
        "--no-pretrained",
        "--no-progress",
        "--num-threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}

    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["resolved"]["world_size"] == 2
    assert saved["resolved"]["global_batch_size"] == 4
    assert set(torch.load(out_dir / CHECKPOINT_NAME, weights_only=False)) == (
        CHECKPOINT_KEYS
    )
