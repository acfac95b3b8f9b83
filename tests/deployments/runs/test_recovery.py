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


async def made_in_pool(client: Any, flow_id: Any, pool: str, **fields: Any) -> FlowRun:
    """A flow run of the `ariel` tag in `pool`, made as a deployment's would be (scheduled, no worker yet)."""
    from prefect.client.schemas.actions import FlowRunCreate

    answer = await client._client.post("/flow_runs/", json=FlowRunCreate(
        flow_id=flow_id, name=f"probe-{uuid4().hex[:6]}", tags=["ariel"], work_pool_name=pool,
        work_queue_name="default", **fields).model_dump(mode="json"))
    return FlowRun.model_validate(answer.json())


async def beat(prefect_api: str, client: Any, run: FlowRun) -> Any:
    """Send `run`'s heartbeat, as its engine does, and wait until Prefect has stored it; when Prefect received it."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    from deployments.runs.silent_runs import HEARTBEAT_EVENT, _last_heartbeat

    after = datetime.now(UTC) - timedelta(seconds=1)
    # Related to the run's deployment, as Prefect's engine sends it.
    related = [{"prefect.resource.id": f"prefect.deployment.{run.deployment_id}", "prefect.resource.role": "deployment"}
               ] if run.deployment_id else []
    async with PrefectEventsClient(prefect_api) as events:
        await events.emit(Event(event=HEARTBEAT_EVENT, resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                                related=related))
    for _ in range(60):  # the server stores events in batches
        last = await _last_heartbeat(client, await client.read_flow_run(run.id), datetime.now(UTC))
        if last is not None and last >= after:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"no heartbeat of {run.id} stored")


def run(state: Any, pool: str = f"{PREFIX}0f3c-docker", parameters: dict[str, Any] | None = None) -> FlowRun:
    return FlowRun(id=uuid4(), flow_id=uuid4(), name="r", state=state, work_pool_name=pool,
                   parameters=AGENT if parameters is None else parameters)


@pytest.mark.parametrize("state", [
    Crashed(message="Flow run infrastructure exited with non-zero status code 137."),
    Crashed(message="Flow run infrastructure exited with non-zero status code 787."),  # not 78
    # An engine crash that quotes a tool's words is not the container's exit.
    Crashed(message="Flow run encountered an exception: RuntimeError: git: non-zero status code 78"),
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
    # The container stopped before its run, on a setting naming what it lacks (`UnfitContainer`, code 78).
    Crashed(message="Flow run infrastructure exited with non-zero status code 78."),
    Completed(),
])
def test_a_run_that_failed_on_its_own_or_would_fail_again_is_not(state: Any) -> None:
    assert _infrastructure_failure(run(state), PREFIX) is None


def test_another_installs_runs_and_listing_runs_are_left_alone() -> None:
    crashed: Any = Crashed(message="exited with non-zero status code 137")
    assert _infrastructure_failure(run(crashed, pool="ariel-11112222-0f3c-docker"), PREFIX) is None
    assert _infrastructure_failure(run(crashed, parameters={"request": {}}), PREFIX) is None


async def test_a_running_run_whose_heartbeats_stopped_or_never_came_is_set_crashed_and_one_that_beats_is_not(
    prefect_api: str,
) -> None:
    """Against a real Prefect server: silence is judged on when Prefect received the last heartbeat; a run that sent
    none (its container died as it began) only once it has been Running for the start timeout, which is judged only
    once Prefect has answered for that long."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Running, Scheduled

    from deployments.runs.silent_runs import EVIDENCE_RUNS, SILENT_MARK, crash_silent_runs

    @flow(name="silence-probe")
    def probe() -> None: ...

    silence = timedelta(seconds=3)
    prefix = f"ariel-{uuid4().hex[:8]}-"  # an install of its own: other tests' runs are not this pass's
    pool = f"{prefix}acme-docker"
    async with PrefectClient(prefect_api) as client:
        # A pool whose runs beat, and an org's own hardware from which no run's heartbeat ever reached Prefect (a
        # proxy of its own that drops the websocket they travel on, say): there silence says nothing.
        quiet = f"{prefix}0f3c9a1b2c3d-own"
        # Two pools of Ariel's pool host with no run heard yet, the org's first: one of the type of the pool that
        # beats (its runs take the same way to Prefect, so its silence is one), one of another type.
        newcomer, other_kind = f"{prefix}newco-docker", f"{prefix}newco-process"
        for name in (pool, quiet, newcomer, other_kind):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        flow_id = await client.create_flow(probe)
        agent, unheard = [await client.create_deployment(flow_id, name, work_pool_name=name) for name in (pool, quiet)]
        silent, beating = [await made_in_pool(client, flow_id, pool, deployment_id=agent) for _ in range(2)]
        # Of another agent of the pool that beats: its pool's heartbeats are what says its silence is one.
        never = await made_in_pool(client, flow_id, pool)
        never_heard = await made_in_pool(client, flow_id, quiet, deployment_id=unheard)
        first, first_of_kind = [await made_in_pool(client, flow_id, name) for name in (newcomer, other_kind)]
        for made in (silent, beating, never, never_heard, first, first_of_kind):
            await client.set_flow_run_state(made.id, Running(), force=True)
        # Its runs of tomorrow, made ahead as Prefect's scheduler makes them: they never beat, and must not hide the
        # pool's runs that did.
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        for _ in range(EVIDENCE_RUNS + 5):
            await client.create_flow_run_from_deployment(agent, state=Scheduled(scheduled_time=tomorrow))

        await beat(prefect_api, client, silent)
        await asyncio.sleep(silence.total_seconds() + 1)
        beat_at = await beat(prefect_api, client, beating)
        # Judged 1 s after the second run's beat, however long the server took to store it (a loaded machine).
        judged_at = beat_at + timedelta(seconds=1)
        crashed = await crash_silent_runs(client, prefix, silence, None, judged_at)
        states = {name: (await client.read_flow_run(made.id)).state
                  for name, made in (("silent", silent), ("beating", beating), ("never", never))}
        # Running for longer than a start may take, with no heartbeat ever received.
        then = await crash_silent_runs(client, prefix, silence, silence, judged_at)
        after = {name: (await client.read_flow_run(made.id)).state for name, made in (
            ("never", never), ("never_heard", never_heard), ("first", first), ("first_of_kind", first_of_kind))}
        for name in (pool, quiet, newcomer, other_kind):
            await client.delete_work_pool(name)

    assert (crashed, sorted(then)) == ([silent.id], sorted([never.id, first.id]))
    assert states["silent"] is not None and states["silent"].name == "Crashed"
    assert (states["silent"].message or "").startswith(SILENT_MARK)
    assert [getattr(states[name], "name", None) for name in ("beating", "never")] == ["Running", "Running"]
    for name in ("never", "first"):
        state = after[name]
        assert state is not None and state.name == "Crashed", (name, state)
        assert (state.message or "").startswith(f"{SILENT_MARK} in the "), state.message
    # No run of its pool, nor of its kind of Ariel's pools, was ever heard: nothing says its heartbeats would have
    # reached Prefect.
    assert [getattr(after[name], "name", None) for name in ("never_heard", "first_of_kind")] == ["Running", "Running"]


async def test_a_run_asked_to_cancel_whose_container_is_gone_is_set_cancelled_and_one_still_beating_is_not(
    prefect_api: str,
) -> None:
    """Against a real Prefect server: a Cancelling run is stopped by its own container; with none left, nothing
    else would ever end it (and an org with such a run could not be deleted)."""
    import asyncio
    from datetime import timedelta

    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelling, Running

    from deployments.runs.attempts import attempt_of
    from deployments.runs.silent_runs import CANCELLED_SILENT_MARK, cancel_silent_cancellings

    @flow(name="cancel-probe")
    def probe() -> None: ...

    silence = timedelta(seconds=3)
    pool = f"ariel-{uuid4().hex[:8]}-cancel"  # an install of its own: other tests' runs are not this pass's
    async with PrefectClient(prefect_api) as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow(probe)
        # gone: beat, then its container vanished; beating: its container still runs (its watch stops it);
        # never: cancelled before any container began; fresh: asked to cancel a moment ago.
        gone, beating, never, fresh = [await made_in_pool(client, flow_id, pool) for _ in range(4)]
        for made in (gone, beating):
            await client.set_flow_run_state(made.id, Running(), force=True)
        await beat(prefect_api, client, gone)
        for made in (gone, beating, never):
            await client.set_flow_run_state(made.id, Cancelling(), force=True)
        await asyncio.sleep(silence.total_seconds() + 1)
        beat_at = await beat(prefect_api, client, beating)
        await client.set_flow_run_state(fresh.id, Cancelling(), force=True)
        prefix, judged_at = pool.removesuffix("cancel"), beat_at + timedelta(seconds=1)
        # Prefect not reached for a whole start window yet: a run that never ran may still be starting.
        first = await cancel_silent_cancellings(client, prefix, silence, None, judged_at)
        then = await cancel_silent_cancellings(client, prefix, silence, silence, judged_at)
        ended = {name: await client.read_flow_run(made.id)
                 for name, made in (("gone", gone), ("beating", beating), ("never", never), ("fresh", fresh))}
        await client.delete_work_pool(pool)

    assert (first, then) == ([gone.id], [never.id])
    for name in ("gone", "never"):
        state = ended[name].state
        assert state is not None and state.name == "Cancelled", (name, state)
        assert (state.message or "").startswith(CANCELLED_SILENT_MARK), state.message
        # Numbered past: a container that turns up late is answered `superseded`, not let take it to Running.
        assert attempt_of(ended[name].labels) == 2
    assert [getattr(ended[name].state, "name", None) for name in ("beating", "fresh")] == ["Cancelling", "Cancelling"]


async def test_a_run_a_worker_took_and_never_started_is_crashed_then_retried_under_a_new_attempt_number(
    prefect_api: str,
) -> None:
    """Against a real Prefect server: Pending with no change for the start timeout (Prefect's own clock) is a lost
    start; the retry is numbered in the run's label before it is scheduled, so a late container of the first attempt
    holds a stale token (Prefect's count cannot tell them apart: neither attempt ever ran)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Pending

    from deployments.runs.attempts import ATTEMPT_LABEL, attempt_of
    from deployments.runs.recovery import retry_failed_infrastructure
    from deployments.runs.silent_runs import STUCK_MARK, crash_stuck_starts

    @flow(name="start-probe")
    def probe() -> None: ...

    install = f"ariel-{uuid4().hex[:8]}-"  # an install of its own: other tests' runs are not this pass's
    start_timeout = timedelta(seconds=3)
    async with PrefectClient(prefect_api) as client:
        pools = [f"{install}start", f"ariel-{uuid4().hex[:8]}-other"]
        for pool in pools:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow(probe)

        async def pending_in(pool: str) -> FlowRun:
            made = await made_in_pool(client, flow_id, pool, parameters={"config": {}})
            await client.set_flow_run_state(made.id, Pending(), force=True)
            return made

        stuck, elsewhere, killed = await pending_in(pools[0]), await pending_in(pools[1]), await pending_in(pools[0])
        # Its worker saw its container die and said so: not numbered past until recovery schedules the retry.
        await client.set_flow_run_state(killed.id, Crashed(message="exited with non-zero status code 1"), force=True)
        await asyncio.sleep(start_timeout.total_seconds() + 1)
        starting = await pending_in(pools[0])
        crashed = await crash_stuck_starts(client, install, start_timeout, datetime.now(UTC))
        # Stale at once: a container of the crashed attempt that turns up before the retry is scheduled gets nothing.
        numbered_when_crashed = attempt_of((await client.read_flow_run(stuck.id)).labels)
        calls: list[str] = []
        label, schedule = client.update_flow_run_labels, client.set_flow_run_state

        async def labelling(run_id: Any, labels: Any) -> Any:
            calls.append(f"label {run_id} {labels}")
            return await label(run_id, labels)

        async def scheduling(run_id: Any, state: Any, **kwargs: Any) -> Any:
            calls.append(f"state {run_id} {state.name}")
            return await schedule(run_id, state, **kwargs)

        client.update_flow_run_labels, client.set_flow_run_state = labelling, scheduling  # type: ignore[method-assign,assignment]
        retried = await retry_failed_infrastructure(client, install, now=datetime.now(UTC) + timedelta(seconds=10))
        after = {name: await client.read_flow_run(made.id)
                 for name, made in (("stuck", stuck), ("elsewhere", elsewhere), ("starting", starting))}
        history = [state.message or "" for state in await client.read_flow_run_states(stuck.id)]
        for pool in pools:
            await client.delete_work_pool(pool)

    assert crashed == [stuck.id] and numbered_when_crashed == 2
    assert sorted((str(r.run_id), r.attempt) for r in retried) == sorted([(str(stuck.id), 2), (str(killed.id), 2)])
    # Numbered before it is scheduled: no worker can be handed the retry with the earlier attempt's number.
    assert [call for call in calls if str(killed.id) in call] == [
        f"label {killed.id} {{'{ATTEMPT_LABEL}': 2}}", f"state {killed.id} AwaitingRetry"]
    assert after["stuck"].state is not None and after["stuck"].state.name == "AwaitingRetry"
    assert attempt_of(after["stuck"].labels) == 2 and after["stuck"].labels[ATTEMPT_LABEL] == 2
    assert any(message.startswith(STUCK_MARK) for message in history), history
    assert [getattr(after[name].state, "name", None) for name in ("elsewhere", "starting")] == ["Pending", "Pending"]
    assert attempt_of(after["starting"].labels) == 1


async def test_the_recovery_loop_settles_every_kind_of_lost_run_on_its_own(prefect_api: str) -> None:
    """Against a real Prefect server, the loop the app runs (not its parts one by one): a Running run that fell
    silent, one that never sent a heartbeat and a Pending one never started are Crashed and retried; a Cancelling
    one nobody will stop is Cancelled."""
    import asyncio
    import contextlib

    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelling, Pending, Running

    from deployments.runs.recovery import keep_recovering
    from deployments.runs.silent_runs import CANCELLED_SILENT_MARK, SILENT_MARK, STUCK_MARK

    @flow(name="loop-probe")
    def probe() -> None: ...

    install = f"ariel-{uuid4().hex[:8]}-"  # an install of its own: other tests' runs are not this loop's
    pool = f"{install}loop"
    async with PrefectClient(prefect_api) as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow(probe)
        agent = await client.create_deployment(flow_id, "loop-probe", work_pool_name=pool)
        silent, never, stuck, cancelling = [await made_in_pool(client, flow_id, pool, parameters={"config": {}},
                                                               deployment_id=agent) for _ in range(4)]
        for running in (silent, never):
            await client.set_flow_run_state(running.id, Running(), force=True)
        await beat(prefect_api, client, silent)
        await client.set_flow_run_state(stuck.id, Pending(), force=True)
        await client.set_flow_run_state(cancelling.id, Cancelling(), force=True)  # before any container began

        loop = asyncio.create_task(keep_recovering(
            lambda: PrefectClient(prefect_api), install, interval=0.5, silence_seconds=2, start_seconds=3))
        marks: dict[str, list[str]] = {}
        try:
            for _ in range(120):  # bounded: each kind is settled a few passes after its window
                for name, made in (("silent", silent), ("never", never), ("stuck", stuck),
                                   ("cancelling", cancelling)):
                    marks[name] = [f"{state.name}: {state.message}" for state in await client.read_flow_run_states(
                        made.id)]
                if [history[-1].split(":")[0] for history in marks.values()] == [
                        "AwaitingRetry", "AwaitingRetry", "AwaitingRetry", "Cancelled"]:
                    break
                await asyncio.sleep(0.5)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await client.delete_work_pool(pool)

    assert any(mark.startswith(f"Crashed: {SILENT_MARK}") for mark in marks["silent"]), marks["silent"]
    assert any(mark.startswith(f"Crashed: {SILENT_MARK} in the ") for mark in marks["never"]), marks["never"]
    assert any(mark.startswith(f"Crashed: {STUCK_MARK}") for mark in marks["stuck"]), marks["stuck"]
    assert all(marks[name][-1].startswith("AwaitingRetry") for name in ("silent", "never", "stuck")), marks
    assert marks["cancelling"][-1].startswith(f"Cancelled: {CANCELLED_SILENT_MARK}"), marks["cancelling"]


async def test_a_killed_run_waits_for_its_worker_hosts_word_on_how_and_is_not_retried_if_it_was_out_of_memory(
    prefect_api: str,
) -> None:
    """Against a real Prefect server. Exit 137 is an OOM or a kill; the worker host writes which on the run, and on a
    loaded host that line may land long after the crash. Retried before it, an OOM would be killed again."""
    from datetime import UTC, datetime, timedelta

    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import LogCreate, WorkPoolCreate
    from prefect.states import Running

    from deployments.pools.container_exits import LOGGER_NAME, ContainerExit
    from deployments.runs.recovery import EXIT_PATIENCE, retry_failed_infrastructure

    @flow(name="oom-probe")
    def probe() -> None: ...

    killed = "Flow run infrastructure exited with non-zero status code 137."
    install = f"ariel-{uuid4().hex[:8]}-"  # an install of its own: other tests' runs are not this pass's
    # A Docker pool's worker host writes how its containers end; a process pool's has nothing to write.
    pool, process_pool = f"{install}oom-docker", f"{install}oom-process"
    async with PrefectClient(prefect_api) as client:
        for name in (pool, process_pool):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        flow_id = await client.create_flow(probe)

        async def crash(made: FlowRun) -> None:
            await client.set_flow_run_state(made.id, Running(), force=True)
            await client.set_flow_run_state(made.id, Crashed(message=killed), force=True)

        async def write_exit(made: FlowRun, clock_off: timedelta = timedelta(0), **how: Any) -> None:
            """As the worker host writes it, dated by its machine's clock (`clock_off` from the control plane's)."""
            line = ContainerExit(container=f"c-{made.id.hex[:6]}", exit_code=137, **how).line()
            await client.create_logs([LogCreate(name=LOGGER_NAME, level=30, message=line, flow_run_id=made.id,
                                                timestamp=datetime.now(UTC) - timedelta(seconds=1) + clock_off)])

        undecided: list[set[Any]] = []  # each pass's runs still waiting for their worker host's word

        async def retried_now(after: timedelta) -> Any:
            waiting: list[FlowRun] = []
            done = await retry_failed_infrastructure(client, install, now=datetime.now(UTC) + after, waiting=waiting)
            undecided.append({run.id for run in waiting})
            return done

        unheard, oom, outside, again = [await made_in_pool(client, flow_id, pool, parameters=AGENT)
                                        for _ in range(4)]
        in_process = await made_in_pool(client, flow_id, process_pool, parameters=AGENT)
        for made in (unheard, oom, outside, again, in_process):
            await crash(made)
        for made in (outside, again):
            await write_exit(made, kill_signal="9")
        # 10 s on: past the settle time, yet unheard's and oom's lines have not come.
        first = {r.run_id for r in await retried_now(timedelta(seconds=10))}
        await write_exit(oom, oom_killed=True)
        second = {r.run_id for r in await retried_now(timedelta(seconds=10))}
        # Killed again in its second attempt: the first attempt's line says nothing of this one.
        await crash(again)
        third = {r.run_id for r in await retried_now(timedelta(seconds=10))}
        # Its OOM line then comes from a machine whose clock is ten minutes behind: still this attempt's.
        await write_exit(again, clock_off=-timedelta(minutes=10), oom_killed=True)
        past = {r.run_id for r in await retried_now(EXIT_PATIENCE + timedelta(seconds=10))}
        for name in (pool, process_pool):
            await client.delete_work_pool(name)

    assert first == {outside.id, again.id, in_process.id}
    # Undecided runs are not failures yet: the failure write-ups stop short of them (`marking_until`).
    assert undecided == [{unheard.id, oom.id}, {unheard.id}, {unheard.id, again.id}, set()]
    assert second == set()  # oom is not retried once its line says OOM; outside and again were retried already
    assert third == set()
    # Past the patience nothing more will come: retried as any kill (an OOM line would have been read by then).
    assert past == {unheard.id}
