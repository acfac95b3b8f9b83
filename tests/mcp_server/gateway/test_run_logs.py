"""What a run may write about itself through the gateway: its own logs, but never the worker host's container-exit
lines, and never that it crashed (only its worker may say so: a crashed run is retried)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

import httpx
import pytest
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed, Failed

from deployments.pools.container_exits import LOGGER_NAME, ContainerExit
from tests.flows.support import SIGNER, _made_run, config, run_gateway


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def test_a_run_writes_its_own_logs_but_never_a_container_exit_line_diagnose_run_would_trust(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)

        def write(name: str, message: str) -> httpx.Response:
            log = {"name": name, "level": 30, "message": message, "timestamp": datetime.now(UTC).isoformat(),
                   "flow_run_id": run_id}
            return httpx.post(f"{gateway.api_url}/logs/", json=[log], headers={"Authorization": f"Bearer {token}"},
                              timeout=30)

        own = write("ariel.agent", "Step 1: calling tool http_request")
        forged = write(LOGGER_NAME, ContainerExit("x", 137, oom_killed=True).line())

    assert own.status_code == 201, own.text
    assert forged.status_code == 403 and "the worker host's" in forged.text


def test_a_run_may_end_itself_failed_but_never_say_it_crashed(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)

        def propose(state: State) -> httpx.Response:
            body = {"state": state.model_dump(mode="json", include={"type", "name", "message"}), "force": True}
            return httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state", json=body,
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)

        crashed = propose(Crashed(message="Flow run infrastructure exited with non-zero status code 137."))
        failed = propose(Failed(message="it gave up"))

    assert crashed.status_code == 403 and "CRASHED" in crashed.text, crashed.text
    assert failed.status_code in (200, 201), failed.text


def test_a_token_of_an_earlier_attempt_gets_nothing_once_a_retry_has_begun(prefect_api: str) -> None:
    """An attempt that outlives its retry (a container whose kill failed) may not fetch the run's keys, write its
    journal or end the attempt after it; the retry's own token may."""
    from prefect import get_client
    from prefect.states import AwaitingRetry, Pending, Running

    from flows.credentials import RUN_ROUTE

    with run_gateway(prefect_api, {}) as gateway, get_client(sync_client=True) as prefect:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)

        def handed_out() -> str:
            # As the gateway hands a run to a worker: bound to the attempts Prefect has counted so far.
            run_count = prefect.read_flow_run(UUID(run_id)).run_count
            return gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=run_count, ttl_seconds=600)

        def context(token: str) -> httpx.Response:
            return httpx.get(gateway.api_url.removesuffix("/api") + RUN_ROUTE,
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)

        def complete(token: str) -> httpx.Response:
            body = {"state": {"type": "COMPLETED", "name": "Completed"}}
            return httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state", json=body,
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)

        first = handed_out()
        prefect.set_flow_run_state(UUID(run_id), Pending(), force=True)
        prefect.set_flow_run_state(UUID(run_id), Running(), force=True)
        while_first_runs = context(first)
        prefect.set_flow_run_state(UUID(run_id), Crashed(message="the container was killed"), force=True)
        prefect.set_flow_run_state(UUID(run_id), AwaitingRetry(), force=True)
        retry = handed_out()
        prefect.set_flow_run_state(UUID(run_id), Pending(), force=True)
        first_while_retry_pends = context(first)
        prefect.set_flow_run_state(UUID(run_id), Running(), force=True)
        first_while_retry_runs, retry_runs = context(first), context(retry)
        first_logs = httpx.post(f"{gateway.api_url}/logs/", json=[{
            "name": "ariel.agent", "level": 20, "message": "still here", "timestamp": datetime.now(UTC).isoformat(),
            "flow_run_id": run_id}], headers={"Authorization": f"Bearer {first}"}, timeout=30)
        first_ends_it, retry_ends_it = complete(first), complete(retry)

    assert while_first_runs.status_code == 200, while_first_runs.text
    for stale in (first_while_retry_pends, first_while_retry_runs):
        assert stale.status_code == 409 and "earlier attempt" in stale.json()["detail"], stale.text
    assert retry_runs.status_code == 200, retry_runs.text
    assert first_logs.status_code == 403 and "earlier attempt" in first_logs.text, first_logs.text
    # Prefect's own abort: the engine exits 0, so the old attempt's worker reports no crash on the retry.
    assert first_ends_it.status_code == 201 and first_ends_it.json()["status"] == "ABORT", first_ends_it.text
    assert retry_ends_it.status_code in (200, 201), retry_ends_it.text


def test_a_container_still_alive_when_its_run_was_taken_for_crashed_is_told_to_stop_not_to_end_the_run(
    prefect_api: str,
) -> None:
    """Recovery sets a silent run Crashed, then numbers its retry; a container of it that was only slow must not end
    it Failed in between (Prefect takes Crashed to Failed, and a Failed run is never retried): it is told a retry
    takes over, and stops quietly."""
    from prefect import get_client
    from prefect.states import Pending, Running

    from flows.credentials import RUN_ROUTE

    with run_gateway(prefect_api, {}) as gateway, get_client(sync_client=True) as prefect:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)
        headers = {"Authorization": f"Bearer {token}"}
        prefect.set_flow_run_state(UUID(run_id), Pending(), force=True)
        prefect.set_flow_run_state(UUID(run_id), Running(), force=True)
        prefect.set_flow_run_state(UUID(run_id), Crashed(message="Ariel heard no heartbeat from the run"))
        context = httpx.get(gateway.api_url.removesuffix("/api") + RUN_ROUTE, headers=headers, timeout=30)
        ends_it = httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state",
                             json={"state": {"type": "FAILED", "name": "Failed"}}, headers=headers, timeout=30)
        after = prefect.read_flow_run(UUID(run_id)).state

    assert context.status_code == 409 and context.json()["error"] == "superseded", context.text
    # Prefect's own abort: the engine exits 0, so its worker reports no crash either.
    assert ends_it.status_code == 201 and ends_it.json()["status"] == "ABORT", ends_it.text
    assert after is not None and after.type.value == "CRASHED", after


def test_a_run_may_not_give_itself_retries_pause_or_mark_itself_resuming(prefect_api: str) -> None:
    """Retries of its own would have Prefect schedule a run that fails again, each attempt with a fresh token: a run
    rerunning itself past Ariel's retry limit, its approval and its agent's pause. Resuming would keep its retry's
    attempt from being counted. The policy as Prefect's engine echoes it passes."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRunPolicy

    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)
        headers = {"Authorization": f"Bearer {token}"}

        def patch(policy: object) -> httpx.Response:
            return httpx.patch(f"{gateway.api_url}/flow_runs/{run_id}", json={"empirical_policy": policy},
                               headers=headers, timeout=30)

        refused = {name: patch(policy) for name, policy in {
            "resuming": {"retries": 0, "retry_delay": 0, "resuming": True},
            "retries": {"retries": 1000000, "retry_delay": 3600},
            "max_retries": {"max_retries": 5},  # Prefect's older spelling, which it copies into `retries`
            "retry_delay": {"retry_delay_seconds": 60.0},
            "not an object": "retries",
        }.items()}
        # Of a run an operator retried from Prefect's UI: Prefect marked it "reschedule", and the engine echoes that.
        as_the_engine_sends_it = patch(FlowRunPolicy(retries=0, retry_delay=0, retry_type="reschedule").model_dump(
            mode="json"))
        paused = httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state",
                            json={"state": {"type": "PAUSED", "name": "Paused"}}, headers=headers, timeout=30)
        httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state", json={"state": {"type": "RUNNING"}},
                   headers=headers, timeout=30)
        failed = httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state", json={"state": {"type": "FAILED"}},
                            headers=headers, timeout=30)
        with get_client(sync_client=True) as prefect:
            ended = prefect.read_flow_run(UUID(run_id))

    for name, answer in refused.items():
        assert answer.status_code == 403 and "retries or a retry delay" in answer.text, (name, answer.text)
    assert paused.status_code == 403 and "PAUSED" in paused.text, paused.text
    assert as_the_engine_sends_it.status_code == 204, as_the_engine_sends_it.text
    # Failed stays failed: Prefect holds no retries of the run's own to schedule it again.
    assert failed.status_code in (200, 201) and failed.json()["status"] == "ACCEPT", failed.text
    assert ended.state is not None and ended.state.type.value == "FAILED", ended.state


def test_a_run_tokens_event_stream_closes_when_the_token_expires(prefect_api: str) -> None:
    """An open socket is no credential that outlives its token: events sent past its end go nowhere."""
    import asyncio
    import json as json_module

    import websockets

    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=2)

        async def send_late() -> str:
            url = gateway.api_url.replace("http://", "ws://") + "/events/in"
            async with websockets.connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
                await socket.send(json_module.dumps({"type": "auth", "token": f"run:{token}"}))
                assert json_module.loads(await socket.recv())["type"] == "auth_success"
                await asyncio.sleep(4)
                try:
                    await socket.send(json_module.dumps({"event": "ariel.test.late", "resource": {
                        "prefect.resource.id": f"prefect.flow-run.{run_id}"}}))
                    await asyncio.wait_for(socket.recv(), timeout=5)
                except websockets.ConnectionClosed:
                    return "closed"
                except TimeoutError:
                    return "open"
                return "answered"

        assert asyncio.run(send_late()) == "closed"


def test_a_run_publishes_artifacts_under_its_own_agents_keys_only(prefect_api: str) -> None:
    """Artifact keys are global in Prefect, and its Artifacts page shows the latest of each key as a card: another
    org's agent's card must not be a run's to write on."""
    from flows.transcript import USAGE_ARTIFACT_KEY, artifact_key, artifact_names

    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config(org_slug="acme", name="Inventory walker"))
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)

        def publish(key: str | None) -> httpx.Response:
            return httpx.post(f"{gateway.api_url}/artifacts/", json={
                "flow_run_id": run_id, "key": key, "type": "markdown", "data": "hello"},
                headers={"Authorization": f"Bearer {token}"}, timeout=30)

        own = publish(artifact_key(USAGE_ARTIFACT_KEY, artifact_names("acme", "Inventory walker")))
        unkeyed = publish(None)
        anothers = publish(artifact_key(USAGE_ARTIFACT_KEY, artifact_names("globex", "Payroll")))
        made_up = publish("release-notes")

    assert own.status_code == 201 and own.json()["key"] == "usage-acme-inventory-walker", own.text
    assert unkeyed.status_code == 201, unkeyed.text
    for refused in (anothers, made_up):
        assert refused.status_code == 403 and "not one of its own agent's" in refused.text, refused.text


def test_a_run_writes_logs_and_artifacts_on_its_own_steps_only_never_on_another_runs(prefect_api: str) -> None:
    """Prefect's UI shows a task run's logs and artifacts on its page: a run naming another org's step there would
    write on that org's page. Its own steps, and a step Prefect has not recorded yet (its events may come after its
    first lines), pass."""
    from uuid import uuid4

    def step_of(run_id: str, name: str) -> str:
        made = httpx.post(f"{prefect_api}/task_runs/", json={
            "flow_run_id": run_id, "task_key": "tool_call", "dynamic_key": name, "name": name}, timeout=30)
        assert made.status_code in (200, 201), made.text
        return str(made.json()["id"])

    with run_gateway(prefect_api, {}) as gateway:
        anothers_run = _made_run(SIGNER.sign(config(org_id="b" * 32)), None)
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)
        headers = {"Authorization": f"Bearer {token}"}
        own_step, anothers_step = step_of(run_id, "http_request · step 1"), step_of(anothers_run, "payroll · step 1")

        def write(task_run_id: str) -> httpx.Response:
            log = {"name": "ariel.run.step", "level": 20, "message": "hello", "flow_run_id": run_id,
                   "task_run_id": task_run_id, "timestamp": datetime.now(UTC).isoformat()}
            return httpx.post(f"{gateway.api_url}/logs/", json=[log], headers=headers, timeout=30)

        def publish(task_run_id: str) -> httpx.Response:
            return httpx.post(f"{gateway.api_url}/artifacts/", json={
                "flow_run_id": run_id, "task_run_id": task_run_id, "type": "markdown", "data": "hello"},
                headers=headers, timeout=30)

        on_own, not_yet_recorded, on_anothers = write(own_step), write(str(uuid4())), write(anothers_step)
        not_an_id = httpx.post(f"{gateway.api_url}/logs/", json=[{
            "name": "ariel.run.step", "level": 20, "message": "hello", "flow_run_id": run_id,
            "task_run_id": {"id": anothers_step}, "timestamp": datetime.now(UTC).isoformat()}], headers=headers,
            timeout=30)
        published_own, published_on_anothers = publish(own_step), publish(anothers_step)

    for allowed in (on_own, not_yet_recorded, published_own):
        assert allowed.status_code == 201, allowed.text
    for refused in (on_anothers, published_on_anothers, not_an_id):
        assert refused.status_code == 403 and "outside the scope" in refused.text, refused.text
