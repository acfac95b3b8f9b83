"""Start a child of `ariel up` or `ariel worker` again when it dies, after a backoff, and say why.

No supervisor library fits here: supervisord and circus are daemons of their
own, configured by files (which would hold the children's credentials) and
driven over a socket; neither makes children die with their parent, and each
would stand one more process between `ariel up` and its children. What is
needed is small: notice an exit, wait, start the same command again, in a
thread that lives as long as the process (see processes.py for why).

    supervisor = Supervisor(children, report=print)
    supervisor.start()      # from now on, a child that exits comes back
    ...
    children.stop_all()     # restarts nothing once begun; the thread ends after it
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp_server.cli.processes import Child, Children


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting a child again: `first`, doubling with each quick exit, at most `most`.

    A child that ran for `stable` seconds or more before it ended starts the count over: one crash a day
    waits `first`; a crash loop backs off.

    >>> [Backoff().delay(exits) for exits in range(7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    """

    first: float = 1.0
    most: float = 30.0
    stable: float = 60.0

    def delay(self, quick_exits: int) -> float:
        return min(self.most, self.first * 2.0 ** quick_exits)


@dataclass
class _Pending:
    due: float  # time.monotonic() at which to start it again


@dataclass
class Supervisor:
    """Watches `children` every `every` seconds from a thread of its own; restarts those that exit.

    Each exit and each restart is one line to `report` (the terminal) and in the child's log.
    """

    children: Children
    report: Callable[[str], None]
    backoff: Backoff = field(default_factory=Backoff)
    every: float = 1.0  # each round reads /proc: cheap, but this machine may be a shared one
    _quick_exits: dict[str, int] = field(default_factory=dict, init=False)
    _pending: dict[str, _Pending] = field(default_factory=dict, init=False)

    def start(self) -> threading.Thread:
        # The kernel kills the children a thread started when that thread ends: this one ends only once
        # stop_all has stopped them all, or with the process (a daemon, so that it never holds up the exit).
        thread = threading.Thread(target=self._watch, name="ariel-supervisor", daemon=True)
        thread.start()
        return thread

    def check(self, now: float) -> None:
        """One round: note the children that exited, and start those whose wait is over."""
        for child in list(self.children.children):
            if child.process.poll() is None or self.children.stopping:
                continue
            pending = self._pending.get(child.name)
            if pending is None:
                self._exited(child, now)
            elif now >= pending.due:
                try:
                    process = self.children.restart(child)
                except Exception as exc:  # its program is gone, or no process could be made (EAGAIN, ENOMEM)
                    # Waiting still, the longer the more tries fail: its old process, long ended, is not a new exit.
                    self._wait(child, now, f"{child.name} could not be started again ({type(exc).__name__}: {exc})")
                    continue
                del self._pending[child.name]
                if process is not None:
                    self._say(child, f"{child.name} started again (pid {process.pid})")
        self.children.note_descendants()

    def _exited(self, child: Child, now: float) -> None:
        ran = now - child.since
        if ran >= self.backoff.stable:
            self._quick_exits[child.name] = 0
        self._wait(child, now, f"{child.name} (pid {child.process.pid}) {child.how_it_ended} after {ran:.0f} s")

    def _wait(self, child: Child, now: float, what: str) -> None:
        quick = self._quick_exits.get(child.name, 0)
        delay = self.backoff.delay(quick)
        self._quick_exits[child.name] = quick + 1
        self._pending[child.name] = _Pending(due=now + delay)
        where = f"; its log: {self.children.log_dir / f'{child.name}.log'}" if self.children.log_dir else ""
        self._say(child, f"{what}; starting it again in {delay:g} s{where}")

    def _say(self, child: Child, message: str) -> None:
        self.report(message)
        self.children.note(child, message)

    def _watch(self) -> None:
        while not self.children.stopped.wait(self.every):
            try:
                self.check(time.monotonic())
            except Exception as exc:  # this thread must not end: the children it started would die with it
                self.report(f"supervisor: {type(exc).__name__}: {exc}; still watching")
