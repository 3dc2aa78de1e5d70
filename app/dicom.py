"""DICOM bytes to a display-sense float image, checked before any pixel is decoded.

The steps, in order:

1. parse the dataset with pydicom (a ``DICM`` file, or a bare dataset without
   preamble and file meta); a Deflated body is inflated here with a bounded
   decompressor instead of pydicom's unbounded one;
2. refuse what cannot be a single displayable radiograph before touching the
   pixels: raw detector data (FOR PROCESSING), no pixel data, a transfer syntax
   without a decoder (415 naming it), Rows x Columns x SamplesPerPixel x frames
   over the pixel cap (413), more than one frame, pixel data whose length or
   codestream end does not match the header (422);
3. decode the stored values (pydicom + pylibjpeg plugins), keep only the
   ``BitsStored`` low bits (masked, or sign-extended when signed);
4. Modality LUT (Rescale Slope / Intercept or Modality LUT Sequence), then VOI
   (first window of several, or VOI LUT Sequence), then MONOCHROME1 inversion,
   exactly once and last.

Value range emitted (``app.preprocess`` normalises intensity afterwards):

- with a window: [0, 1] (LINEAR, LINEAR_EXACT or SIGMOID);
- with a VOI LUT Sequence: the LUT's output range [0, 2**bits - 1];
- with neither: modality units (stored value x slope + intercept).

MONOCHROME1 inversion maps a value ``v`` to ``low + high - v`` where
``[low, high]`` is the nominal output range of the step before it (the window's
[0, 1], the LUT's [0, 2**bits - 1], or the modality-transformed range of the
``BitsStored`` values). The inverted image therefore covers the same range, and
a MONOCHROME1 file is the exact inverse of its MONOCHROME2 twin.

No message raised here contains a tag value, a UID (other than a transfer
syntax's), a patient attribute or a library's own error text.
"""

from __future__ import annotations

import io
import logging
import re
import warnings as pywarnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import get_decoder, pixel_array
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
)

from app.errors import (
    PayloadTooLargeError,
    UnprocessableImageError,
    UnsupportedMediaError,
)

logger = logging.getLogger(__name__)

# pydicom warns (and may log) with the offending value when a tag is malformed;
# vlkd never wants a patient attribute in a warning or a log line, and reads
# leniently anyway, so value validation is switched off for reading.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
# Its UserWarnings (e.g. "End of file reached before delimiter") would reach the
# service's stderr; decoding reports problems through our own errors instead.
pywarnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

NATIVE_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)

# Every compressed syntax vlkd claims; app.dicom_selftest decodes one tiny
# image of each at start-up.
COMPRESSED_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# Syntaxes whose codestream must end with an EOI / EOC marker (0xFFD9).
_MARKER_TERMINATED: frozenset[str] = frozenset(
    str(uid) for uid in COMPRESSED_SYNTAXES if uid != RLELossless
)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CODE_STRING = re.compile(r"[^A-Z0-9 _]")
_INFLATE_CHUNK = 1 << 20
_BARE_GROUPS = frozenset({0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


@dataclass
class DicomResult:
    """What :func:`decode_dicom` hands back to ``app.decode``."""

    pixels: np.ndarray
    header: dict[str, str]
    warnings: list[str]


def supported_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes this installation decodes (claimed and with a plugin)."""
    supported = list(NATIVE_SYNTAXES)
    for uid in COMPRESSED_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                supported.append(uid)
        except Exception:  # an unknown decoder means unsupported
            continue

    return supported


def looks_like_bare_dataset(data: bytes) -> bool:
    """Whether ``data`` could be a DICOM dataset with no preamble or file meta.

    Only a cheap look at the first tag: its group must be one a real image
    dataset starts with. The real test is that pydicom parses it cleanly.
    """
    if len(data) < 8:
        return False
    group = int.from_bytes(data[0:2], "little")
    element = int.from_bytes(data[2:4], "little")

    return group in _BARE_GROUPS and element <= 0x00FF


def decode_dicom(data: bytes, max_pixels: int, max_inflated_bytes: int) -> DicomResult:
    """Decode one single-frame DICOM image to display-sense float32 pixels."""
    dataset, syntax = _parse(data, max_inflated_bytes)
    warnings = _content_warnings(dataset)

    try:
        _check_intent(dataset)
        pixel_bytes = _pixel_bytes(dataset)
        _check_syntax(syntax)
        geometry = _Geometry.from_dataset(dataset)
        _check_size(geometry, max_pixels)
        _check_pixel_length(pixel_bytes, geometry, syntax)

        stored = _decode_stored(dataset, geometry, syntax)
        image, _, _ = _to_display(stored, dataset, geometry, warnings)
    except UnprocessableImageError as error:
        # A refused image still tells the sender what its header says, e.g. that
        # it is not a chest image (the warnings hold sanitised codes only).
        if warnings:
            raise UnprocessableImageError(
                f"{error.detail} (also: {'; '.join(warnings)})"
            ) from error
        raise

    return DicomResult(
        pixels=image,
        header=_safe_header(dataset, geometry, syntax),
        warnings=warnings,
    )


# --- parsing -----------------------------------------------------------------


def _parse(data: bytes, max_inflated_bytes: int) -> tuple[Dataset, UID]:
    """Parse the dataset, inflating a Deflated body with a bounded decompressor."""
    is_part10 = len(data) >= 132 and data[128:132] == b"DICM"
    if not is_part10:
        return _parse_bare(data), ImplicitVRLittleEndian

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        body_start = stream.tell()
        syntax = UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    except Exception as exc:
        raise UnprocessableImageError(
            "the DICOM file meta information is malformed"
        ) from exc

    if syntax == DeflatedExplicitVRLittleEndian:
        body = data[body_start:]
        return _parse_deflated(body, max_inflated_bytes), syntax

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        _ = list(_walk(dataset))  # force every element to be read now
    except Exception as exc:
        raise UnprocessableImageError("the DICOM dataset is malformed") from exc

    return dataset, syntax


def _parse_bare(data: bytes) -> Dataset:
    """Parse a dataset with no preamble and no file meta (implicit VR LE)."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        elements = list(_walk(dataset))
    except Exception as exc:
        raise UnsupportedMediaError(
            "expected PNG, JPEG or DICOM; the bytes are none of these"
        ) from exc

    if len(elements) < 3:
        raise UnsupportedMediaError(
            "expected PNG, JPEG or DICOM; the bytes are none of these"
        )

    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    return dataset


def _parse_deflated(deflated: bytes, limit: int) -> Dataset:
    """Inflate a Deflated Explicit VR LE body with a cap, then parse it."""
    body = _inflate(deflated, limit)
    try:
        dataset = read_dataset(
            io.BytesIO(body), is_implicit_VR=False, is_little_endian=True
        )
        _ = list(_walk(dataset))
        # A fresh file meta: the parsed one may carry elements with wrong VRs.
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dataset.set_original_encoding(False, True)
    except Exception as exc:
        raise UnprocessableImageError(
            "the deflated DICOM dataset is malformed"
        ) from exc

    return dataset


def _inflate(deflated: bytes, limit: int) -> bytes:
    """Raw-inflate ``deflated``; 413 past ``limit`` bytes, with bounded memory.

    A first pass only counts the output, 1 MiB at a time, so a deflate bomb is
    refused without ever holding more than a chunk; the second pass keeps it.
    """
    for keep in (False, True):
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pending, total, chunks = deflated, 0, []
        try:
            while pending or not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(
                        f"the deflated DICOM body inflates to more than {limit} bytes"
                    )
                if keep:
                    chunks.append(chunk)
                if not chunk and not pending:
                    break
        except zlib.error as exc:
            raise UnprocessableImageError("the deflated DICOM body is corrupt") from exc

    return b"".join(chunks)


def _walk(dataset: Dataset) -> Iterator[object]:
    """Read every element once, recursively, so parse errors surface here."""
    for element in dataset:
        yield element.value
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


# --- checks before decoding ---------------------------------------------------


def _check_intent(dataset: Dataset) -> None:
    """Refuse raw detector data; it is not meant to be looked at or classified."""
    intent = str(dataset.get("PresentationIntentType", "")).strip().upper()
    if intent == "FOR PROCESSING":
        raise UnprocessableImageError(
            "the DICOM image is FOR PROCESSING (raw detector data); "
            "send the FOR PRESENTATION image"
        )


def _describes_image(dataset: Dataset) -> bool:
    """Whether the header promises an image (image pixel module or image SOP class).

    A file cut short can lose everything after the cut, so the SOP class in the
    file meta is checked too.
    """
    if "Rows" in dataset and "Columns" in dataset:
        return True

    meta = getattr(dataset, "file_meta", None)
    sop_class = dataset.get("SOPClassUID") or (
        meta.get("MediaStorageSOPClassUID") if meta is not None else None
    )
    name = getattr(sop_class, "name", "") if sop_class is not None else ""

    return "Image Storage" in str(name)


def _pixel_bytes(dataset: Dataset) -> bytes:
    """The PixelData value; 422 when the object has no (integer) pixels."""
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise UnprocessableImageError(
            "the DICOM object has float pixel data; expected integer PixelData"
        )
    if "PixelData" not in dataset:
        if _describes_image(dataset):
            raise UnprocessableImageError(
                "the DICOM header describes an image but its pixel data is missing "
                "or cut short (a truncated file?)"
            )
        raise UnprocessableImageError(
            "the DICOM object has no pixel data (e.g. a report or a header only)"
        )

    value = dataset["PixelData"].value
    if not isinstance(value, bytes | bytearray) or len(value) == 0:
        raise UnprocessableImageError("the DICOM PixelData element is empty")

    return bytes(value)


def syntax_label(syntax: UID) -> str:
    """A transfer syntax's name and UID, safe to show (UID only when well-formed)."""
    text = str(syntax)
    if len(text) > 64 or not _UID_PATTERN.match(text):
        return "an invalid transfer syntax UID"
    name = syntax.name if syntax.is_transfer_syntax else "unknown transfer syntax"

    return f"{name} ({text})" if name != text else f"unknown transfer syntax ({text})"


def _check_syntax(syntax: UID) -> None:
    """415 naming the syntax when no installed decoder handles it."""
    if syntax not in supported_transfer_syntaxes():
        raise UnsupportedMediaError(
            f"DICOM transfer syntax {syntax_label(syntax)} is not supported; "
            "send it uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE"
        )


@dataclass(frozen=True)
class _Geometry:
    """The header fields that fix how many bytes the pixels take."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> _Geometry:
        """Read and validate the image pixel module; 422 on nonsense."""
        try:
            rows = int(dataset.Rows)
            columns = int(dataset.Columns)
            samples = int(dataset.get("SamplesPerPixel", 1))
            frames = int(str(dataset.get("NumberOfFrames", 1) or 1).strip())
            bits_allocated = int(dataset.BitsAllocated)
            bits_stored = int(dataset.get("BitsStored", bits_allocated))
            signed = int(dataset.get("PixelRepresentation", 0)) == 1
            photometric = str(dataset.PhotometricInterpretation).strip().upper()
        except Exception as exc:
            raise UnprocessableImageError(
                "the DICOM image pixel module is missing or malformed "
                "(Rows, Columns, BitsAllocated, PhotometricInterpretation)"
            ) from exc

        if rows <= 0 or columns <= 0 or frames <= 0:
            raise UnprocessableImageError(
                "DICOM Rows, Columns and NumberOfFrames must be positive"
            )
        if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
            raise UnprocessableImageError(
                "DICOM BitsAllocated must be 8, 16 or 32 with "
                "1 <= BitsStored <= BitsAllocated"
            )
        if photometric not in _MONOCHROME + _COLOUR:
            raise UnprocessableImageError(
                "DICOM PhotometricInterpretation must be MONOCHROME1, MONOCHROME2, "
                "RGB or YBR"
            )
        if samples != (1 if photometric in _MONOCHROME else 3):
            raise UnprocessableImageError(
                "DICOM SamplesPerPixel does not match PhotometricInterpretation"
            )

        return cls(
            rows,
            columns,
            samples,
            frames,
            bits_allocated,
            bits_stored,
            signed,
            photometric,
        )

    @property
    def frame_bytes(self) -> int:
        """Bytes one uncompressed frame takes."""
        return self.rows * self.columns * self.samples * self.bits_allocated // 8


def _check_size(geometry: _Geometry, max_pixels: int) -> None:
    """413 over the pixel cap (all frames counted), then 422 for several frames."""
    total = geometry.rows * geometry.columns * geometry.samples * geometry.frames
    if total > max_pixels:
        raise PayloadTooLargeError(
            f"the DICOM header claims {total} pixel samples "
            f"(Rows x Columns x SamplesPerPixel x frames); the limit is {max_pixels}"
        )
    if geometry.frames > 1:
        raise UnprocessableImageError(
            f"the DICOM image has {geometry.frames} frames; "
            "expected a single-frame radiograph"
        )


def _check_pixel_length(pixel_bytes: bytes, geometry: _Geometry, syntax: UID) -> None:
    """Native: exact length (one pad byte allowed); encapsulated: whole codestream."""
    if syntax in NATIVE_SYNTAXES:
        expected = geometry.frame_bytes
        if len(pixel_bytes) < expected:
            raise UnprocessableImageError(
                f"the DICOM pixel data is truncated: {len(pixel_bytes)} bytes, "
                f"expected {expected} for Rows x Columns"
            )
        if len(pixel_bytes) > expected + 1:
            raise UnprocessableImageError(
                f"the DICOM pixel data has {len(pixel_bytes)} bytes, "
                f"which does not match Rows x Columns ({expected} bytes)"
            )
        return

    fragments = _fragments(pixel_bytes)
    if str(syntax) in _MARKER_TERMINATED:
        tail = fragments[-1][-16:].rstrip(b"\x00\xff")
        if not tail.endswith(b"\xff\xd9"):
            raise UnprocessableImageError(
                f"the DICOM {syntax.name} codestream is truncated "
                "(no end-of-image marker)"
            )


def _fragments(pixel_bytes: bytes) -> list[bytes]:
    """The fragments after the Basic Offset Table; 422 when an item overruns."""
    fragments: list[bytes] = []
    position = 0
    while position + 8 <= len(pixel_bytes):
        tag = pixel_bytes[position : position + 4]
        length = int.from_bytes(pixel_bytes[position + 4 : position + 8], "little")
        if tag == b"\xfe\xff\xdd\xe0":  # sequence delimiter
            break
        if tag != b"\xfe\xff\x00\xe0":
            raise UnprocessableImageError(
                "the DICOM encapsulated pixel data is malformed (expected an item)"
            )
        position += 8
        if length > len(pixel_bytes) - position:
            raise UnprocessableImageError(
                "the DICOM encapsulated pixel data is truncated "
                "(a fragment runs past the end of the file)"
            )
        fragments.append(pixel_bytes[position : position + length])
        position += length

    # The first item is the Basic Offset Table, the rest hold the codestream.
    if len(fragments) < 2 or not any(fragments[1:]):
        raise UnprocessableImageError("the DICOM encapsulated pixel data is empty")

    return fragments[1:]


# --- decoding and display transforms ------------------------------------------


def _decode_stored(dataset: Dataset, geometry: _Geometry, syntax: UID) -> np.ndarray:
    """Stored values as a 2-D (or RGB 3-D) array, BitsStored respected."""
    # RLE: pylibjpeg-rle, because pydicom's own RLE decoder only warns when a
    # segment decodes past the frame and returns the clipped (wrong) data;
    # pylibjpeg-rle refuses it (with a Rust panic, caught below).
    plugin = ""
    if syntax == RLELossless and "pylibjpeg" in get_decoder(syntax).available_plugins:
        plugin = "pylibjpeg"
    try:
        stored = pixel_array(dataset, decoding_plugin=plugin)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # native plugins may raise pyo3 PanicException
        raise UnprocessableImageError(
            f"the DICOM pixel data could not be decoded as {syntax.name}"
        ) from exc

    expected: tuple[int, ...] = (geometry.rows, geometry.columns)
    if geometry.samples == 3:
        expected = (geometry.rows, geometry.columns, 3)
    if stored.shape != expected:
        raise UnprocessableImageError(
            "the decoded DICOM pixels do not match Rows x Columns"
        )

    if geometry.samples == 3:
        return _luma(stored)

    return _apply_bits_stored(stored, geometry)


def _apply_bits_stored(stored: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """Keep the BitsStored low bits: mask unsigned, sign-extend signed values."""
    unused = geometry.bits_allocated - geometry.bits_stored
    if unused == 0:
        return stored

    native = stored.dtype.newbyteorder("=")
    if stored.dtype != native or not stored.flags.writeable:
        stored = stored.astype(native)  # big-endian or read-only: one copy
    if geometry.signed:
        signed = stored.view(np.dtype(f"int{geometry.bits_allocated}"))
        signed <<= unused
        signed >>= unused
        return signed

    unsigned = stored.view(np.dtype(f"uint{geometry.bits_allocated}"))
    unsigned &= (1 << geometry.bits_stored) - 1

    return unsigned


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an RGB array, as float32."""
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)

    return rgb.astype(np.float32) @ weights


def _stored_range(geometry: _Geometry) -> tuple[float, float]:
    """Smallest and largest value BitsStored can hold."""
    if geometry.samples == 3:
        return 0.0, float((1 << geometry.bits_stored) - 1)
    if geometry.signed:
        half = 1 << (geometry.bits_stored - 1)
        return float(-half), float(half - 1)

    return 0.0, float((1 << geometry.bits_stored) - 1)


def _to_display(
    stored: np.ndarray, dataset: Dataset, geometry: _Geometry, warnings: list[str]
) -> tuple[np.ndarray, float, float]:
    """Modality LUT, VOI, then MONOCHROME1 inversion; float32 display sense."""
    values, low, high = _modality(stored, dataset, geometry, warnings)
    values, low, high = _voi(values, low, high, dataset, warnings)

    if geometry.photometric == "MONOCHROME1":
        # In place: ``values`` is always a fresh float32 array by now.
        np.subtract(low + high, values, out=values)

    return values, low, high


def _number(value: object) -> float | None:
    """First value of a DS / IS (multi-valued or not) as float, None if malformed."""
    try:
        if not isinstance(value, str | bytes | int | float):
            value = value[0]  # type: ignore[index]
        number = float(value)  # type: ignore[arg-type]
    except Exception:  # malformed values are reported, not raised
        return None

    return number if np.isfinite(number) else None


def _lut(item: Dataset) -> tuple[np.ndarray, int, int] | None:
    """(entries, first mapped input value, output bits) of a LUT item, or None."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        raw = item.LUTData
        count = descriptor[0] or 65536
        first = descriptor[1]
        bits = descriptor[2]
        if isinstance(raw, bytes | bytearray):
            entries = np.frombuffer(raw, dtype="<u2" if bits > 8 else "u1")
        else:
            entries = np.asarray(list(raw) if not np.isscalar(raw) else [raw])
        entries = entries.astype(np.float32)[:count]
    except Exception:  # a malformed LUT is skipped with a warning
        return None

    if entries.size == 0 or not 1 <= bits <= 16:
        return None
    # Some writers put 16 in the descriptor while their entries stay 12-bit;
    # the entries, not the descriptor, say what range the output really has.
    if bits == 16 and float(entries.max()) <= 4095:
        bits = 12

    return entries, first, bits


def _apply_lut(values: np.ndarray, entries: np.ndarray, first: int) -> np.ndarray:
    """Look values up, clamping below/above the LUT to its first/last entry."""
    index = np.clip(np.floor(values) - first, 0, entries.size - 1).astype(np.intp)

    return entries[index]


def _modality(
    stored: np.ndarray, dataset: Dataset, geometry: _Geometry, warnings: list[str]
) -> tuple[np.ndarray, float, float]:
    """Stored values to modality units, with the nominal output range."""
    low, high = _stored_range(geometry)

    if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
        lut = _lut(dataset.ModalityLUTSequence[0])
        if lut is not None:
            entries, first, bits = lut
            return _apply_lut(stored, entries, first), 0.0, float((1 << bits) - 1)
        warnings.append("DICOM Modality LUT is malformed and was ignored")

    slope = _number(dataset.get("RescaleSlope", 1.0))
    intercept = _number(dataset.get("RescaleIntercept", 0.0))
    if slope is None or intercept is None or slope == 0:
        warnings.append("DICOM rescale slope / intercept is malformed and was ignored")
        slope, intercept = 1.0, 0.0

    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    ends = sorted((low * slope + intercept, high * slope + intercept))

    return values, ends[0], ends[1]


def _voi(
    values: np.ndarray,
    low: float,
    high: float,
    dataset: Dataset,
    warnings: list[str],
) -> tuple[np.ndarray, float, float]:
    """Apply the first window, or else the VOI LUT; pass through when neither."""
    center = _number(dataset.get("WindowCenter"))
    width = _number(dataset.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(dataset.get("VOILUTFunction", "LINEAR")).strip().upper()
        windowed = _window(values, center, width, function)
        if windowed is not None:
            return windowed, 0.0, 1.0
        warnings.append("DICOM window is invalid and was ignored")
    elif "WindowCenter" in dataset or "WindowWidth" in dataset:
        warnings.append("DICOM window is malformed and was ignored")

    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        lut = _lut(dataset.VOILUTSequence[0])
        if lut is not None:
            entries, first, bits = lut
            return _apply_lut(values, entries, first), 0.0, float((1 << bits) - 1)
        warnings.append("DICOM VOI LUT is malformed and was ignored")

    return values, low, high


def _window(
    values: np.ndarray, center: float, width: float, function: str
) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1]; None when the width is invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        out = np.subtract(values, np.float32(center), dtype=np.float32)
        out *= np.float32(-4.0 / width)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
        return out

    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        offset, span = center - width / 2.0, width
    else:  # LINEAR, also the fallback for unknown functions
        if width < 1:
            return None
        offset, span = center - 0.5 - (width - 1) / 2.0, width - 1
        if span == 0:
            return (values > center - 0.5).astype(np.float32)

    out = np.subtract(values, np.float32(offset), dtype=np.float32)
    out *= np.float32(1.0 / span)
    np.clip(out, 0.0, 1.0, out=out)

    return out


# --- header and warnings --------------------------------------------------------


def _code(dataset: Dataset, keyword: str) -> str:
    """A code-string attribute reduced to safe characters (A-Z, 0-9, space, _)."""
    try:
        value = dataset.get(keyword, "")
        if not isinstance(value, str):
            value = str(value[0]) if value else ""
    except Exception:  # a malformed code string reads as empty
        return ""

    return _CODE_STRING.sub("", value.strip().upper())[:16]


ADULT_AGE_YEARS = 18
_AGE_STRING = re.compile(r"^(\d{3})([DWMY])$")


def _age_group(dataset: Dataset) -> str:
    """``"child"`` / ``"adult"`` from PatientAge (``nnnD|W|M|Y``), else ``""``.

    Only this coarse group leaves the decoder, never the age itself; a malformed
    value reads as unknown.
    """
    try:
        match = _AGE_STRING.match(str(dataset.get("PatientAge", "") or "").strip())
    except Exception:  # a malformed age string reads as unknown
        return ""
    if match is None:
        return ""

    amount, unit = int(match.group(1)), match.group(2)
    years = amount if unit == "Y" else 0  # days, weeks and months are under a year

    return "adult" if years >= ADULT_AGE_YEARS else "child"


def _safe_header(dataset: Dataset, geometry: _Geometry, syntax: UID) -> dict[str, str]:
    """Only non-identifying acquisition fields, for the not-assessable gate."""
    return {
        "modality": _code(dataset, "Modality"),
        "body_part": _code(dataset, "BodyPartExamined"),
        "view_position": _code(dataset, "ViewPosition"),
        "age_group": _age_group(dataset),
        "photometric": geometry.photometric,
        "transfer_syntax": syntax.name,
        "bits_stored": str(geometry.bits_stored),
        "rows": str(geometry.rows),
        "columns": str(geometry.columns),
    }


def _content_warnings(dataset: Dataset) -> list[str]:
    """Header hints that the image may not be a frontal chest radiograph."""
    warnings: list[str] = []

    body_part = _code(dataset, "BodyPartExamined")
    if body_part and body_part not in ("CHEST", "THORAX"):
        warnings.append(f"DICOM BodyPartExamined is {body_part}, not CHEST")

    modality = _code(dataset, "Modality")
    if modality and modality not in ("CR", "DX"):
        warnings.append(f"DICOM Modality is {modality}, not a radiograph (CR / DX)")

    view = _code(dataset, "ViewPosition")
    if view in ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD"):
        warnings.append(f"DICOM ViewPosition is {view}, not a frontal view")

    return warnings
