"""Start-up self-test: one tiny generated image of every DICOM syntax vlkd claims.

Each image is a 32 x 32 synthetic gradient (no patient data), encoded here in
code: native syntaxes by pydicom's writer, RLE / JPEG 2000 / JPEG-LS by
pydicom's encoders (pylibjpeg-rle, pylibjpeg-openjpeg, pyjpegls), JPEG baseline
and extended by Pillow (8-bit samples, which the extended process allows), and
JPEG lossless by the small Huffman encoder below (no installed library encodes
it). The decoded stored values must equal the originals exactly for lossless
syntaxes and be within a few grey levels for lossy ones.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from app.dicom import decode_dicom, supported_transfer_syntaxes

logger = logging.getLogger(__name__)

_SIZE = 32
_LOSSY_TOLERANCE = {JPEGBaseline8Bit: 8.0, JPEGExtended12Bit: 8.0, JPEG2000: 64.0}
_LOSSY_TOLERANCE[JPEGLSNearLossless] = 2.0


def sample_pixels(bits: int) -> np.ndarray:
    """A 32 x 32 diagonal gradient using most of the ``bits`` range."""
    ramp = np.add.outer(np.arange(_SIZE), np.arange(_SIZE)).astype(np.float64)
    scaled = ramp / ramp.max() * ((1 << bits) - 1) * 0.9

    return scaled.astype(np.uint16 if bits > 8 else np.uint8)


def _dataset(pixels: np.ndarray, bits: int, syntax: UID) -> Dataset:
    """A minimal Secondary Capture MONOCHROME2 dataset around ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()

    return ds


def _write(ds: Dataset, syntax: UID) -> bytes:
    """Serialise ``ds`` as a Part 10 file in ``syntax``."""
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    return buffer.getvalue()


def _native(syntax: UID) -> tuple[bytes, np.ndarray]:
    """A 12-bit image in a native (uncompressed) syntax."""
    pixels = sample_pixels(12)
    ds = _dataset(pixels, 12, syntax)
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = pixels.astype(">u2").tobytes()

    return _write(ds, syntax), pixels


def _pydicom_encoded(
    syntax: UID, bits: int, **options: Any
) -> tuple[bytes, np.ndarray]:
    """An image compressed by pydicom's encoder plugins."""
    pixels = sample_pixels(bits)
    ds = _dataset(pixels, bits, ExplicitVRLittleEndian)
    ds.compress(syntax, pixels, generate_instance_uid=False, **options)

    return _write(ds, syntax), pixels


def _pillow_jpeg(syntax: UID) -> tuple[bytes, np.ndarray]:
    """An 8-bit JPEG written by Pillow, wrapped as encapsulated pixel data."""
    pixels = sample_pixels(8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    ds = _dataset(pixels, 8, syntax)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"

    return _write(ds, syntax), pixels


def _lossless_jpeg(syntax: UID) -> tuple[bytes, np.ndarray]:
    """A 12-bit lossless JPEG (process 14, predictor 1) from our own encoder."""
    pixels = sample_pixels(12)
    ds = _dataset(pixels, 12, syntax)
    ds.PixelData = encapsulate([encode_lossless_jpeg(pixels, precision=12)])
    ds["PixelData"].VR = "OB"

    return _write(ds, syntax), pixels


def encode_lossless_jpeg(pixels: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D unsigned array as lossless JPEG, predictor 1, one component.

    Huffman table: the 17 difference categories all get 5-bit codes, which is
    valid (if not optimal) and keeps the encoder tiny.
    """
    rows, columns = pixels.shape
    values = pixels.astype(np.int64)

    bits = _BitWriter()
    for row in range(rows):
        for column in range(columns):
            if row == 0 and column == 0:
                predicted = 1 << (precision - 1)
            elif row == 0 or column > 0:
                predicted = int(values[row, column - 1])
            else:
                predicted = int(values[row - 1, column])
            difference = int(values[row, column]) - predicted
            category = abs(difference).bit_length()
            bits.write(category, 5)
            if category and category < 16:
                extra = difference if difference > 0 else difference - 1
                bits.write(extra & ((1 << category) - 1), category)

    huffman = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    frame = bytes([precision]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big")
    frame += bytes([1, 1, 0x11, 0])
    scan = bytes([1, 1, 0x00, 1, 0, 0])

    return (
        b"\xff\xd8"
        + _segment(0xC4, huffman)
        + _segment(0xC3, frame)
        + _segment(0xDA, scan)
        + bits.flush()
        + b"\xff\xd9"
    )


def _segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment (marker, 2-byte length, payload)."""
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


class _BitWriter:
    """MSB-first bit packer with JPEG's 0xFF byte stuffing and 1-bit padding."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._accumulator = 0
        self._count = 0

    def write(self, value: int, length: int) -> None:
        """Append the low ``length`` bits of ``value``."""
        self._accumulator = (self._accumulator << length) | (
            value & ((1 << length) - 1)
        )
        self._count += length
        while self._count >= 8:
            self._count -= 8
            byte = (self._accumulator >> self._count) & 0xFF
            self._out.append(byte)
            if byte == 0xFF:
                self._out.append(0x00)
        self._accumulator &= (1 << self._count) - 1

    def flush(self) -> bytes:
        """Pad the last byte with 1 bits and return everything written."""
        if self._count:
            self.write((1 << (8 - self._count)) - 1, 8 - self._count)

        return bytes(self._out)


_GENERATORS: dict[UID, Callable[[], tuple[bytes, np.ndarray]]] = {
    ImplicitVRLittleEndian: lambda: _native(ImplicitVRLittleEndian),
    ExplicitVRLittleEndian: lambda: _native(ExplicitVRLittleEndian),
    ExplicitVRBigEndian: lambda: _native(ExplicitVRBigEndian),
    DeflatedExplicitVRLittleEndian: lambda: _native(DeflatedExplicitVRLittleEndian),
    JPEGBaseline8Bit: lambda: _pillow_jpeg(JPEGBaseline8Bit),
    JPEGExtended12Bit: lambda: _pillow_jpeg(JPEGExtended12Bit),
    JPEGLossless: lambda: _lossless_jpeg(JPEGLossless),
    JPEGLosslessSV1: lambda: _lossless_jpeg(JPEGLosslessSV1),
    JPEGLSLossless: lambda: _pydicom_encoded(JPEGLSLossless, 12),
    JPEGLSNearLossless: lambda: _pydicom_encoded(JPEGLSNearLossless, 12, jls_error=2),
    JPEG2000Lossless: lambda: _pydicom_encoded(JPEG2000Lossless, 12),
    JPEG2000: lambda: _pydicom_encoded(JPEG2000, 12, j2k_cr=[5]),
    RLELossless: lambda: _pydicom_encoded(RLELossless, 12),
}


def generate_sample(syntax: UID) -> tuple[bytes, np.ndarray]:
    """(Part 10 bytes, stored values) of the tiny test image for ``syntax``."""
    return _GENERATORS[syntax]()


def run_self_test() -> dict[str, bool]:
    """Decode every claimed syntax's sample; transfer syntax name -> passed."""
    results: dict[str, bool] = {}
    for syntax in supported_transfer_syntaxes():
        try:
            encoded, expected = generate_sample(syntax)
            decoded = decode_dicom(
                encoded, max_pixels=1 << 20, max_inflated_bytes=1 << 20
            )
            error = np.abs(decoded.pixels - expected.astype(np.float32)).max()
            passed = bool(error <= _LOSSY_TOLERANCE.get(syntax, 0.0))
        except Exception:  # a failing plugin must show up as False, not crash start-up
            logger.exception("self-test of %s raised", syntax.name)
            passed = False
        if not passed:
            logger.warning("self-test failed for DICOM syntax %s", syntax.name)
        results[syntax.name] = passed

    return results
