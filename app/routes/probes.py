"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics`` (never need a key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app import metrics
from app.schemas import ErrorResponse, Probe

router = APIRouter(tags=["probes"])


@router.get("/healthz", response_model=Probe)
async def healthz() -> Probe:
    """Alive: the process answers (says nothing about the model)."""
    return Probe(status="ok")


@router.get("/readyz", response_model=Probe, responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Response:
    """Ready: the model is loaded and its start-up self-test passed."""
    if not getattr(request.app.state, "ready", False):
        return JSONResponse(
            {"detail": "model not ready", "request_id": request.state.request_id},
            status_code=503,
        )

    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus text exposition (every worker's counts in multiprocess mode)."""
    body, content_type = metrics.render()

    return Response(body, media_type=content_type)
