"""Metric counts: exact increments, and correct totals across 2 workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import free_port, png_bytes
from tests.conftest import REPO_ROOT


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == metric and all(
                item.labels.get(k) == v for k, v in labels.items()
            ):
                return float(item.value)

    return 0.0


def test_counters_increase_by_exact_amounts(client: TestClient) -> None:
    """Three good and one bad upload move the counters by exactly 3 and 1."""
    before = client.get("/metrics").text
    for seed in range(3):
        client.post(
            "/v1/classify",
            content=png_bytes(seed=seed),
            headers={"content-type": "image/png"},
        )
    client.post("/v1/classify", content=b"", headers={"content-type": "image/png"})

    after = client.get("/metrics").text

    route = {"route": "/v1/classify"}
    ok = sample(after, "vlkd_requests_total", status="200", **route)
    ok -= sample(before, "vlkd_requests_total", status="200", **route)
    bad = sample(after, "vlkd_requests_total", status="422", **route)
    bad -= sample(before, "vlkd_requests_total", status="422", **route)
    rejected = sample(after, "vlkd_rejected_inputs_total", reason="unprocessable")
    rejected -= sample(before, "vlkd_rejected_inputs_total", reason="unprocessable")
    assert (ok, bad, rejected) == (3, 1, 1)


@pytest.mark.slow
def test_two_workers_counts_add_up(model_path: Path) -> None:
    """With 2 uvicorn workers, metrics and logs count every request once (~10 s)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        VLKD_MODEL_PATH=str(model_path),
        VLKD_PORT=str(port),
        VLKD_WORKERS="2",
        VLKD_INTRA_OP_THREADS="1",
        VLKD_GRACEFUL_SHUTDOWN_S="2",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        time.sleep(1.0)  # let the second worker finish its start-up too

        requests = 24
        for seed in range(requests):
            with httpx.Client() as fresh:  # a new connection may reach either worker
                response = fresh.post(
                    f"{url}/v1/classify",
                    content=png_bytes(seed=seed),
                    headers={"content-type": "image/png"},
                )
                assert response.status_code == 200

        text = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert server.stderr is not None
    log = server.stderr.read().decode()

    counted = sample(text, "vlkd_requests_total", route="/v1/classify", status="200")
    predicted = sum(
        sample(text, "vlkd_predictions_total", label=label)
        for label in ("normal", "pneumonia", "nodule")
    )
    assert counted == requests
    assert log.count("route=/v1/classify status=200") == requests  # workers log too
    assert predicted == requests
    assert sample(text, "vlkd_model_info", name="vlkd-test-tiny") == 1
