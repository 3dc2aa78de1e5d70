"""docker-compose.yml validated by Docker Compose itself and checked for LAN use."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from app.settings import Settings
from tests.deploy.deploy_files import COMPOSE_FILE, env_values
from tests.deploy.tools import REPO_ROOT, compose_binary

DUMMY_ENV = {"ORTHANC_ADMIN_PASSWORD": "compose-test-password"}


def _compose_config(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VLKD_", "ORTHANC"))
    }
    env.update(extra_env)

    return subprocess.run(
        [
            compose_binary(),
            "--project-directory",
            str(REPO_ROOT),
            "--env-file",  # a local .env (docs/deployment.md) must not leak in
            os.devnull,
            "-f",
            str(COMPOSE_FILE),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as Docker Compose resolves it (defaults applied)."""
    result = _compose_config(DUMMY_ENV)
    if result.returncode != 0:
        pytest.fail(f"docker compose config failed: {result.stderr.strip()}")

    return dict(json.loads(result.stdout))


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]

    return total


def test_compose_file_validates_with_docker_compose(compose: dict[str, Any]) -> None:
    """Docker Compose accepts the file and finds the three services."""
    services = compose["services"]

    assert set(services) == {"vlkd", "orthanc", "prometheus"}


def test_compose_refuses_to_start_without_orthanc_password() -> None:
    """Without ORTHANC_ADMIN_PASSWORD the file does not resolve, naming the variable."""
    result = _compose_config({})

    assert result.returncode != 0
    assert "ORTHANC_ADMIN_PASSWORD" in result.stderr


def test_compose_publishes_only_what_the_lan_needs(compose: dict[str, Any]) -> None:
    """vlkd 8000, Orthanc 4242 (DICOM) and 8042 (REST) on the LAN; Prometheus local."""
    published = {
        (name, port["target"], port.get("host_ip", "0.0.0.0"))
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    }

    assert published == {
        ("vlkd", 8000, "0.0.0.0"),
        ("orthanc", 4242, "0.0.0.0"),
        ("orthanc", 8042, "0.0.0.0"),
        ("prometheus", 9090, "127.0.0.1"),
    }


def test_compose_limits_cpu_and_memory_of_every_service(
    compose: dict[str, Any],
) -> None:
    """Each service has a CPU and a memory limit, so one cannot starve the others."""
    services = compose["services"]

    unlimited = [
        name
        for name, service in services.items()
        if not service.get("cpus") or not service.get("mem_limit")
    ]

    assert not unlimited


def test_compose_stop_grace_exceeds_service_graceful_shutdown(
    compose: dict[str, Any],
) -> None:
    """Docker waits longer than uvicorn's graceful shutdown before SIGKILL."""
    vlkd = compose["services"]["vlkd"]
    graceful_s = float(
        vlkd["environment"].get(
            "VLKD_GRACEFUL_SHUTDOWN_S", env_values()["VLKD_GRACEFUL_SHUTDOWN_S"]
        )
    )

    grace_s = _seconds(vlkd["stop_grace_period"])

    assert graceful_s + 5 <= grace_s


def test_compose_vlkd_environment_is_valid_service_settings(
    compose: dict[str, Any],
) -> None:
    """Image ENV plus compose environment load into Settings, with no unknown name."""
    environment = {**env_values(), **compose["services"]["vlkd"]["environment"]}
    settings_env = {k: v for k, v in environment.items() if k.startswith("VLKD_")}
    known = {f"VLKD_{name.upper()}" for name in Settings.model_fields}

    unknown = set(settings_env) - known
    settings = Settings(
        **{k[len("VLKD_") :].lower(): v for k, v in settings_env.items()}
    )

    assert not unknown
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000


def test_compose_bind_mounts_exist_in_the_repository(compose: dict[str, Any]) -> None:
    """Every file compose mounts into a container is in the repository."""
    sources = [
        Path(volume["source"])
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind" and not volume["target"].startswith("/models")
    ]

    missing = [str(source) for source in sources if not source.is_file()]

    assert sources
    assert not missing


def test_compose_wiring_matches_orthanc_and_prometheus_configs(
    compose: dict[str, Any],
) -> None:
    """Orthanc posts to, and Prometheus scrapes, the vlkd service's own port."""
    vlkd_port = int(compose["services"]["vlkd"]["environment"]["VLKD_PORT"])
    orthanc = json.loads((REPO_ROOT / "docker/orthanc/orthanc.json").read_text())
    prometheus = yaml.safe_load((REPO_ROOT / "docker/prometheus.yml").read_text())

    url = urlparse(orthanc["Vlkd"]["Url"])
    vlkd_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "vlkd")
    targets = vlkd_job["static_configs"][0]["targets"]

    assert (url.hostname, url.port, url.path) == ("vlkd", vlkd_port, "/v1/classify")
    assert targets == [f"vlkd:{vlkd_port}"]
    assert orthanc["PythonScript"] in {
        v["target"] for v in compose["services"]["orthanc"]["volumes"]
    }
