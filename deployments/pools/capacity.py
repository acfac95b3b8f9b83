"""How many runs at once the machine that executes them holds: the worker host's default cap (`ARIEL_MAX_RUNS`).

The machine is the one the runs' processes or containers live on, as far as they may use it: a Docker pool's
runs live in the Docker engine's machine (on Docker Desktop a VM, smaller than the desktop it runs on), a process
pool's in this process's cgroup (a container's `--memory` and `--cpus`, a systemd slice's limits).

Example::

    machine = this_machine()  # or docker_machine() for a Docker pool's runs
    cap = default_max_runs(machine)
    print(f"at most {cap} runs at once ({machine})")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RUN_MEMORY_BYTES = 256 * 2**20  # what one run holds, with room: a run container measured 115 to 165 MB resident
RUNS_PER_CORE = 8  # runs mostly wait on a model or a tool; but each starts with seconds of CPU-bound imports
CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_FILES = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes"}


@dataclass(frozen=True)
class Machine:
    """What the runs may use: `cores` (whole, at least 1) and `memory` in bytes; `where` says whose they are."""

    cores: int
    memory: int
    where: str

    def __str__(self) -> str:
        return f"{self.cores} core(s) and {self.memory / 2**30:.1f} GiB of {self.where}"


def default_max_runs(machine: Machine) -> int:
    """Runs at once `machine` holds: by its cores, and by half its memory.

    Past it, 20 runs a minute of 4 CPU-s each on 2 cores piled up 140 containers, 23 GB, until the machine ran
    out of memory and nothing finished; capped, the runs past the cap wait their turn, Late, and each one that
    starts has the CPU to finish.
    """
    return max(2, min(RUNS_PER_CORE * machine.cores, machine.memory // 2 // RUN_MEMORY_BYTES))


def this_machine(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Machine:
    """This process's share of this machine: the cores it may run on and the memory, each as its cgroups limit it
    (v2, or v1's `cpu` and `memory` controllers): a limit on the process's cgroup or any above it counts."""
    cores = len(os.sched_getaffinity(0))  # the cores this process may use (a container's --cpuset), not the host's
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limited = False
    for quota in _limits(cgroup_root, proc_cgroup, _cpu_quota, v2="cpu.max", v1="cpu"):
        if quota < cores:
            cores, limited = quota, True
    for limit in _limits(cgroup_root, proc_cgroup, _read_number, v2="memory.max", v1="memory"):
        if limit < memory:
            memory, limited = limit, True
    return Machine(cores, memory, "this process's cgroup" if limited else "this machine")


def docker_machine() -> Machine | None:
    """The Docker engine's machine, as the engine reports it; None when there is no engine to ask."""
    import docker  # here: a process pool's host never needs the SDK

    try:
        client = docker.from_env(timeout=10)
        try:
            info = client.info()
        finally:
            client.close()
        return Machine(max(1, int(info["NCPU"])), int(info["MemTotal"]), "the Docker engine's machine")
    except Exception:  # no engine, or an answer without the figures: the caller falls back to this machine
        return None


def _limits(root: Path, proc_cgroup: Path, read: Callable[[Path], int | None], *, v2: str, v1: str) -> list[int]:
    """The limits `read` finds in the process's cgroup and those above it: v2's file `v2` where the unified
    hierarchy is mounted at `root`, else the v1 controller `v1`'s files."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    paths = {controller: path for _, controllers, path in (line.split(":", 2) for line in lines if line.count(":") >= 2)
             for controller in controllers.split(",")}
    if (root / "cgroup.controllers").exists() and "" in paths:
        mount, path, name = root, paths[""], v2
    elif v1 in paths:
        mount, path, name = root / v1, paths[v1], V1_FILES[v1]
    else:
        return []
    group = mount / path.strip("/")
    # A container without its own cgroup namespace names its host's path, but its mount is its own group: the
    # mount itself is then the first that exists.
    groups = [group, *(parent for parent in group.parents if parent.is_relative_to(mount))]
    return [limit for limit in (read(group / name) for group in groups) if limit is not None]


def _cpu_quota(file: Path) -> int | None:
    """A CPU quota as whole cores, rounded up: v2's `cpu.max` (`max 100000` is none), or v1's
    `cpu.cfs_quota_us` (-1 is none) over the `cpu.cfs_period_us` beside it."""
    try:
        if file.name == "cpu.max":
            quota, period = file.read_text().split()
        else:
            quota, period = file.read_text().strip(), (file.parent / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _read_number(file: Path) -> int | None:
    """A memory limit in bytes: `max` (v2) is none; v1's none is a number past any machine's memory."""
    try:
        text = file.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None
