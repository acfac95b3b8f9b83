"""Prefect unavailable for 30 s: runs due meanwhile start late, once each, and a run starting then is not lost.

A real `ariel up` on Docker with its own Prefect server, which the test stops
(SIGSTOP: it answers nothing, as a hung or unreachable server does) for 30 s
across a minute boundary, while an agent on a per-minute schedule falls due
and another agent's run is starting in its container. Both agents GET a fresh
token from a counting service on 127.0.0.1 and POST it back: a side effect
made twice would carry the same token twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import docker
import pytest
from fastmcp import Client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.client.schemas.objects import FlowRun

from deployments.pools.standby import run_containers
from tests.mcp_server.callers import ask
from tests.support import ArielUp, Effects, ariel_up, child_pid, effect_script, http_service, token_of

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 30


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with http_service(Effects) as address:
        yield address


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    # The shortest silence window: a 30 s outage must not be taken for runs that fell silent (their heartbeats
    # could not reach Prefect meanwhile), or healthy runs would be crashed and retried.
    with ariel_up(tmp_path_factory.mktemp("home-outage"), "docker",
                  extra_env={"ARIEL_RUN_SILENCE_SECONDS": "60"}) as up:
        yield up


async def runs_of(up: ArielUp, deployment: str) -> list[FlowRun]:
    """The runs of the deployment `flow/name` (names alone repeat: each agent's deployment is named by its org)."""
    async with up.prefect() as prefect:
        found = await prefect.read_deployment_by_name(deployment)
        return await prefect.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
            flow_run_filter=FlowRunFilter(), limit=200)


async def settled(up: ArielUp, deployment: str, due_by: datetime, timeout: float = 420) -> list[FlowRun]:
    """The deployment's runs expected to start by `due_by`, once none of them is still to run or running."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [run for run in await runs_of(up, deployment)
                if run.expected_start_time is not None and run.expected_start_time <= due_by]
        if runs and all(run.state is not None and run.state.is_final() for run in runs):
            return runs
        assert time.monotonic() < deadline, [(run.name, run.state_name, run.expected_start_time) for run in runs]
        await asyncio.sleep(2)


def container_of(run_id: str, seconds: float) -> bool:
    """Whether the run's container appears within `seconds`."""
    engine = docker.from_env()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if run_containers(engine, run_id):
                return True
            time.sleep(0.2)
        return False
    finally:
        engine.close()


async def test_runs_due_or_starting_while_prefect_is_stopped_for_30_s_run_once_each_when_it_is_back(
    stack: ArielUp, service: str
) -> None:
    Effects.posted.clear()
    async with Client(stack.mcp_url) as chat:
        for name, schedule in (("Minutely", {"cron": "* * * * *", "timezone": "UTC"}), ("Starting now", None)):
            await ask(chat, "create_agent", name=name, instructions="Record one effect.", model="ariel/scripted",
                      tools=["http_request"], allowed_hosts=[service], script=effect_script(service),
                      **({"schedule": schedule} if schedule else {}))
            await ask(chat, "update_agent", agent=name.lower().replace(" ", "-"), action="approve")
        minutely = (await ask(chat, "get_agent", agent="minutely"))["deployment"]
        manual = (await ask(chat, "get_agent", agent="starting-now"))["deployment"]

        # Start a manual run about 12 s before a minute boundary; stop Prefect as its container starts (or 2 s
        # before the boundary at the latest), so the outage holds the start of one run and the due time of another.
        now = datetime.now(UTC)
        boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1 if now.second < 46 else 2)
        await asyncio.sleep(max(0.0, (boundary - timedelta(seconds=12) - datetime.now(UTC)).total_seconds()))
        run = await ask(chat, "run_agent", agent="starting-now")
        left = (boundary - timedelta(seconds=2) - datetime.now(UTC)).total_seconds()
        await asyncio.to_thread(container_of, run["id"], max(0.0, left))
        prefect = child_pid(stack, "prefect-server")
        assert prefect is not None
        os.kill(prefect, signal.SIGSTOP)
        stopped_at = datetime.now(UTC)
        try:
            await asyncio.sleep(OUTAGE_SECONDS)
        finally:
            os.kill(prefect, signal.SIGCONT)
        assert stopped_at < boundary, "the outage began after the boundary it was to hold"

        scheduled = await settled(stack, minutely, due_by=boundary)
        started = await settled(stack, manual, due_by=datetime.now(UTC))
        completed = [r for r in scheduled + started if r.state_name == "Completed"]
        async with stack.prefect() as client:
            histories = {r.name: [state.name for state in await client.read_flow_run_states(r.id)] for r in completed}
        tokens = [await token_of(chat, str(r.id)) for r in completed]
        await ask(chat, "delete_agent", agent="minutely", confirm=True)

    due = [r for r in scheduled if r.expected_start_time == boundary]
    assert len(due) == 1, [(r.name, r.expected_start_time) for r in scheduled]  # not lost, not doubled
    assert due[0].state_name == "Completed", due[0].state
    assert due[0].start_time is not None and due[0].start_time >= stopped_at + timedelta(seconds=OUTAGE_SECONDS - 1)
    assert [r.state_name for r in started] == ["Completed"], [(r.id, r.state) for r in started]
    assert str(started[0].id) == str(run["id"])
    assert len(completed) == len(scheduled) + len(started), [(r.name, r.state_name) for r in scheduled]
    # Late, not retried: no run was taken for silent (or crashed by anything else) across the outage.
    assert all("Crashed" not in names for names in histories.values()), histories
    # Each completed run made its POST once, and no token was POSTed twice.
    assert all(Effects.posted[token] == 1 for token in tokens), (tokens, Effects.posted)
    assert max(Effects.posted.values()) == 1, Effects.posted

