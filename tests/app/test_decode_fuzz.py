"""Fuzzing the decode entry point: every input ends in an image or a vlkd InputError.

Seeds are the files in ``../shared/data/dicom`` and ``fullsize`` plus the tiny
generated image of every transfer syntax from the start-up self-test; hypothesis
mutates them (truncations, byte flips, interesting 16/32-bit values, insertions,
deletions) with a fixed seed, so CI runs the same inputs every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.decode import DecodedImage, DecodeLimits, _decode
from app.dicom import supported_transfer_syntaxes
from app.dicom_selftest import generate_sample
from app.errors import InputError

# Values that often break length and size fields.
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
INTERESTING.append(0x69696969)
LIMITS = DecodeLimits(max_bytes=16 << 20, max_pixels=8_000_000)
FAST_SHARED = ["siim_cr_chest_mono2.dcm", "siim_cr_chest_mono1.dcm"]
FAST_SHARED.append("cr_chest_no_pixels.dcm")


def _seeds(shared: Path) -> tuple[list[bytes], list[bytes]]:
    """(fast seeds, large seeds): small files and generated samples vs big DICOMs."""
    fast = [generate_sample(syntax)[0] for syntax in supported_transfer_syntaxes()]
    fast += [(shared / "dicom" / name).read_bytes() for name in FAST_SHARED]
    fast += [path.read_bytes() for path in sorted((shared / "fullsize").glob("*.png"))]
    large = [
        path.read_bytes()
        for path in sorted((shared / "dicom").glob("*.dcm"))
        if path.name not in FAST_SHARED
    ]

    return fast, large


def _position(data: bytes, raw: int, near_start: bool) -> int:
    """A byte position: in the first 4 KiB (headers) or anywhere."""
    if not data:
        return 0
    if near_start:
        return raw % min(len(data), 4096)

    return raw % len(data)


def _mutate(data: bytes, operations: list[tuple[str, int, bool, int]]) -> bytes:
    """Apply each (kind, position, near_start, value) operation in turn."""
    buffer = bytearray(data)
    for kind, raw, near_start, value in operations:
        at = _position(bytes(buffer), raw, near_start)
        if kind == "truncate":
            del buffer[at:]
        elif kind == "flip":
            if at < len(buffer):
                buffer[at] = value & 0xFF
        elif kind == "int32":
            buffer[at : at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif kind == "int16":
            buffer[at : at + 2] = (value & 0xFFFF).to_bytes(2, "little")
        elif kind == "insert":
            buffer[at:at] = bytes([value & 0xFF]) * (1 + value % 64)
        elif kind == "delete":
            del buffer[at : at + 1 + value % 512]

    return bytes(buffer)


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "int32", "int16", "insert", "delete"]),
        st.integers(min_value=0, max_value=1 << 24),
        st.booleans(),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFFFFFF)),
    ),
    min_size=1,
    max_size=4,
)


def assert_clean_outcome(data: bytes, media_type: str | None) -> None:
    """Decoding ``data`` gives a sane image or an InputError, nothing else.

    Calls ``_decode``, the entry point without ``decode``'s last-resort
    converter, so a library exception that slips past the converters fails here.
    """
    try:
        image = _decode(data, media_type, LIMITS)
    except InputError as error:
        assert 400 <= error.status_code < 500
        assert error.detail and len(error.detail) < 300
        return

    assert isinstance(image, DecodedImage)
    assert image.pixels.ndim == 2
    assert image.pixels.dtype == np.float32
    assert math.isfinite(float(image.pixels.min()))


def _fuzz(
    seeds: Callable[[Path], list[bytes]], examples: int
) -> Callable[[Path], None]:
    """A hypothesis test over mutations of ``seeds(shared_data)``."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def run(shared_data: Path, data: st.DataObject) -> None:
        corpus = seeds(shared_data)
        seed = data.draw(st.sampled_from(range(len(corpus))))
        mutated = _mutate(corpus[seed], data.draw(OPERATIONS))
        media_type = data.draw(
            st.sampled_from([None, "application/dicom", "image/png", "image/jpeg"])
        )
        assert_clean_outcome(mutated, media_type)

    return run


_cache: dict[str, tuple[list[bytes], list[bytes]]] = {}


def _fast(shared: Path) -> list[bytes]:
    return _cache.setdefault(str(shared), _seeds(shared))[0]


def _large(shared: Path) -> list[bytes]:
    return _cache.setdefault(str(shared), _seeds(shared))[1]


@pytest.mark.slow
def test_decode_fuzz_small_seeds_never_raise_foreign_errors(shared_data: Path) -> None:
    """300 mutations of small seeds end in an image or an InputError.

    Slow (about 30 s on 2 shared cores).
    """
    _fuzz(_fast, examples=300)(shared_data)


def test_decode_fuzz_large_dicom_seeds_never_raise_foreign_errors(
    shared_data: Path,
) -> None:
    """40 mutations of the large shared DICOM files end in an image or InputError.

    About 6 s: each surviving mutation decodes a ~2000 px image.
    """
    _fuzz(_large, examples=40)(shared_data)


@pytest.mark.parametrize("cut", [0.0, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_decode_truncated_seeds_end_in_input_error_or_image(
    shared_data: Path, cut: float
) -> None:
    """Every small seed cut at ``cut`` of its length ends cleanly."""
    seeds = _fast(shared_data)

    for seed in seeds:
        assert_clean_outcome(seed[: int(len(seed) * cut)], None)
