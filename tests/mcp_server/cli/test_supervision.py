"""Children that die are started again, with backoff; none outlives its parent or `stop_all`.

Real processes throughout (`sleep`, `sh`, a parent in a new interpreter that
the tests kill with -9). The whole stack's faults are in tests/test_supervision.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_server.cli.processes import Children
from mcp_server.cli.supervision import Backoff, Supervisor
from tests.support import alive, need, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[3]
FAST = Backoff(first=0.2, most=0.8, stable=60)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all(grace_seconds=1)


def test_a_child_killed_from_outside_is_started_again_and_the_reason_is_said_and_logged(
    children: Children, tmp_path: Path
) -> None:
    lines: list[str] = []
    first = children.start("sleeper", ["sleep", "300"], dict(os.environ))
    Supervisor(children, report=lines.append, backoff=FAST, every=0.05).start()
    os.kill(first.pid, signal.SIGKILL)
    wait_until(lambda: children.children[0].process.pid != first.pid, 10, "the restart")
    assert alive(children.children[0].process.pid)
    said = f"sleeper (pid {first.pid}) killed by SIGKILL after 0 s; starting it again in 0.2 s; its log: " \
           f"{tmp_path / 'logs' / 'sleeper.log'}"
    assert lines == [said, f"sleeper started again (pid {children.children[0].process.pid})"]
    logged = (tmp_path / "logs" / "sleeper.log").read_text()
    assert f"ariel: {said}\n" in logged


def test_a_child_that_keeps_failing_waits_longer_each_time_up_to_the_most(children: Children) -> None:
    lines: list[str] = []
    children.start("failing", ["sh", "-c", "exit 3"], dict(os.environ))
    supervisor = Supervisor(children, report=lines.append, backoff=Backoff(first=0.1, most=0.4), every=0.02)
    supervisor.start()
    wait_until(lambda: len([line for line in lines if "exited" in line]) >= 5, 20, "five exits")
    waits = [line.rsplit("starting it again in ", 1)[1].split(" s")[0] for line in lines if "exited" in line]
    assert waits[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"]
    assert all("exited with status 3" in line for line in lines if "exited" in line)


def test_a_child_that_ran_long_before_it_died_waits_the_shortest_time_again() -> None:
    backoff = Backoff(first=1, most=30, stable=60)
    children = Children(None)
    try:
        supervisor = Supervisor(children, report=lambda _line: None, backoff=backoff)
        child = children.start("sleeper", ["sh", "-c", "exit 0"], dict(os.environ))
        child.wait(timeout=10)
        entry = children.children[0]
        supervisor._quick_exits["sleeper"] = 4  # four quick exits before this one
        supervisor.check(now=entry.since + 61)  # ... and this run lasted past `stable`
        assert supervisor._pending["sleeper"].due == entry.since + 61 + 1
    finally:
        children.stop_all(grace_seconds=1)


def test_nothing_is_started_again_once_stop_all_has_begun(children: Children) -> None:
    lines: list[str] = []
    children.start("sleeper", ["sleep", "300"], dict(os.environ))
    thread = Supervisor(children, report=lines.append, backoff=FAST, every=0.02).start()
    pids = [child.process.pid for child in children.children]
    assert children.stop_all(grace_seconds=2) == []
    thread.join(timeout=5)
    assert not thread.is_alive()  # it ends once the children are stopped
    assert not [pid for pid in pids if alive(pid)]
    assert lines == []  # a child stopped by stop_all is not reported as lost


@pytest.mark.parametrize("mode", ["started", "restarted"])
def test_a_child_dies_with_its_parent_killed_with_minus_9(mode: str) -> None:
    # "restarted": the supervisor's thread started it, and the kernel ties a child to the thread that started it.
    parent = subprocess.Popen([sys.executable, "-m", "tests.mcp_server.cli.dying_parent", mode], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = json.loads(parent.stdout.readline())["child"]  # type: ignore[union-attr]  # a pipe
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        wait_until(lambda: not alive(child), 10, "the child to die with its parent")
    finally:
        stop_process(parent)
        parent.stdout.close()  # type: ignore[union-attr]  # a pipe


def test_stop_all_also_stops_a_grandchild_whose_parent_died() -> None:
    # A process worker's flow run has a session of its own; when the worker host is killed it is re-parented.
    parent = subprocess.Popen([sys.executable, "-m", "tests.mcp_server.cli.dying_parent", "orphaned"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = parent.communicate(timeout=60)
        grandchild = json.loads(out)["grandchild"]
        assert parent.returncode == 0
        assert not alive(grandchild)
    finally:
        stop_process(parent)


def test_a_child_whose_program_is_gone_is_tried_again_later_each_time_and_its_old_exit_said_once(
    children: Children, tmp_path: Path,
) -> None:
    program = tmp_path / "child.sh"
    program.write_text("#!/bin/sh\nexit 3\n")
    program.chmod(0o755)
    lines: list[str] = []
    children.start("gone", [str(program)], dict(os.environ))
    Supervisor(children, report=lines.append, backoff=Backoff(first=0.1, most=0.4, stable=0.05), every=0.02).start()
    wait_until(lambda: lines, 10, "its first exit")
    program.unlink()  # an upgrade removed it, say
    wait_until(lambda: len([line for line in lines if "could not be started again" in line]) >= 4, 20, "four tries")
    exits = [line for line in lines if " exited with status 3 " in line]
    tries = [line for line in lines if "could not be started again (FileNotFoundError" in line]
    waits = [line.rsplit("starting it again in ", 1)[1].split(" s")[0] for line in tries]
    assert len(exits) <= 2  # its last exit, said once (and one more, had it run again before the unlink)
    assert waits[:4] == ["0.2", "0.4", "0.4", "0.4"] or waits[:4] == ["0.4"] * 4, lines


# Serial: it moves the machine's last pid, so every process another test starts meanwhile would take a pid
# just freed, which that test may still take for one of its own exited processes.
@pytest.mark.serial
def test_stop_all_leaves_alone_a_stranger_that_took_the_pid_of_a_child_that_exited(children: Children) -> None:
    need(os.geteuid() == 0, "taking a chosen pid (/proc/sys/kernel/ns_last_pid) needs root")
    lines: list[str] = []
    exited = children.start("quick", ["sh", "-c", "exit 0"], dict(os.environ))
    Supervisor(children, report=lines.append, backoff=Backoff(first=600), every=0.02).start()
    wait_until(lambda: lines, 10, "its exit")
    stranger = None
    for _ in range(20):  # another process of the machine may take the pid first: try again
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(exited.pid - 1))
        # A session and group of its own, of that number, and a child in it: what stop_all once took for ours.
        candidate = subprocess.Popen(["setsid", "sh", "-c", "sleep 300 & wait"])
        if candidate.pid == exited.pid:
            stranger = candidate
            break
        stop_process(candidate)
    assert stranger is not None, "no process could be given the exited child's pid"
    try:
        wait_until(lambda: len(Path(f"/proc/{stranger.pid}/task/{stranger.pid}/children").read_text().split()), 10,
                   "the stranger's child")
        time.sleep(0.2)  # rounds of the supervisor, which notes the lineage
        children.stop_all(grace_seconds=1)
        with pytest.raises(subprocess.TimeoutExpired):  # a signal sent would have ended it by then
            stranger.wait(timeout=1)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()
