"""Waiting for a run (run_agent's wait_seconds) against the real Prefect server."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.states import Running

from deployments.runs.flow_runs import wait_for_run


@flow(name="wait-probe")
def probe() -> None: ...


@pytest.mark.slow(reason="waits out a 10 s wait")
async def test_a_long_wait_reads_the_run_less_often_after_its_first_two_seconds(prefect_api: str) -> None:
    # A run that does not end within the wait: every read is a poll. Polls come 0.25 s apart (plus the read) for
    # two seconds, then further apart, up to a second. Gaps are measured, not counted: a slow read only widens them.
    async with PrefectClient(prefect_api) as client:
        made = await client.create_flow_run(probe, name=f"waited-{uuid4().hex[:6]}", state=Running())
        began = time.monotonic()
        polls: list[float] = []

        async def seen(_run: FlowRun) -> None:
            polls.append(time.monotonic() - began)

        ended = await wait_for_run(client, made.id, timeout=10, on_poll=seen)

    assert ended.state is not None and ended.state.is_running()  # as it was when the wait ran out
    late = [after - before for before, after in zip(polls, polls[1:], strict=False) if before >= 6]
    assert late and min(late) >= 0.9, polls  # at a steady 0.25 s, these gaps were 0.25 s and a read
