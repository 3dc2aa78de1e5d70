"""CPU accounting: affinity, cgroup quotas, and the per-worker split (issue 6, 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import threads
from tests.conftest import REPO_ROOT


def test_cgroup_v2_quota_read(tmp_path: Path) -> None:
    """``cpu.max`` of 150000/100000 means 1.5 CPUs."""
    (tmp_path / "cpu.max").write_text("150000 100000\n")

    assert threads.cgroup_quota_cpus(tmp_path) == pytest.approx(1.5)


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    """``cpu.max`` of ``max`` means no quota."""
    (tmp_path / "cpu.max").write_text("max 100000\n")

    assert threads.cgroup_quota_cpus(tmp_path) is None


def test_cgroup_v1_quota_read(tmp_path: Path) -> None:
    """cgroup v1 quota / period gives CPUs; -1 means unlimited."""
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")

    assert threads.cgroup_quota_cpus(tmp_path) == pytest.approx(2.0)

    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert threads.cgroup_quota_cpus(tmp_path) is None


def test_quota_caps_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.5-CPU quota on an 8-CPU affinity gives 2 usable CPUs (rounded up)."""
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)

    assert threads.usable_cpus(tmp_path) == 2


def test_threads_divided_among_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 usable CPUs and 3 workers give 2 threads each; never fewer than 1."""
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)

    assert threads.threads_per_worker(3) == 2
    assert threads.threads_per_worker(16) == 1
    assert threads.threads_per_worker(3, override=5) == 5


_CHILD = """
import json, os, sys
import psutil
sys.path.insert(0, {root!r})
os.sched_setaffinity(0, {cpus!r})
from app.model import load_model
from app.threads import threads_per_worker
from pathlib import Path
n = threads_per_worker({workers})
before = psutil.Process().num_threads()
model = load_model(Path({model!r}), n)
after = psutil.Process().num_threads()
print(json.dumps({{"threads": n, "new_os_threads": after - before}}))
"""


def _child(model_path: Path, cpus: set[int], workers: int) -> dict[str, int]:
    code = _CHILD.format(
        root=str(REPO_ROOT), cpus=cpus, workers=workers, model=str(model_path)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLKD_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_one_cpu_affinity_gives_one_intra_op_thread(model_path: Path) -> None:
    """Pinned to one CPU, onnxruntime gets 1 intra-op thread and starts no pool."""
    result = _child(model_path, {0}, workers=1)

    assert result["threads"] == 1
    assert result["new_os_threads"] == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_cpus_two_workers_one_thread_each(model_path: Path) -> None:
    """Two CPUs split between two workers give one intra-op thread per worker."""
    cpus = set(sorted(os.sched_getaffinity(0))[:2])

    one_worker = _child(model_path, cpus, workers=1)
    two_workers = _child(model_path, cpus, workers=2)

    assert one_worker["threads"] == 2
    assert one_worker["new_os_threads"] == 1
    assert two_workers["threads"] == 1
    assert two_workers["new_os_threads"] == 0
