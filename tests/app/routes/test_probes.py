"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import png_bytes


def test_healthz_and_readyz_ok_after_start(client: TestClient) -> None:
    """After start-up both probes answer 200."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_503_before_model_loaded(make_settings: Callable[..., Settings]) -> None:
    """Without the lifespan (no model loaded) readiness is 503, liveness 200."""
    client = TestClient(create_app(make_settings()))  # not entered: no lifespan

    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_start_refused_on_bad_model(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The lifespan raises when the model is missing, so the app never serves."""
    app = create_app(make_settings(model_path=tmp_path / "missing.onnx"))

    try:
        with TestClient(app):
            started = True
    except Exception as error:  # the lifespan's ModelError
        started = False
        assert "not found" in str(error)

    assert started is False


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    """Requests, predictions, rejections and model info show up in /metrics."""
    client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}
    )
    client.post("/v1/classify", content=b"junk", headers={"content-type": "image/png"})

    text = client.get("/metrics").text

    assert 'vlkd_requests_total{route="/v1/classify",status="200"}' in text
    assert 'vlkd_requests_total{route="/v1/classify",status="415"}' in text
    assert 'vlkd_rejected_inputs_total{reason="unsupported_media"}' in text
    assert "vlkd_predictions_total{label=" in text
    assert 'vlkd_model_info{name="vlkd-test-tiny"' in text
    assert "vlkd_decode_latency_seconds_bucket" in text
    assert "vlkd_inference_latency_seconds_bucket" in text
    assert (
        'vlkd_request_latency_seconds_bucket{le="0.005",route="/v1/classify"}' in text
    )
