"""Manifest-driven chest X-ray dataset for training, on the service's exact path.

A manifest is a CSV in the format of ``../shared/data/cxr3/manifest.csv``: one
row per image with at least ``image`` (path relative to the manifest), ``label``
(empty = unlabelled) and ``split``; ``patient_id``, ``view``, ``source`` and
``sha256`` are kept when present.

Every image goes through the service's own code: :func:`app.decode.decode`,
then the steps of :func:`app.preprocess.preprocess`. To keep an epoch cheap,
each image is decoded, padded to a square and resized to the student size
once, and that 2-D float image is kept in memory; ``__getitem__`` then runs the
remaining preprocessing steps (percentile normalisation, three channels,
mean / std). With augmentation off the result equals
``preprocess(decode(bytes).pixels)`` exactly (the parity test checks it).

Augmentation is mild and anatomically sound: a small rotation, zoom and shift
of the resized image (filled with its minimum, as the padding is), then
brightness, contrast and gamma on the normalised [0, 1] image. There is no
left-right flip: the heart is on the left. The photometric changes come after
the percentile normalisation on purpose: that step rescales any linear
intensity change away, so brightness and contrast applied before it would do
nothing.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from app.decode import decode
from app.errors import InputError
from app.preprocess import (
    PreprocessConfig,
    normalise_intensity,
    pad_to_square,
    resize,
    to_model_layout,
)
from training.config import TrainConfig
from training.errors import DataError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "label", "split")
UNLABELLED = -1  # label index of a row without a label
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".dcm": "application/dicom",
}


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest; ``label`` is ``""`` when the row is unlabelled."""

    image: Path
    label: str
    split: str
    patient_id: str = ""
    view: str = ""
    source: str = ""
    sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def read_manifest(path: Path | str, labels: Sequence[str]) -> list[ManifestRow]:
    """Read a manifest CSV; image paths become absolute (relative to the CSV)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: expected a CSV file at {path}")

    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(
                f"manifest lacks columns {missing}; expected at least "
                f"{list(REQUIRED_COLUMNS)}, found {columns}"
            )
        records = list(reader)

    known = set(labels)
    rows = []
    for number, record in enumerate(records, start=2):
        label = (record.get("label") or "").strip()
        if label and label not in known:
            raise DataError(
                f"manifest line {number}: label {label!r} is not one of {list(labels)}"
            )
        core = {"image", "label", "split", "patient_id", "view", "source", "sha256"}
        rows.append(
            ManifestRow(
                image=(path.parent / record["image"]).resolve(),
                label=label,
                split=(record.get("split") or "").strip(),
                patient_id=record.get("patient_id") or "",
                view=record.get("view") or "",
                source=record.get("source") or "",
                sha256=record.get("sha256") or "",
                extra={k: v or "" for k, v in record.items() if k not in core},
            )
        )

    return rows


def select_split(
    rows: Sequence[ManifestRow], split: str, max_images: int = 0
) -> list[ManifestRow]:
    """Rows of one split, in manifest order.

    ``max_images > 0`` keeps a small subset for smoke runs: rows are taken in
    turn from each label (unlabelled counts as one) so every class is present.
    """
    chosen = [row for row in rows if row.split == split]
    if max_images <= 0 or max_images >= len(chosen):
        return chosen

    by_label: dict[str, list[ManifestRow]] = {}
    for row in chosen:
        by_label.setdefault(row.label, []).append(row)
    queues = [by_label[label] for label in sorted(by_label)]
    picked: set[int] = set()
    depth = 0
    while len(picked) < max_images:
        for queue in queues:
            if depth < len(queue) and len(picked) < max_images:
                picked.add(id(queue[depth]))
        depth += 1

    return [row for row in chosen if id(row) in picked]


def apply_label_fraction(
    rows: Sequence[ManifestRow], fraction: float, seed: int
) -> list[ManifestRow]:
    """Keep ``fraction`` of the labels per class (seeded); the rest become unlabelled.

    Stratified: each class keeps ``ceil(fraction * n_class)`` labels, so even a
    rare class keeps at least one. Rows are returned in their original order.
    """
    if fraction >= 1.0:
        return list(rows)

    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted({row.label for row in rows if row.label}):
        members = [i for i, row in enumerate(rows) if row.label == label]
        count = max(1, math.ceil(fraction * len(members)))
        keep.update(int(i) for i in rng.choice(members, size=count, replace=False))

    return [
        row if (i in keep or not row.label) else replace(row, label="")
        for i, row in enumerate(rows)
    ]


def class_weights(rows: Sequence[ManifestRow], labels: Sequence[str]) -> torch.Tensor:
    """Balanced CE weights ``n / (C * n_c)`` over the labelled rows (1 if absent)."""
    counts = Counter(row.label for row in rows if row.label)
    total = sum(counts.values())
    weights = [
        total / (len(labels) * counts[label]) if counts[label] else 1.0
        for label in labels
    ]

    return torch.tensor(weights, dtype=torch.float32)


def summarise(rows: Sequence[ManifestRow]) -> dict[str, dict[str, int]]:
    """Counts per split and label (``"unlabelled"`` for empty labels)."""
    summary: dict[str, dict[str, int]] = {}
    for row in rows:
        per_split = summary.setdefault(row.split, {})
        key = row.label or "unlabelled"
        per_split[key] = per_split.get(key, 0) + 1

    return summary


def load_pixels(path: Path) -> np.ndarray:
    """Decode one image file to a 2-D float32 array with the service's decoder."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read an image file: {error.strerror}") from error

    media_type = MEDIA_TYPES.get(path.suffix.lower())
    try:
        decoded = decode(data, media_type)
    except InputError as error:
        raise DataError(f"an image cannot be decoded: {error}") from error

    return decoded.pixels.astype(np.float32, copy=False)


def square_resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """The first two preprocessing steps (pad to square, resize), as the service."""
    return resize(pad_to_square(pixels.astype(np.float32, copy=False)), size)


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random train-time changes (see :class:`TrainConfig`)."""

    max_rotation_deg: float = 7.0
    max_scale: float = 0.07
    max_translate: float = 0.05
    max_brightness: float = 0.08
    max_contrast: float = 0.12
    max_gamma: float = 0.15

    @classmethod
    def from_config(cls, config: TrainConfig) -> Augmentation:
        """The augmentation ranges named in a training config."""
        return cls(
            max_rotation_deg=config.max_rotation_deg,
            max_scale=config.max_scale,
            max_translate=config.max_translate,
            max_brightness=config.max_brightness,
            max_contrast=config.max_contrast,
            max_gamma=config.max_gamma,
        )

    def geometric(self, square: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rotate, zoom and shift a square image about its centre; fill = minimum."""
        side = square.shape[0]
        angle = math.radians(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
        scale = 1.0 + rng.uniform(-self.max_scale, self.max_scale)
        shift_x, shift_y = (
            rng.uniform(-self.max_translate, self.max_translate, 2) * side
        )

        # Pillow wants the inverse map: output (x, y) -> input position.
        centre = (side - 1) / 2.0
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        a, b = cos, sin
        d, e = -sin, cos
        out_x, out_y = centre + shift_x, centre + shift_y
        c = centre - a * out_x - b * out_y
        f = centre - d * out_x - e * out_y
        moved = Image.fromarray(square, mode="F").transform(
            (side, side),
            Image.Transform.AFFINE,
            (a, b, c, d, e, f),
            resample=Image.Resampling.BILINEAR,
            fillcolor=float(square.min()),
        )

        return np.asarray(moved, dtype=np.float32)

    def photometric(self, image01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gamma, contrast about mid-grey and brightness on a [0, 1] image."""
        gamma = math.exp(rng.uniform(-self.max_gamma, self.max_gamma))
        contrast = 1.0 + rng.uniform(-self.max_contrast, self.max_contrast)
        brightness = rng.uniform(-self.max_brightness, self.max_brightness)

        changed = (np.power(image01, gamma) - 0.5) * contrast + 0.5 + brightness

        return np.clip(changed, 0.0, 1.0).astype(np.float32)


class CxrDataset(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """Preloaded manifest rows as ``(image (3, S, S), label index, teacher logits)``.

    ``label index`` is :data:`UNLABELLED` (-1) for rows without a label;
    ``teacher logits`` is a ``(C,)`` tensor, zeros when no soft labels were given.
    Augmentation draws from a generator seeded by ``(seed, epoch, index)``, so a
    sample is reproducible whatever the loader order or process count.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        labels: Sequence[str],
        input_size: int = 224,
        augmentation: Augmentation | None = None,
        teacher_logits: np.ndarray | None = None,
        seed: int = 0,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        self.rows = list(rows)
        self.labels = tuple(labels)
        self.config = preprocess or PreprocessConfig(size=input_size)
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        if teacher_logits is not None and teacher_logits.shape != (
            len(self.rows),
            len(self.labels),
        ):
            raise DataError(
                f"teacher logits must have shape {(len(self.rows), len(self.labels))}, "
                f"got {teacher_logits.shape}"
            )
        self.teacher_logits = (
            torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
            if teacher_logits is not None
            else None
        )
        index = {label: i for i, label in enumerate(self.labels)}
        self.targets = [index[row.label] if row.label else UNLABELLED for row in rows]

        # Decode, pad and resize every image once (the costly, fixed part).
        self._squares = []
        for number, row in enumerate(self.rows):
            try:
                pixels = load_pixels(row.image)
            except DataError as error:
                raise DataError(f"dataset row {number}: {error}") from error
            self._squares.append(square_resized(pixels, self.config.size))

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draws of this epoch."""
        self.epoch = epoch

    def image(self, index: int) -> np.ndarray:
        """The model input ``(3, S, S)`` of row ``index`` (augmented if enabled)."""
        square = self._squares[index]
        if self.augmentation is None:
            return to_model_layout(normalise_intensity(square), self.config)

        rng = np.random.default_rng([self.seed, self.epoch, index])
        moved = self.augmentation.geometric(square, rng)
        image01 = self.augmentation.photometric(normalise_intensity(moved), rng)

        return to_model_layout(image01, self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        teacher = (
            self.teacher_logits[index]
            if self.teacher_logits is not None
            else torch.zeros(len(self.labels))
        )

        return torch.from_numpy(self.image(index)), self.targets[index], teacher
