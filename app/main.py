"""Assemble the FastAPI application; the model is loaded in the lifespan.

``create_app(settings)`` is what tests and ``python -m app`` use;
``app_from_env()`` is the factory each uvicorn worker calls.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app import metrics
from app.auth import require_api_key
from app.decode import self_test as decoder_self_test
from app.docs import add_offline_docs
from app.handlers import install_handlers
from app.inference import InferenceService
from app.logging_setup import RequestLogMiddleware, configure_logging
from app.model import load_model, self_test
from app.routes import classify, model_card, probes
from app.settings import Settings
from app.threads import threads_per_worker

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and self-test the model, start inference; stop it on shutdown."""
    settings: Settings = app.state.settings
    threads = threads_per_worker(settings.workers, settings.intra_op_threads)
    model = load_model(settings.model_path, threads, settings.model_sha256)
    self_test(model)

    app.state.decoders = {}
    if settings.decoder_self_test:
        app.state.decoders = decoder_self_test()
        failed = sorted(
            name for name, passed in app.state.decoders.items() if not passed
        )
        if failed:
            logger.warning("DICOM syntaxes failing their self-test: %s", failed)

    decode_threads = settings.decode_threads or max(2, threads)
    service = InferenceService(model, settings, decode_threads)
    await service.start()

    contract = model.contract
    metrics.MODEL_INFO.labels(
        name=contract.model_name, version=contract.model_version, sha256=model.sha256
    ).set(1)
    app.state.service = service
    app.state.model_version = contract.model_version
    app.state.ready = True

    try:
        yield
    finally:
        app.state.ready = False
        await service.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The vlkd application for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    app = FastAPI(
        title="vlkd chest X-ray triage",
        version="1",
        summary="Classify chest X-rays as normal / pneumonia / nodule, on premises.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.model_version = "-"

    install_handlers(app)
    app.add_middleware(RequestLogMiddleware)
    protected = [Depends(require_api_key)]
    app.include_router(classify.router, dependencies=protected)
    app.include_router(model_card.router, dependencies=protected)
    app.include_router(probes.router)
    if settings.docs_enabled:
        add_offline_docs(app)

    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: settings from ``VLKD_*`` variables.

    Worker processes are spawned fresh, so each configures its own logging.
    """
    settings = Settings()
    configure_logging(settings.log_level)

    return create_app(settings)
