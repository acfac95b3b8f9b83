"""Child processes of `ariel up` (and `ariel worker`), and how they and their children stop.

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
engine's, not a child's: `ariel up` removes its install's beside `stop_all`
(stack.py), since they cannot go on without the gateway and Prefect.

When `ariel up` itself dies without that `finally` (SIGKILL, the OOM killer),
the kernel kills its children: each starts with a parent-death signal
(Linux's PR_SET_PDEATHSIG), SIGKILL, since no one is left to follow a SIGTERM
up. The kernel sends it when the *thread* that started the child ends, so only
threads that live as long as the process start children (the main thread, and
the supervisor's, see supervision.py).

A descendant whose parent died (a flow run of a worker host killed with -9)
is re-parented to init, out of `ariel up`'s tree; it runs on, as it should.
`Children` remembers every descendant it has seen (pid and start time, so
that a pid used again is not mistaken for it), and `stop_all` stops those
still alive too. (Making `ariel up` a child subreaper would keep them in its
tree, but it would also inherit the orphans of the HTTP app's own
subprocesses, which nobody would reap.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NamedTuple

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 5.0  # what a child gets after SIGTERM, at least (`ariel up` gives what its 10 s leave, see stack.py)
KILL_WAIT_SECONDS = 2.0  # a SIGKILLed process exits at once unless stuck in the kernel: do not wait on it for ever

# prctl(2)'s option (linux/prctl.h). Looked up once here: a preexec_fn runs between fork and exec, where it
# should do as little as it can (no dlsym, no import).
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
if _prctl is not None:
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


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
class Child:
    """One supervised child: what it runs, and its current process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    since: float  # time.monotonic() when this process started

    @property
    def how_it_ended(self) -> str:
        """'killed by SIGKILL', 'exited with status 1': the reason a supervisor reports."""
        code = self.process.returncode
        if code is None:
            return "running"
        if code < 0:
            with suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exited with status {code}"


class Children:
    """The processes one `ariel up` started, newest last.

    `start` and `stop_all` run in the main thread; `restart` in the supervisor's. A lock orders them: once
    `stop_all` has begun, `restart` starts nothing, so no child is started that `stop_all` would miss.
    """

    def __init__(self, log_dir: Path | None) -> None:
        """`log_dir`: where each child's output goes (NAME.log, appended); None: this process's stdout and stderr."""
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stopped = threading.Event()  # set once stop_all has finished: nothing of ours runs any more
        self._lock = threading.Lock()
        self._stopping = False
        self._lineage: dict[int, int] = {}  # descendants of the children ever seen: pid -> start time

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with _stop_signals_held(), self._lock:
            # Held: a signal between the fork and the append would leave a child in a session of its own
            # that stop_all never learns of.
            child = Child(name, argv, env, self._spawn(name, argv, env), time.monotonic())
            self.children.append(child)
        return child.process

    def restart(self, child: Child) -> subprocess.Popen[bytes] | None:
        """Start `child`'s command again in place of its exited process; None once stopping has begun.

        Called from a thread that lives as long as this process: its children die when it ends.
        """
        with self._lock:
            if self._stopping:
                return None
            child.process, child.since = self._spawn(child.name, child.argv, child.env), time.monotonic()
            return child.process

    def note(self, child: Child, message: str) -> None:
        """Append `message` to `child`'s log, where its own output shows why it ended."""
        if self.log_dir is not None:
            with suppress(OSError), open(self.log_dir / f"{child.name}.log", "a") as log:
                log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ariel: {message}\n")

    @property
    def stopping(self) -> bool:
        """Whether `stop_all` has begun: a child that exits now was stopped, not lost."""
        return self._stopping

    def exited(self) -> list[str]:
        """Names of children that have stopped on their own."""
        return [child.name for child in self.children if child.process.poll() is not None]

    def note_descendants(self) -> None:
        """Remember the children's descendants, for `stop_all` to stop those whose parent has died meanwhile."""
        self._note_lineage(_process_table())

    def stop_all(self, grace_seconds: float = GRACE_SECONDS) -> list[str]:
        """SIGTERM every group at once; SIGKILL each still there after the grace period.

        The groups are the children's and those of every descendant seen, alive still: a process worker
        starts each flow run in a session of its own, which a signal to the worker host's group never
        reaches, and which outlives it. Never this process's own group (a shell's, a test runner's). Returns
        the names of the children that had to be killed. All groups are signalled before any child is waited
        for, so stopping takes the slowest child's time, not the sum.
        """
        with self._lock:
            self._stopping = True
        table = _process_table()
        self._note_lineage(table)
        # Only children running: an exited one's pid may be a stranger's by now (what is left of its group is in
        # the lineage, and a group's id is not given to a new process while a member lives).
        groups = [child.process.pid for child in reversed(self.children) if child.process.poll() is None]
        groups += sorted({table[pid].group for pid in self._lineage} - set(groups) - {os.getpgrp()})
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        killed = [child.name for child in reversed(self.children)
                  if not _exits_within(child.process, deadline - time.monotonic())]
        for group in groups:  # also what is left in a group, a flow run that ignored SIGTERM for one
            _signal_group(group, signal.SIGKILL)
        for child in self.children:
            _exits_within(child.process, KILL_WAIT_SECONDS)
        self.children.clear()
        self.stopped.set()
        return killed

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if self.log_dir is None:
            return _popen(argv, env, None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            return _popen(argv, env, log.fileno())

    def _note_lineage(self, table: dict[int, _Entry]) -> None:
        """Add what is below the children, or below one seen before (an orphan's own children), to the lineage.

        Drops the ones gone: not in `table`, or whose pid a new process has taken since.
        """
        known = {pid: started for pid, started in self._lineage.items()
                 if pid in table and table[pid].started == started}
        # An exited child's pid is no root: a new process may have it, and its children are not ours.
        roots = {child.process.pid for child in self.children if child.process.poll() is None} | set(known)
        self._lineage = known | {pid: table[pid].started for pid in _below(roots, table)}


def _popen(argv: list[str], env: dict[str, str], log: int | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT if log is not None else None, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_die_with(os.getpid()) if _prctl is not None else None,
    )


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when its parent ends (see the module's docstring)."""
    prctl = _prctl
    assert prctl is not None  # only made where there is one

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between the fork and the line above: no signal will come
            os._exit(1)

    return set_parent_death_signal


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


class _Entry(NamedTuple):
    parent: int
    group: int
    started: int  # clock ticks after boot: with the pid, what tells one process from a later one of that pid


def _process_table() -> dict[int, _Entry]:
    """Every process, from /proc (none where there is no /proc)."""
    table: dict[int, _Entry] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # After the name in parentheses: state, parent, process group, session, ... start time (the 20th).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = _Entry(int(fields[1]), int(fields[2]), int(fields[19]))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return table


def descendants(pid: int) -> dict[int, int]:
    """Every live process below `pid`, with its process group, from /proc (none where there is no /proc)."""
    return _below({pid}, _process_table())


def _below(roots: set[int], table: dict[int, _Entry]) -> dict[int, int]:
    """Every process of `table` below one of `roots`, with its process group."""
    found: set[int] = set()
    frontier = roots
    while frontier:
        frontier = {child for child, entry in table.items() if entry.parent in frontier} - found
        found |= frontier
    return {child: table[child].group for child in found}
