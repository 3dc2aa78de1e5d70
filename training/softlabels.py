"""Teacher soft labels, computed once and cached on disk.

A distillation epoch should cost about what a cross-entropy epoch costs, so
the teacher never runs inside the training loop: its logits for every image
are computed before training and stored under ``cache/softlabels/`` (ignored
by git). An entry is keyed by everything that changes the teacher's output:

- the sha256 of the image file's bytes (not its name: a renamed copy hits,
  an edited image misses),
- the teacher's ``identity`` (kind + weights digest, from ``training.teacher``),
- a digest of the class prompts (order and text),
- the teacher's input size.

Entries are one small ``.npy`` file each (raw logits, ``(C,)`` float32), so
runs with different label fractions, seeds or students reuse them, and a
partially filled cache is resumed where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from app.preprocess import PreprocessConfig, preprocess
from training.data import ManifestRow, load_pixels
from training.errors import SoftLabelError

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("cache/softlabels")


class TeacherLike(Protocol):
    """What soft labels need from a teacher (``training.teacher.Teacher``)."""

    input_size: int
    identity: str

    def logits(self, images: torch.Tensor, class_prompts: Any) -> torch.Tensor:
        """Raw ``(N, C)`` logits for preprocessed ``(N, 3, S, S)`` images."""
        ...


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)

    return digest.hexdigest()


def prompts_digest(class_prompts: Any) -> str:
    """Stable digest of the class prompts: any change of text or order changes it."""
    if isinstance(class_prompts, dict):
        canonical: Any = [[key, list(value)] for key, value in class_prompts.items()]
    else:
        canonical = [[p] if isinstance(p, str) else list(p) for p in class_prompts]
    text = json.dumps(canonical, ensure_ascii=False)

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(
    image_sha256: str, teacher_identity: str, prompts_hash: str, input_size: int
) -> str:
    """The cache key of one image under one teacher setting."""
    parts = f"{image_sha256}|{teacher_identity}|{prompts_hash}|{int(input_size)}"

    return hashlib.sha256(parts.encode()).hexdigest()


class SoftLabelCache:
    """A directory of ``<key>.npy`` teacher-logit files, written atomically."""

    def __init__(self, root: Path | str = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """Where the entry ``key`` lives (two-level fan-out)."""
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached logits, or ``None`` when absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            logger.warning("unreadable soft-label cache entry; recomputing it")
            return None

    def put(self, key: str, logits: np.ndarray) -> None:
        """Store ``logits`` under ``key`` (temporary file + rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.asarray(logits, dtype=np.float32))
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)


def teacher_preprocess(teacher: TeacherLike) -> PreprocessConfig:
    """The teacher's input config: its own if it has one, else the shared default."""
    config = getattr(teacher, "preprocess", None)
    if isinstance(config, PreprocessConfig):
        return config

    return PreprocessConfig(size=int(teacher.input_size))


def compute_soft_labels(
    rows: Sequence[ManifestRow],
    teacher: TeacherLike,
    class_prompts: Any,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Teacher logits ``(len(rows), C)`` for ``rows``; only cache misses run it."""
    cache = SoftLabelCache(cache_dir)
    config = teacher_preprocess(teacher)
    prompts_hash = prompts_digest(class_prompts)
    keys = [
        cache_key(file_sha256(row.image), teacher.identity, prompts_hash, config.size)
        for row in rows
    ]

    found: dict[int, np.ndarray] = {}
    for i, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None:
            found[i] = cached
    missing = [i for i in range(len(rows)) if i not in found]
    logger.info(
        "soft labels: %d cached, %d to compute (teacher input %d px)",
        len(found),
        len(missing),
        config.size,
    )

    # Run the teacher on the misses only, a batch at a time, without gradients.
    batches = range(0, len(missing), batch_size)
    for start in tqdm(batches, desc="soft labels", disable=not progress or not missing):
        chunk = missing[start : start + batch_size]
        images = np.stack(
            [preprocess(load_pixels(rows[i].image), config) for i in chunk]
        )
        with torch.inference_mode():
            logits = teacher.logits(torch.from_numpy(images), class_prompts)
        logits_np = logits.detach().float().cpu().numpy()
        if logits_np.shape[0] != len(chunk):
            raise SoftLabelError(
                f"teacher returned {logits_np.shape[0]} rows of logits for "
                f"{len(chunk)} images"
            )
        for row_index, values in zip(chunk, logits_np, strict=True):
            cache.put(keys[row_index], values)
            found[row_index] = values

    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    widths = {found[i].shape for i in found}
    if len(widths) != 1:
        raise SoftLabelError(f"cached teacher logits disagree in shape: {widths}")

    return np.stack([found[i] for i in range(len(rows))]).astype(np.float32)
