"""When an agent's schedule runs it next, from the schedule itself.

Prefect's scheduler makes a deployment's future runs once a pass (every 60 s): in
the minute after an agent is approved or its schedule changed, Prefect has none
yet, and `get_agent` would say the agent never runs. Its own schedule model says
when it will, by the rules its scheduler uses.
"""

from __future__ import annotations

from datetime import datetime

from prefect.server.schemas import schedules as prefect_schedules

from deployments.agents.compiler import to_prefect_schedule
from deployments.agents.spec import ScheduleSpec


async def next_times(schedule: ScheduleSpec, agent_id: str, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` times `schedule` runs the agent `agent_id`, from `after` on (aware, UTC).

    Example:
        >>> import asyncio
        >>> from datetime import UTC
        >>> weekdays = ScheduleSpec(cron="0 8 * * 1-5", timezone="Europe/Paris")
        >>> after = datetime(2026, 12, 4, 9, tzinfo=UTC)
        >>> [t.isoformat() for t in asyncio.run(next_times(weekdays, "a" * 32, after, 2))]
        ['2026-12-07T07:00:00+00:00', '2026-12-08T07:00:00+00:00']
    """
    client_side = to_prefect_schedule(schedule, agent_id)
    # The server's model of the same schedule is the one that computes dates, as Prefect's scheduler does.
    server_side = (prefect_schedules.CronSchedule if schedule.cron is not None else prefect_schedules.IntervalSchedule)
    dates = await server_side.model_validate(client_side.model_dump()).get_dates(n=count, start=after)
    return [datetime.fromtimestamp(date.timestamp(), tz=after.tzinfo) for date in dates]
