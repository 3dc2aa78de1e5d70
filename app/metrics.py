"""Prometheus metrics, correct with one worker or several.

With several uvicorn workers each process keeps its own counters; prometheus-client's
multiprocess mode writes them to files in ``PROMETHEUS_MULTIPROC_DIR`` and the
``/metrics`` route aggregates every worker's files. That variable must be set
before ``prometheus_client`` is imported, which ``app.__main__`` does.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # the *_created series only add noise here

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "vlkd_requests", "HTTP requests by route template and status", ["route", "status"]
)
REQUEST_LATENCY = Histogram(
    "vlkd_request_latency_seconds",
    "Total request latency by route template",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
DECODE_LATENCY = Histogram(
    "vlkd_decode_latency_seconds", "Time to decode one image", buckets=LATENCY_BUCKETS
)
INFERENCE_LATENCY = Histogram(
    "vlkd_inference_latency_seconds",
    "Time of one onnxruntime run (one batch)",
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter("vlkd_predictions", "Labels returned", ["label"])
REJECTED = Counter("vlkd_rejected_inputs", "Inputs refused, by reason", ["reason"])
NOT_ASSESSABLE = Counter(
    "vlkd_not_assessable", "Images gated as not assessable, by reason", ["reason"]
)
MODEL_INFO = Gauge(
    "vlkd_model_info",
    "The model being served (value is always 1)",
    ["name", "version", "sha256"],
    multiprocess_mode="max",
)


def multiprocess_enabled() -> bool:
    """True when metrics go to files shared by several workers."""
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every worker's metrics."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return generate_latest(), CONTENT_TYPE_LATEST
