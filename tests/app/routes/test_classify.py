"""POST /v1/classify and /v1/classify/batch on real files and tiny images."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.gate import REASON_BODY_PART
from tests.app.conftest import jpeg_bytes, png_bytes

LABELS = {"normal", "pneumonia", "nodule"}


def assert_classified(body: dict[str, object]) -> None:
    probabilities = body["probabilities"]
    assert isinstance(probabilities, dict)
    assert set(probabilities) == LABELS
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert body["label"] == max(probabilities, key=probabilities.__getitem__)
    assert body["assessable"] is True


def test_raw_png_classified(client: TestClient) -> None:
    """A raw image/png body gets a label, probabilities, model and timings."""
    response = client.post(
        "/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}
    )

    body = response.json()
    assert response.status_code == 200
    assert_classified(body)
    assert body["model"]["name"] == "vlkd-test-tiny"
    assert len(body["model"]["sha256"]) == 64
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "total"}
    assert body["request_id"] == response.headers["x-request-id"]


def test_multipart_jpeg_classified(client: TestClient) -> None:
    """A multipart field ``file`` holding a JPEG is classified."""
    response = client.post(
        "/v1/classify", files={"file": ("x.jpg", jpeg_bytes(), "image/jpeg")}
    )

    assert response.status_code == 200
    assert_classified(response.json())


def test_same_image_same_answer_both_ways(client: TestClient) -> None:
    """Raw and multipart uploads of one image give identical probabilities."""
    data = png_bytes(80)

    raw = client.post(
        "/v1/classify", content=data, headers={"content-type": "image/png"}
    )
    form = client.post("/v1/classify", files={"file": ("a.png", data, "image/png")})

    assert raw.json()["probabilities"] == form.json()["probabilities"]


def test_fullsize_images_classified(client: TestClient, shared_data: Path) -> None:
    """Every full-size upload in shared data gets a label."""
    files = sorted((shared_data / "fullsize").glob("*.png"))

    for path in files:
        response = client.post(
            "/v1/classify",
            content=path.read_bytes(),
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 200, path.name
        assert_classified(response.json())

    assert len(files) == 6


@pytest.mark.parametrize("name", ["RG2_JPLL.dcm", "RG3_J2KI.dcm"])
def test_non_chest_dicom_not_assessable(
    client: TestClient, shared_data: Path, name: str
) -> None:
    """Hip and extremity DICOMs come back not assessable, with a reason."""
    data = (shared_data / "dicom" / name).read_bytes()

    response = client.post(
        "/v1/classify", content=data, headers={"content-type": "application/dicom"}
    )

    body = response.json()
    assert response.status_code == 200
    assert body["assessable"] is False
    assert body["label"] is None and body["probabilities"] is None
    assert REASON_BODY_PART in body["not_assessable_reasons"]
    assert body["warnings"]


def test_dicom_without_pixels_gets_422(client: TestClient, shared_data: Path) -> None:
    """A DICOM header with no pixel data gets 422 and a request id."""
    data = (shared_data / "dicom" / "cr_chest_no_pixels.dcm").read_bytes()

    response = client.post(
        "/v1/classify", content=data, headers={"content-type": "application/dicom"}
    )

    assert response.status_code == 422
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_two_files_on_single_route_gets_422(client: TestClient) -> None:
    """Two ``file`` parts on the single-image route get 422 pointing to batch."""
    files = [("file", ("a.png", png_bytes(), "image/png"))] * 2

    response = client.post("/v1/classify", files=files)

    assert response.status_code == 422
    assert "batch" in response.json()["detail"]


def test_batch_keeps_order_and_isolates_bad_image(client: TestClient) -> None:
    """A bad image in a batch gets its own error entry; the others still classify."""
    files = [
        ("files", ("a.png", png_bytes(seed=1), "image/png")),
        ("files", ("b.png", b"not an image", "image/png")),
        ("files", ("c.png", b"", "image/png")),
        ("files", ("d.jpg", jpeg_bytes(), "image/jpeg")),
    ]

    response = client.post("/v1/classify/batch", files=files)

    results = response.json()["results"]
    assert response.status_code == 200
    assert [item["index"] for item in results] == [0, 1, 2, 3]
    assert [item["status"] for item in results] == [200, 415, 422, 200]
    assert results[1]["detail"] and results[2]["detail"]
    assert results[0]["label"] in LABELS and results[3]["label"] in LABELS


def test_batch_matches_single(client: TestClient) -> None:
    """An image gives the same probabilities alone and inside a batch."""
    data = png_bytes(seed=7)

    single = client.post("/v1/classify", files={"file": ("a.png", data, "image/png")})
    batch = client.post(
        "/v1/classify/batch",
        files=[
            ("files", ("x.png", png_bytes(seed=3), "image/png")),
            ("files", ("a.png", data, "image/png")),
        ],
    )

    alone = single.json()["probabilities"]
    inside = batch.json()["results"][1]["probabilities"]
    for label in LABELS:
        assert inside[label] == pytest.approx(alone[label], abs=1e-5)


def test_batch_over_image_limit_gets_413(client: TestClient) -> None:
    """More images than VLKD_MAX_BATCH_IMAGES get 413."""
    files = [("files", (f"{i}.png", png_bytes(16), "image/png")) for i in range(17)]

    response = client.post("/v1/classify/batch", files=files)

    assert response.status_code == 413


def test_unknown_route_gets_json_404(client: TestClient) -> None:
    """An unknown path gets a JSON 404 with a request id."""
    response = client.get("/v2/anything")

    assert response.status_code == 404
    assert response.json()["request_id"]


def test_wrong_method_gets_405(client: TestClient) -> None:
    """GET on the classify route gets 405, not a 500."""
    response = client.get("/v1/classify")

    assert response.status_code == 405
    assert "detail" in response.json()


def test_every_shared_dicom_classifies_or_gets_clear_4xx(
    client: TestClient, shared_data: Path
) -> None:
    """Each shared DICOM gets 200 or a 4xx with detail; RG1 encodings agree."""
    answers = {}
    for path in sorted((shared_data / "dicom").glob("*.dcm")):
        response = client.post(
            "/v1/classify",
            content=path.read_bytes(),
            headers={"content-type": "application/dicom"},
        )
        answers[path.stem] = response
        assert response.status_code == 200 or 400 <= response.status_code < 500
        if response.status_code != 200:
            assert response.json()["detail"], path.name

    reference = answers["RG1_UNCR"].json()
    for name, tolerance in (("RG1_J2KR", 0.02), ("RG1_J2KI", 0.05), ("RG1_JLSN", 0.05)):
        other = answers[name].json()
        assert other["label"] == reference["label"], name
        for label, value in reference["probabilities"].items():
            assert abs(other["probabilities"][label] - value) <= tolerance, name
    assert answers["siim_cr_chest_mono2"].json()["assessable"] is True
    assert answers["cr_chest_no_pixels"].status_code == 422
