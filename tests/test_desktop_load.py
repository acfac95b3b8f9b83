"""The desktop default with agents due every minute: Prefect's scheduler kept to a few runs ahead, each run started.

Prefect's scheduler makes up to 100 runs an hour ahead per deployment; on `ariel up`'s embedded SQLite that
was 60 runs inserted per per-minute agent, and with 50 such agents the server's database locked (#14 item 5).
`bench/desktop_load.py` measures the lateness; this checks the behaviour, with no timing in it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from tests.mcp_server.callers import ask, client
from tests.support import ariel_up

pytestmark = pytest.mark.slow

AGENTS = 5


async def test_per_minute_agents_get_at_most_ten_runs_ahead_and_each_due_run_starts(tmp_path: Path) -> None:
    with ariel_up(tmp_path / "home", "process") as up:
        async with client(up.base_url) as session:
            for index in range(AGENTS):
                agent = await ask(session, "create_agent", name=f"Tick {index}", instructions="Say hi.",
                                  model="ariel/scripted", script=[{"reply": "hi"}], schedule={"cron": "* * * * *"})
                await ask(session, "update_agent", agent=agent["slug"], action="approve")
        prefect = up.prefect()
        async with prefect:
            scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
            deployments = [deployment.id for deployment in await prefect.read_deployments()]
            ahead: dict[UUID, int] = {}
            for _ in range(90):  # the scheduler's loop comes round every 60 s
                ahead = {deployment: await prefect.count_flow_runs(flow_run_filter=scheduled, deployment_filter=(
                    DeploymentFilter(id=DeploymentFilterId(any_=[deployment])))) for deployment in deployments}
                if min(ahead.values()) >= 3:
                    break
                await asyncio.sleep(1)
            # The next minute whole: every agent's run due in it must start (its lateness is the bench's).
            due = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
            in_that_minute = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
                after_=due, before_=due + timedelta(seconds=59)))
            runs = []
            for _ in range(240):
                runs = await prefect.read_flow_runs(flow_run_filter=in_that_minute, limit=200)
                if datetime.now(UTC) > due and len(runs) == AGENTS and all(run.start_time for run in runs):
                    break
                await asyncio.sleep(1)
        log = (tmp_path / "home" / "logs" / "prefect-server.log").read_text(errors="replace")
    assert len(ahead) == AGENTS and min(ahead.values()) >= 3 and max(ahead.values()) <= 10, ahead  # not Prefect's 60
    assert len(runs) == AGENTS, [run.name for run in runs]
    assert [run.state_name for run in runs if not run.start_time] == []
    assert "database is locked" not in log
