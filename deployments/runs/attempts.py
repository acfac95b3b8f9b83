"""Which attempt of a flow run is the current one, in a label Ariel alone writes.

Prefect counts an attempt (`run_count`) only when it enters Running, so two
attempts that never ran (a worker that died while starting the first, then a
retry) share a count, and a run token of the first would pass for the second's.
The recovery loop (`deployments.runs.recovery`) therefore numbers each attempt
it schedules in the run's `ariel.attempt` label, before it schedules it; the
gateway binds each run token to the number it finds when it hands the run out
(`mcp_server.gateway.scopes.RunScope`), and refuses a token whose number is
behind. Neither a run nor a worker may write `ariel.*` labels.

Example:
    >>> attempt_of({"ariel.attempt": 3, "prefect.worker.name": "w"}), attempt_of({}), attempt_of(None)
    (3, 1, 1)
    >>> attempt_of({"ariel.attempt": "3"}), attempt_of({"ariel.attempt": True})  # only Ariel's own integers count
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

LABEL_PREFIX = "ariel."
ATTEMPT_LABEL = "ariel.attempt"
FIRST_ATTEMPT = 1


def attempt_of(labels: Mapping[str, object] | None) -> int:
    """The attempt a run's labels name: the first until recovery has scheduled another."""
    value = (labels or {}).get(ATTEMPT_LABEL)
    if isinstance(value, bool) or not isinstance(value, int) or value < FIRST_ATTEMPT:
        return FIRST_ATTEMPT
    return value


async def number_attempt(client: PrefectClient, run_id: UUID, attempt: int) -> None:
    """Raise the run's attempt number to `attempt` (never lower it): from now on only a token of that attempt acts."""
    run = await client.read_flow_run(run_id)
    if attempt_of(run.labels) < attempt:
        await client.update_flow_run_labels(run_id, {ATTEMPT_LABEL: attempt})
