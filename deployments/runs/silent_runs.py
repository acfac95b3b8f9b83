"""Runs that fell silent are marked Crashed by a Prefect automation, so that recovery brings them back.

A run's container reports its own end; its worker reports the container's
end. When both go at once (the customer's machine loses power, the worker
host and the container are killed together) nobody reports anything and the
run would stay Running forever. Every Ariel pool has its runs send Prefect's
flow-run heartbeat (`deployments.pools.work_pools.HEARTBEAT_ENV`), and this
automation, Prefect's own way of catching such "zombie" runs, sets a run
Crashed once `silence_seconds` pass after a heartbeat with no other heartbeat
and no final state. A run that never sent one (a
worker from before heartbeats) is never reaped. The recovery loop
(`deployments.runs.recovery`) then retries it like any crash.

The automation is one per Prefect server, kept by name, and acts only on runs
tagged `ariel`: each install's app makes sure it is there, with its window.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from deployments.pools.work_pools import HEARTBEAT_SECONDS

# Four intervals: a loaded host delays a heartbeat by seconds, not by minutes.
SILENCE_SECONDS = 4 * HEARTBEAT_SECONDS
AUTOMATION_NAME = "ariel: crash runs that fell silent"
SILENT_MARK = "Ariel heard no heartbeat from the run"

# Any of these after a heartbeat means the run is alive or over; a final state disarms the trigger until the next
# attempt's first heartbeat.
_ALIVE_OR_OVER = {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                  "prefect.flow-run.Cancelled", "prefect.flow-run.Cancelling", "prefect.flow-run.Crashed",
                  "prefect.flow-run.Paused", "prefect.flow-run.Suspended"}


def silent_run_automation(silence_seconds: int = SILENCE_SECONDS) -> AutomationCore:
    """The automation that sets an Ariel run Crashed after `silence_seconds` without a heartbeat.

    >>> automation = silent_run_automation(90)
    >>> automation.trigger.within.total_seconds(), automation.actions[0].state.value
    (90.0, 'CRASHED')
    """
    if silence_seconds <= HEARTBEAT_SECONDS:
        raise ValueError(f"a run is silent only after more than one heartbeat interval ({HEARTBEAT_SECONDS} s); "
                         f"got {silence_seconds} s")
    return AutomationCore(
        name=AUTOMATION_NAME,
        description="Ariel: a run that sent heartbeats and then none for the window is gone with its machine or "
                    "container; it is set Crashed, and Ariel's recovery retries it from its journal.",
        trigger=EventTrigger(
            posture=Posture.Proactive,
            after={"prefect.flow-run.heartbeat"},
            expect=_ALIVE_OR_OVER,
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                 "prefect.resource.id": "prefect.tag.ariel"}),
            for_each={"prefect.resource.id"},
            threshold=1,
            within=timedelta(seconds=silence_seconds),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"{SILENT_MARK} for {silence_seconds} s: the machine or container running it is gone, and no "
                    "worker saw it end",
        )],
    )


async def ensure_silent_run_automation(client: PrefectClient, silence_seconds: int = SILENCE_SECONDS) -> None:
    """Create the automation, or bring an existing one to this window; duplicates left by a race are removed."""
    wanted = silent_run_automation(silence_seconds)
    existing = await client.read_automations_by_name(AUTOMATION_NAME)
    if not existing:
        await client.create_automation(wanted)
        return
    keep, *extra = existing
    await client.update_automation(keep.id, wanted)
    for automation in extra:
        await client.delete_automation(automation.id)
