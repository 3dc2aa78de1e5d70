"""PNG and JPEG bytes to a float grayscale image, with vlkd's own pixel cap.

The image size is read from the PNG IHDR chunk or the JPEG SOF marker by this
module, before Pillow opens the file, and checked against ``max_pixels``: a
decompression bomb is refused without decoding a single row, whatever Pillow's
process-wide ``MAX_IMAGE_PIXELS`` happens to be. Pillow's own
``DecompressionBombWarning`` is turned into an error as a second line.

Value range emitted: the stored sample values, no rescaling (``app.preprocess``
normalises intensity): 0..255 for 8-bit images, 0..65535 for 16-bit grayscale
(Pillow's ``I;16`` keeps its full range). Colour (RGB, RGBA, CMYK, YCbCr), palette
(``P``, ``PA``), 1-bit and gray + alpha (``LA``) images become gray with Pillow's
own ITU-R 601 integer luma, so the result equals ``Image.convert("L")``; alpha
is ignored.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from app.errors import PayloadTooLargeError, UnprocessableImageError

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Second line of defence behind the header check below: Pillow's own warning
# becomes an exception (raised inside Image.open and converted to a 413 here).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# SOF markers that carry the frame size (every SOFn except DHT, JPG and DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

# Pillow's "L" conversion weights, in 1/65536: L = (R*19595 + G*38470 + B*7471) >> 16.
_LUMA_WEIGHTS = np.asarray([19595, 38470, 7471], dtype=np.uint32)
_IDENTITY = np.arange(256, dtype=np.float32)


@dataclass
class RasterResult:
    """What :func:`decode_raster` hands back to ``app.decode``."""

    pixels: np.ndarray
    header: dict[str, str]
    warnings: list[str]


def header_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from the PNG IHDR or the first JPEG SOF; 422 if absent."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise UnprocessableImageError("the PNG has no IHDR header chunk")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")

    return _jpeg_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the first SOF."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise UnprocessableImageError("the JPEG marker structure is malformed")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length
            position += 2
            continue

        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or position + 9 > len(data):
                break
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height
        if marker in (0xD9, 0xDA) or length < 2:  # EOI or scan before any SOF
            break
        position += 2 + length

    raise UnprocessableImageError("the JPEG has no frame header (SOF); it is truncated")


def decode_raster(data: bytes, kind: str, max_pixels: int) -> RasterResult:
    """Decode a PNG or JPEG (``kind`` is "png" or "jpeg") to float32 gray pixels."""
    width, height = header_size(data, kind)
    _check_size(width, height, max_pixels)

    image = _open(data, kind)
    notes: list[str] = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"the {kind.upper()} has several frames; the first was used")

    try:
        image.load()
        if kind == "jpeg":
            image = ImageOps.exif_transpose(image)
        pixels = _to_gray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(
            f"the image is larger than Pillow's decompression-bomb cap "
            f"(limit {max_pixels} pixels)"
        ) from exc
    except UnprocessableImageError:
        raise
    except Exception as exc:
        raise UnprocessableImageError(
            f"the {kind.upper()} pixel data is truncated or corrupt"
        ) from exc

    if pixels.shape != (height, width) and kind == "png":
        raise UnprocessableImageError("the PNG's pixels do not match its header size")
    header = {
        "format": kind,
        "mode": str(image.mode),
        "rows": str(pixels.shape[0]),
        "columns": str(pixels.shape[1]),
    }

    return RasterResult(pixels=pixels, header=header, warnings=notes)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """413 above the pixel cap, 422 for an empty image; before any decoding."""
    if width <= 0 or height <= 0:
        raise UnprocessableImageError(f"the image header says {width} x {height} px")
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width} x {height} = {width * height} pixels; "
            f"the limit is {max_pixels}"
        )


def _open(data: bytes, kind: str) -> Image.Image:
    """Open lazily with exactly the sniffed format's plugin."""
    try:
        return Image.open(io.BytesIO(data), formats=[kind.upper()])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(
            "the image is larger than Pillow's decompression-bomb cap"
        ) from exc
    except Exception as exc:
        raise UnprocessableImageError(
            f"the {kind.upper()} header is malformed"
        ) from exc


def _to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to a 2-D float32 array of gray values (see module doc)."""
    mode = image.mode

    if mode in ("L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.asarray(image).astype(np.float32)

    if mode in ("P", "PA"):
        return _palette_gray(image)

    if mode == "LA":
        return np.asarray(image.getchannel(0)).astype(np.float32)

    if mode not in ("RGB", "RGBA", "RGBX"):
        image = image.convert("RGB")
    rgb = np.asarray(image)[..., :3].astype(np.uint32)
    luma = (rgb @ _LUMA_WEIGHTS + 0x8000) >> 16

    return luma.astype(np.float32)


def _palette_gray(image: Image.Image) -> np.ndarray:
    """Gray through a 256-entry lookup table built from the palette."""
    palette = image.getpalette("RGB") or []
    table = np.zeros((256, 3), dtype=np.uint32)
    entries = np.asarray(palette, dtype=np.uint32).reshape(-1, 3)[:256]
    table[: len(entries)] = entries
    lut = ((table @ _LUMA_WEIGHTS + 0x8000) >> 16).astype(np.float32)

    indices = np.asarray(image.getchannel(0) if image.mode == "PA" else image)
    if np.array_equal(lut, _IDENTITY):  # a plain gray ramp: ~40x faster than lut[]
        return indices.astype(np.float32)

    return lut[indices]
