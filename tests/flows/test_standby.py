"""What a standby container reads from its worker host: one line, the run's environment, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from flows.exceptions import UNFIT_EXIT_CODE
from flows.models import MODELS_HERE_ENV
from flows.standby import read_handoff
from flows.tls import PREFECT_CA_ENV


@contextmanager
def stdin_with(text: str | None) -> Iterator[IO[str]]:
    """A pipe like a container's stdin: `text` written, then closed by the writer (None: left open, empty)."""
    read_end, write_end = os.pipe()
    if text is not None:
        os.write(write_end, text.encode())
        os.close(write_end)
    with os.fdopen(read_end) as stream:
        yield stream
    if text is None:
        os.close(write_end)


def test_the_handed_line_is_the_runs_environment() -> None:
    with stdin_with('{"env": {"PREFECT__FLOW_RUN_ID": "0f3c", "PREFECT_API_KEY": "ariel_rt_x"}}\n') as stdin:
        assert read_handoff(stdin) == {"PREFECT__FLOW_RUN_ID": "0f3c", "PREFECT_API_KEY": "ariel_rt_x"}


def test_stdin_closed_before_any_line_means_retired_not_failed() -> None:
    with stdin_with("") as stdin:
        assert read_handoff(stdin) is None


def test_no_run_within_the_wait_means_an_orphan_that_leaves() -> None:
    with stdin_with(None) as stdin:
        assert read_handoff(stdin, wait_seconds=0.05) is None


@pytest.mark.parametrize("line", ['{"env": ["PREFECT_API_KEY"]}\n', '{"env": {"A": 1}}\n', '["env"]\n',
                                  'PREFECT_API_KEY=ariel_rt_x\n'])
def test_a_line_of_another_shape_is_refused_without_echoing_it(line: str) -> None:
    with stdin_with(line) as stdin, pytest.raises(SystemExit) as refused:
        read_handoff(stdin)
    assert "the handoff line has no {'env': {name: value}} object" in str(refused.value)
    assert "PREFECT_API_KEY" not in str(refused.value)


# In a fresh interpreter, as a container runs it: which modules are imported before the run is what is tested.
WARM = """
import sys
from flows.standby import warm
cold = warm(sys.stdin)
print("cold" if cold else "warm", "litellm imported" if "litellm" in sys.modules else "litellm not imported",
      "+ MCP client" if "flows.mcp.client" in sys.modules else "")
"""


@pytest.mark.parametrize(("handed", "models_here", "expected"), [
    # The run is already there: it starts without waiting on litellm.
    ('{"env": {}}\n', "1", "cold litellm not imported"),
    # No run yet, on own hardware (runs call their model themselves): litellm imported, its first call made.
    (None, "1", "warm litellm imported"),
    # On Ariel's pools the gateway calls the model: litellm, two thirds of a run's imports, is never imported.
    # Nor is the MCP client, which only runs with MCP servers use (they import it as they start).
    (None, None, "warm litellm not imported"),
])
def test_a_standby_imports_litellm_only_where_its_run_calls_the_model_and_never_holds_a_run_up_for_it(
    handed: str | None, models_here: str | None, expected: str,
) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    read_end, write_end = os.pipe()
    if handed is not None:
        os.write(write_end, handed.encode())
    env = {**os.environ, "PYTHONPATH": root, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop(MODELS_HERE_ENV, None)
    if models_here is not None:
        env[MODELS_HERE_ENV] = models_here
    try:
        done = subprocess.run([sys.executable, "-c", WARM], stdin=read_end, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == expected


def test_a_run_whose_settings_name_a_ca_file_its_container_lacks_exits_78_naming_it_before_it_begins() -> None:
    """Exit 78 (`UNFIT_EXIT_CODE`), not 1: recovery does not retry it, as every attempt would stop the same way."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    handed = json.dumps({"env": {"PREFECT__FLOW_RUN_ID": str(uuid.uuid4()),
                                 "PREFECT_API_URL": "https://ariel.example.com/prefect/api",
                                 PREFECT_CA_ENV: "/on/the/workers/machine/ca.pem"}})
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    done = subprocess.run([sys.executable, "-m", "flows.standby"], input=handed + "\n", capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": root}, cwd=root)
    assert done.returncode == UNFIT_EXIT_CODE == 78, done.stderr[-2000:]
    assert ("standby: the run cannot start in this container: PREFECT_API_SSL_CERT_FILE names "
            "/on/the/workers/machine/ca.pem, which is not a file in this run's container") in done.stderr
    assert "Traceback" not in done.stderr
