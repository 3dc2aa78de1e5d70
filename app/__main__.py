"""``python -m app``: check settings and model, then serve with uvicorn.

Start-up refuses with one line on stderr and exit status 2 when a setting is
invalid or the model is unusable, so an operator sees the reason, not a
traceback. With several workers, Prometheus multiprocess mode is switched on
(a fresh metrics directory per start) before anything imports prometheus_client.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from pydantic import ValidationError

from app.settings import Settings, first_error

logger = logging.getLogger(__name__)

EXIT_REFUSED = 2


def _refuse(reason: str) -> int:
    print(f"vlkd: refusing to start: {reason}", file=sys.stderr)

    return EXIT_REFUSED


def main() -> int:
    """Validate, self-test, then run uvicorn until stopped; the exit status."""
    try:
        settings = Settings()
    except ValidationError as error:
        return _refuse(first_error(error))

    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="vlkd-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    # Imported only now: they import prometheus_client (see app.metrics).
    import uvicorn

    from app.errors import ModelError
    from app.logging_setup import configure_logging
    from app.model import load_model, self_test
    from app.threads import threads_per_worker

    configure_logging(settings.log_level)
    try:
        threads = threads_per_worker(settings.workers, settings.intra_op_threads)
        self_test(load_model(settings.model_path, threads, settings.model_sha256))
    except ModelError as error:
        return _refuse(error.detail)
    if settings.host not in ("127.0.0.1", "::1", "localhost") and not settings.api_keys:
        logger.warning("listening on %s with no API keys configured", settings.host)

    try:
        uvicorn.run(
            "app.main:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    return 0


if __name__ == "__main__":
    sys.exit(main())
