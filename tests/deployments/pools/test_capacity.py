"""The worker host's default cap counts the machine its runs live on, not the one it was started on."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest

from deployments.pools.capacity import RUN_MEMORY_BYTES, Machine, default_max_runs, docker_machine, this_machine

GiB = 2**30
CORES = len(os.sched_getaffinity(0))
PHYSICAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cgroup_v2_limit_on_the_process_or_any_group_above_it_bounds_cores_and_memory(tmp_path: Path) -> None:
    root = tree(tmp_path / "cgroup", {
        "cgroup.controllers": "cpu memory",
        "user.slice/memory.max": f"{GiB}\n",  # the slice above the process's service
        "user.slice/ariel.service/memory.max": "max\n",
        "user.slice/ariel.service/cpu.max": "50000 100000\n",  # half a core: one, rounded up
    })
    proc = tree(tmp_path, {"proc-cgroup": "0::/user.slice/ariel.service\n"}) / "proc-cgroup"

    machine = this_machine(root, proc)

    assert machine == Machine(1, GiB, "this process's cgroup")
    assert default_max_runs(machine) == 2  # half of 1 GiB holds two runs of 256 MB


def test_cgroup_v1_controllers_are_read_where_the_unified_hierarchy_holds_none(tmp_path: Path) -> None:
    root = tree(tmp_path / "cgroup", {
        "memory/process_api/abc/memory.limit_in_bytes": f"{4 * GiB}\n",
        "cpu/cpu.cfs_quota_us": "150000\n",
        "cpu/cpu.cfs_period_us": "100000\n",
        "unified/cgroup.procs": "",
    })
    proc = tree(tmp_path, {"proc-cgroup": "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n"}) / "proc-cgroup"

    machine = this_machine(root, proc)

    assert machine == Machine(min(CORES, 2), min(PHYSICAL, 4 * GiB), "this process's cgroup")


def test_no_limits_leave_the_machine_as_it_is(tmp_path: Path) -> None:
    root = tree(tmp_path / "cgroup", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "none"
        "cpu/cpu.cfs_quota_us": "-1\n",
        "cpu/cpu.cfs_period_us": "100000\n",
    })
    proc = tree(tmp_path, {"proc-cgroup": "4:memory:/\n1:cpu,cpuacct:/\n"}) / "proc-cgroup"

    assert this_machine(root, proc) == Machine(CORES, PHYSICAL, "this machine")
    assert this_machine(tmp_path / "nothing-mounted", tmp_path / "no-such-file") == Machine(
        CORES, PHYSICAL, "this machine")


def test_docker_pools_count_the_engines_machine(docker_engine: None) -> None:
    client = docker.from_env()
    try:
        info = client.info()
    finally:
        client.close()

    assert docker_machine() == Machine(info["NCPU"], info["MemTotal"], "the Docker engine's machine")


def test_a_small_docker_desktop_vm_caps_runs_below_what_its_desktop_would() -> None:
    desktop = Machine(cores=10, memory=32 * GiB, where="this machine")
    vm = Machine(cores=4, memory=2 * GiB, where="the Docker engine's machine")

    assert (default_max_runs(desktop), default_max_runs(vm)) == (64, 4)


def test_a_machine_says_what_it_counts() -> None:
    assert str(Machine(2, 3 * GiB, "this process's cgroup")) == "2 core(s) and 3.0 GiB of this process's cgroup"


@pytest.mark.parametrize("memory", [0, RUN_MEMORY_BYTES])
def test_at_least_two_runs_even_on_a_tiny_machine(memory: int) -> None:
    assert default_max_runs(Machine(1, memory, "this machine")) == 2
