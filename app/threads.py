"""How many CPUs this process may really use, and how to split them.

``os.cpu_count()`` reports the host's CPUs, not the ones a container or a
``taskset`` leaves us; onnxruntime sized from it oversubscribes and slows down.
The usable count is the smallest of the scheduler affinity and the cgroup CPU
quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's scheduler affinity mask."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in CPUs, or None when there is no limit."""
    v2 = root / "cpu.max"
    v1_quota = root / "cpu" / "cpu.cfs_quota_us"
    v1_period = root / "cpu" / "cpu.cfs_period_us"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text().strip())
            if quota_us <= 0:
                return None
            return quota_us / int(v1_period.read_text().strip())
    except (OSError, ValueError):
        logger.debug("cgroup CPU quota unreadable; assuming no quota")

    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process can really run on: affinity capped by the cgroup quota."""
    cpus = affinity_cpus()
    quota = cgroup_quota_cpus(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))

    return max(1, cpus)


def threads_per_worker(workers: int, override: int | None = None) -> int:
    """Intra-op threads for one worker: usable CPUs divided among the workers."""
    if override is not None:
        return override

    return max(1, usable_cpus() // max(1, workers))
