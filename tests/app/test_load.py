"""A short load run on loopback, and what happens beyond the admission queue.

The full run (10,000 requests) is ``bench/load.py``; this one keeps the suite
fast: a few hundred requests against the tiny test model under a real uvicorn.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import psutil

from tests.app.conftest import png_bytes

REQUESTS = 320
CONCURRENCY = 32
WARMUP = 64
MAX_RSS_GROWTH = 40 * 1024 * 1024  # bytes, over the measured run after a warm-up


async def _hammer(url: str, count: int, payloads: list[bytes]) -> list[int]:
    """POST ``count`` images with ``CONCURRENCY`` in flight; their status codes."""
    limits = httpx.Limits(max_connections=CONCURRENCY)
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one(index: int) -> int:
            async with semaphore:
                response = await client.post(
                    "/v1/classify",
                    content=payloads[index % len(payloads)],
                    headers={"content-type": "image/png"},
                )
                return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_load_at_concurrency_32_has_no_errors_and_steady_rss(
    live_server: Callable[..., str],
) -> None:
    """320 requests, 32 at a time: every one 200, and RSS grows under 40 MB."""
    url = live_server()
    payloads = [png_bytes(size=128, seed=seed) for seed in range(8)]
    process = psutil.Process()
    asyncio.run(_hammer(url, WARMUP, payloads))
    rss_start = process.memory_info().rss

    statuses = asyncio.run(_hammer(url, REQUESTS, payloads))

    rss_growth = process.memory_info().rss - rss_start
    assert statuses.count(200) == REQUESTS, sorted(set(statuses))
    assert rss_growth < MAX_RSS_GROWTH, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    assert httpx.get(f"{url}/healthz").status_code == 200


def _hold_slot(url: str) -> socket.socket:
    """Open a classify request that declares a body and sends almost none of it."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    head = (
        "POST /v1/classify HTTP/1.1\r\n"
        f"Host: {parts.hostname}\r\n"
        "Content-Type: image/png\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode("ascii") + b"\x89PNG")

    return sock


def test_queue_overflow_answers_503_with_retry_after_at_once(
    live_server: Callable[..., str],
) -> None:
    """With the one queue slot held, the next request gets 503 + Retry-After fast."""
    url = live_server(max_queue=1, retry_after_s=3)
    held = _hold_slot(url)
    time.sleep(0.3)  # let the server admit the slow request

    try:
        started = time.perf_counter()
        busy = httpx.post(
            f"{url}/v1/classify",
            content=png_bytes(),
            headers={"content-type": "image/png"},
            timeout=10,
        )
        elapsed = time.perf_counter() - started
        health = httpx.get(f"{url}/healthz", timeout=5)
    finally:
        held.close()

    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "3"
    assert elapsed < 1.0
    assert health.status_code == 200


def test_queue_slot_is_freed_when_a_slow_client_disconnects(
    live_server: Callable[..., str],
) -> None:
    """After the slot holder hangs up, the next request is served (no leaked slot)."""
    url = live_server(max_queue=1)
    held = _hold_slot(url)
    time.sleep(0.3)
    held.close()

    statuses = []
    for _ in range(20):  # the server notices the disconnect within moments
        statuses.append(
            httpx.post(
                f"{url}/v1/classify",
                content=png_bytes(),
                headers={"content-type": "image/png"},
                timeout=10,
            ).status_code
        )
        if statuses[-1] == 200:
            break
        time.sleep(0.1)

    assert statuses[-1] == 200, statuses
