"""DICOM decoding: display transforms, limits and the issue 6 DICOM cases (1-8)."""

from __future__ import annotations

import io
import logging
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from app.decode import (
    DecodedImage,
    DecodeLimits,
    decode,
    self_test,
    supported_transfer_syntaxes,
)
from app.errors import (
    InputError,
    PayloadTooLargeError,
    UnprocessableImageError,
    UnsupportedMediaError,
)
from app.preprocess import PreprocessConfig, preprocess

CONFIG = PreprocessConfig(size=224)


def make_dataset(
    stored: np.ndarray,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    **attributes: object,
) -> Dataset:
    """A CR image dataset around ``stored`` (2-D uint16/int16/uint8 values)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)

    return ds


def to_bytes(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    """Serialise ``ds`` as a Part 10 file (preamble, DICM, file meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    return buffer.getvalue()


def chest_like(shape: tuple[int, int] = (64, 64), bits: int = 12) -> np.ndarray:
    """Smooth synthetic stored values spanning most of ``bits``."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    wave = np.sin(rows / 7.0) * np.cos(columns / 5.0) + rows / shape[0]
    scaled = (wave - wave.min()) / (wave.max() - wave.min()) * ((1 << bits) - 1)

    return scaled.astype(np.uint16)


def decode_pixels(data: bytes) -> np.ndarray:
    """Decoded pixels of ``data`` (raises what decode raises)."""
    return decode(data, "application/dicom").pixels


# --- shared data --------------------------------------------------------------

SHARED_DICOM = [
    "RG1_UNCR.dcm",
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
    "RG1_JLSN.dcm",
    "RG2_JPLL.dcm",
    "RG2_JPLY.dcm",
    "RG2_JLSN.dcm",
    "RG3_J2KI.dcm",
    "siim_cr_chest_mono1.dcm",
    "siim_cr_chest_mono2.dcm",
    "cr_chest_no_pixels.dcm",
]


@pytest.mark.parametrize("name", SHARED_DICOM)
def test_decode_gives_image_or_4xx_for_every_shared_file(
    shared_data: Path, name: str
) -> None:
    """Every shared DICOM file decodes to a 2-D float image or raises a 4xx error."""
    data = (shared_data / "dicom" / name).read_bytes()

    try:
        outcome: DecodedImage | InputError = decode(data, "application/dicom")
    except InputError as error:
        outcome = error

    if isinstance(outcome, InputError):
        assert 400 <= outcome.status_code < 500
        assert name in ("cr_chest_no_pixels.dcm", "RG2_JPLY.dcm")
    else:
        assert outcome.pixels.ndim == 2
        assert outcome.pixels.dtype == np.float32


def test_decode_rejects_shared_file_without_pixels_with_422(shared_data: Path) -> None:
    """The CR CHEST header with no pixel data is a 422."""
    data = (shared_data / "dicom" / "cr_chest_no_pixels.dcm").read_bytes()

    with pytest.raises(UnprocessableImageError) as caught:
        decode(data)

    assert caught.value.status_code == 422


@pytest.mark.parametrize(
    ("age", "group"),
    [
        ("004Y", "child"),
        ("017Y", "child"),
        ("018Y", "adult"),
        ("011M", "child"),
        ("052Y", "adult"),
        ("", ""),
        ("abc", ""),
    ],
)
def test_decode_reduces_patient_age_to_group(
    shared_data: Path, age: str, group: str
) -> None:
    """PatientAge leaves the decoder only as a coarse child / adult group."""
    dataset = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_mono2.dcm")
    dataset.PatientAge = age
    buffer = io.BytesIO()
    dataset.save_as(buffer)

    image = decode(buffer.getvalue())

    assert image.header["age_group"] == group
    assert age not in image.header.values() or age == ""


def test_decode_refusal_still_says_not_chest(shared_data: Path) -> None:
    """RG2_JPLY (a hip whose JPEG stream no decoder reads) is a 422 naming HIP."""
    data = (shared_data / "dicom" / "RG2_JPLY.dcm").read_bytes()

    with pytest.raises(UnprocessableImageError) as caught:
        decode(data)

    assert "BodyPartExamined is HIP, not CHEST" in caught.value.detail


def test_decode_names_truncation_for_cut_dicom(shared_data: Path) -> None:
    """A DICOM cut inside its pixel data says it is cut short, not "no pixels"."""
    data = (shared_data / "dicom" / "RG1_J2KR.dcm").read_bytes()[:100_000]

    with pytest.raises(UnprocessableImageError) as caught:
        decode(data)

    assert "cut short" in caught.value.detail


@pytest.mark.parametrize(
    ("name", "part"), [("RG2_JPLL.dcm", "HIP"), ("RG3_J2KI.dcm", "EXTREMITY")]
)
def test_decode_warns_not_chest_for_hip_and_extremity(
    shared_data: Path, name: str, part: str
) -> None:
    """The hip and extremity files come back with a not-chest warning."""
    data = (shared_data / "dicom" / name).read_bytes()

    image = decode(data)

    assert f"DICOM BodyPartExamined is {part}, not CHEST" in image.warnings
    assert image.header["body_part"] == part


def test_decode_mono1_is_exact_inverse_of_mono2(shared_data: Path) -> None:
    """siim MONOCHROME1 decodes to 255 - v of its MONOCHROME2 twin, bit for bit.

    Inverse means ``low + high - v`` over the nominal range of the 8-bit stored
    values, [0, 255], with no window or rescale in these files.
    """
    mono1 = (shared_data / "dicom" / "siim_cr_chest_mono1.dcm").read_bytes()
    mono2 = (shared_data / "dicom" / "siim_cr_chest_mono2.dcm").read_bytes()

    inverted = decode(mono1).pixels
    plain = decode(mono2).pixels

    np.testing.assert_array_equal(inverted, 255.0 - plain)
    assert plain.std() > 10


def _rg1_tensor(shared_data: Path, name: str) -> np.ndarray:
    """The RG1 file ``name`` decoded and preprocessed at 224."""
    data = (shared_data / "dicom" / name).read_bytes()

    return preprocess(decode(data).pixels, CONFIG)


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("RG1_J2KR.dcm", 1e-6), ("RG1_JLSN.dcm", 0.02), ("RG1_J2KI.dcm", 0.05)],
)
def test_decode_rg1_encodings_match_uncompressed(
    shared_data: Path, name: str, tolerance: float
) -> None:
    """Lossless RG1 equals the uncompressed one; near-lossless / lossy stay close."""
    reference = _rg1_tensor(shared_data, "RG1_UNCR.dcm")

    tensor = _rg1_tensor(shared_data, name)

    assert np.abs(tensor - reference).mean() <= tolerance


# --- issue 6.1: MONOCHROME1 inverted once, after modality and VOI -------------


def test_decode_mono1_twin_gives_same_tensor_as_mono2() -> None:
    """A 12-bit MONOCHROME1 CR (slope 2, window) and its MONOCHROME2 twin agree."""
    stored = chest_like((512, 512), bits=12)
    mono1 = make_dataset(
        stored,
        12,
        "MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=0,
        WindowCenter=3000,
        WindowWidth=4000,
    )
    # Twin: stored values inverted, window mirrored in modality units (0..8190).
    mono2 = make_dataset(
        (4095 - stored).astype(np.uint16),
        12,
        "MONOCHROME2",
        RescaleSlope=2,
        RescaleIntercept=0,
        WindowCenter=8190 - 3000,
        WindowWidth=4000,
    )

    tensor1 = preprocess(decode_pixels(to_bytes(mono1)), CONFIG)
    tensor2 = preprocess(decode_pixels(to_bytes(mono2)), CONFIG)

    np.testing.assert_allclose(tensor1, tensor2, atol=2e-2)


def test_decode_mono1_inverts_after_window_exactly() -> None:
    """MONOCHROME1 output is 1 - window(slope * stored) with LINEAR_EXACT."""
    stored = chest_like((64, 64), bits=12)
    ds = make_dataset(
        stored,
        12,
        "MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=0,
        WindowCenter=4000,
        WindowWidth=3000,
        VOILUTFunction="LINEAR_EXACT",
    )
    modality = stored.astype(np.float64) * 2
    expected = 1.0 - np.clip((modality - (4000 - 1500)) / 3000, 0, 1)

    pixels = decode_pixels(to_bytes(ds))

    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_decode_masks_bits_above_bits_stored() -> None:
    """Garbage in the unused high bits (an overlay, say) does not reach the image."""
    stored = chest_like((64, 64), bits=12)
    dirty = (stored | 0xF000).astype(np.uint16)
    ds = make_dataset(dirty, 12)

    pixels = decode_pixels(to_bytes(ds))

    np.testing.assert_array_equal(pixels, stored.astype(np.float32))


# --- issue 6.2: VOI -----------------------------------------------------------


def test_decode_uses_first_of_several_windows() -> None:
    """WindowCenter 2047\\1023, WindowWidth 1023\\511: the first pair is applied."""
    stored = chest_like((64, 64), bits=12)
    ds = make_dataset(
        stored,
        12,
        WindowCenter=[2047, 1023],
        WindowWidth=[1023, 511],
        VOILUTFunction="LINEAR_EXACT",
    )
    expected = np.clip((stored - (2047 - 1023 / 2)) / 1023, 0, 1)

    pixels = decode_pixels(to_bytes(ds))

    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def _voi_lut_dataset(photometric: str) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """A dataset whose VOI LUT descriptor says 16 bits but whose entries are 12-bit."""
    stored = chest_like((64, 64), bits=12)
    entries = (np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", entries.tolist())  # LUTData
    ds = make_dataset(stored, 12, photometric)
    ds.VOILUTSequence = [item]

    return ds, stored, entries


def test_decode_voi_lut_with_16_bit_descriptor_and_12_bit_entries() -> None:
    """The LUT is applied, and MONOCHROME1 inverts within the entries' 12-bit range."""
    ds, stored, entries = _voi_lut_dataset("MONOCHROME1")

    pixels = decode_pixels(to_bytes(ds))

    np.testing.assert_array_equal(pixels, 4095.0 - entries[stored].astype(np.float32))


def test_decode_honours_sigmoid_voi_function() -> None:
    """VOILUTFunction SIGMOID gives 1 / (1 + exp(-4 (x - c) / w))."""
    stored = chest_like((64, 64), bits=12)
    ds = make_dataset(
        stored, 12, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="SIGMOID"
    )
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - 2048.0) / 1000.0))

    pixels = decode_pixels(to_bytes(ds))

    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_decode_rejects_for_processing_with_422() -> None:
    """PresentationIntentType FOR PROCESSING (raw detector data) is a 422."""
    ds = make_dataset(chest_like(), 12, PresentationIntentType="FOR PROCESSING")

    with pytest.raises(UnprocessableImageError, match="FOR PROCESSING"):
        decode(to_bytes(ds))


# --- issue 6.3: transfer syntaxes ---------------------------------------------


def test_decode_rejects_syntax_without_decoder_with_415_naming_it() -> None:
    """An MPEG-2 encoded image is a 415 that names the syntax and its UID."""
    ds = make_dataset(chest_like(), 12)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds, UID("1.2.840.10008.1.2.4.100"))

    with pytest.raises(UnsupportedMediaError) as caught:
        decode(data)

    assert "MPEG2" in caught.value.detail
    assert "1.2.840.10008.1.2.4.100" in caught.value.detail


def test_self_test_passes_for_every_claimed_syntax() -> None:
    """The start-up self-test decodes a generated image of each claimed syntax."""
    claimed = supported_transfer_syntaxes()

    results = self_test()

    assert len(results) == len(claimed) >= 13
    assert all(results.values()), results


# --- issue 6.4: silently wrong decoders, blank images -------------------------


def _signed_j2k() -> tuple[Dataset, np.ndarray]:
    """A lossless JPEG 2000 of signed 13-bit values, half of them negative."""
    stored = (chest_like((64, 64), bits=13).astype(np.int32) - 4096).astype(np.int16)
    ds = make_dataset(stored, 13, signed=True)
    to_bytes(ds)  # gives the dataset its file meta
    ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)

    return ds, stored


def test_decode_signed_13_bit_j2k_lossless_keeps_negative_values() -> None:
    """Signed 13-bit data through lossless JPEG 2000 decodes to the exact values."""
    ds, stored = _signed_j2k()

    pixels = decode_pixels(to_bytes(ds, JPEG2000Lossless))

    assert stored.min() < 0
    np.testing.assert_array_equal(pixels, stored.astype(np.float32))


def test_decode_rejects_j2k_with_cut_last_fragment() -> None:
    """The same JPEG 2000 file with its last fragment cut short is a 422."""
    ds, _ = _signed_j2k()
    codestream = b"".join(
        pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    )
    ds.PixelData = encapsulate([codestream[: len(codestream) * 3 // 4]])

    with pytest.raises(UnprocessableImageError, match="truncated"):
        decode(to_bytes(ds, JPEG2000Lossless))


def test_decode_rejects_constant_image_with_422() -> None:
    """A constant image is refused after decoding by the range check."""
    ds = make_dataset(np.full((64, 64), 1000, dtype=np.uint16), 12)

    with pytest.raises(UnprocessableImageError, match="blank or constant"):
        decode(to_bytes(ds))


# --- issue 6.5: no preamble / no meta, no pixels ------------------------------


def test_decode_bare_implicit_dataset_without_preamble() -> None:
    """A bare implicit-VR LE dataset (no preamble, no file meta) decodes."""
    stored = chest_like()
    ds = make_dataset(stored, 12)
    raw = io.BytesIO()
    buffer = DicomFileLike(raw)
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    pydicom.filewriter.write_dataset(buffer, ds)
    buffer_bytes = raw.getvalue()

    pixels = decode(buffer_bytes, "application/octet-stream").pixels

    assert buffer_bytes[128:132] != b"DICM"
    np.testing.assert_array_equal(pixels, stored.astype(np.float32))


def test_decode_rejects_structured_report_with_422() -> None:
    """A DICOM object with no pixels (an SR) is a 422."""
    ds = Dataset()
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"

    with pytest.raises(UnprocessableImageError, match="no pixel data"):
        decode(to_bytes(ds))


# --- issue 6.6: frames and lengths --------------------------------------------


def test_decode_rejects_two_frames_with_422() -> None:
    """A 2-frame image is refused: single-frame only."""
    stored = np.concatenate([chest_like(), chest_like()])
    ds = make_dataset(stored, 12, NumberOfFrames=2)
    ds.Rows = 64

    with pytest.raises(UnprocessableImageError, match="2 frames"):
        decode(to_bytes(ds))


def test_decode_rejects_file_cut_1000_bytes_short() -> None:
    """PixelData shorter than Rows x Columns x 2 bytes (file cut) is a 422."""
    ds = make_dataset(chest_like((128, 128)), 12)
    data = to_bytes(ds)

    with pytest.raises(UnprocessableImageError, match="truncated"):
        decode(data[:-1000])


def test_decode_rejects_rows_that_disagree_with_data_length() -> None:
    """Rows changed so Rows x Columns no longer matches the PixelData length: 422."""
    ds = make_dataset(chest_like((128, 128)), 12)
    ds.Rows = 100

    with pytest.raises(UnprocessableImageError, match="does not match"):
        decode(to_bytes(ds))


# --- issue 6.7: memory bombs --------------------------------------------------


def _measure(data: bytes) -> tuple[InputError, float, int]:
    """(error raised, seconds, peak traced bytes) for decoding ``data``."""
    raised: InputError | None = None
    tracemalloc.start()
    started = time.perf_counter()
    try:
        decode(data)
    except InputError as error:
        raised = error
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert raised is not None, "the bomb was decoded"

    return raised, elapsed, peak


def test_decode_rejects_300_byte_file_with_huge_element_length() -> None:
    """A 300-byte file whose element length is 0x69696969 is a quick, small 4xx."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.add_new(0x00091001, "OB", b"x" * 64)
    data = bytearray(to_bytes(ds))
    where = data.find(b"OB\x00\x00")
    data[where + 4 : where + 8] = struct.pack("<I", 0x69696969)
    data = data[:300].ljust(300, b"\x00")

    error, elapsed, peak = _measure(bytes(data))

    assert error.status_code in (413, 422)
    assert elapsed < 1.0
    assert peak < 10 * 1024 * 1024


def test_decode_rejects_deflate_bomb_with_413_and_bounded_memory() -> None:
    """A ~1 MB Deflated-syntax file of compressed zeros is a 413, memory bounded."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = io.BytesIO()
    write_file_meta_info(DicomFileLike(header), meta, enforce_standard=True)
    # Full-flushed blocks are self-contained, so one compressed MiB of zeros
    # repeated 1000 times is a valid stream that inflates to about 1 GiB.
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflater.compress(b"\x00" * (1 << 20)) + deflater.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    body = block * 1000 + final
    data = b"\x00" * 128 + b"DICM" + header.getvalue() + body

    error, elapsed, peak = _measure(data)

    assert len(data) > 1_000_000
    assert isinstance(error, PayloadTooLargeError)
    assert elapsed < 5.0
    assert peak < 64 * 1024 * 1024


def test_decode_accepts_small_deflated_file() -> None:
    """A legitimate Deflated Explicit VR LE image decodes to its stored values."""
    stored = chest_like()
    ds = make_dataset(stored, 12)

    pixels = decode_pixels(to_bytes(ds, DeflatedExplicitVRLittleEndian))

    np.testing.assert_array_equal(pixels, stored.astype(np.float32))


def test_decode_rejects_65535_squared_100_frames_header_quickly() -> None:
    """A header claiming 65535 x 65535 px and 100 frames is a 413 before decoding."""
    ds = make_dataset(chest_like((8, 8)), 16)
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100

    error, elapsed, peak = _measure(to_bytes(ds))

    assert isinstance(error, PayloadTooLargeError)
    assert elapsed < 1.0
    assert peak < 10 * 1024 * 1024


def test_decode_counts_pixels_against_the_configured_cap() -> None:
    """A 64 x 64 image is refused when the cap is set to 1000 pixels."""
    ds = make_dataset(chest_like(), 12)

    with pytest.raises(PayloadTooLargeError):
        decode(to_bytes(ds), limits=DecodeLimits(max_pixels=1000))


# --- issue 6.8: patient data never leaks --------------------------------------


def patient_dicom_that_fails() -> tuple[bytes, tuple[str, ...]]:
    """Issue 6 item 8: a named patient, an invalid UID, a malformed PatientSize and
    pixel data that fails to decode; returns the bytes and the values that must
    never leak."""
    ds = make_dataset(chest_like(), 12)
    ds.PatientName = "DOE^JANE"
    ds.StudyInstanceUID = "1.2.3.ABC.999.x"
    ds.PatientSize = "1.7002"  # made malformed in the bytes below
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc0garbage-not-a-jpeg\xff\xd9"])
    ds["PixelData"].VR = "OB"
    data = to_bytes(ds, UID("1.2.840.10008.1.2.4.70")).replace(b"1.7002", b"1.7O2M")

    return data, ("DOE", "JANE", "1.2.3.ABC.999.x", "1.7O2M")


def test_decode_leaks_no_patient_data_in_errors_logs_or_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Name, invalid UID and malformed size appear in no error, log or warning."""
    data, secrets = patient_dicom_that_fails()

    caplog.set_level(logging.DEBUG)
    with (
        warnings.catch_warnings(record=True) as caught,
        pytest.raises(InputError) as raised,
    ):
        warnings.simplefilter("always")
        decode(data)

    texts = [raised.value.detail, str(raised.value), caplog.text]
    texts += [str(w.message) for w in caught]
    for secret in secrets:
        assert all(secret not in text for text in texts), secret
    assert raised.value.status_code == 422


def test_service_leaks_no_patient_data_over_http(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """That file posted to /v1/classify: a 422; no secret in its body or the logs."""
    data, secrets = patient_dicom_that_fails()

    caplog.set_level(logging.DEBUG)
    response = client.post(
        "/v1/classify", content=data, headers={"Content-Type": "application/dicom"}
    )

    assert response.status_code == 422
    for secret in secrets:
        assert secret not in response.text, secret
        assert secret not in caplog.text, secret


# --- found by fuzzing ---------------------------------------------------------


@pytest.mark.parametrize("at", [600, 1000])
def test_decode_rle_segment_overrun_is_422_not_a_panic(at: int) -> None:
    """An RLE segment that decodes past the frame is a 422, never a panic or image.

    pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on this input,
    found by tests/app/test_decode_fuzz.py; pydicom's own RLE decoder instead
    clips the overrun of the last segment (``at`` 1000) with a mere warning.
    """
    ds = make_dataset(chest_like((32, 32)), 12)
    to_bytes(ds)  # gives the dataset its file meta
    ds.compress(RLELossless, generate_instance_uid=False)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:at] + b"\x00" + frame[at:]])

    with pytest.raises(UnprocessableImageError):
        decode(to_bytes(ds, RLELossless))


def test_decode_deflated_file_with_wrong_vr_in_file_meta() -> None:
    """A Deflated file whose TransferSyntaxUID element claims VR IS still decodes.

    Re-assigning that element used to raise a bare ValueError (a 500); found by
    bench/fuzz_decode.py (atheris).
    """
    stored = chest_like()
    ds = make_dataset(stored, 12)
    data = bytearray(to_bytes(ds, DeflatedExplicitVRLittleEndian))
    where = data.find(b"\x02\x00\x10\x00UI")
    data[where + 4 : where + 6] = b"IS"

    pixels = decode_pixels(bytes(data))

    np.testing.assert_array_equal(pixels, stored.astype(np.float32))
