"""Orthanc Python plugin: classify every newly stored instance with vlkd.

When Orthanc stores an instance (C-STORE from a modality or a PACS, or an upload
to its REST API), this plugin sends the DICOM file to vlkd's ``/v1/classify`` as
``Content-Type: application/dicom`` and keeps the answer with the instance:

* attachment ``vlkd`` (``GET /instances/{id}/attachments/vlkd/data``): vlkd's JSON
  answer as it came, or, when vlkd refused the file or could not be reached, a
  JSON record ``{"status": ..., "http_status": ..., "detail": ..., "attempts": ...}``;
* metadata ``VlkdStatus`` (``GET /instances/{id}/metadata/VlkdStatus``): ``done``,
  ``rejected`` (vlkd answered 4xx: not retried) or ``failed`` (vlkd unreachable or
  5xx after every attempt).

``POST /vlkd/instances/{id}/classify`` (Orthanc's REST API, same credentials)
queues an instance again, e.g. one whose status is ``failed``.

Why a queue and worker threads: Orthanc's change callback must return quickly
and must not call Orthanc's REST API itself (that can deadlock), so the callback
only enqueues the instance id and workers do the HTTP work. Failures are retried
a bounded number of times with exponential back-off.

Log lines carry the Orthanc instance id (an opaque hash), attempt counts, HTTP
statuses and vlkd's short error detail; never DICOM tags, patient data or bodies.

Configuration (section ``Vlkd`` of Orthanc's configuration)::

    "Vlkd": {
      "Url": "http://vlkd:8000/v1/classify",   // where to POST
      "ApiKeyHeader": "X-API-Key",             // header carrying the key
      "MaxAttempts": 4,                        // tries per instance, >= 1
      "FirstRetryDelaySeconds": 2,             // then doubled each retry
      "TimeoutSeconds": 30,                    // one HTTP request
      "Workers": 2,                            // instances classified at once
      "QueueSize": 1000                        // pending instances kept
    }

The API key itself comes from the environment variable ``VLKD_API_KEY`` so that
it never sits in a configuration file.

Only the standard library is used: the interpreter is the one Orthanc's Python
plugin embeds. The part below the ``orthanc`` import guard is the glue; the rest
runs (and is tested) without Orthanc.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ATTACHMENT = "vlkd"
STATUS_METADATA = "VlkdStatus"
API_KEY_ENV = "VLKD_API_KEY"

# 4xx answers that may succeed later: request timeout, too many requests.
RETRYABLE_CLIENT_STATUSES = (408, 429)
MAX_DETAIL_CHARS = 200

Log = Callable[[str], None]


@dataclass(frozen=True)
class ForwarderConfig:
    """Where and how to send instances; read from Orthanc's ``Vlkd`` section."""

    url: str
    api_key: str = ""
    api_key_header: str = "X-API-Key"
    max_attempts: int = 4
    first_retry_delay_s: float = 2.0
    timeout_s: float = 30.0
    workers: int = 2
    queue_size: int = 1000

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Vlkd.Url must be an http(s) URL, got {self.url!r}")
        if not 1 <= self.max_attempts <= 20:
            raise ValueError(f"Vlkd.MaxAttempts must be 1..20, got {self.max_attempts}")
        if self.first_retry_delay_s < 0 or self.timeout_s <= 0:
            raise ValueError("Vlkd delays and timeouts must be positive")
        if not 1 <= self.workers <= 32 or self.queue_size < 1:
            raise ValueError("Vlkd.Workers must be 1..32 and Vlkd.QueueSize >= 1")

    @classmethod
    def from_configuration(
        cls, configuration: dict[str, Any], environ: dict[str, str] | None = None
    ) -> ForwarderConfig:
        """Build from Orthanc's whole configuration and the process environment."""
        section = configuration.get("Vlkd", {})
        environ = dict(os.environ) if environ is None else environ

        return cls(
            url=str(section.get("Url", "http://vlkd:8000/v1/classify")),
            api_key=environ.get(API_KEY_ENV, "").strip(),
            api_key_header=str(section.get("ApiKeyHeader", "X-API-Key")),
            max_attempts=int(section.get("MaxAttempts", 4)),
            first_retry_delay_s=float(section.get("FirstRetryDelaySeconds", 2)),
            timeout_s=float(section.get("TimeoutSeconds", 30)),
            workers=int(section.get("Workers", 2)),
            queue_size=int(section.get("QueueSize", 1000)),
        )


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance, and the JSON body to store with it."""

    status: str  # "done" | "rejected" | "failed"
    attempts: int
    http_status: int | None
    body: bytes


def _short_detail(raw: bytes) -> str:
    """vlkd's human ``detail`` from an error body, cut short; never the body."""
    try:
        detail = json.loads(raw.decode("utf-8")).get("detail", "")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        detail = ""
    if not isinstance(detail, str):
        detail = json.dumps(detail)

    return detail[:MAX_DETAIL_CHARS]


def _error_record(
    status: str, http_status: int | None, detail: str, attempts: int
) -> bytes:
    record = {
        "status": status,
        "http_status": http_status,
        "detail": detail,
        "attempts": attempts,
    }

    return json.dumps(record).encode("utf-8")


def post_dicom(dicom: bytes, config: ForwarderConfig) -> tuple[int, bytes]:
    """POST one DICOM file to vlkd; return (HTTP status, body) for any answer.

    Raises ``OSError`` (``URLError``, timeouts, refused connections) or
    ``http.client.HTTPException`` (answer cut short) when no complete HTTP
    answer came back.
    """
    headers = {"Content-Type": "application/dicom", "Accept": "application/json"}
    if config.api_key:
        headers[config.api_key_header] = config.api_key
    request = urllib.request.Request(
        config.url, data=dicom, headers=headers, method="POST"
    )

    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def classify(
    dicom: bytes,
    config: ForwarderConfig,
    *,
    post: Callable[[bytes, ForwarderConfig], tuple[int, bytes]] = post_dicom,
    wait: Callable[[float], bool] = lambda seconds: False,
    log: Log = lambda message: None,
    label: str = "instance",
) -> Outcome:
    """Send one file to vlkd, retrying transient failures; never raises.

    ``wait(seconds)`` sleeps between attempts and returns True when the plugin
    is stopping (then no further attempt is made). 2xx is ``done``; a 4xx other
    than 408 / 429 is ``rejected`` at once (the same bytes would be refused
    again); 5xx, 408, 429 and network errors are retried up to
    ``config.max_attempts`` times, then ``failed``.
    """
    http_status: int | None = None
    detail = ""
    attempt = 0

    for attempt in range(1, config.max_attempts + 1):
        try:
            http_status, body = post(dicom, config)
        # URLError, timeouts, refused or cut connections, bad URL
        except (OSError, ValueError, http.client.HTTPException) as error:
            http_status = None
            detail = type(getattr(error, "reason", error)).__name__
        else:
            if 200 <= http_status < 300:
                return Outcome("done", attempt, http_status, body)
            detail = _short_detail(body)
            if (
                400 <= http_status < 500
                and http_status not in RETRYABLE_CLIENT_STATUSES
            ):
                log(f"vlkd refused {label}: HTTP {http_status} {detail}")
                return Outcome(
                    "rejected",
                    attempt,
                    http_status,
                    _error_record("rejected", http_status, detail, attempt),
                )

        if attempt < config.max_attempts:
            delay = config.first_retry_delay_s * 2 ** (attempt - 1)
            what = (
                f"HTTP {http_status}"
                if http_status is not None
                else f"no answer: {detail}"
            )
            log(
                f"vlkd attempt {attempt}/{config.max_attempts} for {label} failed "
                f"({what}); retrying in {delay:g} s"
            )
            if wait(delay):
                break

    log(f"vlkd gave up on {label} after {attempt} attempt(s)")

    return Outcome(
        "failed",
        attempt,
        http_status,
        _error_record("failed", http_status, detail, attempt),
    )


class Forwarder:
    """A bounded queue of instance ids and the worker threads that drain it.

    ``read_file(id)`` returns the DICOM bytes and ``store(id, outcome)`` keeps
    the result with the instance; both talk to Orthanc in the glue below, so the
    queue, retries and shutdown are testable without Orthanc.

    FIXME: the queue lives in memory, so instances still queued or between
    retries when Orthanc stops never get a result (no ``VlkdStatus``). They can
    be re-queued with ``POST /vlkd/instances/{id}/classify``; nothing finds them
    automatically after a restart yet.
    """

    def __init__(
        self,
        config: ForwarderConfig,
        read_file: Callable[[str], bytes],
        store: Callable[[str, Outcome], None],
        log_info: Log,
        log_warning: Log,
        log_error: Log,
        post: Callable[[bytes, ForwarderConfig], tuple[int, bytes]] = post_dicom,
    ) -> None:
        self.config = config
        self._read_file = read_file
        self._store = store
        self._log_info = log_info
        self._log_warning = log_warning
        self._log_error = log_error
        self._post = post
        self._queue: queue.Queue[str] = queue.Queue(maxsize=config.queue_size)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads (daemons: they never hold Orthanc's exit)."""
        for index in range(self.config.workers):
            thread = threading.Thread(
                target=self._work, name=f"vlkd-forward-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking work, wake sleeping retries, and wait briefly for workers."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, instance_id: str) -> bool:
        """Queue one instance; False (and an error line) when the queue is full."""
        try:
            self._queue.put_nowait(instance_id)
        except queue.Full:
            self._log_error(
                f"vlkd queue full ({self.config.queue_size}); instance {instance_id} "
                "will not be classified"
            )
            return False

        return True

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                instance_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._handle(instance_id)
            except Exception as error:  # a worker must survive anything
                self._log_error(
                    f"vlkd forwarding of instance {instance_id} broke: "
                    f"{type(error).__name__}"
                )
            finally:
                self._queue.task_done()

    def _handle(self, instance_id: str) -> None:
        label = f"instance {instance_id}"
        started = time.monotonic()
        dicom = self._read_file(instance_id)

        outcome = classify(
            dicom,
            self.config,
            post=self._post,
            wait=self._stopping.wait,
            log=self._log_warning,
            label=label,
        )
        self._store(instance_id, outcome)

        elapsed_ms = (time.monotonic() - started) * 1000
        answer = f"HTTP {outcome.http_status}" if outcome.http_status else "no answer"
        message = (
            f"vlkd {outcome.status} for {label}: {answer}, "
            f"{outcome.attempts} attempt(s), {elapsed_ms:.0f} ms"
        )
        if outcome.status == "done":
            self._log_info(message)
        elif outcome.status == "rejected":
            self._log_warning(message)
        else:
            self._log_error(message)


# --- Orthanc glue: only runs inside Orthanc's Python plugin -------------------

orthanc: Any  # the module Orthanc's Python plugin provides
try:
    orthanc = importlib.import_module("orthanc")
except ImportError:  # imported by tests or tools outside Orthanc
    orthanc = None


def _read_file(instance_id: str) -> bytes:
    return bytes(orthanc.RestApiGet(f"/instances/{instance_id}/file"))


def _store(instance_id: str, outcome: Outcome) -> None:
    orthanc.RestApiPut(
        f"/instances/{instance_id}/attachments/{ATTACHMENT}", outcome.body
    )
    orthanc.RestApiPut(
        f"/instances/{instance_id}/metadata/{STATUS_METADATA}", outcome.status
    )


REQUEUE_ROUTE = "/vlkd/instances/([0-9a-f-]+)/classify"


def _requeue_route(forwarder: Forwarder) -> Callable[..., None]:
    """``POST /vlkd/instances/{id}/classify``: queue an instance (again)."""

    def on_rest(output: Any, uri: str, **request: Any) -> None:
        if request["method"] != "POST":
            output.SendMethodNotAllowed("POST")
            return

        instance_id = request["groups"][0]
        try:
            orthanc.RestApiGet(f"/instances/{instance_id}")
        except Exception:  # the plugin raises a generic error for a 404
            output.SendHttpStatusCode(404)
            return
        queued = forwarder.submit(instance_id)
        answer = {"instance": instance_id, "queued": queued}
        output.AnswerBuffer(json.dumps(answer), "application/json")

    return on_rest


def _install() -> Forwarder:
    config = ForwarderConfig.from_configuration(json.loads(orthanc.GetConfiguration()))
    forwarder = Forwarder(
        config,
        read_file=_read_file,
        store=_store,
        log_info=orthanc.LogInfo,
        log_warning=orthanc.LogWarning,
        log_error=orthanc.LogError,
    )

    def on_change(change_type: Any, level: Any, resource_id: str) -> None:
        if change_type == orthanc.ChangeType.NEW_INSTANCE:
            forwarder.submit(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            forwarder.stop()

    forwarder.start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback(REQUEUE_ROUTE, _requeue_route(forwarder))
    orthanc.LogWarning(
        f"vlkd forwarder ready: {config.workers} worker(s), "
        f"{config.max_attempts} attempt(s) per instance, "
        f"API key {'set' if config.api_key else 'not set'}"
    )

    return forwarder


if orthanc is not None:
    FORWARDER = _install()
