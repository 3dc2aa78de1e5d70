"""PNG / JPEG decoding: bit depth, colour modes, bombs, truncation (issue 6.9-6.11)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.decode import decode
from app.errors import PayloadTooLargeError, UnprocessableImageError
from app.preprocess import PreprocessConfig, preprocess
from app.raster import decode_raster, header_size

CONFIG = PreprocessConfig(size=224)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """``image`` saved to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)

    return buffer.getvalue()


def picture(shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A smooth synthetic picture in [0, 1]."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    wave = np.sin(rows / 9.0) + np.cos(columns / 13.0) + rows / shape[0]

    return (wave - wave.min()) / (wave.max() - wave.min())


def single_colour_png(width: int, height: int) -> bytes:
    """A valid all-zero 8-bit gray PNG, built row-compressed without a big buffer."""
    deflater = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + samples
    rows_per_chunk = max(1, (8 << 20) // len(row))
    parts = []
    for start in range(0, height, rows_per_chunk):
        parts.append(deflater.compress(row * min(rows_per_chunk, height - start)))
    parts.append(deflater.flush())
    idat = b"".join(parts)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


# --- issue 6.9: 16-bit PNG keeps its full range -------------------------------


@pytest.mark.parametrize("top", [4095, 65535])
def test_decode_16_bit_png_keeps_full_range(top: int) -> None:
    """A 16-bit gray PNG with values up to ``top`` is not clamped at 255."""
    values = np.round(picture() * top).astype(np.uint16)
    data = encode(Image.fromarray(values))

    pixels = decode(data, "image/png").pixels

    assert pixels.max() == top
    np.testing.assert_array_equal(pixels, values.astype(np.float32))


def test_decode_16_bit_renderings_give_same_tensor() -> None:
    """The 0-4095 and 0-65535 renderings of one picture preprocess alike."""
    base = picture((300, 260))
    twelve = encode(Image.fromarray(np.round(base * 4095).astype(np.uint16)))
    sixteen = encode(Image.fromarray(np.round(base * 65535).astype(np.uint16)))

    tensor12 = preprocess(decode(twelve).pixels, CONFIG)
    tensor16 = preprocess(decode(sixteen).pixels, CONFIG)

    np.testing.assert_allclose(tensor12, tensor16, atol=5e-3)


# --- colour modes -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "1", "I;16"])
def test_decode_colour_modes_equal_pillow_gray(mode: str) -> None:
    """RGB, RGBA, LA, palette and 1-bit PNGs decode to Pillow's own "L" values."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8), "RGB")
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(64)
    expected = np.asarray(
        image.convert("L") if mode != "I;16" else image, dtype=np.float32
    )

    pixels = decode(encode(image)).pixels

    np.testing.assert_array_equal(pixels, expected)


def test_decode_palette_png_uses_palette_luma_not_indices() -> None:
    """A palette PNG whose indices run opposite to brightness decodes by colour."""
    indices = (picture((32, 32)) * 255).astype(np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette([v for level in range(256) for v in (255 - level,) * 3])

    pixels = decode(encode(image)).pixels

    np.testing.assert_array_equal(pixels, 255.0 - indices.astype(np.float32))


def test_decode_fullsize_palette_png_matches_convert_l(shared_data: Path) -> None:
    """The 2048 x 2048 JSRT palette PNG decodes to the same values as convert("L")."""
    path = sorted((shared_data / "fullsize").glob("JPC*.png"))[0]
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32)

    pixels = decode(path.read_bytes()).pixels

    np.testing.assert_array_equal(pixels, expected)


# --- issue 6.10: decompression bombs ------------------------------------------


@pytest.mark.parametrize("size", [(10_000, 9_000), (20_000, 10_000)])
def test_decode_rejects_single_colour_png_bomb_before_decoding(
    size: tuple[int, int],
) -> None:
    """10000 x 9000 and 20000 x 10000 single-colour PNGs are 413 in milliseconds."""
    data = single_colour_png(*size)

    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(PayloadTooLargeError) as caught:
        decode(data, "image/png")
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert "limit is 50000000" in caught.value.detail
    assert elapsed < 0.5
    assert peak < 2 * len(data) + (1 << 20)


def test_decode_cap_does_not_rely_on_pillow_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Pillow's own bomb check switched off, vlkd's cap still refuses."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = encode(Image.new("L", (300, 200)))

    with pytest.raises(PayloadTooLargeError):
        decode_raster(data, "png", max_pixels=50_000)


def test_header_size_reads_jpeg_sof_after_other_segments() -> None:
    """The JPEG size comes from the SOF marker, past APP / DQT / EXIF segments."""
    image = Image.fromarray((picture((70, 90)) * 255).astype(np.uint8))
    data = encode(image, "JPEG", quality=90, exif=Image.Exif())

    width, height = header_size(data, "jpeg")

    assert (width, height) == (90, 70)


# --- issue 6.11: truncation, empty upload -------------------------------------


def test_decode_rejects_jpeg_cut_at_half_with_422() -> None:
    """A JPEG cut at 50 % is a 422, never a partly grey image."""
    image = Image.fromarray((picture((256, 256)) * 255).astype(np.uint8))
    data = encode(image, "JPEG", quality=95)

    with pytest.raises(UnprocessableImageError, match="truncated or corrupt"):
        decode(data[: len(data) // 2], "image/jpeg")


def test_decode_rejects_png_cut_at_half_with_422() -> None:
    """A PNG cut in the middle of its pixel data is a 422."""
    data = encode(Image.fromarray((picture((256, 256)) * 255).astype(np.uint8)))

    with pytest.raises(UnprocessableImageError):
        decode(data[: len(data) // 2], "image/png")


def test_decode_rejects_zero_bytes_with_422() -> None:
    """A 0-byte upload is a 422 that says it is empty."""
    with pytest.raises(UnprocessableImageError, match="empty"):
        decode(b"", "image/jpeg")


def test_decode_rejects_uniform_png_with_422() -> None:
    """A uniform grey PNG is refused as blank after decoding."""
    data = encode(Image.new("L", (64, 64), color=128))

    with pytest.raises(UnprocessableImageError, match="blank"):
        decode(data)
