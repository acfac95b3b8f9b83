"""docker/setup-host.sh starts the Docker engine out of its caller's reach: a Ctrl-C on `make up` leaves it running.

The script's start path is run with stand-ins for `docker` and `dockerd` first
on PATH (a second real engine would fight the first for its socket and data
root); everything else it runs is the real thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import alive, need, stop_process

ROOT = Path(__file__).resolve().parents[1]

# Stand-ins: `docker info` answers once the engine has started; nothing else on this PATH knows a dockerd.
DOCKER = """#!/bin/sh
case "$1" in
  info) [ -e "$STANDIN_DIR/dockerd.pid" ] || exit 1; echo standin ;;
  image) exit 0 ;;
esac
"""
DOCKERD = """#!/bin/sh
echo $$ > "$STANDIN_DIR/dockerd.pid.new" && mv "$STANDIN_DIR/dockerd.pid.new" "$STANDIN_DIR/dockerd.pid"
exec sleep 300
"""
PGREP = "#!/bin/sh\nexit 1\n"  # "no dockerd runs"
NPM = "#!/bin/sh\necho 10.0.0\n"


def session_and_group(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[3]), int(fields[2])


def test_the_dockerd_setup_host_starts_is_in_a_session_of_its_own_and_outlives_a_ctrl_c(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "setup-host.sh starts dockerd only as root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"docker": DOCKER, "dockerd": DOCKERD, "pgrep": PGREP, "npm": NPM}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STANDIN_DIR": str(tmp_path),
           "ARIEL_DOCKERD_LOG": str(tmp_path / "dockerd.log")}
    # As `make up` runs it from a terminal: the leader of the process group a Ctrl-C there signals.
    script = subprocess.Popen([str(ROOT / "docker" / "setup-host.sh")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    dockerd = None
    try:
        out, _ = script.communicate(timeout=60)
        assert script.returncode == 0, out
        assert "starting dockerd" in out and "Docker engine answers (standin)" in out, out
        dockerd = int((tmp_path / "dockerd.pid").read_text())
        assert alive(dockerd)
        session, group = session_and_group(dockerd)
        assert (session, group) != (script.pid, script.pid)  # not the caller's session, not its group
        assert session == dockerd  # the leader of a session of its own
        with pytest.raises(ProcessLookupError):  # the Ctrl-C a terminal sends: nobody left in that group
            os.killpg(script.pid, signal.SIGINT)
        assert alive(dockerd)
    finally:
        stop_process(script)
        if dockerd is not None and alive(dockerd):
            os.kill(dockerd, signal.SIGKILL)
