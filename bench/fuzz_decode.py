"""Coverage-guided fuzzing of ``app.decode.decode`` with atheris, for a bounded time.

Seeds: every file in ``../shared/data/dicom`` and ``fullsize`` plus the tiny
generated image of each supported transfer syntax (``app.dicom_selftest``).
libFuzzer truncates seeds to ``--max-len`` bytes, which keeps executions fast
while still reaching the DICOM / PNG / JPEG header parsers and the decoders.

libFuzzer ends the process without running Python's exit handlers, so the
fuzzing runs in a child process that keeps its tally in ``--out/tally.json``;
the parent prints the report from it.

A finding is any exception other than ``app.errors.InputError`` (the service
would answer 500), or an image that is not 2-D finite float32. Findings are
counted, their inputs saved under ``--out``, and fuzzing goes on; a hard crash
of a native decoder (segfault, abort) stops libFuzzer, which saves the input
itself (``crash-*`` in the working directory).

Usage::

    .venv/bin/python bench/fuzz_decode.py --seconds 120 --out /tmp/vlkd-fuzz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import app.decode
    import app.dicom
    import app.raster
    from app.dicom_selftest import generate_sample
    from app.errors import InputError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"


class Tally:
    """Executions, outcomes and findings of one fuzzing run."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.started = time.monotonic()
        self.executions = 0
        self.outcomes: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.saved_at = 0.0

    def record_finding(self, kind: str, data: bytes) -> None:
        """Count a finding and save its input once per kind."""
        if self.findings[kind] == 0:
            name = hashlib.sha256(data).hexdigest()[:16]
            (self.out / f"finding-{name}.bin").write_bytes(data)
        self.findings[kind] += 1

    def save(self, force: bool = False) -> None:
        """Write the tally to ``out/tally.json`` (at most once a second)."""
        now = time.monotonic()
        if not force and now - self.saved_at < 1.0:
            return
        self.saved_at = now
        tally = {
            "seconds": now - self.started,
            "executions": self.executions,
            "outcomes": dict(self.outcomes),
            "findings": dict(self.findings),
        }
        (self.out / "tally.json").write_text(json.dumps(tally, indent=1))


def report(out: Path) -> None:
    """Print the figures docs/decoding.md quotes, from the child's tally."""
    tally = json.loads((out / "tally.json").read_text())
    rate = tally["executions"] / max(tally["seconds"], 1e-9)
    print(
        f"\n=== fuzz_decode: {tally['executions']} executions in "
        f"{tally['seconds']:.0f} s ({rate:.0f}/s)"
    )
    findings = Counter(tally["findings"])
    print(f"findings: {sum(findings.values())} ({len(findings)} distinct)")
    for kind, count in findings.most_common():
        print(f"  {count:6d}  {kind}")
    print("outcomes:")
    for kind, count in Counter(tally["outcomes"]).most_common(12):
        print(f"  {count:6d}  {kind}")


TALLY: Tally | None = None


def one_input(data: bytes) -> None:
    """libFuzzer's target: decode, classify the outcome, never raise."""
    assert TALLY is not None
    TALLY.executions += 1
    TALLY.save()
    try:
        image = app.decode._decode(data, None, LIMITS)
    except InputError as error:
        TALLY.outcomes[f"{error.status_code} {type(error).__name__}"] += 1
        return
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # a finding: the service would answer 500
        kind = f"{type(error).__module__}.{type(error).__name__}"
        TALLY.record_finding(kind, data)
        TALLY.save(force=True)
        return

    pixels = image.pixels
    if pixels.ndim != 2 or pixels.dtype.name != "float32":
        TALLY.record_finding("bad image shape / dtype", data)
    elif not bool(app.decode.np.isfinite(pixels).all()):
        TALLY.record_finding("non-finite pixels", data)
    else:
        TALLY.outcomes["image"] += 1


LIMITS = app.decode.DecodeLimits(max_bytes=16 << 20, max_pixels=8_000_000)


def write_seeds(shared: Path, corpus: Path) -> int:
    """Copy the seed files into ``corpus``; return how many."""
    seeds = [path.read_bytes() for path in sorted((shared / "dicom").glob("*.dcm"))]
    seeds += [path.read_bytes() for path in sorted((shared / "fullsize").glob("*.png"))]
    seeds += [
        generate_sample(uid)[0] for uid in app.dicom.supported_transfer_syntaxes()
    ]
    for index, seed in enumerate(seeds):
        (corpus / f"seed-{index:03d}").write_bytes(seed)

    return len(seeds)


def main() -> None:
    """Parse arguments; the parent starts the fuzzing child, then reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120, help="wall-clock budget")
    parser.add_argument("--max-len", type=int, default=262_144, help="bytes per input")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "vlkd-fuzz"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.child:
        fuzz(args)
        return

    command = [sys.executable, __file__, "--child", *sys.argv[1:]]
    finished = subprocess.run(command, check=False, timeout=args.seconds + 120)
    report(args.out)
    print(f"libFuzzer exit status: {finished.returncode} (0: no crash)")


def fuzz(args: argparse.Namespace) -> None:
    """Write the seed corpus and run libFuzzer for ``args.seconds``."""
    global TALLY

    corpus = Path(tempfile.mkdtemp(prefix="vlkd-fuzz-corpus-"))
    count = write_seeds(args.shared, corpus)
    print(f"seeds: {count} in {corpus}; findings go to {args.out}")

    # Library warnings and the decode module's own log lines would flood the
    # terminal at hundreds of executions a second.
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("RUST_BACKTRACE", "0")

    TALLY = Tally(args.out)
    TALLY.save(force=True)
    libfuzzer_args = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=4096",
        "-timeout=20",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(libfuzzer_args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
