"""The image's entry command and health probe, run against the real service.

Runs ``python -m app`` with the environment the Dockerfile and compose set
(loopback address and a free port instead of 0.0.0.0:8000), probes it with
``docker/healthcheck.py`` and stops it with SIGTERM as ``docker stop`` would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.deploy_files import env_values
from tests.deploy.tools import REPO_ROOT
from tests.integration.stack import free_port, wait_until
from tests.model_factory import write_model

COMPOSE_GRACE_S = 30.0  # stop_grace_period of the vlkd service


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m app`` started like the container's entry point; always stopped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    env.update({k: v for k, v in env_values().items() if k.startswith("VLKD_")})
    env.update(
        {
            "VLKD_HOST": "127.0.0.1",
            "VLKD_PORT": str(port),
            "VLKD_WORKERS": "2",
            "VLKD_MODEL_PATH": str(write_model(tmp_path / "model.onnx")),
        }
    )
    log = (tmp_path / "vlkd.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "vlkd.log").read_text()
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).is_success

    try:
        wait_until("vlkd /readyz", ready, 60)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def test_entry_command_is_healthy_then_stops_cleanly_on_sigterm(
    service: tuple[subprocess.Popen[bytes], int],
) -> None:
    """The probe passes; SIGTERM (docker stop) then ends it with 0 before SIGKILL."""
    process, port = service
    graceful_s = float(env_values()["VLKD_GRACEFUL_SHUTDOWN_S"])
    probe_env = {**os.environ, "VLKD_PORT": str(port)}

    probe = subprocess.run(
        [sys.executable, str(REPO_ROOT / "docker" / "healthcheck.py")],
        env=probe_env,
        timeout=30,
        check=False,
    )
    answer = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status = process.wait(COMPOSE_GRACE_S)
    elapsed = time.monotonic() - started

    assert probe.returncode == 0
    assert json.loads(answer.content)
    assert status == 0
    assert elapsed < min(graceful_s + 5, COMPOSE_GRACE_S)
