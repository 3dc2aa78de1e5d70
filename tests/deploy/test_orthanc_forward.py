"""The Orthanc plugin's forwarding logic, run without Orthanc.

``docker/orthanc/vlkd_forward.py`` only touches the ``orthanc`` module in its
glue; the retry policy, HTTP call, queue and workers are exercised here against
fakes and a loopback HTTP server.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from tests.deploy.tools import REPO_ROOT

FORWARD_SCRIPT = REPO_ROOT / "docker" / "orthanc" / "vlkd_forward.py"
ORTHANC_JSON = REPO_ROOT / "docker" / "orthanc" / "orthanc.json"
KEY = "k" * 24


@pytest.fixture(scope="module")
def fwd() -> ModuleType:
    """The plugin script imported as a module (its Orthanc glue stays inactive)."""
    spec = importlib.util.spec_from_file_location("vlkd_forward", FORWARD_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)

    return module


def _config(fwd: ModuleType, **overrides: Any) -> Any:
    values = {"url": "http://127.0.0.1:9/v1/classify", "max_attempts": 4}
    values.update(overrides)

    return fwd.ForwarderConfig(**values)


class ScriptedPost:
    """A fake POST answering from a script of statuses (or exceptions)."""

    def __init__(self, answers: list[int | Exception]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, dicom: bytes, config: Any) -> tuple[int, bytes]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        body = {"label": "normal"} if answer < 300 else {"detail": f"status {answer}"}

        return answer, json.dumps(body).encode()


def test_config_reads_the_shipped_orthanc_json_and_key_from_environment(
    fwd: ModuleType,
) -> None:
    """The repository's Orthanc config yields a valid forwarder config."""
    configuration = json.loads(ORTHANC_JSON.read_text())

    config = fwd.ForwarderConfig.from_configuration(
        configuration, environ={"VLKD_API_KEY": f" {KEY} "}
    )

    assert config.url == "http://vlkd:8000/v1/classify"
    assert config.api_key == KEY
    assert config.max_attempts >= 2


def test_config_rejects_a_non_http_url(fwd: ModuleType) -> None:
    """A URL that is not http(s) stops the plugin at start-up."""
    configuration = {"Vlkd": {"Url": "file:///etc/passwd"}}

    with pytest.raises(ValueError, match="http"):
        fwd.ForwarderConfig.from_configuration(configuration, environ={})


def test_classify_is_done_after_one_success(fwd: ModuleType) -> None:
    """A 200 on the first try stores vlkd's body unchanged."""
    post = ScriptedPost([200])

    outcome = fwd.classify(b"DICM", _config(fwd), post=post)

    assert (outcome.status, outcome.attempts, post.calls) == ("done", 1, 1)
    assert json.loads(outcome.body) == {"label": "normal"}


def test_classify_rejects_a_client_error_without_retrying(fwd: ModuleType) -> None:
    """A 415 is final: one call, status rejected, vlkd's detail recorded."""
    post = ScriptedPost([415])

    outcome = fwd.classify(b"DICM", _config(fwd), post=post)

    record = json.loads(outcome.body)
    assert (outcome.status, post.calls) == ("rejected", 1)
    assert record == {
        "status": "rejected",
        "http_status": 415,
        "detail": "status 415",
        "attempts": 1,
    }


def test_classify_retries_server_errors_a_bounded_number_of_times(
    fwd: ModuleType,
) -> None:
    """503 every time: exactly MaxAttempts calls, doubling waits, then failed."""
    post = ScriptedPost([503])
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    outcome = fwd.classify(
        b"DICM",
        _config(fwd, max_attempts=3, first_retry_delay_s=1.5),
        post=post,
        wait=wait,
    )

    assert (outcome.status, outcome.attempts, post.calls) == ("failed", 3, 3)
    assert waits == [1.5, 3.0]
    assert json.loads(outcome.body)["http_status"] == 503


def test_classify_recovers_after_network_errors_and_429(fwd: ModuleType) -> None:
    """Refused connections, cut answers and 429 are retried; a later 200 wins."""
    post = ScriptedPost(
        [ConnectionRefusedError(), http.client.IncompleteRead(b""), 429, 200]
    )

    outcome = fwd.classify(b"DICM", _config(fwd), post=post)

    assert (outcome.status, outcome.attempts) == ("done", 4)


def test_classify_stops_retrying_when_orthanc_stops(fwd: ModuleType) -> None:
    """When the wait reports shutdown, no further attempt is made."""
    post = ScriptedPost([500])

    outcome = fwd.classify(b"DICM", _config(fwd), post=post, wait=lambda s: True)

    assert (outcome.status, post.calls) == ("failed", 1)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"headers": self.headers, "body": body})
        payload = json.dumps({"detail": "nope"} if self.status >= 400 else {"ok": 1})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    """A loopback HTTP server recording each POST; yields (url, handler class)."""
    handler = type("Recorder", (_Recorder,), {"seen": [], "status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/classify", handler
    server.shutdown()
    server.server_close()


def test_post_sends_dicom_content_type_and_api_key(
    fwd: ModuleType, recorder: tuple[str, type[_Recorder]]
) -> None:
    """The request carries application/dicom, the key header and the exact bytes."""
    url, handler = recorder
    config = _config(fwd, url=url, api_key=KEY)

    status, body = fwd.post_dicom(b"DICM-bytes", config)

    sent = handler.seen[0]
    assert (status, json.loads(body)) == (200, {"ok": 1})
    assert sent["headers"]["Content-Type"] == "application/dicom"
    assert sent["headers"]["X-API-Key"] == KEY
    assert sent["body"] == b"DICM-bytes"


def test_post_returns_client_errors_instead_of_raising(
    fwd: ModuleType, recorder: tuple[str, type[_Recorder]]
) -> None:
    """A 422 answer comes back as (422, body), so the caller can decide."""
    url, handler = recorder
    handler.status = 422

    status, body = fwd.post_dicom(b"DICM", _config(fwd, url=url))

    assert (status, json.loads(body)) == (422, {"detail": "nope"})


def _wait_until(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)

    return False


def test_forwarder_stores_an_outcome_for_every_submitted_instance(
    fwd: ModuleType,
) -> None:
    """Worker threads read, classify and store each queued instance once."""
    stored: dict[str, Any] = {}
    files = {f"id-{n}": f"DICM-{n}".encode() for n in range(5)}
    forwarder = fwd.Forwarder(
        _config(fwd, workers=2),
        read_file=files.__getitem__,
        store=stored.__setitem__,
        log_info=lambda m: None,
        log_warning=lambda m: None,
        log_error=lambda m: None,
        post=ScriptedPost([200]),
    )

    forwarder.start()
    for instance_id in files:
        forwarder.submit(instance_id)
    finished = _wait_until(lambda: len(stored) == len(files))
    forwarder.stop()

    assert finished
    assert {outcome.status for outcome in stored.values()} == {"done"}


def test_forwarder_logs_and_drops_work_beyond_its_queue(fwd: ModuleType) -> None:
    """With the queue full, submit returns False and logs an error line."""
    errors: list[str] = []
    forwarder = fwd.Forwarder(
        _config(fwd, queue_size=1),
        read_file=lambda i: b"",
        store=lambda i, o: None,
        log_info=lambda m: None,
        log_warning=lambda m: None,
        log_error=errors.append,
    )

    accepted = [forwarder.submit("a"), forwarder.submit("b")]

    assert accepted == [True, False]
    assert "queue full" in errors[0]


def test_forwarder_survives_a_failing_read_and_keeps_working(fwd: ModuleType) -> None:
    """An exception for one instance is logged by type; the next one is handled."""
    stored: dict[str, Any] = {}
    errors: list[str] = []

    def read_file(instance_id: str) -> bytes:
        if instance_id == "bad":
            raise RuntimeError("secret patient detail")
        return b"DICM"

    forwarder = fwd.Forwarder(
        _config(fwd, workers=1),
        read_file=read_file,
        store=stored.__setitem__,
        log_info=lambda m: None,
        log_warning=lambda m: None,
        log_error=errors.append,
        post=ScriptedPost([200]),
    )

    forwarder.start()
    forwarder.submit("bad")
    forwarder.submit("good")
    finished = _wait_until(lambda: "good" in stored)
    forwarder.stop()

    assert finished
    assert any("RuntimeError" in line for line in errors)
    assert not any("secret patient detail" in line for line in errors)


def test_script_runs_standalone_without_orthanc(fwd: ModuleType) -> None:
    """Outside Orthanc the glue stays off: no forwarder is installed on import."""
    module = fwd

    installed = hasattr(module, "FORWARDER")

    assert module.orthanc is None
    assert not installed
    assert Path(str(module.__file__)).name == "vlkd_forward.py"
