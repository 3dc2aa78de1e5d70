"""One log line per request, with nothing that identifies a patient or a file."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from app.logging_setup import RequestLogMiddleware, new_request_id


def patient_dicom(shared_data: Path) -> tuple[bytes, str]:
    """A real chest DICOM relabelled with a patient name; returns bytes and its UID."""
    dataset = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_mono2.dcm")
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "MRN-4455667"
    buffer = io.BytesIO()
    dataset.save_as(buffer)

    return buffer.getvalue(), str(dataset.SOPInstanceUID)


def test_one_line_per_request_without_identifiers(
    client: TestClient, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DICOM upload logs one request line; no name, id, UID or file name anywhere."""
    data, uid = patient_dicom(shared_data)
    caplog.set_level(logging.DEBUG)

    response = client.post(
        "/v1/classify",
        files={"file": ("DOE_JANE_chest.dcm", data, "application/dicom")},
    )

    request_lines = [r for r in caplog.records if r.name == "app.logging_setup"]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert response.status_code == 200
    assert len(request_lines) == 1
    line = request_lines[0].getMessage()
    assert f"request_id={response.json()['request_id']}" in line
    assert "route=/v1/classify status=200" in line
    assert "model_version=0.0.1-test" in line
    for secret in ("DOE", "JANE", "MRN-4455667", uid, "chest.dcm"):
        assert secret not in everything


def test_route_template_not_raw_path(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Unmatched paths are logged as ``unmatched``, not echoed."""
    caplog.set_level(logging.INFO)

    client.get("/v1/DOE-JANE-secret")

    line = next(r.getMessage() for r in caplog.records if r.name == "app.logging_setup")
    assert "route=unmatched status=404" in line
    assert "DOE" not in line


def test_request_id_never_reuses_client_ids() -> None:
    """A client's X-Request-ID (maybe an accession number) never becomes ours."""
    accession = {"headers": [(b"x-request-id", b"DOE_JOHN_MRN123")]}
    evil = {"headers": [(b"x-request-id", b"x\nstatus=200 forged")]}

    ours = new_request_id(accession)

    assert ours != "DOE_JOHN_MRN123"
    assert re.fullmatch(r"[0-9a-f]{32}", ours)
    assert new_request_id(evil) != "x\nstatus=200 forged"
    assert RequestLogMiddleware  # the middleware is what the app installs
