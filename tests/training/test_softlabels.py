"""Tests for the on-disk teacher soft-label cache (training/softlabels.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.data import ManifestRow
from training.softlabels import cache_key, compute_soft_labels, prompts_digest

PROMPTS = {"normal": ["a normal chest X-ray"], "nodule": ["a lung nodule"]}


class CountingTeacher:
    """A stand-in teacher: logits from image means; counts the images it sees."""

    def __init__(self, identity: str = "fake:1", input_size: int = 32) -> None:
        self.identity = identity
        self.input_size = input_size
        self.images_seen = 0

    def logits(self, images: torch.Tensor, class_prompts: Any) -> torch.Tensor:
        self.images_seen += images.shape[0]
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean], dim=1)


@pytest.fixture
def rows(shared_data: Path) -> list[ManifestRow]:
    """Three real cxr3 images as manifest rows."""
    images = sorted((shared_data / "cxr3" / "images").glob("*.png"))[:3]
    return [ManifestRow(image=path, label="", split="train") for path in images]


def test_compute_soft_labels_reuses_cache_without_calling_teacher(
    rows: list[ManifestRow], tmp_path: Path
) -> None:
    """A second run over the same images reads the cache and never runs the teacher."""
    first_teacher = CountingTeacher()
    first = compute_soft_labels(rows, first_teacher, PROMPTS, tmp_path, progress=False)
    second_teacher = CountingTeacher()

    second = compute_soft_labels(
        rows, second_teacher, PROMPTS, tmp_path, progress=False
    )

    assert first_teacher.images_seen == len(rows)
    assert second_teacher.images_seen == 0
    np.testing.assert_array_equal(first, second)
    assert second.shape == (len(rows), 2)


def test_compute_soft_labels_runs_teacher_only_for_new_images(
    rows: list[ManifestRow], tmp_path: Path
) -> None:
    """Images already cached are skipped; only the new one reaches the teacher."""
    compute_soft_labels(rows[:2], CountingTeacher(), PROMPTS, tmp_path, progress=False)
    teacher = CountingTeacher()

    compute_soft_labels(rows, teacher, PROMPTS, tmp_path, progress=False)

    assert teacher.images_seen == 1


@pytest.mark.parametrize(
    ("identity", "prompts", "size"),
    [
        ("fake:2", PROMPTS, 32),
        (
            "fake:1",
            {"normal": ["a clear chest X-ray"], "nodule": ["a lung nodule"]},
            32,
        ),
        ("fake:1", PROMPTS, 64),
    ],
    ids=["teacher", "prompts", "input_size"],
)
def test_compute_soft_labels_misses_cache_when_key_part_changes(
    rows: list[ManifestRow],
    tmp_path: Path,
    identity: str,
    prompts: dict[str, list[str]],
    size: int,
) -> None:
    """Another teacher, other prompts or another input size recompute every image."""
    compute_soft_labels(rows, CountingTeacher(), PROMPTS, tmp_path, progress=False)
    teacher = CountingTeacher(identity=identity, input_size=size)

    compute_soft_labels(rows, teacher, prompts, tmp_path, progress=False)

    assert teacher.images_seen == len(rows)


def test_cache_key_changes_with_each_part() -> None:
    """Every component of the key (image, teacher, prompts, size) changes it."""
    base = cache_key("a" * 64, "t", "p", 224)

    variants = {
        cache_key("b" * 64, "t", "p", 224),
        cache_key("a" * 64, "u", "p", 224),
        cache_key("a" * 64, "t", "q", 224),
        cache_key("a" * 64, "t", "p", 320),
    }

    assert base not in variants
    assert len(variants) == 4


def test_prompts_digest_depends_on_order() -> None:
    """Swapping the class order changes the digest (logit columns would swap)."""
    swapped = {"nodule": PROMPTS["nodule"], "normal": PROMPTS["normal"]}

    assert prompts_digest(PROMPTS) != prompts_digest(swapped)
