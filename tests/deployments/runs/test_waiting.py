"""Waiting for a run (run_agent's wait_seconds) against the real Prefect server."""

from __future__ import annotations

from uuid import uuid4

from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.states import Running

from deployments.runs.flow_runs import wait_for_run


@flow(name="wait-probe")
def probe() -> None: ...


async def test_a_long_wait_reads_the_run_less_often_after_its_first_two_seconds(prefect_api: str) -> None:
    # A run that never ends within the wait: every read is a poll. At a steady 4 a second, 12 s would read it 48
    # times; slowing to one a second after the first two seconds reads it about 20 times. (A loaded machine only
    # reads it less often: each read takes longer.)
    async with PrefectClient(prefect_api) as client:
        made = await client.create_flow_run(probe, name=f"waited-{uuid4().hex[:6]}", state=Running())
        polls: list[FlowRun] = []

        async def counted(run: FlowRun) -> None:
            polls.append(run)

        ended = await wait_for_run(client, made.id, timeout=12, on_poll=counted)

    assert ended.state is not None and ended.state.is_running()  # as it was when the wait ran out
    assert 0 < len(polls) <= 30, len(polls)
