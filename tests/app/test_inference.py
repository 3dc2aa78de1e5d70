"""Inference pipeline: bounded admission, micro-batching, calibrated softmax."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.inference import InferenceService, softmax
from app.model import load_model
from app.settings import Settings
from tests.app.conftest import png_bytes


def test_softmax_uses_temperature() -> None:
    """Dividing logits by a temperature > 1 flattens the probabilities."""
    logits = np.array([[2.0, 0.0, -1.0]])

    sharp = softmax(logits, 1.0)[0]
    flat = softmax(logits, 2.0)[0]

    assert sharp.sum() == pytest.approx(1.0)
    assert flat.sum() == pytest.approx(1.0)
    assert flat.max() < sharp.max()
    assert sharp[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))


def test_full_queue_answers_503_at_once(
    live_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the only slot taken, the next request gets 503 + Retry-After at once."""
    release = threading.Event()
    real_run = InferenceService._run

    def slow_run(self: InferenceService, batch: np.ndarray):  # type: ignore[no-untyped-def]
        release.wait(10)
        return real_run(self, batch)

    monkeypatch.setattr(InferenceService, "_run", slow_run)
    url = live_server(max_queue=1, retry_after_s=3)
    headers = {"content-type": "image/png"}
    holder = threading.Thread(
        target=httpx.post,
        args=(f"{url}/v1/classify",),
        kwargs={"content": png_bytes(), "headers": headers, "timeout": 20},
    )
    holder.start()
    time.sleep(0.5)

    started = time.perf_counter()
    busy = httpx.post(f"{url}/v1/classify", content=png_bytes(), headers=headers)
    elapsed = time.perf_counter() - started
    health = httpx.get(f"{url}/healthz")
    release.set()
    holder.join(20)

    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "3"
    assert elapsed < 0.5
    assert health.status_code == 200


def test_micro_batching_joins_waiting_requests(
    make_settings: Callable[..., Settings],
) -> None:
    """Concurrent requests share one model run and get the same logits as alone."""
    settings = make_settings(micro_batch=8)
    model = load_model(settings.model_path, 1)
    service = InferenceService(model, settings, decode_threads=2)
    tensors = [np.random.default_rng(i).normal(size=(1, 3, 32, 32)) for i in range(6)]
    tensors = [t.astype(np.float32) for t in tensors]
    batch_sizes: list[int] = []
    real_run = service._run

    def counting_run(batch: np.ndarray):  # type: ignore[no-untyped-def]
        batch_sizes.append(len(batch))
        time.sleep(0.05)
        return real_run(batch)

    service._run = counting_run  # type: ignore[method-assign]

    async def scenario() -> list[np.ndarray]:
        await service.start()
        results = await asyncio.gather(*(service.infer(t) for t in tensors))
        await service.stop()
        return [outputs.logits for outputs, _ in results]

    logits = asyncio.run(scenario())

    assert len(batch_sizes) < len(tensors)
    assert sum(batch_sizes) == len(tensors)
    for tensor, got in zip(tensors, logits, strict=True):
        alone = model.run(tensor).logits
        np.testing.assert_allclose(got, alone, rtol=1e-4, atol=1e-5)


def test_health_answers_while_model_works(
    live_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow inference does not block /healthz (inference is off the event loop)."""
    release = threading.Event()
    real_run = InferenceService._run

    def slow_run(self: InferenceService, batch: np.ndarray):  # type: ignore[no-untyped-def]
        release.wait(10)
        return real_run(self, batch)

    monkeypatch.setattr(InferenceService, "_run", slow_run)
    url = live_server()
    worker = threading.Thread(
        target=httpx.post,
        args=(f"{url}/v1/classify",),
        kwargs={
            "content": png_bytes(),
            "headers": {"content-type": "image/png"},
            "timeout": 20,
        },
    )
    worker.start()
    time.sleep(0.3)

    started = time.perf_counter()
    health = httpx.get(f"{url}/healthz")
    elapsed = time.perf_counter() - started
    release.set()
    worker.join(20)

    assert health.status_code == 200
    assert elapsed < 0.5


def test_batch_endpoint_runs_model_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 3 images is one model run of 3 rows."""
    service: InferenceService = client.app.state.service  # type: ignore[attr-defined]
    sizes: list[int] = []
    real_run = service._run

    def counting_run(batch: np.ndarray):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        return real_run(batch)

    monkeypatch.setattr(service, "_run", counting_run)
    files = [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]

    response = client.post("/v1/classify/batch", files=files)

    assert response.status_code == 200
    assert sizes == [3]


def test_short_load_no_errors_and_busy_beyond_queue(
    live_server: Callable[..., str],
) -> None:
    """300 requests at concurrency 16: each is 200, or 503 + Retry-After when full."""
    url = live_server(max_queue=8)
    images = [png_bytes(64, seed=seed) for seed in range(4)]

    async def load() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            queue = iter(range(300))
            responses: list[httpx.Response] = []

            async def worker() -> None:
                for index in queue:
                    responses.append(
                        await client.post(
                            "/v1/classify",
                            content=images[index % 4],
                            headers={"content-type": "image/png"},
                        )
                    )

            await asyncio.gather(*(worker() for _ in range(16)))
            return responses

    responses = asyncio.run(load())

    statuses = {response.status_code for response in responses}
    busy = [r for r in responses if r.status_code == 503]
    assert len(responses) == 300
    assert statuses <= {200, 503}
    assert sum(r.status_code == 200 for r in responses) >= 8
    assert all(r.headers["retry-after"] == "1" for r in busy)
