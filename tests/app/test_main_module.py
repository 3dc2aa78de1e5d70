"""``python -m app``: refuses to start with one line and a non-zero exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.model_factory import write_corrupt, write_wrong_preprocess_version


def run_app(**env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    env.update(env_vars)

    return subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("make_model", "expected"),
    [
        (lambda p: p / "absent.onnx", "model file not found"),
        (lambda p: write_corrupt(p / "corrupt.onnx"), "not an ONNX model"),
        (
            lambda p: write_wrong_preprocess_version(p / "old.onnx"),
            "expects preprocessing",
        ),
    ],
)
def test_bad_model_refused_in_one_line(
    tmp_path: Path, make_model: object, expected: str
) -> None:
    """A missing, corrupt or mismatched model exits 2 with one line, no traceback."""
    path = make_model(tmp_path)  # type: ignore[operator]

    done = run_app(VLKD_MODEL_PATH=str(path))

    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_setting_refused_in_one_line(model_path: Path) -> None:
    """An invalid setting exits 2 naming the variable."""
    done = run_app(VLKD_MODEL_PATH=str(model_path), VLKD_API_KEYS="short")

    assert done.returncode == 2
    assert "VLKD_API_KEYS" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
