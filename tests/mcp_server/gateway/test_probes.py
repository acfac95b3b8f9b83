"""The Prefect gateway lets a scoped credential reach its own objects and nothing else.

One `ariel up` with its own Prefect server (so the raw API requires the control
plane's credential) and two orgs: A holds a worker key, so its agents run on
its own hardware's pool; B's agent runs on Ariel's pool host. The test acts as
A's worker: it polls A's pool through the gateway and takes the run token the
gateway hands out with A's run. Then every route a worker or a run uses, and
the routes beside them, are tried on B's objects and on A's own with each
credential; every try must be refused, and another org's object must be
answered exactly like one that does not exist.

Positive controls keep the probes honest: the same objects read with the
control plane's credential straight from Prefect answer 200, and each
credential can reach what is its own through the gateway. Turn the gateway's
checks off (or point a probe at the raw API) and the suite fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastmcp.exceptions import ToolError

from flows.transcript import TRANSCRIPT_ROUTE
from mcp_server.cli.stack import Runtime
from tests.mcp_server.callers import call
from tests.support import ArielUp, ariel_up, wait_until

ALICE = "dev:alice:acme:owner"  # org A: a worker key, its agents on its own hardware
BOB = "dev:bob:globex:owner"  # org B: its agents on Ariel's pool host


@dataclass(frozen=True)
class Stack:
    up: ArielUp
    prefect: str  # the raw Prefect API, which needs the control plane's credential
    control: dict[str, str]  # that credential, as a header
    gateway: str  # the gateway's Prefect API URL
    worker_key: str  # A's
    run_token: str  # of A's run
    a_pool: str
    a_run: str
    a_other_run: str  # another run of A's: the run token must not reach it either
    a_deployment: str
    a_flow: str
    b_pool: str
    b_run: str
    b_deployment: str
    b_flow: str
    b_block: str  # a block document of B's (its provider)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


async def agent(token: str, base_url: str, name: str) -> dict[str, Any]:
    created = await call(base_url, token, "create_agent", name=name, instructions="Reply.", model="ariel/scripted",
                         script=[{"reply": "done"}])
    await call(base_url, token, "update_agent", agent=created["slug"], action="approve")
    return dict(await call(base_url, token, "get_agent", agent=created["slug"]))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("gateway-home")
    with ariel_up(home, "process", extra_env={"ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev"}) as up:
        yield asyncio.run(_populate(up, home))


async def _populate(up: ArielUp, home: Path) -> Stack:
    runtime = Runtime.load(home)
    assert runtime is not None
    control = basic((home / "keys" / "prefect-auth").read_text())
    a_agent = await agent(ALICE, up.base_url, "Alpha")
    await agent(BOB, up.base_url, "Bravo")
    made = await call(up.base_url, ALICE, "manage_org", action="create_worker_key", name="office")
    worker_key = made["worker_keys"][0]["key"]
    assert made["start_worker"] == f"ARIEL_WORKER_KEY={worker_key} ariel worker --server {up.base_url}"
    a_agent = dict(await call(up.base_url, ALICE, "get_agent", agent="alpha"))
    assert a_agent["work_pool"].endswith("-own"), a_agent
    await call(up.base_url, BOB, "manage_secrets", action="set_provider", name="main", api_key="sk-bravo-secret")
    a_run = await call(up.base_url, ALICE, "run_agent", agent="alpha")
    a_other_run = await call(up.base_url, ALICE, "run_agent", agent="alpha")
    b_run = await call(up.base_url, BOB, "run_agent", agent="bravo", wait_seconds=120)
    assert b_run["state"] == "Completed", b_run  # B's runs go on through the pool host meanwhile
    gateway = f"{up.base_url}/prefect/api"
    async with httpx.AsyncClient(timeout=30) as http:
        # As A's worker would: poll A's pool through the gateway, and find each run's token in its job variables.
        handed: dict[str, str] = {}
        for _ in range(30):
            answer = await http.post(f"{gateway}/work_pools/{a_agent['work_pool']}/get_scheduled_flow_runs",
                                     json={}, headers=bearer(worker_key))
            assert answer.status_code == 200, answer.text
            handed |= {item["flow_run"]["id"]: item["flow_run"]["job_variables"]["env"]["PREFECT_API_KEY"]
                       for item in answer.json()}
            if a_run["id"] in handed:
                break
            await asyncio.sleep(1)
        assert a_run["id"] in handed, handed
        assert worker_key not in json.dumps(answer.json())
        run = (await http.get(f"{runtime.prefect_api_url}/flow_runs/{a_run['id']}", headers=control)).json()
        b = (await http.get(f"{runtime.prefect_api_url}/flow_runs/{b_run['id']}", headers=control)).json()
        blocks = (await http.post(f"{runtime.prefect_api_url}/block_documents/filter", json={},
                                  headers=control)).json()
    return Stack(
        up=up, prefect=runtime.prefect_api_url, control=control, gateway=gateway, worker_key=worker_key,
        run_token=handed[a_run["id"]], a_pool=a_agent["work_pool"], a_run=a_run["id"], a_other_run=a_other_run["id"],
        a_deployment=run["deployment_id"], a_flow=run["flow_id"], b_pool=b["work_pool_name"], b_run=b_run["id"],
        b_deployment=b["deployment_id"], b_flow=b["flow_id"],
        b_block=next((doc["id"] for doc in blocks), str(uuid.uuid4())),
    )


def request(stack: Stack, credential: str | None, method: str, path: str, body: Any = None,
            raw: bool = False) -> httpx.Response:
    url = (stack.prefect if raw else stack.gateway) + path
    headers = bearer(credential) if credential else {}
    return send(method, url, body, headers)


def send(method: str, url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """One request, sent again while Prefect answers 503: it does so when its SQLite database is busy, and Prefect's
    own client, which workers and recovery use, retries those answers too."""
    for _ in range(5):
        answer = httpx.request(method, url, json=body, headers=headers, timeout=30)
        if answer.status_code != 503:
            return answer
        time.sleep(1)
    return answer


def probes(s: Stack) -> list[tuple[str, str, Any]]:
    """Routes a scoped credential must not reach: other orgs' objects, and what no worker or run needs."""
    state = {"state": {"type": "RUNNING"}, "force": True}
    b_log = [{"name": "x", "level": 20, "message": "forged", "timestamp": "2026-01-01T00:00:00Z",
              "flow_run_id": s.b_run}]
    return [
        ("GET", f"/flow_runs/{s.b_run}", None),
        ("POST", f"/flow_runs/{s.b_run}/set_state", state),
        ("PATCH", f"/flow_runs/{s.b_run}", {"infrastructure_pid": "x"}),
        ("PATCH", f"/flow_runs/{s.b_run}/labels", {"x": "y"}),
        ("DELETE", f"/flow_runs/{s.b_run}", None),
        ("GET", f"/deployments/{s.b_deployment}", None),
        ("GET", f"/flows/{s.b_flow}", None),
        ("GET", f"/work_pools/{s.b_pool}", None),
        ("POST", f"/work_pools/{s.b_pool}/get_scheduled_flow_runs", {}),
        ("POST", f"/work_pools/{s.b_pool}/workers/heartbeat", {"name": "forged"}),
        ("POST", "/logs/", b_log),
        ("POST", "/artifacts/", {"key": "forged", "type": "markdown", "data": "x", "flow_run_id": s.b_run}),
        # What neither a worker nor a run needs, on anyone's objects:
        ("POST", "/deployments/filter", {}),
        ("POST", f"/deployments/{s.a_deployment}/create_flow_run",
         {"parameters": {"config": {"allowed_hosts": ["evil.example"]}}}),
        ("POST", "/flow_runs/", {"flow_id": s.a_flow}),
        ("DELETE", f"/deployments/{s.a_deployment}", None),
        ("PATCH", f"/deployments/{s.a_deployment}", {"parameters": {}}),
        ("POST", "/block_documents/filter", {"include_secrets": True}),
        ("GET", f"/block_documents/{s.b_block}?include_secrets=true", None),
        ("POST", "/variables/filter", {}),
        ("POST", "/variables/", {"name": "forged", "value": "x"}),
        ("POST", "/events/filter", {}),
        ("POST", "/logs/filter", {}),
        ("POST", "/artifacts/filter", {}),
        ("POST", "/task_runs/filter", {}),
        ("POST", "/work_pools/", {"name": "forged-pool", "type": "process"}),
        ("DELETE", f"/work_pools/{s.a_pool}", None),
        ("PATCH", f"/work_pools/{s.a_pool}", {"base_job_template": {}}),
        ("POST", "/flows/", {"name": "forged"}),
        ("POST", "/concurrency_limits/", {"tag": "x", "concurrency_limit": 1}),
        ("POST", "/automations/", {}),
        ("GET", "/admin/settings", None),
    ]


def refused(answer: httpx.Response) -> bool:
    return answer.status_code in (401, 403, 404, 405, 422)


@pytest.mark.parametrize("who", ["worker key", "run token"])
def test_a_scoped_credential_reaches_nothing_of_another_org_and_no_route_beside_its_own(
    stack: Stack, who: str
) -> None:
    credential = stack.worker_key if who == "worker key" else stack.run_token
    for method, path, body in probes(stack):
        answer = request(stack, credential, method, path, body)
        assert refused(answer), f"{who}: {method} {path} answered {answer.status_code}: {answer.text[:300]}"
        assert "sk-bravo-secret" not in answer.text


def test_the_probed_objects_exist_for_the_control_plane(stack: Stack) -> None:
    """The positive control: the refusals above are the gateway's, not missing objects."""
    for path in (f"/flow_runs/{stack.b_run}", f"/deployments/{stack.b_deployment}", f"/flows/{stack.b_flow}",
                 f"/work_pools/{stack.b_pool}", f"/flow_runs/{stack.a_run}"):
        assert send("GET", stack.prefect + path, None, stack.control).status_code == 200, path


def test_another_orgs_object_is_answered_like_one_that_does_not_exist(stack: Stack) -> None:
    asked = [("/flow_runs/", stack.b_run, str(uuid.uuid4())), ("/deployments/", stack.b_deployment, str(uuid.uuid4())),
             ("/work_pools/", stack.b_pool, uuid.uuid4().hex)]
    for credential in (stack.worker_key, stack.run_token):
        for route, theirs, nothing in asked:
            answer, missing = (request(stack, credential, "GET", route + theirs),
                               request(stack, credential, "GET", route + nothing))
            # Prefect names what it did not find: the same words, about the name that was asked.
            assert (answer.status_code, answer.text) == (missing.status_code, missing.text.replace(nothing, theirs)), \
                route


def test_each_credential_reaches_its_own(stack: Stack) -> None:
    assert request(stack, stack.worker_key, "GET", f"/work_pools/{stack.a_pool}").status_code == 200
    assert request(stack, stack.worker_key, "GET", f"/flow_runs/{stack.a_run}").status_code == 200
    assert request(stack, stack.worker_key, "GET", f"/deployments/{stack.a_deployment}").status_code == 200
    assert request(stack, stack.run_token, "GET", f"/flow_runs/{stack.a_run}").status_code == 200
    assert request(stack, stack.run_token, "GET", f"/deployments/{stack.a_deployment}").status_code == 200
    assert request(stack, stack.run_token, "GET", f"/flows/{stack.a_flow}").status_code == 200


def test_a_worker_key_writes_logs_on_its_own_runs_steps_and_never_on_another_orgs(stack: Stack) -> None:
    """The Prefect UI shows a task run's logs on its page: a worker naming B's step would write on B's page."""
    from datetime import UTC, datetime

    b_steps = send("POST", f"{stack.prefect}/task_runs/filter", {"flow_runs": {"id": {"any_": [stack.b_run]}}},
                   stack.control).json()
    assert b_steps, "B's completed run has its steps"
    a_step = send("POST", f"{stack.prefect}/task_runs/", {"flow_run_id": stack.a_run, "task_key": "llm_call",
                                                         "dynamic_key": "probe", "name": "llm · step 1"},
                  stack.control).json()["id"]

    def write(task_run_id: str) -> httpx.Response:
        return request(stack, stack.worker_key, "POST", "/logs/", [{
            "name": "prefect.workers", "level": 20, "message": "hello", "flow_run_id": stack.a_run,
            "task_run_id": task_run_id, "timestamp": datetime.now(UTC).isoformat()}])

    on_own, on_bs = write(a_step), write(b_steps[0]["id"])
    assert on_own.status_code == 201, on_own.text
    assert on_bs.status_code == 403 and "outside the scope" in on_bs.text, on_bs.text


def test_a_run_token_reaches_no_other_run_of_its_own_org(stack: Stack) -> None:
    tries: list[tuple[str, str, Any]] = [("GET", f"/flow_runs/{stack.a_other_run}", None),
                                    ("POST", f"/flow_runs/{stack.a_other_run}/set_state",
                                     {"state": {"type": "RUNNING"}}),
                                    ("PATCH", f"/flow_runs/{stack.a_run}", {"parameters": {"config": {}}}),
                                    ("PATCH", f"/flow_runs/{stack.a_run}", {"job_variables": {"env": {}}}),
                                    # Another run's name, or scheduled again for a fresh token: neither.
                                    ("PATCH", f"/flow_runs/{stack.a_run}", {"name": "someone-else"}),
                                    ("POST", f"/flow_runs/{stack.a_run}/set_state",
                                     {"state": {"type": "SCHEDULED"}, "force": True}),
                                    ("GET", "/ariel/v1/worker", None)]
    for method, path, body in tries:
        answer = request(stack, stack.run_token, method, path, body) if not path.startswith("/ariel") else \
            httpx.get(stack.gateway.removesuffix("/api") + path, headers=bearer(stack.run_token), timeout=30)
        assert refused(answer), f"{method} {path} answered {answer.status_code}"


def test_lists_through_the_gateway_hold_only_what_is_in_scope(stack: Stack) -> None:
    pools = request(stack, stack.worker_key, "POST", "/work_pools/filter", {}).json()
    assert [pool["name"] for pool in pools] == [stack.a_pool]
    runs = request(stack, stack.worker_key, "POST", "/flow_runs/filter", {}).json()
    assert runs and {run["work_pool_name"] for run in runs} == {stack.a_pool}
    own = request(stack, stack.run_token, "POST", "/flow_runs/filter", {}).json()
    assert [run["id"] for run in own] == [stack.a_run]
    # A page of one, sorted so that B's run would come first: narrowed before Prefect pages, the page is never
    # empty, so it cannot tell that B's run exists.
    order = "NAME_DESC"  # bravo-… before alpha-…
    for credential in (stack.run_token, stack.worker_key):
        page = request(stack, credential, "POST", "/flow_runs/filter",
                       {"flow_runs": {"id": {"any_": [stack.b_run, stack.a_run]}}, "sort": order, "limit": 1}).json()
        assert [run["id"] for run in page] == [stack.a_run]


def test_without_a_credential_neither_the_gateway_nor_the_raw_api_answers(stack: Stack) -> None:
    for path in (f"/flow_runs/{stack.a_run}", "/admin/version"):
        assert request(stack, None, "GET", path).status_code == 401
        assert request(stack, None, "GET", path, raw=True).status_code == 401
    blocks = request(stack, None, "POST", "/block_documents/filter", {"include_secrets": True}, raw=True)
    assert blocks.status_code == 401
    for forged in ("ariel_rt_" + "x" * 60, "ariel_wk_00000000_" + "x" * 43, "ariel_ph_guess"):
        assert request(stack, forged, "GET", f"/flow_runs/{stack.a_run}").status_code == 401
    # The scoped credentials do not open the raw API either.
    assert request(stack, stack.worker_key, "GET", f"/flow_runs/{stack.a_run}", raw=True).status_code == 401


def test_a_revoked_worker_key_is_refused(stack: Stack) -> None:
    made = asyncio.run(call(stack.up.base_url, ALICE, "manage_org", action="create_worker_key", name="spare"))
    spare = made["worker_keys"][0]["key"]
    assert request(stack, spare, "GET", f"/work_pools/{stack.a_pool}").status_code == 200
    asyncio.run(call(stack.up.base_url, ALICE, "manage_org", action="revoke_worker_key",
                     key=made["worker_keys"][0]["prefix"]))
    assert request(stack, spare, "GET", f"/work_pools/{stack.a_pool}").status_code == 401


def test_a_worker_key_acts_for_the_admin_who_made_it_and_an_api_key_makes_none(stack: Stack) -> None:
    """Whoever holds a worker key gets every run's token and provider key: it serves only while the admin who made
    it is one (as an API key acts for its maker), and an API key, which may be revoked unseen, makes none."""
    dave = "dev:dave:acme:admin"

    async def made_by_dave() -> tuple[str, str]:
        made = await call(stack.up.base_url, dave, "manage_org", action="create_worker_key", name="dave's rack")
        email = next(member["user"] for member in (await call(stack.up.base_url, ALICE, "manage_org",
                                                                action="list_members"))["members"]
                     if "dave" in member["user"])
        return made["worker_keys"][0]["key"], email

    daves, email = asyncio.run(made_by_dave())
    served_while_admin = request(stack, daves, "GET", f"/work_pools/{stack.a_pool}").status_code
    asyncio.run(call(stack.up.base_url, ALICE, "manage_org", action="change_role", user=email, role="member"))
    after_demotion = request(stack, daves, "GET", f"/work_pools/{stack.a_pool}").status_code

    async def by_api_key() -> str:
        made = await call(stack.up.base_url, ALICE, "manage_org", action="create_key", name="ci", role="admin")
        api_key = made["keys"][0]["key"]
        with pytest.raises(ToolError) as refused:
            await call(stack.up.base_url, api_key, "manage_org", action="create_worker_key", name="sneaky")
        return str(refused.value)

    refusal = asyncio.run(by_api_key())
    assert (served_while_admin, after_demotion) == (200, 401)
    assert "an API key cannot create worker keys" in refusal, refusal


def test_events_about_another_orgs_run_are_dropped_and_own_ones_arrive(stack: Stack) -> None:
    own, forged, smuggled, misfiled, last = (uuid.uuid4() for _ in range(5))
    b_pool_id = send("GET", f"{stack.prefect}/work_pools/{stack.b_pool}", None, stack.control).json()["id"]

    async def send_events() -> None:
        url = stack.gateway.replace("http://", "ws://") + "/events/in"
        async with websockets.connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": f"run:{stack.run_token}"}))
            assert json.loads(await socket.recv())["type"] == "auth_success"
            for event_id, run in ((own, stack.a_run), (forged, stack.b_run)):
                await socket.send(json.dumps({
                    "id": str(event_id), "event": "ariel.test.probe", "occurred": "2026-12-02T00:00:00Z",
                    "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"}, "related": [], "payload": {},
                }))
            # Its own run's event, filed under B's pool by id while named as its own pool.
            await socket.send(json.dumps({
                "id": str(misfiled), "event": "ariel.test.probe", "occurred": "2026-12-02T00:00:00Z",
                "resource": {"prefect.resource.id": f"prefect.flow-run.{stack.a_run}"},
                "related": [{"prefect.resource.id": f"prefect.work-pool.{b_pool_id}", "prefect.resource.name":
                             stack.a_pool, "prefect.resource.role": "work-pool"}], "payload": {},
            }))
            # A task run of its own run, as its resources say, whose payload would file it under B's run.
            await socket.send(json.dumps({
                "id": str(smuggled), "event": "ariel.test.probe", "occurred": "2026-12-02T00:00:00Z",
                "resource": {"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"},
                "related": [{"prefect.resource.id": f"prefect.flow-run.{stack.a_run}",
                             "prefect.resource.role": "flow-run"}],
                "payload": {"task_run": {"flow_run_id": stack.b_run, "name": "forged"}},
            }))
            # Last, its own again: once Prefect has stored it, it has taken in (or never got) all the others.
            await socket.send(json.dumps({
                "id": str(last), "event": "ariel.test.probe", "occurred": "2026-12-02T00:00:00Z",
                "resource": {"prefect.resource.id": f"prefect.flow-run.{stack.a_run}"}, "related": [], "payload": {},
            }))
            await asyncio.sleep(0.5)

    asyncio.run(send_events())

    def stored() -> set[str]:
        answer = send("POST", f"{stack.prefect}/events/filter", {
            "filter": {"event": {"prefix": ["ariel.test.probe"]}, "occurred": {"since": "2026-12-01T00:00:00Z"}},
            "limit": 50}, stack.control)
        return {event["id"] for event in answer.json()["events"]}

    wait_until(lambda: {str(own), str(last)} <= stored(), 30, "the run's own events in Prefect")
    assert not {str(forged), str(smuggled), str(misfiled)} & stored()


def test_a_run_subscribes_to_its_own_events_only_and_a_worker_not_at_all(stack: Stack) -> None:
    """Every flow run's suspension observer subscribes to /events/out: it gets its own flow run's events whatever
    its filter asks, never another run's. A worker's subscription (its cancellation observer) would carry every
    org's events: it is closed before any arrive, and the worker polls its runs, which the gateway scopes."""
    marker = f"ariel.test.sub-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    # As Prefect's subscriber asks: from a minute ago (Prefect backfills at most its own limit) into the future.
    occurred = {"since": (now - timedelta(minutes=1)).isoformat(), "until": (now + timedelta(days=1)).isoformat()}
    control_auth = base64.b64decode(stack.control["Authorization"].removeprefix("Basic ")).decode()

    def event(run: str) -> str:
        return json.dumps({"id": str(uuid.uuid4()), "event": marker, "occurred": datetime.now(UTC).isoformat(),
                           "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"}, "related": [],
                           "payload": {}})

    async def emit(base: str, token: str, text: str) -> None:
        async with websockets.connect(base.replace("http://", "ws://") + "/events/in",
                                      subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await socket.recv())["type"] == "auth_success"
            await socket.send(text)
            await asyncio.sleep(0.3)

    async def subscribe(own: str, token: str) -> list[dict[str, Any]]:
        url = stack.gateway.replace("http://", "ws://") + "/events/out"
        async with websockets.connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": token}))
            if json.loads(await socket.recv())["type"] != "auth_success":
                return []
            # Asks for every run's events, B's by name: it gets its own only.
            await socket.send(json.dumps({"type": "filter", "filter": {
                "event": {"prefix": [marker]}, "occurred": occurred,
                "any_resource": {"id": [f"prefect.flow-run.{stack.b_run}", f"prefect.flow-run.{own}"]}}}))
            received: list[dict[str, Any]] = []

            async def collect(seconds: float, until: int) -> None:
                with suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        while len(received) < until:
                            received.append(json.loads(await socket.recv())["event"])

            # Its own first, again until one arrives: the subscription has no "ready" signal, and an event that
            # passes Prefect before the upstream stream is registered (and before it is persisted, for the
            # backfill) is not delivered. Once one arrives the subscription is live, and B's (sent by the control
            # plane) would arrive the same way, were it let through.
            for _ in range(15):
                await emit(stack.gateway, token, event(own))
                await collect(2, until=1)
                if received:
                    break
            await emit(stack.prefect, control_auth, event(stack.b_run))
            await collect(5, until=100)  # whatever else arrives
            return received

    # A run of A's that a worker has started (Pending: its container is starting), so its attempt is live.
    live_run = asyncio.run(call(stack.up.base_url, ALICE, "run_agent", agent="alpha"))["id"]
    live_token = hand_out(stack, live_run)
    control_plane(stack, "POST", f"/flow_runs/{live_run}/set_state", {"state": {"type": "PENDING"}, "force": True})
    try:
        got = asyncio.run(subscribe(live_run, f"run:{live_token}"))
        # Its attempt over (cancelled), the same token subscribes no more.
        control_plane(stack, "POST", f"/flow_runs/{live_run}/set_state", {"state": {"type": "CANCELLED"},
                                                                          "force": True})
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as over:
            asyncio.run(subscribe(live_run, f"run:{live_token}"))
    finally:
        control_plane(stack, "POST", f"/flow_runs/{live_run}/set_state", {"state": {"type": "CANCELLED"},
                                                                          "force": True})
    assert got and {e["resource"]["prefect.resource.id"] for e in got} == {f"prefect.flow-run.{live_run}"}, got
    assert over.value.rcvd is not None and (over.value.rcvd.code, over.value.rcvd.reason) == (
        1008, "this run's attempt is over")

    with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
        asyncio.run(subscribe(stack.a_run, f"worker:{stack.worker_key}"))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_runs_suspension_observer_is_held_by_the_gateway_and_costs_prefect_no_stream(stack: Stack) -> None:
    """Every flow run's suspension observer subscribes to the Suspended events of its run. An Ariel run never
    pauses (the gateway refuses its PAUSED), so the gateway holds that subscription itself, open and silent, and
    Prefect's server keeps no stream and makes no backfill query for it: even a Suspended event the control plane
    wrote for the run does not reach it."""
    control_auth = base64.b64decode(stack.control["Authorization"].removeprefix("Basic ")).decode()
    now = datetime.now(UTC)
    occurred = {"since": (now - timedelta(minutes=1)).isoformat(), "until": (now + timedelta(days=1)).isoformat()}

    async def observe(run: str, token: str) -> tuple[list[Any], bool]:
        url = stack.gateway.replace("http://", "ws://") + "/events/out"
        async with websockets.connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await socket.recv())["type"] == "auth_success"
            # As Prefect's FlowRunSuspendingObserver asks.
            await socket.send(json.dumps({"type": "filter", "filter": {
                "event": {"name": ["prefect.flow-run.Suspended"]}, "occurred": occurred}}))
            received: list[Any] = []
            async with websockets.connect(stack.prefect.replace("http://", "ws://") + "/events/in",
                                          subprotocols=["prefect"]) as events:  # type: ignore[list-item]
                await events.send(json.dumps({"type": "auth", "token": control_auth}))
                assert json.loads(await events.recv())["type"] == "auth_success"
                for _ in range(5):  # again: a stream that Prefect registers late would still get a later one
                    await events.send(json.dumps({
                        "id": str(uuid.uuid4()), "event": "prefect.flow-run.Suspended",
                        "occurred": datetime.now(UTC).isoformat(),
                        "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"}, "related": [], "payload": {}}))
                    with suppress(TimeoutError):
                        received.append(await asyncio.wait_for(socket.recv(), timeout=1.5))
            await socket.ping()
            return received, socket.close_code is None

    live_run = asyncio.run(call(stack.up.base_url, ALICE, "run_agent", agent="alpha"))["id"]
    live_token = hand_out(stack, live_run)
    control_plane(stack, "POST", f"/flow_runs/{live_run}/set_state", {"state": {"type": "PENDING"}, "force": True})
    try:
        received, still_open = asyncio.run(observe(live_run, f"run:{live_token}"))
    finally:
        control_plane(stack, "POST", f"/flow_runs/{live_run}/set_state", {"state": {"type": "CANCELLED"},
                                                                          "force": True})
    assert received == [] and still_open


def test_the_raw_event_stream_refuses_a_client_without_the_control_planes_credential(stack: Stack) -> None:
    """Prefect once left its websockets open when HTTP needed the auth string (PrefectHQ/prefect#17687)."""
    async def subscribe(token: str | None) -> Any:
        url = stack.prefect.replace("http://", "ws://") + "/events/out"
        async with websockets.connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
            await socket.send(json.dumps({"type": "auth", "token": token}))
            return json.loads(await socket.recv())

    for token in (None, f"worker:{stack.worker_key}", f"run:{stack.run_token}"):
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            asyncio.run(subscribe(token))


def hand_out(stack: Stack, run_id: str) -> str:
    """As A's worker: poll A's pool until the gateway hands `run_id` over, minting its token; the token."""
    for _ in range(30):
        items = request(stack, stack.worker_key, "POST", f"/work_pools/{stack.a_pool}/get_scheduled_flow_runs",
                        {}).json()
        tokens = {item["flow_run"]["id"]: item["flow_run"]["job_variables"]["env"]["PREFECT_API_KEY"]
                  for item in items}
        if run_id in tokens:
            return str(tokens[run_id])
        time.sleep(1)
    raise AssertionError(f"run {run_id} was not handed out")


def control_plane(stack: Stack, method: str, path: str, body: Any) -> None:
    """A call straight to Prefect with the control plane's credential (what recovery, or a worker's start, does)."""
    answer = send(method, stack.prefect + path, body, stack.control)
    assert answer.status_code < 300, answer.text


def test_a_run_that_is_not_running_gets_no_key(stack: Stack) -> None:
    """A's run was handed out but never started: its token is valid, yet the secrets route gives nothing."""
    answer = httpx.get(stack.gateway.removesuffix("/api") + "/ariel/v1/run", headers=bearer(stack.run_token),
                       timeout=30)
    assert (answer.status_code, answer.json()["error"]) == (409, "not_running"), answer.text


def test_only_a_running_runs_own_token_keeps_transcript_entries(stack: Stack) -> None:
    """A worker holds no run's transcript, a token of a run that is not running keeps nothing, nor does no token."""
    entry = {"index": 1, "step": 1, "kind": "tool", "name": "http_request", "task_run_name": "http_request · step 1",
             "started_at": "2026-01-01T00:00:00Z", "duration_ms": 1, "input": {}, "output": "forged"}
    route = stack.gateway.removesuffix("/api") + TRANSCRIPT_ROUTE
    by_worker = send("POST", route, entry, bearer(stack.worker_key))
    by_idle_run = send("POST", route, entry, bearer(stack.run_token))
    by_nobody = send("POST", route, entry, {})
    kept = asyncio.run(call(stack.up.base_url, ALICE, "get_transcript", run=stack.a_run))

    assert by_worker.status_code == 403, by_worker.text
    assert (by_idle_run.status_code, by_idle_run.json()["error"]) == (409, "not_running"), by_idle_run.text
    assert by_nobody.status_code == 401, by_nobody.text
    assert kept["total"] == 0 and kept["entries"] == []


def test_neither_a_worker_nor_a_run_may_renumber_the_runs_attempt(stack: Stack) -> None:
    """Prefect's own labels (the worker's name, a trace) go through; Ariel's attempt number, which tells a retry's
    token from an earlier attempt's, is the control plane's alone."""
    for credential in (stack.worker_key, stack.run_token):
        for label in ("ariel.attempt", "Ariel.Attempt", "ariel.anything"):
            answer = request(stack, credential, "PATCH", f"/flow_runs/{stack.a_run}/labels", {label: 1})
            assert answer.status_code == 403 and label in answer.text, answer.text
        own = request(stack, credential, "PATCH", f"/flow_runs/{stack.a_run}/labels", {"prefect.worker.name": "x"})
        assert own.status_code == 204, own.text


def test_a_retry_outranks_an_earlier_attempt_that_never_ran_though_prefect_counted_neither(stack: Stack) -> None:
    """A worker took the run and died before its container ran (Prefect's `run_count` stays 0); recovery numbered a
    retry. Should the first attempt's container start after all, its token must pass for nothing: only the retry's
    gets the run's keys."""
    run_id = asyncio.run(call(stack.up.base_url, ALICE, "run_agent", agent="alpha"))["id"]

    def handed_out() -> str:
        return hand_out(stack, run_id)

    def raw(method: str, path: str, body: Any) -> None:
        control_plane(stack, method, path, body)

    def context(token: str) -> httpx.Response:
        return httpx.get(stack.gateway.removesuffix("/api") + "/ariel/v1/run", headers=bearer(token), timeout=30)

    first = handed_out()
    raw("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "PENDING", "name": "Submitting"}, "force": True})
    first_while_it_pends = context(first)
    # What recovery does when it retries the run (`deployments.runs.recovery`): number the attempt, then schedule it.
    raw("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CRASHED"}, "force": True})
    raw("PATCH", f"/flow_runs/{run_id}/labels", {"ariel.attempt": 2})
    raw("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"},
                                                   "force": True})
    retry = handed_out()
    raw("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "PENDING"}, "force": True})
    assert send("GET", f"{stack.prefect}/flow_runs/{run_id}", None, stack.control).json()["run_count"] == 0
    first_late, retry_starts = context(first), context(retry)
    raw("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLED"}, "force": True})

    assert first_while_it_pends.status_code == 200, first_while_it_pends.text
    assert (first_late.status_code, first_late.json()["error"]) == (409, "superseded"), first_late.text
    assert retry_starts.status_code == 200, retry_starts.text


def test_a_worker_ask_that_finds_no_run_is_held_and_answered_with_the_run_chat_starts_meanwhile(stack: Stack) -> None:
    carol = "dev:carol:initech:owner"  # an org of its own: its pool has no run waiting

    async def go() -> tuple[list[bool], list[list[str]], str, str]:
        charlie = await agent(carol, stack.up.base_url, "Charlie")
        deployment_name = str(charlie["deployment"])
        made = await call(stack.up.base_url, carol, "manage_org", action="create_worker_key", name="lab")
        key = made["worker_keys"][0]["key"]
        pool = (await call(stack.up.base_url, carol, "get_agent", agent="charlie"))["work_pool"]
        held: list[bool] = []
        answered: list[list[str]] = []
        async with httpx.AsyncClient(timeout=30) as http:

            async def ask_while(make_run: Callable[[], Awaitable[str]]) -> str:
                asked = asyncio.create_task(http.post(f"{stack.gateway}/work_pools/{pool}/get_scheduled_flow_runs",
                                                      json={}, headers=bearer(key)))
                await asyncio.sleep(1)  # well inside the hold; a poll answered at once would be back by now
                held.append(not asked.done())
                run_id = await make_run()
                answer = await asked
                assert answer.status_code == 200, answer.text
                answered.append([item["flow_run"]["id"] for item in answer.json()])
                return run_id

            async def in_prefect() -> str:  # as a schedule makes one: nothing rings the pool
                deployment = (await asyncio.to_thread(send, "GET", f"{stack.prefect}/deployments/name/"
                                                      f"{deployment_name}", None, stack.control)).json()
                made = await asyncio.to_thread(send, "POST", f"{stack.prefect}/deployments/{deployment['id']}/"
                                               "create_flow_run", {}, stack.control)
                return str(made.json()["id"])

            async def in_chat() -> str:
                return str((await call(stack.up.base_url, carol, "run_agent", agent="charlie"))["id"])

            unannounced = await ask_while(in_prefect)
            # Gone again, so that the next ask finds the pool empty as well.
            assert (await asyncio.to_thread(send, "DELETE", f"{stack.prefect}/flow_runs/{unannounced}", None,
                                            stack.control)).is_success
            announced = await ask_while(in_chat)
        return held, answered, unannounced, announced

    held, answered, unannounced, announced = asyncio.run(go())
    assert held == [True, True], "the gateway answered an empty poll at once instead of holding it"
    # Only a run made through chat wakes the hold; the other waits for the worker's next poll.
    assert answered == [[], [announced]], (answered, unannounced)
