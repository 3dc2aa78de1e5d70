"""Benchmark: the raw in-process pipeline vs the service over HTTP on loopback.

One run, on the same images (``../shared/data/fullsize/``), measures:

* raw: decode + preprocess + onnxruntime in a plain loop, in its own process;
* service: ``python -m app`` on loopback, driven at concurrency 1, 4 and 16;

and prints images/s, p50 / p99 latency, peak RSS and the ratio service / raw.
With ``--micro-batch 1 8`` the service runs once per setting, which is how the
default of ``VLKD_MICRO_BATCH`` was chosen.

Usage::

    .venv/bin/python bench/service_vs_raw.py                       # bundled model
    .venv/bin/python bench/service_vs_raw.py --model some.onnx
    .venv/bin/python bench/service_vs_raw.py --stand-in            # no model yet:
        # export an untrained torchvision MobileNetV2 with a vlkd contract

Not a test: it takes a minute or two and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "fullsize"
DEFAULT_MODEL = REPO_ROOT / "models" / "vlkd-student.onnx"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))

    return ordered[index]


# --- a stand-in model when the distilled one is not there yet ----------------


def export_stand_in(path: Path) -> Path:
    """An untrained MobileNetV2 (same graph as the student) with a vlkd contract."""
    import onnx
    import torch
    import torchvision

    from app.contract import ModelContract, to_metadata
    from app.preprocess import PreprocessConfig

    torch.set_num_threads(2)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=3).eval()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 224, 224),
            raw,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
        model = onnx.load(raw)
    contract = ModelContract(
        model_name="bench-stand-in-mobilenetv2",
        model_version="0.0.0-untrained",
        labels=("normal", "pneumonia", "nodule"),
        preprocess=PreprocessConfig(size=224),
        card={"intended_use": "benchmark only"},
    )
    onnx.helper.set_model_props(model, to_metadata(contract))
    onnx.save(model, path)

    return path


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM: unlike ru_maxrss, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- raw pipeline (run in a child process so its RSS is its own) --------------


def raw_child(model: Path, images: list[Path], rounds: int) -> dict[str, float]:
    """decode + preprocess + run in a loop, as a library user would."""
    from app.decode import decode
    from app.model import load_model
    from app.preprocess import preprocess
    from app.threads import threads_per_worker

    loaded = load_model(model, threads_per_worker(1))
    blobs = [path.read_bytes() for path in images]
    for blob in blobs:  # warm-up
        loaded.run(preprocess(decode(blob).pixels, loaded.contract.preprocess)[None])

    latencies = []
    started = time.perf_counter()
    for _ in range(rounds):
        for blob in blobs:
            t0 = time.perf_counter()
            tensor = preprocess(decode(blob).pixels, loaded.contract.preprocess)
            loaded.run(tensor[None])
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started

    return {
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_raw(model: Path, images: list[Path], rounds: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--raw-child", "--model", str(model),
         "--rounds", str(rounds), "--images", *map(str, images)],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip

    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the service over HTTP ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RssSampler(threading.Thread):
    """Peak RSS of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except Exception:  # a worker may exit between listing and reading
                pass
            time.sleep(0.05)


async def drive(url: str, blobs: list[bytes], concurrency: int, total: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for index in counter:
                t0 = time.perf_counter()
                response = await client.post(
                    "/v1/classify",
                    content=blobs[index % len(blobs)],
                    headers={"content-type": "image/png"},
                )
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started

    return {
        "images_per_s": total / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def run_service(
    model: Path, images: list[Path], levels: list[int], rounds: int, micro_batch: int,
    workers: int,
) -> list[dict]:  # fmt: skip
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    env.update(
        VLKD_MODEL_PATH=str(model),
        VLKD_PORT=str(port),
        VLKD_WORKERS=str(workers),
        VLKD_MICRO_BATCH=str(micro_batch),
        VLKD_MAX_QUEUE="64",
        VLKD_LOG_LEVEL="WARNING",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        blobs = [path.read_bytes() for path in images]
        asyncio.run(drive(url, blobs, 1, len(blobs)))  # warm-up

        for concurrency in levels:
            sampler = RssSampler(server.pid)
            sampler.start()
            total = max(rounds * len(blobs), concurrency * 4)
            result = asyncio.run(drive(url, blobs, concurrency, total))
            sampler.stop.set()
            sampler.join()
            result.update(
                concurrency=concurrency,
                micro_batch=micro_batch,
                peak_rss_mb=sampler.peak / 2**20,
            )
            rows.append(result)
    finally:
        server.terminate()
        server.wait(timeout=30)

    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--stand-in", action="store_true")
    parser.add_argument("--images", type=Path, nargs="*")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the images")
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--micro-batch", type=int, nargs="*", default=[1])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    images = args.images or sorted(DEFAULT_IMAGES.glob("*.png"))
    if args.raw_child:
        print(json.dumps(raw_child(args.model, images, args.rounds)))
        return

    model = args.model
    if args.stand_in and not model.is_file():
        model = export_stand_in(Path(tempfile.mkdtemp()) / "stand-in.onnx")
    if not model.is_file():
        sys.exit(f"no model at {model}; pass --model or --stand-in")

    raw = run_raw(model, images, args.rounds)
    rows = []
    for micro_batch in args.micro_batch:
        rows += run_service(
            model, images, args.levels, args.rounds, micro_batch, args.workers
        )

    cpus = len(os.sched_getaffinity(0))
    print(
        f"\n{date.today()} on {platform.machine()} {platform.processor() or ''} "
        f"({cpus} usable CPUs), model {model.name}, {len(images)} images, "
        f"{args.workers} worker(s)\n"
    )
    print("| pipeline | concurrency | micro-batch | images/s | p50 ms | p99 ms "
          "| peak RSS MB | service / raw |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| raw in-process | 1 | - | {raw['images_per_s']:.1f} | {raw['p50_ms']:.0f} "
        f"| {raw['p99_ms']:.0f} | {raw['peak_rss_mb']:.0f} | 1.00 |"
    )
    for row in rows:
        ratio = row["images_per_s"] / raw["images_per_s"]
        errors = f" ({row['errors']} errors)" if row["errors"] else ""
        print(
            f"| service HTTP | {row['concurrency']} | {row['micro_batch']} "
            f"| {row['images_per_s']:.1f}{errors} | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} | {row['peak_rss_mb']:.0f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
