"""From upload bytes to a result: decode, preprocess, infer, gate, off the event loop.

One :class:`InferenceService` per process owns the process's single onnxruntime
session. Work is split so the event loop only ever waits:

* decoding and preprocessing run on a small thread pool (``decode_threads``);
* inference runs on one dedicated thread fed by a queue; when several requests
  are waiting it can join up to ``micro_batch`` images into one run. It never
  waits for more, so a lone request runs at once. Off by default: on 2 CPUs a
  batch of 8 was only ~9 % faster than 8 single runs of a MobileNetV2 and the
  end-to-end gain was lost in decode time and noise (``bench/service_vs_raw.py``,
  ``docs/service.md``);
* admission is bounded: at most ``max_queue`` requests are in the pipeline, the
  next one gets :class:`ServiceBusyError` (503 + ``Retry-After``) at once
  instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from app.decode import DecodedImage, DecodeLimits, decode
from app.errors import InputError, ServiceBusyError, UnprocessableImageError
from app.gate import assess
from app.model import LoadedModel, ModelOutputs
from app.preprocess import preprocess
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One decoded and preprocessed image, with the time each step took (s)."""

    decoded: DecodedImage
    tensor: np.ndarray  # float32 (3, S, S)
    decode_s: float
    preprocess_s: float


@dataclass
class ImageResult:
    """The service's answer for one image."""

    label: str | None
    probabilities: dict[str, float] | None
    assessable: bool
    not_assessable_reasons: list[str]
    warnings: list[str]
    timings_ms: dict[str, float]


@dataclass
class _Job:
    tensors: np.ndarray  # (n, 3, S, S)
    future: asyncio.Future[tuple[ModelOutputs, float]] = field(repr=False)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, computed stably in float64."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)

    return exp / exp.sum(axis=-1, keepdims=True)


class InferenceService:
    """Owns the session, the thread pools, the admission count and the batcher."""

    def __init__(self, model: LoadedModel, settings: Settings, decode_threads: int):
        self.model = model
        self.contract = model.contract
        self.settings = settings
        self.limits = DecodeLimits(
            max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels
        )
        self.in_flight = 0
        self._decode_pool = ThreadPoolExecutor(decode_threads, "vlkd-decode")
        self._inference_pool = ThreadPoolExecutor(1, "vlkd-inference")
        self._queue: asyncio.Queue[_Job] | None = None
        self._batcher: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start the inference loop; call from inside the running event loop."""
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop(), name="vlkd-batcher")
        logger.info(
            "inference ready: micro_batch=%d max_queue=%d",
            self.settings.micro_batch,
            self.settings.max_queue,
        )

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._batcher
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._inference_pool.shutdown(wait=True)

    # --- admission --------------------------------------------------------------

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of ``max_queue`` slots; fail at once (503) when none is free."""
        if self.in_flight >= self.settings.max_queue:
            raise ServiceBusyError(
                "the service is busy; retry shortly",
                retry_after_s=self.settings.retry_after_s,
            )

        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    # --- steps --------------------------------------------------------------------

    def _prepare(self, data: bytes, media_type: str | None) -> Prepared:
        """Decode and preprocess one upload (runs on the decode pool)."""
        if not data:
            raise UnprocessableImageError("the upload is empty (0 bytes)")

        start = time.perf_counter()
        decoded = decode(data, media_type, self.limits)
        decoded_at = time.perf_counter()
        tensor = preprocess(decoded.pixels, self.contract.preprocess)
        done = time.perf_counter()

        metrics.DECODE_LATENCY.observe(decoded_at - start)

        return Prepared(decoded, tensor, decoded_at - start, done - decoded_at)

    async def prepare(self, data: bytes, media_type: str | None) -> Prepared:
        loop = asyncio.get_running_loop()

        return await loop.run_in_executor(
            self._decode_pool, self._prepare, data, media_type
        )

    def _run(self, batch: np.ndarray) -> tuple[ModelOutputs, float]:
        start = time.perf_counter()
        outputs = self.model.run(batch)
        seconds = time.perf_counter() - start
        metrics.INFERENCE_LATENCY.observe(seconds)

        return outputs, seconds

    async def infer(self, tensors: np.ndarray) -> tuple[ModelOutputs, float]:
        """Queue ``(n, 3, S, S)`` tensors for the inference thread and await them."""
        if self._queue is None:
            raise RuntimeError("InferenceService.start() was not called")

        future: asyncio.Future[tuple[ModelOutputs, float]] = (
            asyncio.get_running_loop().create_future()
        )
        await self._queue.put(_Job(tensors, future))

        return await future

    async def _batch_loop(self) -> None:
        """Take the waiting jobs (up to ``micro_batch`` images) and run them as one."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].tensors)
            while not self._queue.empty() and size < self.settings.micro_batch:
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.tensors)

            batch = np.concatenate([job.tensors for job in jobs])
            try:
                outputs, seconds = await loop.run_in_executor(
                    self._inference_pool, self._run, batch
                )
            except Exception as error:  # handed to each waiting request
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue

            start = 0
            for job in jobs:
                end = start + len(job.tensors)
                features = outputs.features
                part = ModelOutputs(
                    outputs.logits[start:end],
                    None if features is None else features[start:end],
                )
                if not job.future.done():
                    job.future.set_result((part, seconds))
                start = end

    def _finish(
        self,
        prepared: Prepared,
        logits: np.ndarray,
        features: np.ndarray | None,
        inference_s: float,
        started: float,
    ) -> ImageResult:
        """Gate, label and time one image from its row of model outputs."""
        reasons = assess(prepared.decoded, features, self.contract)
        probabilities: dict[str, float] | None = None
        label: str | None = None
        if not reasons:
            probs = softmax(logits[None], self.contract.calibration_temperature)[0]
            probabilities = {
                name: float(p)
                for name, p in zip(self.contract.labels, probs, strict=True)
            }
            label = self.contract.labels[int(np.argmax(probs))]
            metrics.PREDICTIONS.labels(label=label).inc()
        for reason in reasons:
            metrics.NOT_ASSESSABLE.labels(reason=reason).inc()

        timings = {
            "decode": prepared.decode_s * 1000,
            "preprocess": prepared.preprocess_s * 1000,
            "inference": inference_s * 1000,
            "total": (time.perf_counter() - started) * 1000,
        }

        return ImageResult(
            label=label,
            probabilities=probabilities,
            assessable=not reasons,
            not_assessable_reasons=reasons,
            warnings=list(prepared.decoded.warnings),
            timings_ms={key: round(value, 3) for key, value in timings.items()},
        )

    # --- public entry points ------------------------------------------------------

    async def classify(self, data: bytes, media_type: str | None) -> ImageResult:
        """Classify one upload; bad input raises an ``InputError``."""
        started = time.perf_counter()
        prepared = await self.prepare(data, media_type)
        outputs, seconds = await self.infer(prepared.tensor[None])
        features = None if outputs.features is None else outputs.features[0]

        return self._finish(prepared, outputs.logits[0], features, seconds, started)

    async def classify_many(
        self, uploads: Sequence[tuple[bytes, str | None]]
    ) -> list[ImageResult | InputError]:
        """Classify several uploads in one model run; a bad one yields its error."""
        started = time.perf_counter()
        prepared = await asyncio.gather(
            *(self.prepare(data, media_type) for data, media_type in uploads),
            return_exceptions=True,
        )
        for item in prepared:
            if isinstance(item, BaseException) and not isinstance(item, InputError):
                raise item

        good = [item for item in prepared if isinstance(item, Prepared)]
        outputs, seconds = (None, 0.0)
        if good:
            outputs, seconds = await self.infer(np.stack([p.tensor for p in good]))

        results: list[ImageResult | InputError] = []
        row = 0
        for item in prepared:
            if isinstance(item, Prepared):
                assert outputs is not None
                features = None if outputs.features is None else outputs.features[row]
                results.append(
                    self._finish(item, outputs.logits[row], features, seconds, started)
                )
                row += 1
            else:
                assert isinstance(item, InputError)
                results.append(item)

        return results
