"""Prometheus configuration and alert rules, checked and unit-tested by promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from tests.deploy.tools import REPO_ROOT, require_program

PROMETHEUS_YML = REPO_ROOT / "docker" / "prometheus.yml"
ALERTS_YML = REPO_ROOT / "docker" / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_program("promtool", "prometheus (Debian)")

    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]

    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_prometheus_config_is_valid_with_its_rules_file(tmp_path: Path) -> None:
    """promtool accepts the config once its rules path points at docker/alerts.yml."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["rule_files"] = [str(ALERTS_YML)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))

    result = _promtool("check", "config", str(local))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout + result.stderr


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    """promtool's rule unit tests pass: each alert fires, and is quiet when healthy."""
    args = ("test", "rules", str(ALERT_TESTS))

    result = _promtool(*args)

    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_down_not_ready_errors_latency_and_rejections() -> None:
    """The five conditions issue 5 asks for each have an alert with a description."""
    alerts = _alerts()

    expected = {
        "VlkdDown",
        "VlkdNotReady",
        "VlkdHighErrorRate",
        "VlkdSlowClassification",
        "VlkdHighRejectedInputRate",
    }

    assert expected <= set(alerts)
    assert all(alerts[name]["annotations"]["description"] for name in expected)  # type: ignore[index]


def test_alerts_only_use_metrics_the_service_exports() -> None:
    """Every vlkd_* series an alert reads is defined in app.metrics."""
    exported = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name  # the name without _total / _bucket suffixes
            exported |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count"}

    used = set()
    for rule in _alerts().values():
        used |= set(re.findall(r"\bvlkd_[a-z_]+", str(rule["expr"])))

    assert used
    assert used <= exported, used - exported
