"""An agent's life through MCP: approval, versions, pause and resume, cancel, delete; with Prefect real.

No worker serves these pools, so runs wait in Scheduled: that is what lets a
test cancel one or diagnose why it does not start.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

from deployments.runs.cursors import encode_cursor, fingerprint
from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import call
from tests.support import S3Server, free_port, serve_app

OWNER = "dev:olga:lifecycle:owner"
MEMBER = "dev:mo:lifecycle:member"


def hello(name: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "instructions": "Say hello.", "model": "ariel/scripted", "script": [{"reply": "hello"}], **extra,
    }


async def refused(url: str, token: str, tool: str, **arguments: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await call(url, token, tool, **arguments)
    return str(caught.value)


async def deployment_paused(prefect_api: str, agent: dict[str, Any]) -> bool:
    async with PrefectClient(prefect_api) as prefect:
        return bool((await prefect.read_deployment_by_name(agent["deployment"])).paused)


async def test_a_new_agent_waits_for_an_admin_to_approve_its_manifest(url: str, prefect_api: str) -> None:
    await call(url, OWNER, "whoami")  # the owner makes the org; the member joins it
    agent = await call(url, MEMBER, "create_agent", **hello(schedule={"interval_seconds": 3600}))
    assert agent["status"] == "pending_approval" and agent["needs_approval"]
    assert await deployment_paused(prefect_api, agent), "an unapproved schedule must make no runs"

    assert "does not run until its manifest is approved" in await refused(url, MEMBER, "run_agent", agent="hello")
    assert "needs the admin role" in await refused(url, MEMBER, "update_agent", agent="hello", action="approve")
    assert "is at version 1, not 7" in await refused(url, OWNER, "update_agent", agent="hello", action="approve",
                                                      version=7)

    approved = await call(url, OWNER, "update_agent", agent="hello", action="approve", version=1)
    assert (approved["status"], approved["approved_by"]) == ("active", "olga")
    assert not await deployment_paused(prefect_api, approved)
    run = await call(url, MEMBER, "run_agent", agent="hello")
    assert run["name"].startswith("hello-") and run["version"] == 1

    events = await call(url, OWNER, "get_audit_log", action="agent.approve")
    assert [(e["actor"], e["outcome"]) for e in events] == [("olga", "ok"), ("olga", "failed"), ("mo", "denied")]


async def test_a_change_within_the_manifest_keeps_the_approval_and_a_wider_one_loses_it(url: str) -> None:
    await call(url, OWNER, "create_agent", **hello(tools=["http_request"], allowed_hosts=["api.example.com"],
                                                   script=[{"reply": "hi"}]))
    await call(url, OWNER, "update_agent", agent="hello", action="approve")

    reworded = await call(url, MEMBER, "update_agent", agent="hello", action="change", instructions="Say hi.",
                          allowed_hosts=[])
    assert (reworded["version"], reworded["status"]) == (2, "active")

    widened = await call(url, MEMBER, "update_agent", agent="hello", action="change",
                         allowed_hosts=["api.example.com", "evil.example.net"], limits={"max_steps": 50})
    assert (widened["version"], widened["status"]) == (3, "pending_approval")
    assert widened["needs_approval"] == ["allowed_hosts: adds evil.example.net", "limits.max_steps: 10 → 50"]
    assert "approved" in await refused(url, MEMBER, "run_agent", agent="hello")

    history = (await call(url, MEMBER, "get_agent", agent="hello"))["versions"]
    assert [v["version"] for v in history] == [3, 2, 1]
    assert history[1]["changes"] == [
        "allowed_hosts: ['api.example.com'] → []", "instructions: 'Say hello.' → 'Say hi.'",
    ]
    assert history[0]["created_by"] == "mo"


async def test_a_change_that_is_invalid_or_empty_changes_nothing(url: str) -> None:
    await call(url, OWNER, "create_agent", **hello())
    assert "limits.max_steps: Input should be greater than or equal to 1" in await refused(
        url, OWNER, "update_agent", agent="hello", action="change", limits={"max_steps": 0})
    assert "was not changed: tools: unknown tool 'teleport'" in await refused(
        url, OWNER, "update_agent", agent="hello", action="change", tools=["teleport"])
    assert "leaves the agent as it is" in await refused(url, OWNER, "update_agent", agent="hello", action="change",
                                                        instructions="Say hello.")
    assert "takes no fields" in await refused(url, OWNER, "update_agent", agent="hello", action="pause",
                                              instructions="x")
    assert (await call(url, OWNER, "get_agent", agent="hello"))["version"] == 1
    taken = await call(url, OWNER, "get_agent", agent="hello")
    assert "reads as an agent id" in await refused(url, OWNER, "create_agent", **hello(name=taken["id"]))


async def test_a_change_keeps_what_it_does_not_name(url: str) -> None:
    await call(url, OWNER, "create_agent", **hello(limits={"timeout_seconds": 60, "max_steps": 4}))
    changed = await call(url, OWNER, "update_agent", agent="hello", action="change", limits={"max_steps": 3})
    assert changed["manifest"]["timeout_seconds"] == 60 and changed["manifest"]["max_steps"] == 3
    # Leaving the offline model leaves its script behind.
    real = await call(url, OWNER, "update_agent", agent="hello", action="change", model="openai/gpt-4o-mini",
                      api_base="https://llm.example.test/v1")
    assert "script" not in (await call(url, OWNER, "get_agent", agent="hello"))["spec"] and real["version"] == 3


async def test_pause_and_resume_turn_the_schedule_off_and_on(url: str, prefect_api: str) -> None:
    await call(url, OWNER, "create_agent", **hello(schedule={"cron": "0 8 * * *", "timezone": "UTC"}))
    await call(url, OWNER, "update_agent", agent="hello", action="approve")
    paused = await call(url, OWNER, "update_agent", agent="hello", action="pause")
    assert paused["status"] == "paused" and await deployment_paused(prefect_api, paused)
    assert (await call(url, OWNER, "run_agent", agent="hello"))["state"] == "Scheduled"  # by hand it still runs
    resumed = await call(url, OWNER, "update_agent", agent="hello", action="resume")
    assert resumed["status"] == "active" and not await deployment_paused(prefect_api, resumed)
    assert [e["action"] for e in await call(url, OWNER, "get_audit_log")][:2] == ["agent.resume", "agent.run"]


async def test_a_waiting_run_is_cancelled_and_a_finished_one_cannot_be(url: str) -> None:
    await call(url, OWNER, "create_agent", **hello())
    await call(url, OWNER, "update_agent", agent="hello", action="approve")
    run = await call(url, OWNER, "run_agent", agent="hello")
    cancelled = await call(url, OWNER, "cancel_run", run=run["name"])
    assert cancelled["state"] == "Cancelled"
    assert "already ended (Cancelled)" in await refused(url, OWNER, "cancel_run", run=run["id"])
    assert (await call(url, OWNER, "diagnose_run", run=run["id"]))["cause"] == "cancelled"
    assert "needs the member role" in await refused(url, "dev:vi:lifecycle:viewer", "cancel_run", run=run["id"])


async def test_deleting_needs_confirm_and_keeps_ended_runs_readable(url: str, prefect_api: str) -> None:
    agent = await call(url, OWNER, "create_agent", **hello(schedule={"interval_seconds": 3600}))
    await call(url, OWNER, "update_agent", agent="hello", action="approve")
    run = await call(url, OWNER, "run_agent", agent="hello")
    # Deleting a deployment deletes its runs still waiting to start; runs that ended stay.
    await call(url, OWNER, "cancel_run", run=run["id"])

    assert "confirm=true" in await refused(url, OWNER, "delete_agent", agent="hello")
    assert [a["slug"] for a in (await call(url, OWNER, "list_agents"))["agents"]] == ["hello"]

    gone = await call(url, OWNER, "delete_agent", agent=agent["id"], confirm=True)
    assert gone["slug"] == "hello"
    assert (await call(url, OWNER, "list_agents"))["agents"] == []
    async with PrefectClient(prefect_api) as prefect:
        with pytest.raises(ObjectNotFound):
            await prefect.read_deployment_by_name(agent["deployment"])
    assert (await call(url, OWNER, "get_run", run=run["name"]))["id"] == run["id"]
    assert [e["action"] for e in await call(url, OWNER, "get_audit_log")][0] == "agent.delete"


async def test_agents_are_listed_oldest_first_in_pages_that_an_agent_made_or_deleted_meanwhile_does_not_shift(
    url: str,
) -> None:
    for name in ("Alpha", "Bravo", "Charlie", "Delta", "Echo"):
        await call(url, OWNER, "create_agent", **hello(name, description="report" if name != "Delta" else ""))
    first = await call(url, OWNER, "list_agents", limit=2)
    assert [a["slug"] for a in first["agents"]] == ["alpha", "bravo"] and first["next_cursor"]
    await call(url, OWNER, "delete_agent", agent="alpha", confirm=True)  # before the cursor: nothing shifts
    await call(url, OWNER, "create_agent", **hello("Foxtrot"))
    second = await call(url, OWNER, "list_agents", limit=2, cursor=first["next_cursor"])
    assert [a["slug"] for a in second["agents"]] == ["charlie", "delta"]
    third = await call(url, OWNER, "list_agents", limit=2, cursor=second["next_cursor"])
    assert ([a["slug"] for a in third["agents"]], third["next_cursor"]) == (["echo", "foxtrot"], None)

    # Filters page the agents they keep; a cursor belongs to its own filters.
    reports = await call(url, OWNER, "list_agents", text="report", limit=2)
    assert [a["slug"] for a in reports["agents"]] == ["bravo", "charlie"]
    rest = await call(url, OWNER, "list_agents", text="report", limit=2, cursor=reports["next_cursor"])
    assert ([a["slug"] for a in rest["agents"]], rest["next_cursor"]) == (["echo"], None)
    assert "another query" in await refused(url, OWNER, "list_agents", limit=2, cursor=reports["next_cursor"])
    assert "another query" in await refused(url, OWNER, "list_agents", cursor="not-a-cursor")


async def test_runs_are_listed_newest_first_in_pages_and_time_windows(url: str) -> None:
    await call(url, OWNER, "create_agent", **hello())
    await call(url, OWNER, "update_agent", agent="hello", action="approve")
    started = datetime.now(UTC) - timedelta(seconds=1)
    made = [await call(url, OWNER, "run_agent", agent="hello") for _ in range(5)]
    await asyncio.sleep(0.1)

    seen, cursor, newer = [], None, None
    while True:
        page = await call(url, OWNER, "list_runs", agent="hello", limit=2, cursor=cursor)
        seen += [run["id"] for run in page["runs"]]
        if not (cursor := page["next_cursor"]):
            break
        # A run made between pages is newer than every page still to come: none of them shifts.
        newer = newer or await call(url, OWNER, "run_agent", agent="hello")
    assert seen == [run["id"] for run in reversed(made)]
    assert newer is not None
    assert (await call(url, OWNER, "list_runs", agent="hello", limit=1))["runs"][0]["id"] == newer["id"]
    assert (await call(url, OWNER, "list_runs", since=started.isoformat()))["runs"][-1]["id"] == made[0]["id"]
    assert (await call(url, OWNER, "list_runs", until=started.isoformat()))["runs"] == []
    naive = started.replace(tzinfo=None).isoformat()  # read as UTC
    assert (await call(url, OWNER, "list_runs", until=naive))["runs"] == []

    first = await call(url, OWNER, "list_runs", limit=2)
    assert "belongs to another query" in await refused(url, OWNER, "list_runs", limit=2, state="failed",
                                            cursor=first["next_cursor"])
    assert "damaged" in await refused(url, OWNER, "list_runs", cursor="garbage!")
    # Cursors are not signed: a forged one carrying a huge list of runs is refused, not served.
    query = fingerprint("runs", None, None, None, None, "2")
    forged = encode_cursor(query, t=started.isoformat(), seen=[str(n) for n in range(5000)])
    assert "damaged" in await refused(url, OWNER, "list_runs", limit=2, cursor=forged)
    naive = encode_cursor(query, t=started.replace(tzinfo=None).isoformat(), seen=[])  # read as UTC
    assert (await call(url, OWNER, "list_runs", limit=2, cursor=naive))["runs"] == []


async def test_runs_that_cannot_start_are_diagnosed_with_their_cause(url: str, prefect_api: str) -> None:
    """No worker, a paused pool, a full pool, an unapproved manifest: each named, with what to do."""
    orgs = {"no_worker": "dev:nw:nobody-polls:owner", "pool_paused": "dev:pp:paused-pool:owner",
            "concurrency_limit": "dev:cl:full-pool:owner", "unapproved": "dev:ua:unapproved:owner"}
    runs = {}
    for cause, token in orgs.items():
        agent = await call(url, token, "create_agent", **hello())
        async with PrefectClient(prefect_api) as prefect:
            if cause == "unapproved":
                # An operator starts it from the Prefect UI: it carries a version nobody approved.
                deployment = await prefect.read_deployment_by_name(agent["deployment"])
                made = await prefect.create_flow_run_from_deployment(deployment.id)
                runs[cause] = {"id": str(made.id), "name": made.name}
                continue
            await call(url, token, "update_agent", agent="hello", action="approve")
            runs[cause] = await call(url, token, "run_agent", agent="hello")
            if cause == "pool_paused":
                await prefect.update_work_pool(agent["work_pool"], WorkPoolUpdate(is_paused=True))
            if cause == "concurrency_limit":
                await prefect.update_work_pool(agent["work_pool"], WorkPoolUpdate(concurrency_limit=0))
    waiting = await call(url, orgs["no_worker"], "diagnose_run", run=runs["no_worker"]["id"])
    assert waiting["cause"] == "waiting"  # just made: not late yet
    await asyncio.sleep(21)  # past diagnosis.LATE_AFTER
    for cause, token in orgs.items():
        diagnosis = await call(url, token, "diagnose_run", run=runs[cause]["name"])
        assert diagnosis["cause"] == cause, diagnosis
        assert diagnosis["next_action"] and diagnosis["evidence"]
    no_worker = await call(url, orgs["no_worker"], "diagnose_run", run=runs["no_worker"]["id"])
    assert "0 worker(s) polling" in " ".join(no_worker["evidence"]) and "ariel up" in no_worker["next_action"]


async def test_an_agent_may_not_name_the_control_plane_as_a_host_or_model_base_url(url: str, prefect_api: str) -> None:
    prefect = f"127.0.0.1:{urlsplit(prefect_api).port}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": ["http_request"], "allowed_hosts": [prefect]},
         f"allowed_hosts: '{prefect}' is Ariel's own control plane"),
        ({"tools": ["http_request"], "allowed_hosts": ["localhost"]}, "'localhost' would allow every local port"),
        ({"model": "openai/gpt-4o-mini", "api_base": f"http://{prefect}/api", "script": None},
         f"api_base: {prefect} is Ariel's own control plane"),
        ({"model": "openai/gpt-4o-mini", "api_base": "http://llm.example.test/v1?", "script": None},
         "api_base: give a plain base URL, without '?' or '#'"),
        ({"model": "openai/gpt-4o-mini", "api_base": "file:///etc/passwd", "script": None},
         "api_base: that is not an http(s) URL"),
    ]
    for fields, why in cases:
        spec = {k: v for k, v in hello("Snoop", **fields).items() if v is not None}
        assert why in await refused(url, OWNER, "create_agent", **spec)
    assert (await call(url, OWNER, "list_agents"))["agents"] == []


async def test_a_service_the_operator_protects_is_refused_to_agents_and_handed_to_every_run(
    tmp_path: Path, prefect_api: str
) -> None:
    # As the compose install protects its PostgreSQL: a port on the host's network that runs could otherwise reach.
    home = tmp_path / "home"
    home.mkdir()
    settings = ArielSettings(home=home, auth_mode="dev", protected_endpoints="127.0.0.1:5433")
    with serve_app(settings, prefect_api, pool_type="docker") as app:
        why = await refused(app, OWNER, "create_agent", **hello("Snoop", tools=["http_request"],
                                                                 allowed_hosts=["127.0.0.1:5433"]))
        agent = await call(app, OWNER, "create_agent", **hello())
    assert "allowed_hosts: '127.0.0.1:5433' is Ariel's own control plane or a service the operator protects" in why
    async with PrefectClient(prefect_api) as prefect:
        pool = await prefect.read_work_pool(agent["work_pool"])
    protected = pool.base_job_template["job_configuration"]["env"]["ARIEL_PROTECTED_ENDPOINTS"].split(",")
    assert protected[0] == "127.0.0.1:5433" and f"127.0.0.1:{urlsplit(prefect_api).port}" in protected
    # What an operator reads beside the pool's hex name in the Prefect UI: whose pool it is.
    assert pool.description is not None and pool.description.startswith("Ariel agents of lifecycle (lifecycle) (org:")


async def test_where_the_control_plane_keeps_off_private_networks_its_pools_runs_do_too_but_not_an_orgs_own(
    tmp_path: Path, prefect_api: str
) -> None:
    """The SaaS models (ARIEL_MCP_PRIVATE_NETWORKS false): runs on Ariel's pool host share its network, so its pools
    refuse every private address (`flows.network.guard.PRIVATE_NETWORKS`); an org's own hardware is on the org's."""
    home = tmp_path / "home"
    home.mkdir()
    settings = ArielSettings(home=home, auth_mode="dev", mcp_private_networks=False)
    with serve_app(settings, prefect_api, pool_type="docker") as app:
        agent = await call(app, OWNER, "create_agent", **hello())
        await call(app, OWNER, "manage_org", action="create_worker_key", name="rack")
        own = await call(app, OWNER, "create_agent", **hello("On the rack"))
    async with PrefectClient(prefect_api) as prefect:
        platform, rack = [await prefect.read_work_pool(made["work_pool"]) for made in (agent, own)]
    assert rack.name.endswith("-own") and not platform.name.endswith("-own")
    envs = [pool.base_job_template["job_configuration"]["env"] for pool in (platform, rack)]
    assert envs[0]["ARIEL_PRIVATE_NETWORKS"] == "refused", envs[0]
    assert "ARIEL_PRIVATE_NETWORKS" not in envs[1], envs[1]
    # Both keep the control plane's own services.
    for env in envs:
        assert f"127.0.0.1:{urlsplit(prefect_api).port}" in env["ARIEL_PROTECTED_ENDPOINTS"].split(","), env


async def test_the_bucket_and_the_collector_on_the_runs_network_are_refused_to_agents_and_runs(
    tmp_path: Path, prefect_api: str, s3: S3Server
) -> None:
    """A run shares the host's network (Docker pools): it must not reach the bucket or the collector there."""
    collector = f"127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    home.mkdir()
    settings = ArielSettings(home=home, auth_mode="dev", otlp_endpoint=f"http://{collector}",
                             object_store_url=f"http://{s3.endpoint}/t-{uuid.uuid4().hex[:12]}",
                             object_store_access_key=s3.access_key, object_store_secret_key=s3.secret_key)
    with serve_app(settings, prefect_api, pool_type="docker") as app:
        whys = [await refused(app, OWNER, "create_agent", **hello(f"Snoop {n}", tools=["http_request"],
                                                                   allowed_hosts=[host]))
                for n, host in enumerate((s3.endpoint, collector))]
        agent = await call(app, OWNER, "create_agent", **hello())
    assert all("is Ariel's own control plane or a service the operator protects" in why for why in whys), whys
    async with PrefectClient(prefect_api) as prefect:
        pool = await prefect.read_work_pool(agent["work_pool"])
    env = pool.base_job_template["job_configuration"]["env"]
    assert {s3.endpoint, collector} <= set(env["ARIEL_PROTECTED_ENDPOINTS"].split(","))
    assert env["ARIEL_TELEMETRY"] == "on"  # its runs export, through the gateway
