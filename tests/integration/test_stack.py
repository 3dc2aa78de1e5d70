"""The deployment wiring for real: Orthanc -> vlkd -> result in Orthanc, and Prometheus.

Starts vlkd, Orthanc (with the forwarding plugin) and Prometheus as loopback
processes from the compose stack's own configuration files (see
``tests/integration/stack.py``), stores two chest DICOM files in Orthanc, one
through its REST API and one by DICOM C-STORE (dcmtk's storescu), and checks
that vlkd's answer lands on each instance, equals what ``/v1/classify`` returns
for the same file, and that Prometheus scraped those requests.

The model is ``models/vlkd-student.onnx`` when present, otherwise a tiny model
from ``tests.model_factory``. Takes about 20-40 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.deploy.tools import REPO_ROOT, require_program
from tests.integration.stack import Stack, StackError, run_stack, wait_until
from tests.model_factory import write_model

pytestmark = pytest.mark.integration

SHIPPED_MODEL = REPO_ROOT / "models" / "vlkd-student.onnx"
API_KEY = "integration-test-key-0123456789"
RESULT_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The three programs running on loopback; all stopped afterwards."""
    workdir = tmp_path_factory.mktemp("stack")
    model = (
        SHIPPED_MODEL if SHIPPED_MODEL.is_file() else write_model(workdir / "m.onnx")
    )

    try:
        with run_stack(workdir, model, API_KEY) as running:
            yield running
    except StackError as error:
        pytest.fail(str(error))


def _instance_ids(stack: Stack) -> set[str]:
    response = httpx.get(f"{stack.orthanc_url}/instances", auth=stack.orthanc_auth)
    response.raise_for_status()

    return set(response.json())


def _store_by_rest(stack: Stack, path: Path) -> str:
    response = httpx.post(
        f"{stack.orthanc_url}/instances",
        content=path.read_bytes(),
        auth=stack.orthanc_auth,
        timeout=60,
    )
    response.raise_for_status()

    return str(response.json()["ID"])


def _store_by_c_store(stack: Stack, path: Path) -> str:
    storescu = require_program("storescu", "dcmtk (Debian)")
    before = _instance_ids(stack)

    result = subprocess.run(
        [storescu, "-aec", "VLKDPACS", "127.0.0.1", str(stack.dicom_port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    new = _instance_ids(stack) - before
    assert len(new) == 1, f"C-STORE created {len(new)} instances"
    return new.pop()


def _stored_result(stack: Stack, instance_id: str) -> tuple[str, dict[str, Any]]:
    """Wait for the plugin's status metadata, then read the result attachment."""
    base = f"{stack.orthanc_url}/instances/{instance_id}"

    def has_status() -> bool:
        stack.assert_running()
        response = httpx.get(f"{base}/metadata/VlkdStatus", auth=stack.orthanc_auth)
        return response.status_code == 200

    wait_until(f"vlkd result on instance {instance_id}", has_status, RESULT_TIMEOUT_S)
    status = httpx.get(f"{base}/metadata/VlkdStatus", auth=stack.orthanc_auth).text
    attachment = httpx.get(f"{base}/attachments/vlkd/data", auth=stack.orthanc_auth)
    attachment.raise_for_status()

    return status, json.loads(attachment.content)


def _classify_directly(stack: Stack, path: Path) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.vlkd_url}/v1/classify",
        content=path.read_bytes(),
        headers={"Content-Type": "application/dicom", "X-API-Key": stack.api_key},
        timeout=60,
    )
    response.raise_for_status()

    return dict(response.json())


def _prometheus_value(stack: Stack, query: str) -> float:
    response = httpx.get(
        f"{stack.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
    )
    response.raise_for_status()
    result = response.json()["data"]["result"]

    return float(result[0]["value"][1]) if result else 0.0


def _patient_strings(path: Path) -> set[str]:
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    tags = ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID")
    values = {str(dataset.get(tag, "")) for tag in tags}

    return {value for value in values if len(value) >= 4}


@dataclass(frozen=True)
class Exchange:
    """What one round of storing and classifying produced, per way of storing."""

    files: dict[str, Path]
    instances: dict[str, str]
    stored: dict[str, tuple[str, dict[str, Any]]]
    direct: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def exchange(stack: Stack, shared_data: Path) -> Exchange:
    """Store one file by REST and one by C-STORE, wait for results, classify both."""
    dicom = shared_data / "dicom"
    files = {
        "rest": dicom / "siim_cr_chest_mono2.dcm",
        "c-store": dicom / "RG1_UNCR.dcm",
    }

    instances = {
        "rest": _store_by_rest(stack, files["rest"]),
        "c-store": _store_by_c_store(stack, files["c-store"]),
    }
    try:
        stored = {how: _stored_result(stack, iid) for how, iid in instances.items()}
    except StackError as error:
        pytest.fail(f"{error}\n{stack.logs()}")
    direct = {how: _classify_directly(stack, path) for how, path in files.items()}

    return Exchange(files, instances, stored, direct)


def test_stored_instances_get_the_same_result_as_direct_classify(
    exchange: Exchange,
) -> None:
    """REST upload and C-STORE both end with vlkd's own answer on the instance."""
    ways = exchange.files

    statuses = {how: exchange.stored[how][0] for how in ways}

    assert statuses == {"rest": "done", "c-store": "done"}, exchange.stored
    for how in ways:
        result, direct = exchange.stored[how][1], exchange.direct[how]
        assert result["label"] == direct["label"], how
        assert result["model"] == direct["model"], how
        assert result["probabilities"].keys() == direct["probabilities"].keys()
        for label, probability in result["probabilities"].items():
            expected = direct["probabilities"][label]
            assert probability == pytest.approx(expected, abs=1e-5), (how, label)


def test_prometheus_scraped_vlkd_and_counts_the_classifications(
    stack: Stack, exchange: Exchange
) -> None:
    """Prometheus shows vlkd up and the 4 classifications (2 by Orthanc, 2 direct)."""
    query = 'sum(vlkd_requests_total{job="vlkd", route="/v1/classify", status="200"})'

    wait_until(
        "Prometheus to scrape 4 classifications",
        lambda: _prometheus_value(stack, query) >= 4,
        SCRAPE_TIMEOUT_S,
    )
    up = _prometheus_value(stack, 'up{job="vlkd"}')
    rules = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()

    alert_names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert up == 1.0
    assert {"VlkdDown", "VlkdNotReady", "VlkdHighRejectedInputRate"} <= alert_names


def test_logs_carry_no_patient_identifiers(stack: Stack, exchange: Exchange) -> None:
    """vlkd logs its requests; no log names a patient or a UID of the files sent."""
    secrets = set().union(*(_patient_strings(p) for p in exchange.files.values()))
    time.sleep(0.5)  # let the last log lines reach the files

    logs = {p.name: p.log_path.read_text(errors="replace") for p in stack.processes}

    leaks = {(name, s) for name, text in logs.items() for s in secrets if s in text}
    assert secrets, "test files carry no patient name or id to look for"
    assert "route=/v1/classify" in logs["vlkd"], "vlkd logged no request line"
    assert not leaks


def test_an_instance_can_be_queued_again_through_orthanc(
    stack: Stack, exchange: Exchange
) -> None:
    """POST /vlkd/instances/{id}/classify re-creates a deleted result; unknown: 404."""
    instance_id = exchange.instances["rest"]
    base = f"{stack.orthanc_url}/instances/{instance_id}"
    auth = stack.orthanc_auth
    httpx.delete(f"{base}/metadata/VlkdStatus", auth=auth).raise_for_status()
    httpx.delete(f"{base}/attachments/vlkd", auth=auth).raise_for_status()

    queued = httpx.post(
        f"{stack.orthanc_url}/vlkd/instances/{instance_id}/classify", auth=auth
    )
    unknown = httpx.post(
        f"{stack.orthanc_url}/vlkd/instances/0000-00/classify", auth=auth
    )
    status, result = _stored_result(stack, instance_id)

    assert queued.json() == {"instance": instance_id, "queued": True}
    assert unknown.status_code == 404
    assert status == "done"
    assert result["label"] == exchange.direct["rest"]["label"]


def test_a_file_vlkd_refuses_is_marked_rejected_with_its_reason(
    stack: Stack, shared_data: Path
) -> None:
    """A DICOM without pixels ends as ``rejected`` with vlkd's 422 and detail."""
    path = shared_data / "dicom" / "cr_chest_no_pixels.dcm"

    instance_id = _store_by_rest(stack, path)
    status, record = _stored_result(stack, instance_id)

    assert status == "rejected"
    assert record["http_status"] == 422
    assert record["attempts"] == 1
    assert record["detail"]
