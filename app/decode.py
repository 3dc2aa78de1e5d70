"""Bytes in, a float image out: PNG, JPEG and DICOM decoding in one place.

INTERFACE STUB written first so the service and the decoder can be built in
parallel; the decode work replaces the body of :func:`decode` and may add
private helpers or sibling modules (e.g. ``app/dicom.py``), keeping these
public names and signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before pixels are decoded."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclass
class DecodedImage:
    """A decoded grayscale image ready for ``app.preprocess.preprocess``.

    ``pixels`` is 2-D float32, display-oriented (MONOCHROME2 sense: higher is
    brighter), after the modality LUT and VOI window for DICOM. ``header`` holds
    only non-identifying acquisition fields that the not-assessable gate uses
    (``modality``, ``body_part``, ``view_position``, ``photometric``,
    ``transfer_syntax``); never names, ids, UIDs or dates.
    """

    pixels: np.ndarray
    source_format: str  # "png" | "jpeg" | "dicom"
    warnings: list[str] = field(default_factory=list)
    header: dict[str, str] = field(default_factory=dict)


def decode(
    data: bytes, media_type: str | None = None, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode one upload; raise only ``app.errors.InputError`` subclasses on bad input.

    ``media_type`` is the declared Content-Type when the client sent one; the
    bytes' own signature decides when it is missing or generic
    (``application/octet-stream``).
    """
    raise NotImplementedError("app.decode.decode is being implemented")
