"""Exception handlers: every error becomes ``{"detail", "request_id"}`` JSON.

Our own errors carry their status and a client-safe detail. Anything else is a
bug: it gets a generic 500 with no internals, and only its type is logged (an
exception message may quote input values, which must not reach the logs).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app import metrics
from app.errors import InputError, ServiceBusyError, VlkdError

logger = logging.getLogger(__name__)

INTERNAL_DETAIL = "internal error; the request id identifies it in the service log"


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _body(request: Request, detail: str) -> dict[str, str | None]:
    return {"detail": detail, "request_id": _request_id(request)}


async def vlkd_error(request: Request, error: Exception) -> JSONResponse:
    """Our errors keep status and detail; a ``ModelError`` here is a generic 500."""
    assert isinstance(error, VlkdError)
    if not isinstance(error, InputError | ServiceBusyError):
        logger.error(
            "request_id=%s error=%s", _request_id(request), type(error).__name__
        )
        return JSONResponse(_body(request, INTERNAL_DETAIL), status_code=500)

    metrics.REJECTED.labels(reason=error.reason).inc()
    headers = {}
    if isinstance(error, ServiceBusyError):
        headers["Retry-After"] = str(error.retry_after_s)

    return JSONResponse(
        _body(request, error.detail), status_code=error.status_code, headers=headers
    )


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """404, 405, 401 and the like, in the same JSON shape."""
    assert isinstance(error, HTTPException)
    if error.status_code == 401:
        metrics.REJECTED.labels(reason="unauthorized").inc()

    return JSONResponse(
        _body(request, str(error.detail)),
        status_code=error.status_code,
        headers=getattr(error, "headers", None),
    )


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's validation errors, shortened to one line."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    detail = f"invalid request: {where} {first.get('msg', '')}".strip()

    return JSONResponse(_body(request, detail), status_code=422)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """The catch-all: a generic 500; only the exception type is logged."""
    logger.error("request_id=%s error=%s", _request_id(request), type(error).__name__)

    return JSONResponse(_body(request, INTERNAL_DETAIL), status_code=500)


def install_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(VlkdError, vlkd_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
