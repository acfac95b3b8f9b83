"""What a standby container reads from its worker host: one line, the run's environment, and nothing else."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from flows.standby import read_handoff


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
