"""The serving stack: no torch, and upload libraries with the known CVEs fixed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

from tests.conftest import REPO_ROOT

# Minimum releases with the advisories of docs/service.md fixed (issue 6, item 12).
CVE_FIXED = {"starlette": "1.3.1", "python-multipart": "0.0.31", "h11": "0.16.0"}

SERVE_ONE_REQUEST = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import png_bytes

settings = Settings(model_path=Path(sys.argv[1]), intra_op_threads=1,
                    decoder_self_test=False)
with TestClient(create_app(settings)) as client:
    answer = client.post("/v1/classify", files={"file": ("x.png", png_bytes())})
    assert answer.status_code == 200, answer.text
print("torch" in sys.modules)
"""


@pytest.mark.parametrize(("package", "minimum"), sorted(CVE_FIXED.items()))
def test_installed_upload_stack_has_cve_fixes(package: str, minimum: str) -> None:
    """The installed starlette / python-multipart / h11 are at least the fixed ones."""
    installed = Version(version(package))

    assert installed >= Version(minimum)


def test_pyproject_pins_cve_fixed_minimums() -> None:
    """pyproject.toml asks for those minimums, so a fresh install gets them."""
    text = (REPO_ROOT / "pyproject.toml").read_text()

    for package, minimum in CVE_FIXED.items():
        assert f'"{package}>={minimum}"' in text


def test_service_runs_without_importing_torch(model_path: Path) -> None:
    """Starting the app and classifying one image never imports torch."""
    result = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST, str(model_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
