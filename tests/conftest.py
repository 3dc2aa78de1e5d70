"""Fixtures shared by every test: where the read-only shared data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    __import__("os").environ.get(
        "VLKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; every test that needs real data reads it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set VLKD_SHARED_DATA")
    return SHARED_DATA
