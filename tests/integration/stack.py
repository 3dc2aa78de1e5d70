"""Run the compose stack's three programs as loopback processes, for the tests.

vlkd (``python -m app``), Orthanc with the Python plugin and Prometheus start
with THE SAME configuration files the compose stack mounts
(``docker/orthanc/orthanc.json``, ``docker/orthanc/vlkd_forward.py``,
``docker/prometheus.yml``, ``docker/alerts.yml``). Only what differs between a
container network and one machine is rewritten: host names to 127.0.0.1, ports
to free ones, storage to a temporary folder, the plugin's file path, the
Orthanc password, Orthanc's HTTP restricted to loopback clients, and
Prometheus's scrape interval and timeout (15 s / 5 s -> 1 s, so the test need
not wait). Prometheus and vlkd listen on 127.0.0.1 only; Orthanc 1.10 has no
bind-address setting, so its two ports listen on all interfaces while the test
runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy.tools import REPO_ROOT, SETUP_HINT, require_program

logger = logging.getLogger(__name__)

DOCKER_DIR = REPO_ROOT / "docker"
PYTHON_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancPython.so",
    "/usr/lib/orthanc/libOrthancPython.so",
    "/usr/local/share/orthanc/plugins/libOrthancPython.so",
)
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 3000


class StackError(RuntimeError):
    """Raised when a program of the stack does not start or answer in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_plugin() -> str:
    """Path of Orthanc's Python plugin library (Debian package orthanc-python)."""
    for candidate in PYTHON_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate

    raise StackError(
        f"Orthanc's Python plugin (orthanc-python) not found; {SETUP_HINT}"
    )


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 0.2
) -> None:
    """Poll ``check`` until it is true; raise :class:`StackError` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)

    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Process:
    """One started program, its log file, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        text = (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )
        return text[-LOG_TAIL_CHARS:]

    def assert_running(self) -> None:
        if self.popen.poll() is not None:
            raise StackError(
                f"{self.name} exited with status {self.popen.returncode}:\n"
                + self.log_tail()
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait; never leaves it running."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM; killing it", self.name)
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_S)


@contextmanager
def started(
    name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[Process]:
    """Start ``command`` with output to ``log_path``; stop it on exit, always."""
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
        )
    process = Process(name, popen, log_path)
    try:
        yield process
    finally:
        process.stop()


def orthanc_config(
    workdir: Path, http_port: int, dicom_port: int, vlkd_port: int, password: str
) -> dict[str, Any]:
    """docker/orthanc/orthanc.json with loopback ports and temporary storage."""
    config: dict[str, Any] = json.loads(
        (DOCKER_DIR / "orthanc" / "orthanc.json").read_text()
    )

    config["StorageDirectory"] = config["IndexDirectory"] = str(workdir / "orthanc-db")
    config["HttpPort"] = http_port
    config["DicomPort"] = dicom_port
    # Orthanc 1.10 cannot bind to one address: its sockets listen on every
    # interface, so HTTP is at least refused to any client but loopback.
    config["RemoteAccessAllowed"] = False
    config["RegisteredUsers"] = {"vlkd-test": password}
    config["PythonScript"] = str(DOCKER_DIR / "orthanc" / "vlkd_forward.py")
    config["Plugins"] = [python_plugin()]
    config["Vlkd"]["Url"] = f"http://127.0.0.1:{vlkd_port}/v1/classify"

    return config


def prometheus_config(vlkd_port: int, prometheus_port: int) -> dict[str, Any]:
    """docker/prometheus.yml with loopback targets, the repo's rules, 1 s scrapes."""
    config: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text())

    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DOCKER_DIR / "alerts.yml")]
    targets = {
        "vlkd": f"127.0.0.1:{vlkd_port}",
        "prometheus": f"127.0.0.1:{prometheus_port}",
    }
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "scrape_timeout" in job:  # may not exceed the shortened interval
            job["scrape_timeout"] = "1s"

    return config


@dataclass
class Stack:
    """The running stack: base URLs, credentials and the processes."""

    vlkd_url: str
    orthanc_url: str
    orthanc_auth: tuple[str, str]
    dicom_port: int
    prometheus_url: str
    api_key: str
    processes: list[Process]

    def assert_running(self) -> None:
        for process in self.processes:
            process.assert_running()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)


@contextmanager
def run_stack(workdir: Path, model_path: Path, api_key: str) -> Iterator[Stack]:
    """Start vlkd, Orthanc and Prometheus on loopback; stop all three on exit."""
    orthanc_bin = require_program("Orthanc", "orthanc (Debian)")
    prometheus_bin = require_program("prometheus", "prometheus (Debian)")
    vlkd_port, http_port, dicom_port, prometheus_port = (free_port() for _ in range(4))
    password = os.urandom(12).hex()

    (workdir / "orthanc.json").write_text(
        json.dumps(orthanc_config(workdir, http_port, dicom_port, vlkd_port, password))
    )
    (workdir / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config(vlkd_port, prometheus_port))
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    vlkd_env = {
        **base_env,
        "VLKD_HOST": "127.0.0.1",
        "VLKD_PORT": str(vlkd_port),
        "VLKD_WORKERS": "2",
        "VLKD_MODEL_PATH": str(model_path),
        "VLKD_API_KEYS": api_key,
        "VLKD_DOCS_ENABLED": "false",
    }
    orthanc_env = {**base_env, "VLKD_API_KEY": api_key}

    with ExitStack() as stack:
        processes = [
            stack.enter_context(
                started(
                    "vlkd",
                    [sys.executable, "-m", "app"],
                    workdir / "vlkd.log",
                    vlkd_env,
                )
            ),
            stack.enter_context(
                started(
                    "orthanc",
                    [orthanc_bin, str(workdir / "orthanc.json")],
                    workdir / "orthanc.log",
                    orthanc_env,
                )
            ),
            stack.enter_context(
                started(
                    "prometheus",
                    [
                        prometheus_bin,
                        f"--config.file={workdir / 'prometheus.yml'}",
                        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    ],
                    workdir / "prometheus.log",
                    base_env,
                )
            ),
        ]
        running = Stack(
            vlkd_url=f"http://127.0.0.1:{vlkd_port}",
            orthanc_url=f"http://127.0.0.1:{http_port}",
            orthanc_auth=("vlkd-test", password),
            dicom_port=dicom_port,
            prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            api_key=api_key,
            processes=processes,
        )

        def answers(
            url: str, auth: tuple[str, str] | None = None
        ) -> Callable[[], bool]:
            def check() -> bool:
                running.assert_running()
                return httpx.get(url, auth=auth, timeout=2).status_code == 200

            return check

        try:
            wait_until("vlkd /readyz", answers(f"{running.vlkd_url}/readyz"), 90)
            wait_until(
                "Orthanc /system",
                answers(f"{running.orthanc_url}/system", running.orthanc_auth),
                30,
            )
            wait_until(
                "Prometheus /-/ready", answers(f"{running.prometheus_url}/-/ready"), 30
            )
        except StackError as error:
            raise StackError(f"{error}\n{running.logs()}") from error

        yield running
