"""A parent of supervised children, for tests/mcp_server/cli/test_supervision.py to kill with -9.

Run: `python -m tests.mcp_server.cli.dying_parent MODE`; it prints one JSON line of pids, then waits to be
killed (modes `started`, `restarted`) or stops its children itself (`orphaned`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mcp_server.cli.processes import Children, descendants
from mcp_server.cli.supervision import Backoff, Supervisor

SLEEPER = ["sleep", "300"]


def wait_for(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def main(mode: str) -> None:
    children = Children(log_dir=None)
    if mode == "started":  # a child the main thread started
        print(json.dumps({"child": children.start("sleeper", SLEEPER, dict(os.environ)).pid}), flush=True)
    elif mode == "restarted":  # a child the supervisor's thread started again
        first = children.start("sleeper", SLEEPER, dict(os.environ))
        Supervisor(children, report=lambda _line: None, backoff=Backoff(first=0.1)).start()
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: children.children[0].process.pid != first.pid, "the restart")
        print(json.dumps({"child": children.children[0].process.pid}), flush=True)
    elif mode == "orphaned":  # a grandchild in a session of its own, whose parent dies
        parent = children.start("parent", ["sh", "-c", "setsid sleep 300 & wait"], dict(os.environ))
        wait_for(lambda: descendants(parent.pid), "the grandchild")
        [grandchild] = descendants(parent.pid)
        children.note_descendants()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: parent_of(grandchild) != parent.pid, "the grandchild's re-parenting")
        children.stop_all(grace_seconds=2)
        print(json.dumps({"grandchild": grandchild}), flush=True)
        return
    time.sleep(300)  # until killed


if __name__ == "__main__":
    main(sys.argv[1])
