"""Images and findings for training and evaluating the teacher.

Rows come from a manifest in the format of ``../shared/data/cxr3/manifest.csv``
(``image``, ``label``, ``split``, ``findings``, ``source``, ``view``,
``sha256``). Every image takes the service's path: ``app.decode.decode`` then
``app.preprocess.preprocess`` at the teacher's input size.

Training never updates the teacher's first MobileNetV2 blocks, so their output
is computed once per image and cached on disk (fp16), keyed by the images'
digests, the input size, the number of frozen blocks and the preprocessing
version; a resumed or repeated run skips the expensive part.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from app.preprocess import PREPROCESS_VERSION, PreprocessConfig, preprocess
from training.errors import DataError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "label", "split")


@dataclass(frozen=True)
class TeacherRow:
    """One manifest image with what the teacher needs to know about it."""

    image: Path
    label: str
    split: str
    findings: str
    source: str = ""
    view: str = ""
    sha256: str = ""


def read_rows(manifest: Path, splits: Sequence[str] | None = None) -> list[TeacherRow]:
    """Labelled rows of ``manifest`` in file order, optionally only some splits."""
    if not manifest.is_file():
        raise DataError(f"manifest not found at {manifest}: expected a CSV file")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"manifest {manifest} lacks columns {missing}")
        records = list(reader)

    rows = [
        TeacherRow(
            image=manifest.parent / record["image"],
            label=record["label"].strip(),
            split=record["split"].strip(),
            findings=(record.get("findings") or record["label"]).strip(),
            source=(record.get("source") or "").strip(),
            view=(record.get("view") or "").strip(),
            sha256=(record.get("sha256") or "").strip(),
        )
        for record in records
        if record["label"].strip()
    ]
    if splits is not None:
        rows = [row for row in rows if row.split in splits]
    if not rows:
        raise DataError(f"no labelled rows for splits {splits} in {manifest}")

    return rows


def _pillow_pixels(data: bytes) -> np.ndarray:
    """8-bit gray PNG -> float32; the manifest's PNGs decode the same either way."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image could not be decoded: {error}") from error


def load_pixels(path: Path) -> np.ndarray:
    """Decode one image file to a 2-D float32 array with the service's decoder.

    Falls back to Pillow only while ``app.decode.decode`` is still a stub.
    """
    from app import decode as decode_module
    from app.errors import InputError

    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error.strerror}") from error

    try:
        return decode_module.decode(data).pixels.astype(np.float32, copy=False)
    except NotImplementedError:
        return _pillow_pixels(data)
    except InputError as error:
        raise DataError(
            f"image {path.name} was refused by the decoder: {error}"
        ) from error


def preprocess_rows(rows: Sequence[TeacherRow], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` float32 inputs for ``rows``, as the service makes them."""
    config = PreprocessConfig(size=size)
    arrays = [preprocess(load_pixels(row.image), config) for row in rows]

    return torch.from_numpy(np.stack(arrays))


def cache_key(rows: Sequence[TeacherRow], tag: str) -> str:
    """Digest of the images (sha256 or path) plus ``tag`` and the preprocessing."""
    digest = hashlib.sha256(f"{tag}|{PREPROCESS_VERSION}".encode())
    for row in rows:
        digest.update((row.sha256 or str(row.image)).encode() + b"\n")

    return digest.hexdigest()[:24]


def cached_features(
    rows: Sequence[TeacherRow],
    size: int,
    encode: Callable[[torch.Tensor], torch.Tensor],
    cache_dir: Path | None,
    tag: str,
    chunk: int = 16,
    desc: str = "images",
) -> torch.Tensor:
    """``encode`` applied to every preprocessed image, cached on disk as fp16.

    ``tag`` must name everything ``encode`` depends on besides the images
    (architecture, frozen blocks, weights), or a stale cache would be reused.
    """
    path = None
    if cache_dir is not None:
        path = cache_dir / f"features-{cache_key(rows, f'{tag}|{size}')}.pt"
        if path.is_file():
            logger.info("reusing cached features for %d %s", len(rows), desc)
            return torch.load(path, weights_only=True).float()

    outputs = []
    for start in tqdm(range(0, len(rows), chunk), desc=f"encoding {desc}", leave=False):
        batch = preprocess_rows(rows[start : start + chunk], size)
        with torch.no_grad():
            outputs.append(encode(batch).to(torch.float16))
    features = torch.cat(outputs)

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, path)

    return features.float()
