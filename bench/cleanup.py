"""Benchmarks stop and remove exactly what they started: their own pool's containers, their own workers."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress

import docker


def remove_containers(pool: str) -> None:
    """The run containers of one pool only (by their pool label: each benchmark run names its pools uniquely)."""
    if not pool:
        return
    engine = docker.from_env()
    try:
        for container in engine.containers.list(all=True, filters={"label": f"io.prefect.work-pool-name={pool}"},
                                                ignore_removed=True):
            # Run containers may remove themselves when they end: one may be on its way out already.
            with suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
    finally:
        engine.close()


def stop_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Stop a process started with `start_new_session=True` and all it started: Ctrl-C, then SIGKILL after `grace`."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
