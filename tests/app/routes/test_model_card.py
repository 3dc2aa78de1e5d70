"""GET /v1/model: the model card."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient


def test_model_card_lists_contract(client: TestClient) -> None:
    """The card names the model, its labels, its input contract and its card data."""
    response = client.get("/v1/model")

    card = response.json()
    assert response.status_code == 200
    assert card["labels"] == ["normal", "pneumonia", "nodule"]
    assert card["input"]["input_size"] == 32
    assert card["input"]["preprocess_version"] == "vlkd-pre-1"
    assert card["card"]["intended_use"] == "tests only"
    assert card["onnx_opset"] == 17
    assert card["has_features"] is True


def test_model_card_reports_decoder_self_test(
    make_client: Callable[..., TestClient],
) -> None:
    """With the decoder self-test on, the card lists every DICOM syntax as passed."""
    client = make_client(decoder_self_test=True)

    syntaxes = client.get("/v1/model").json()["dicom_syntaxes"]

    assert "JPEG 2000 Image Compression (Lossless Only)" in syntaxes
    assert "RLE Lossless" in syntaxes
    assert all(syntaxes.values())
