"""Error responses: own errors keep their status; anything else is a bare 500."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app import errors, inference
from app.handlers import INTERNAL_DETAIL
from tests.app.conftest import png_bytes

INPUT_ERRORS = [
    errors.InputError,
    errors.PayloadTooLargeError,
    errors.UnsupportedMediaError,
    errors.UnprocessableImageError,
]


@pytest.mark.parametrize("error_type", INPUT_ERRORS)
def test_input_errors_never_reach_catch_all(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    error_type: type[errors.InputError],
) -> None:
    """Every InputError subclass from decoding keeps its own 4xx and detail."""
    client = make_client(raise_server_exceptions=False)

    def failing_decode(*args: object, **kwargs: object) -> None:
        raise error_type("a short human reason")

    monkeypatch.setattr(inference, "decode", failing_decode)

    response = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}
    )

    assert response.status_code == error_type.status_code
    assert response.json()["detail"] == "a short human reason"


def test_unexpected_error_gives_generic_500(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug's exception gives a generic 500: no message, no traceback."""
    client = make_client(raise_server_exceptions=False)

    def buggy_decode(*args: object, **kwargs: object) -> None:
        raise KeyError("secret-internal-value DOE^JANE")

    monkeypatch.setattr(inference, "decode", buggy_decode)

    response = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}
    )

    assert response.status_code == 500
    assert response.json()["detail"] == INTERNAL_DETAIL
    assert "DOE" not in response.text and "Traceback" not in response.text
    assert response.json()["request_id"]


def test_model_error_during_inference_is_generic_500(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An onnxruntime failure at request time is a generic 500, not its message."""
    client = make_client(raise_server_exceptions=False)
    service = client.app.state.service  # type: ignore[attr-defined]

    def broken(batch: object) -> None:
        raise errors.ModelError("inference failed: Fail /onnxruntime_src/graph.cc")

    monkeypatch.setattr(service.model, "run", broken)

    response = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}
    )

    assert response.status_code == 500
    assert "onnxruntime" not in response.text
