"""Bytes in, a float image out: PNG, JPEG and DICOM decoding in one place.

The bytes decide the format, not the declared media type: the PNG signature,
the JPEG start-of-image marker, ``DICM`` at offset 128, or a bare DICOM dataset
(no preamble, no file meta) that pydicom parses cleanly. A declared type that
disagrees with the bytes is not an error (PACS senders often label everything
``application/octet-stream`` or ``application/dicom``): the real format is
decoded and a warning says what was declared. Bytes that are none of the three
formats get 415.

Every failure is an ``app.errors.InputError`` subclass: 413 over a size or pixel
limit, 415 for an unknown format or an undecodable transfer syntax, 422 for a
known format with unusable content (empty, truncated, no pixels, several frames,
blank). Library exceptions are converted where they enter vlkd's code; see
``docs/decoding.md`` for the full list.

Output: ``DecodedImage.pixels`` is 2-D float32 in display sense (higher is
brighter), in the image's own units: stored values for PNG / JPEG (0..255 or
0..65535), and for DICOM [0, 1] after a window, the LUT range after a VOI LUT,
or modality units otherwise (see ``app.dicom``). ``app.preprocess`` normalises
intensity afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from app.dicom import decode_dicom, looks_like_bare_dataset
from app.dicom import supported_transfer_syntaxes as _dicom_syntaxes
from app.errors import (
    InputError,
    PayloadTooLargeError,
    UnprocessableImageError,
    UnsupportedMediaError,
)
from app.raster import JPEG_SIGNATURE, PNG_SIGNATURE, decode_raster

logger = logging.getLogger(__name__)

# Declared media types that say nothing about the format; the bytes decide.
_GENERIC_TYPES = frozenset(
    {"", "application/octet-stream", "binary/octet-stream", "multipart/form-data"}
)
_DECLARED_FORMAT = {
    "image/png": "png",
    "image/x-png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "application/dicom": "dicom",
    "application/dicom+binary": "dicom",
}

# Largest sample used for the blank-image check; strided, so it stays cheap.
_BLANK_CHECK_SAMPLES = 262_144


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before pixels are decoded.

    ``max_pixels`` counts Rows x Columns x SamplesPerPixel x frames for DICOM and
    width x height for PNG / JPEG; ``max_inflated_bytes`` caps a Deflated DICOM
    body once inflated.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_inflated_bytes: int = 128 * 1024 * 1024


@dataclass
class DecodedImage:
    """A decoded grayscale image ready for ``app.preprocess.preprocess``.

    ``pixels`` is 2-D float32, display-oriented (MONOCHROME2 sense: higher is
    brighter), after the modality LUT and VOI window for DICOM. ``header`` holds
    only non-identifying acquisition fields that the not-assessable gate uses
    (``modality``, ``body_part``, ``view_position``, ``photometric``,
    ``transfer_syntax``, ``bits_stored``, ``rows``, ``columns`` for DICOM;
    ``format``, ``mode``, ``rows``, ``columns`` for PNG / JPEG); never names,
    ids, UIDs or dates.
    """

    pixels: np.ndarray
    source_format: str  # "png" | "jpeg" | "dicom"
    warnings: list[str] = field(default_factory=list)
    header: dict[str, str] = field(default_factory=dict)


def supported_transfer_syntaxes() -> list[str]:
    """DICOM transfer syntax UIDs this installation decodes."""
    return [str(uid) for uid in _dicom_syntaxes()]


def self_test() -> dict[str, bool]:
    """Decode one tiny generated image of every claimed syntax; name -> passed."""
    from app.dicom_selftest import run_self_test

    return run_self_test()


def sniff(data: bytes) -> str | None:
    """The real format of ``data`` ("png", "jpeg", "dicom") or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if looks_like_bare_dataset(data):
        return "dicom"

    return None


def decode(
    data: bytes, media_type: str | None = None, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode one upload; raise only ``app.errors.InputError`` subclasses on bad input.

    ``media_type`` is the declared Content-Type when the client sent one; the
    bytes' own signature decides the format in every case (see module doc).
    """
    limits = limits or DecodeLimits()
    try:
        image = _decode(bytes(data), media_type, limits)
    except InputError as exc:
        logger.debug("decode rejected: %s (%s)", exc.reason, type(exc).__name__)
        raise
    except MemoryError as exc:
        raise PayloadTooLargeError("the image needs more memory than allowed") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # incl. pyo3 PanicException from native plugins
        # FIXME: a library error that slipped past the converters below; the
        # fuzz tests hunt these. Reported as 422 without the library's text.
        logger.warning("decode failed unexpectedly: %s", type(exc).__name__)
        raise UnprocessableImageError("the image could not be decoded") from exc

    return image


def _decode(data: bytes, media_type: str | None, limits: DecodeLimits) -> DecodedImage:
    """Sniff, check the limits, decode, then refuse blank results."""
    if len(data) == 0:
        raise UnprocessableImageError("the upload is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(
            f"the upload is {len(data)} bytes; the limit is {limits.max_bytes}"
        )

    kind = sniff(data)
    if kind is None:
        raise UnsupportedMediaError(
            "expected PNG, JPEG or DICOM; the bytes are none of these"
        )
    notes = _declared_mismatch(media_type, kind)

    if kind == "dicom":
        result = decode_dicom(data, limits.max_pixels, limits.max_inflated_bytes)
        pixels, header, warnings = result.pixels, result.header, result.warnings
    else:
        raster = decode_raster(data, kind, limits.max_pixels)
        pixels, header, warnings = raster.pixels, raster.header, raster.warnings

    _check_not_blank(pixels)

    return DecodedImage(
        pixels=pixels,
        source_format=kind,
        warnings=notes + warnings,
        header=header,
    )


def _declared_mismatch(media_type: str | None, kind: str) -> list[str]:
    """A warning when the declared media type names another format than the bytes."""
    declared = (media_type or "").split(";")[0].strip().lower()
    if declared in _GENERIC_TYPES:
        return []

    declared_kind = _DECLARED_FORMAT.get(declared)
    if declared_kind == kind:
        return []
    shown = declared if declared_kind else "another media type"

    return [f"declared as {shown} but the content is {kind.upper()}; decoded as such"]


def _check_not_blank(pixels: np.ndarray) -> None:
    """422 for a non-finite, constant or near-blank image.

    Near-blank means the 0.5th and 99.5th percentiles of a strided sample are
    equal, i.e. about 99 % of the image is one value: ``app.preprocess`` would
    turn it into an all-zero tensor, so there is nothing to classify.
    """
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise UnprocessableImageError(
            f"expected a 2-D image of at least 2 x 2 px, got shape {pixels.shape}"
        )

    step = max(1, int(np.sqrt(pixels.size / _BLANK_CHECK_SAMPLES)))
    sample = pixels[::step, ::step]
    if not np.isfinite(sample).all():
        raise UnprocessableImageError("the decoded image has non-finite values")

    low, high = np.percentile(sample, [0.5, 99.5])
    scale = max(1.0, float(np.abs(sample).max()))
    if high - low <= 1e-6 * scale:
        raise UnprocessableImageError(
            "the decoded image is blank or constant; nothing to classify"
        )
