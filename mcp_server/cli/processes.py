"""Child processes of `ariel up`: started in their own process group, stopped as a group.

A Prefect worker ignores SIGTERM for a long time but stops on SIGINT, and a
process worker's flow runs are its own children: signalling the whole group
leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Children:
    """The processes one `ariel up` started, newest last."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.started.append((name, process))
        return process

    def exited(self) -> list[str]:
        """Names of children that have stopped on their own."""
        return [name for name, process in self.started if process.poll() is not None]

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        """SIGINT every group, newest first; SIGKILL what is still there after the grace period."""
        for _name, process in reversed(self.started):
            _signal_group(process, signal.SIGINT)
        deadline = time.monotonic() + grace_seconds
        for _name, process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Also reaps grandchildren (a process worker's flow runs) left in the group.
            _signal_group(process, signal.SIGKILL)
            process.wait()
        self.started.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
