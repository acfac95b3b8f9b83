"""Which ended runs Ariel schedules again: those whose infrastructure failed, never those that failed on their own."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed

from deployments.runs.recovery import _infrastructure_failure

PREFIX = "ariel-9a8b7c6d-"
AGENT = {"config": {"agent_id": "a" * 32}}


def run(state: Any, pool: str = f"{PREFIX}0f3c-docker", parameters: dict[str, Any] | None = None) -> FlowRun:
    return FlowRun(id=uuid4(), flow_id=uuid4(), name="r", state=state, work_pool_name=pool,
                   parameters=AGENT if parameters is None else parameters)


@pytest.mark.parametrize("state", [
    Crashed(message="Flow run infrastructure exited with non-zero status code 137."),
    Crashed(message="Flow run could not be submitted to infrastructure: ConnectError"),
])
def test_a_run_whose_infrastructure_failed_is_retried(state: Any) -> None:
    assert _infrastructure_failure(run(state), PREFIX) == state.message


@pytest.mark.parametrize("state", [
    Failed(message="Flow run encountered an exception: StepLimitReached: the agent made 10 LLM calls"),
    # A run may set its own state Failed with any message: it must not get itself another attempt that way.
    Failed(message="Flow run encountered an exception: JournalUnavailable: step 3 could not be recorded"),
    Failed(message="Flow run encountered an exception: StepUncertain: step 2: tool http_request had started"),
    Failed(message="Flow run encountered an exception: ConfigTampered: tampered"),
    Crashed(message="Flow run could not be submitted to infrastructure: ImageNotFound: 404 Client Error"),
    Crashed(message="unable to start container process: exec: \"prefect\": executable file not found in $PATH"),
    Completed(),
])
def test_a_run_that_failed_on_its_own_or_would_fail_again_is_not(state: Any) -> None:
    assert _infrastructure_failure(run(state), PREFIX) is None


def test_another_installs_runs_and_listing_runs_are_left_alone() -> None:
    crashed: Any = Crashed(message="exited with non-zero status code 137")
    assert _infrastructure_failure(run(crashed, pool="ariel-11112222-0f3c-docker"), PREFIX) is None
    assert _infrastructure_failure(run(crashed, parameters={"request": {}}), PREFIX) is None
