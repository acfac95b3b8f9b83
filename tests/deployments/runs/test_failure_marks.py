"""Which ended runs get their failure written on them for the Prefect UI, and what: against a real Prefect."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from prefect import Flow, State, flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import FlowRunCreate, WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.states import AwaitingRetry, Completed, Crashed, Failed, Running

from deployments.runs.failure_marks import FailureMarker
from deployments.runs.hosting import Hosting

CONFIG = {"config": {"agent_id": "a" * 32, "org_slug": "acme", "name": "Inventory Walker"}}


async def test_failed_and_crashed_runs_of_the_install_are_tagged_with_their_cause_and_written_up_once(
    prefect_api: str,
) -> None:
    @flow(name="failure-marks-probe")
    def probe() -> None: ...

    install = f"ariel-{uuid4().hex[:8]}-"  # an install of its own: other tests' failed runs are not this pass's
    pools = [f"{install}acme-docker", f"ariel-{uuid4().hex[:8]}-other-docker"]
    async with PrefectClient(prefect_api) as client:
        for pool in pools:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow(probe)

        async def ended(state: Any, pool: str = pools[0], parameters: dict[str, Any] = CONFIG) -> FlowRun:
            answer = await client._client.post("/flow_runs/", json=FlowRunCreate(
                flow_id=flow_id, name=f"probe-{uuid4().hex[:6]}", tags=["ariel", "org:acme"], work_pool_name=pool,
                work_queue_name="default", parameters=parameters).model_dump(mode="json"))
            made = FlowRun.model_validate(answer.json())
            await client.set_flow_run_state(made.id, state, force=True)
            return made

        since = datetime.now(UTC) - timedelta(seconds=5)
        step_limit = await ended(Failed(message="Flow run encountered an exception: StepLimitReached: the agent "
                                        "made 2 LLM calls without a final reply"))
        exited = await ended(Crashed(message="Flow run infrastructure exited with non-zero status code 3."))
        # What a run says is quoted, never rendered: no link or image of its making in the operator's UI.
        luring = await ended(Failed(message="RuntimeFailure: see [the fix](http://lure.example) ![x](http://x.example)"
                                            " <img src=x> `code`"))
        completed = await ended(Completed())
        others = await ended(Failed(message="StepLimitReached: x"), pool=pools[1])
        listing = await ended(Failed(message="StepLimitReached: x"), parameters={"request": {}})
        until = datetime.now(UTC)  # after each run above ended: Prefect stamped their end as it took the state in
        marker = FailureMarker(install, Hosting("saas"), since=since)
        marked = await marker.mark(client, until)
        next_since = marker.since
        # Crashed after `until`: recovery may yet retry it, so it waits for a later pass.
        await asyncio.sleep(0.1)
        fresh = await ended(Crashed(message="Flow run infrastructure exited with non-zero status code 137."))
        again = await marker.mark(client, until)
        later = await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))

        runs = {name: await client.read_flow_run(made.id) for name, made in (
            ("step_limit", step_limit), ("exited", exited), ("luring", luring), ("completed", completed),
            ("others", others), ("listing", listing), ("fresh", fresh))}
        artifacts = {name: await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))) for name, run in runs.items()}
        for pool in pools:
            await client.delete_work_pool(pool)

    assert {mark.run_id: mark.cause for mark in marked} == {
        step_limit.id: "step_limit", exited.id: "container_exit", luring.id: "failed"}
    assert next_since == until
    assert again == []  # each run once: its tag says it was written up
    assert [mark.run_id for mark in later] == [fresh.id]

    assert sorted(runs["step_limit"].tags) == ["ariel", "failed", "failed:step_limit", "org:acme"]
    [written] = artifacts["step_limit"]
    assert written.key == "failure-acme-inventory-walker" and written.type == "markdown"
    assert str(written.data).startswith("### Failed: `step_limit`\n\n**What went wrong:** `the agent used all its "
                                        "LLM steps without giving a final reply`")
    assert "**What to do:** `raise limits.max_steps" in str(written.data)
    assert "failed:container_exit" in runs["exited"].tags
    assert "exited with code 3" in str(artifacts["exited"][0].data)

    lure = str(artifacts["luring"][0].data)
    assert re.search(r"- `[^`\n]*\[the fix\]\(http://lure\.example\) !\[x\]\(http://x\.example\) <img src=x> 'code'`",
                     lure), lure

    for name in ("completed", "others", "listing"):
        assert not [tag for tag in runs[name].tags if tag.startswith("failed:")], name
        assert artifacts[name] == [], name


async def agent_run_of_a_new_install(
    client: PrefectClient, probe: Flow[..., None], config: dict[str, Any] = CONFIG,
) -> tuple[str, str, UUID]:
    """A new install's pool of org `acme` and one agent run of `probe` in it, made as Ariel's deployments make them
    (tagged, with its config): the install's pool prefix, the pool, and the run's id."""
    install = f"ariel-{uuid4().hex[:8]}-"
    pool = f"{install}acme-docker"
    await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    answer = await client._client.post("/flow_runs/", json=FlowRunCreate(
        flow_id=await client.create_flow(probe), name=f"probe-{uuid4().hex[:6]}", tags=["ariel", "org:acme"],
        work_pool_name=pool, work_queue_name="default", parameters=config).model_dump(mode="json"))
    return install, pool, FlowRun.model_validate(answer.json()).id


async def test_a_run_retried_from_the_ui_loses_its_write_up_and_is_written_up_afresh_when_it_fails_again(
    prefect_api: str,
) -> None:
    @flow(name="failure-marks-retried")
    def probe() -> None: ...

    async with PrefectClient(prefect_api) as client:
        install, pool, run_id = await agent_run_of_a_new_install(client, probe)
        marker = FailureMarker(install, Hosting("saas"), since=datetime.now(UTC) - timedelta(seconds=5))

        async def state_of_things() -> tuple[list[str], list[str]]:
            run = await client.read_flow_run(run_id)
            written = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            return sorted(run.tags), sorted(str(artifact.data).split("\n")[0] for artifact in written)

        await client.set_flow_run_state(run_id, Failed(message="StepLimitReached: 2 LLM calls"), force=True)
        await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        first = await state_of_things()
        # The tag write failed after the artifact was written: the next pass tags it, and writes no second artifact.
        await client.update_flow_run(run_id, tags=["ariel", "org:acme"])
        await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        retagged = await state_of_things()

        # An operator's Retry in the UI.
        await client.set_flow_run_state(run_id, AwaitingRetry(), force=True)
        await client.set_flow_run_state(run_id, Running(), force=True)
        await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        running = await state_of_things()
        await asyncio.sleep(0.1)
        await client.set_flow_run_state(
            run_id, Crashed(message="Flow run infrastructure exited with non-zero status code 3."), force=True)
        await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        again = await state_of_things()
        await client.delete_work_pool(pool)

    assert first == (["ariel", "failed", "failed:step_limit", "org:acme"], ["### Failed: `step_limit`"])
    assert retagged == first
    assert running == (["ariel", "org:acme"], ["### Failed: `step_limit`"])
    assert again == (["ariel", "failed", "failed:container_exit", "org:acme"],
                     ["### Crashed: `container_exit`", "### Failed: `step_limit`"])


async def test_a_run_retried_from_the_ui_that_fails_again_before_a_pass_sees_it_running_is_written_up_afresh(
    prefect_api: str,
) -> None:
    @flow(name="failure-marks-failed-again")
    def probe() -> None: ...

    async with PrefectClient(prefect_api) as client:
        install, pool, run_id = await agent_run_of_a_new_install(client, probe)
        marker = FailureMarker(install, Hosting("saas"), since=datetime.now(UTC) - timedelta(seconds=5))
        await client.set_flow_run_state(run_id, Failed(message="StepLimitReached: 2 LLM calls"), force=True)
        await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))

        # Retried from the UI and crashed again, all between two passes: no pass saw it running.
        crashed: State[None] = Crashed(message="Flow run infrastructure exited with non-zero status code 3.")
        for state in (AwaitingRetry(), Running(), crashed):
            await client.set_flow_run_state(run_id, state, force=True)
        marked = await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        again = await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))  # and only once
        run = await client.read_flow_run(run_id)
        written = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        await client.delete_work_pool(pool)

    assert [(mark.run_id, mark.cause) for mark in marked] == [(run_id, "container_exit")]
    assert again == []
    assert sorted(run.tags) == ["ariel", "failed", "failed:container_exit", "org:acme"]
    assert sorted(str(artifact.data).split("\n")[0] for artifact in written) == [
        "### Crashed: `container_exit`", "### Failed: `step_limit`"]
