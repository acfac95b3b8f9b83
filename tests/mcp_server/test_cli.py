"""The `ariel` command answers bad configuration with the variable and what is allowed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ariel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


def test_a_port_that_is_not_a_number_names_the_variable(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_PORT="eighty")
    assert done.returncode == 2
    assert done.stderr.startswith("ariel: ARIEL_PORT: Input should be a valid integer")
    assert "Traceback" not in done.stderr


def test_an_unknown_worker_type_lists_the_allowed_ones(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_WORKER_TYPE="kubernetes")
    assert done.returncode == 2
    assert done.stderr.strip() == "ariel: ARIEL_WORKER_TYPE: Input should be 'auto', 'docker' or 'process'"
