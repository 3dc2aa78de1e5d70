"""Logging configuration and the one line the service writes per request.

The line holds the request id, the route *template* (``/v1/classify``, never a
raw path with client-chosen parts), the status, the latency and the model
version; nothing else: no client address, headers, file names, pixels or DICOM
tags. The same middleware counts requests and latency for Prometheus.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Plain one-line records on stderr; uvicorn's access log is replaced by ours."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    logging.getLogger("uvicorn.access").disabled = True


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched`` (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)

    return path if isinstance(path, str) else "unmatched"


def new_request_id(scope: Scope) -> str:
    """A fresh random request id; a client's ``X-Request-ID`` is never reused.

    PACS senders often put accession numbers or other patient-linked values in
    their own request ids; reusing them would carry those values into our logs.
    """
    del scope  # kept in the signature: the id could later depend on the request

    return uuid.uuid4().hex


class RequestLogMiddleware:
    """Pure ASGI middleware: request id, one log line, request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = new_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = route_template(scope)
        app: Any = scope.get("app")
        version = getattr(getattr(app, "state", None), "model_version", "-")

        metrics.REQUESTS.labels(route=route, status=str(status)).inc()
        metrics.REQUEST_LATENCY.labels(route=route).observe(seconds)
        logger.info(
            "request_id=%s route=%s status=%d latency_ms=%.1f model_version=%s",
            request_id,
            route,
            status,
            seconds * 1000,
            version,
        )
