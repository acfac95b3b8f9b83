"""Child processes of `ariel up`, and how `ariel up` and its children stop.

`ariel up` stops within 10 s of SIGINT or SIGTERM whatever dispositions it
inherited: a background job of a non-interactive shell (CI, `nohup ariel up &`)
starts with SIGINT ignored, and Python then never turns Ctrl-C into
KeyboardInterrupt. So `ariel up` handles both signals itself first thing
(`stop_on_signals`): either one raises `SystemExit(128 + signal)`, which
unwinds through the `finally` that stops the children. While the HTTP app
serves, uvicorn holds both signals; once it has shut the app down (bounded in
stack.py) it hands the signal back to that handler.

Each child runs in its own session, so a Ctrl-C at the terminal reaches only
`ariel up`, which then stops them. Children start with SIGINT and SIGTERM at
their defaults: a handled signal is reset to its default on exec, and
`ariel up` handles both before it starts any (an ignored one would stay
ignored in the child). Every child stops cleanly on SIGTERM (uvicorn in the
Prefect server, the worker host's own handler), so `stop_all` sends SIGTERM,
not SIGINT as well (uvicorn takes a SIGINT after another signal as "skip the
orderly shutdown"), to every child's process group and to the groups of
their descendants at once (a process worker's flow runs have sessions of
their own), then SIGKILL to the groups still there after the grace period.
No wait is unbounded. Containers of a Docker pool's runs are the Docker
engine's, not ours: they run on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 5.0  # what a child gets after SIGTERM; with the HTTP app's own shutdown, `ariel up` stays within 10 s
KILL_WAIT_SECONDS = 2.0  # a SIGKILLed process exits at once unless stuck in the kernel: do not wait on it for ever


def stop_on_signals() -> None:
    """From now on, SIGINT and SIGTERM raise `SystemExit(128 + signal)` in the main thread, whatever was inherited.

    The exit status is the shell's convention for death by that signal (130 for Ctrl-C). The first signal
    ignores the next ones (`ignore_stop_signals`).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_system_exit)


def ignore_stop_signals() -> None:
    """From now on, ignore SIGINT and SIGTERM: a second Ctrl-C must not cut short the (bounded) stop of the children."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _raise_system_exit(signum: int, _frame: FrameType | None) -> None:
    ignore_stop_signals()
    raise SystemExit(128 + signum)


@dataclass
class Children:
    """The processes one `ariel up` started, newest last."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log, _stop_signals_held():
            # Held: a signal between the fork and the append would leave a child in a session of its own
            # that stop_all never learns of.
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.started.append((name, process))
        return process

    def exited(self) -> list[str]:
        """Names of children that have stopped on their own."""
        return [name for name, process in self.started if process.poll() is not None]

    def stop_all(self, grace_seconds: float = GRACE_SECONDS) -> list[str]:
        """SIGTERM every group at once; SIGKILL each still there after the grace period.

        The groups are the children's and their descendants': a process worker starts each flow run in a
        session of its own, which a signal to the worker host's group never reaches, and which outlives it.
        Returns the names of the children that had to be killed. All groups are signalled before any child
        is waited for, so stopping takes the slowest child's time, not the sum.
        """
        groups = [process.pid for _name, process in reversed(self.started)]
        groups += sorted({group for _name, process in self.started for group in descendants(process.pid).values()}
                         - set(groups))
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        killed = [name for name, process in reversed(self.started)
                  if not _exits_within(process, deadline - time.monotonic())]
        for group in groups:  # also what is left in a group, a flow run that ignored SIGTERM for one
            _signal_group(group, signal.SIGKILL)
        for _name, process in self.started:
            _exits_within(process, KILL_WAIT_SECONDS)
        self.started.clear()
        return killed


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM are only noted; on leaving it, each noted one is raised again.

    Handlers, not the signal mask: a child inherits a blocked mask through exec, and would then ignore both.
    Outside the main thread (where handlers cannot be set) it holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: noted.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in noted:
            signal.raise_signal(signum)


def _exits_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(timeout=max(0.1, seconds))
    except subprocess.TimeoutExpired:
        return False
    return True


def _signal_group(group: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(group, sig)


def descendants(pid: int) -> dict[int, int]:
    """Every live process below `pid`, with its process group, from /proc (none where there is no /proc)."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # After the name in parentheses: state, parent, process group, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        parents[int(entry.name)], groups[int(entry.name)] = int(fields[1]), int(fields[2])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {child: groups[child] for child in found}
