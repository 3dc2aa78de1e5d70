"""Load the service on loopback: 10,000 requests at concurrency 32, then overflow it.

``python bench/load.py`` starts ``python -m app`` on a free loopback port with
the shipped model (``--model`` for another), waits for ``/readyz``, and runs:

1. **steady load**: ``--requests`` (10,000) classify requests, ``--concurrency``
   (32) in flight, cycling over real uploads (``../shared/data/fullsize/`` by
   default), stopping early after ``--max-seconds``; it prints requests/s,
   p50 / p99 latency, errors (anything but 200), and the server's RSS at the
   start (after a warm-up), at the end, at its peak, and at each tenth of the
   run (to tell a plateau from a leak);
2. **overflow**: ``--overflow-requests`` at ``--overflow-concurrency`` (128)
   against the configured admission queue (``--max-queue``, 32): how many got
   503, whether each 503 carried ``Retry-After``, how fast the 503s came back
   (p50 / p99) as the client saw it (upload included) and as the server's
   own request log measured it, and whether every other answer was a 200.

Only loopback is ever contacted, the server is always stopped, and every loop is
bounded in count and time. ``--json`` writes the figures for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("VLKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)
DEFAULT_MODEL = REPO_ROOT / "models" / "vlkd-student.onnx"
READY_TIMEOUT_S = 120


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))

    return ordered[index]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RssSampler(threading.Thread):
    """Samples a process's resident memory every ``interval_s`` until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.samples: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            self.stop.wait(self.interval_s)


async def drive(
    url: str,
    blobs: list[bytes],
    concurrency: int,
    total: int,
    max_seconds: float,
) -> dict[str, Any]:
    """``total`` POSTs with ``concurrency`` workers; stop issuing after the time cap."""
    latencies: dict[int, list[float]] = {}
    retry_after_missing = 0
    transport_errors: Counter[str] = Counter()
    counter = iter(range(total))
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal retry_after_missing
            for index in counter:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/classify",
                        content=blobs[index % len(blobs)],
                        headers={"content-type": "application/octet-stream"},
                    )
                    status = response.status_code
                    if status == 503 and "retry-after" not in response.headers:
                        retry_after_missing += 1
                except httpx.HTTPError as error:
                    status = -1  # transport error: timeout, reset, refused
                    transport_errors[type(error).__name__] += 1
                latencies.setdefault(status, []).append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started

    done = sum(len(values) for values in latencies.values())
    ok = latencies.get(200, [])
    busy = latencies.get(503, [])

    return {
        "requests": done,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(done / elapsed, 1),
        "status_counts": {str(k): len(v) for k, v in sorted(latencies.items())},
        "errors": done - len(ok),
        "p50_ms": round(percentile(ok, 50) * 1000, 1),
        "p99_ms": round(percentile(ok, 99) * 1000, 1),
        "busy_503": len(busy),
        "busy_p50_ms": round(percentile(busy, 50) * 1000, 1),
        "busy_p99_ms": round(percentile(busy, 99) * 1000, 1),
        "busy_without_retry_after": retry_after_missing,
        "transport_errors": dict(transport_errors),
    }


def start_server(
    model: Path, port: int, max_queue: int, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``python -m app`` on 127.0.0.1:``port``, its log lines to ``log``.

    Raises ``RuntimeError`` if it is not ready within ``READY_TIMEOUT_S``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    env.update(
        VLKD_MODEL_PATH=str(model),
        VLKD_HOST="127.0.0.1",
        VLKD_PORT=str(port),
        VLKD_MAX_QUEUE=str(max_queue),
        VLKD_LOG_LEVEL="INFO",  # one line per request: status and latency only
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)

    server.terminate()
    server.wait(timeout=30)
    raise RuntimeError(f"the service did not become ready within {READY_TIMEOUT_S} s")


_REQUEST_LINE = re.compile(rb"status=(\d+) latency_ms=([\d.]+)")


def server_latencies(log: IO[bytes], offset: int, status: int) -> list[float]:
    """Server-side latencies (s) of requests answered ``status``, logged after
    ``offset``: the time from the request's arrival to the service's answer,
    without the client's upload or its own event-loop queueing."""
    log.flush()
    log.seek(offset)
    found = [
        float(match.group(2)) / 1000
        for match in _REQUEST_LINE.finditer(log.read())
        if int(match.group(1)) == status
    ]
    log.seek(0, os.SEEK_END)

    return found


def healthz(url: str) -> int | str:
    """The ``/healthz`` status, or why there was none."""
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code
    except httpx.HTTPError as error:
        return f"no answer: {type(error).__name__}"


def machine() -> str:
    """One line describing where the figures were measured."""
    cpus = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )
    memory = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    return (
        f"{platform.machine()} {cpus} CPUs, {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at start"
    )


def run_phases(
    args: argparse.Namespace, blobs: list[bytes], log: IO[bytes]
) -> dict[str, Any]:
    """Start the service, warm it up, run both phases, stop it; the figures."""
    measured: dict[str, Any] = {}
    port = free_port()
    server = start_server(args.model, port, args.max_queue, log)
    url = f"http://127.0.0.1:{port}"
    sampler = RssSampler(server.pid)
    try:
        asyncio.run(drive(url, blobs, args.concurrency, 4 * args.concurrency, 120))
        sampler.start()
        time.sleep(1.0)  # a first RSS sample after the warm-up

        steady = asyncio.run(
            drive(url, blobs, args.concurrency, args.requests, args.max_seconds)
        )
        samples = list(sampler.samples)
        steady.update(
            concurrency=args.concurrency,
            rss_start_mib=round(samples[0] / 2**20, 1),
            rss_end_mib=round(samples[-1] / 2**20, 1),
            rss_peak_mib=round(max(samples) / 2**20, 1),
            rss_trace_mib=[
                round(samples[i * (len(samples) - 1) // 10] / 2**20, 1)
                for i in range(11)
            ],
        )
        measured["steady"] = steady

        offset = log.seek(0, os.SEEK_END)
        overflow = asyncio.run(
            drive(
                url,
                blobs,
                args.overflow_concurrency,
                args.overflow_requests,
                args.max_seconds,
            )
        )
        overflow["concurrency"] = args.overflow_concurrency
        busy = server_latencies(log, offset, 503)
        overflow["busy_server_p50_ms"] = round(percentile(busy, 50) * 1000, 2)
        overflow["busy_server_p99_ms"] = round(percentile(busy, 99) * 1000, 2)
        overflow["busy_server_max_ms"] = round(max(busy, default=0) * 1000, 2)
        measured["overflow"] = overflow
        measured["healthz_after"] = healthz(url)
        measured["server_exit_code"] = server.poll()  # None: still running
    finally:
        sampler.stop.set()
        server.terminate()
        server.wait(timeout=30)

    return measured


def main() -> int:
    """Run both phases and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "fullsize")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1200.0)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--overflow-requests", type=int, default=1000)
    parser.add_argument("--overflow-concurrency", type=int, default=128)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--server-log", type=Path, help="keep the service's log (one line a request)"
    )
    args = parser.parse_args()

    blobs = [path.read_bytes() for path in sorted(args.images.glob("*.png"))]
    if not blobs or not args.model.is_file():
        print(
            f"need PNGs in {args.images} and a model at {args.model}", file=sys.stderr
        )
        return 2

    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "model": args.model.name,
        "uploads": f"{len(blobs)} PNGs from {args.images.name}/",
        "max_queue": args.max_queue,
    }
    if args.server_log:
        with args.server_log.open("w+b") as log:
            figures.update(run_phases(args, blobs, log))
    else:
        with tempfile.TemporaryFile() as log:
            figures.update(run_phases(args, blobs, log))

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")

    return 0 if figures["steady"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
