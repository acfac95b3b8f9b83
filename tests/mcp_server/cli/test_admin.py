"""`ariel admin`: the install's operator lists, suspends, resumes, limits and deletes orgs, from the command line,
against a real Prefect server and the store of a running app; every action lands in the org's audit trail."""

from __future__ import annotations

import getpass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Completed, Running

from mcp_server.cli.stack import Runtime
from mcp_server.services.caller import Caller
from mcp_server.services.container import open_services
from mcp_server.settings import ArielSettings
from mcp_server.store import ORG_DELETING, Store
from tests.mcp_server.callers import call
from tests.mcp_server.cli.test_cli import ariel, last_line

ANN = "dev:ann:acme:owner"
OPERATOR = f"operator {getpass.getuser()} (ariel admin)"


@pytest.fixture
def home(url: str, prefect_api: str, tmp_path: Path) -> Path:
    """The `url` app's home, where `ariel admin` finds its store and (as `ariel up` records it) its Prefect API."""
    home = tmp_path / "home"
    Runtime(prefect_api_url=prefect_api, pool_type="process").save(home)
    return home


def admin(home: Path, *args: str, stdin: str | None = None) -> Any:
    return ariel("admin", *args, stdin=stdin, ARIEL_HOME=str(home))


async def active_agent(url: str, token: str, name: str) -> dict[str, Any]:
    """An approved agent with an hourly schedule: its deployment is not paused."""
    agent = await call(url, token, "create_agent", name=name, instructions="x", model="ariel/scripted",
                       script=[{"reply": "hi"}], schedule={"interval_seconds": 3600})
    await call(url, token, "update_agent", agent=agent["id"], action="approve", version=1)
    return agent  # type: ignore[no-any-return]


def mcp_status(url: str, token: str) -> tuple[int, dict[str, Any]]:
    """What /mcp answers a request bearing `token`, before any MCP: the authentication's verdict."""
    answer = httpx.post(f"{url}/mcp", headers={"Authorization": f"Bearer {token}", "Accept": "application/json, "
                                                "text/event-stream"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30)
    return answer.status_code, (answer.json() if answer.status_code >= 400 else {})


async def audit(home: Path, org_id: str) -> list[tuple[str, str, str, str]]:
    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        return [(e.action, e.actor, e.target, e.outcome) for e in await store.audit_events(org_id)
                if e.action.startswith("admin.")]
    finally:
        await store.close()


async def test_a_suspended_org_is_refused_with_why_and_paused_and_resuming_gives_it_all_back(
    url: str, prefect_api: str, home: Path
) -> None:
    agent = await active_agent(url, ANN, "Hourly")
    key = (await call(url, ANN, "manage_org", action="create_key", name="ci"))["keys"][0]["key"]
    org_id = (await call(url, ANN, "whoami"))["workspace"]["id"]
    assert mcp_status(url, key)[0] == 200

    done = admin(home, "suspend", "acme", "--reason", "invoice 42 unpaid")
    assert done.returncode == 0, done.stderr
    assert "'acme' is suspended" in done.stdout and "nothing is deleted" in done.stdout
    for token in (key, ANN):  # an API key, and a person's sign-in (here a dev token)
        status, body = mcp_status(url, token)
        assert (status, body["error"]) == (403, "suspended"), body
        assert body["detail"] == ("The organization 'acme' is suspended by this install's operator (invoice 42 "
                                  "unpaid); nothing of it is deleted. Ask the operator to resume it.")
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_deployment_by_name(agent["deployment"])).paused
        assert (await prefect.read_work_pool(agent["work_pool"])).is_paused
    # Again: nothing changes but what a failed attempt left (the reason stays the first one).
    again = admin(home, "suspend", "acme", "--reason", "other")
    assert again.returncode == 0 and "'acme' was already suspended" in again.stdout, again.stderr
    listed = admin(home, "orgs", "acme")
    assert listed.returncode == 0 and "suspended" in listed.stdout and "invoice 42 unpaid" in listed.stdout

    resumed = admin(home, "resume", "acme")
    assert resumed.returncode == 0, resumed.stderr
    assert mcp_status(url, key)[0] == 200
    assert (await call(url, key, "get_agent", agent="hourly"))["status"] == "active"
    async with PrefectClient(prefect_api) as prefect:
        assert not (await prefect.read_deployment_by_name(agent["deployment"])).paused
        assert not (await prefect.read_work_pool(agent["work_pool"])).is_paused
    assert await audit(home, org_id) == [
        ("admin.resume", OPERATOR, "acme", "ok"),
        ("admin.suspend", OPERATOR, "acme (other)", "ok"),
        ("admin.suspend", OPERATOR, "acme (invoice 42 unpaid)", "ok"),
    ]


async def test_a_paused_agent_stays_paused_when_its_org_is_resumed(url: str, prefect_api: str, home: Path) -> None:
    token = "dev:bo:quiet:owner"
    agent = await active_agent(url, token, "Nightly")
    await call(url, token, "update_agent", agent="nightly", action="pause")
    assert admin(home, "suspend", "quiet").returncode == 0
    assert admin(home, "resume", "quiet").returncode == 0
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_deployment_by_name(agent["deployment"])).paused  # as its owner left it
    assert (await call(url, token, "get_agent", agent="nightly"))["status"] == "paused"


async def test_limits_reach_the_orgs_pool_and_bad_ones_are_refused_with_what_is_allowed(
    url: str, prefect_api: str, home: Path
) -> None:
    token = "dev:cy:busy:owner"
    agent = await active_agent(url, token, "Often")
    # The org's Docker pool too (an app on Docker would have made it), with the install's defaults.
    org_id = (await call(url, token, "whoami"))["workspace"]["id"]
    async with open_services(ArielSettings(home=home), prefect_api, "docker") as services:
        docker_pool = await services.agents.ensure_pool(Caller("t", "test", org_id, "busy", "busy", "owner", "local",
                                                               "test"))
    shown = admin(home, "limits", "busy")
    assert shown.stdout.strip() == ("'busy': no limit on runs at once, 2g (default) of memory and 1 (default) CPU(s) "
                                    "per run"), shown.stderr
    done = admin(home, "limits", "busy", "--concurrent-runs", "2", "--memory", "1G", "--cpus", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("'busy': 2 run(s) at once, 1g of memory and 0.5 CPU(s) per run; its work pools "
                                   "enforce them from the next run on")
    limits = (await call(url, token, "whoami"))["limits"]  # what the org's members are told
    assert (limits["concurrent_runs"], limits["memory_per_run"], limits["cpus_per_run"]) == (2, "1g", 0.5)
    # Prefect enforces it: with two of its runs under way, a worker polling the pool is handed none of the third.
    runs = [UUID((await call(url, token, "run_agent", agent="often"))["id"]) for _ in range(3)]
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_work_pool(agent["work_pool"])).concurrency_limit == 2
        for run_id in runs[:2]:
            await prefect.set_flow_run_state(run_id, Running(), force=True)
        assert await prefect.get_scheduled_flow_runs_for_work_pool(agent["work_pool"]) == []
    # Memory and CPUs go into the template of the org's Docker pool, which each run container is made from; the
    # rest of the template stays the app's.
    async with PrefectClient(prefect_api) as prefect:
        job = (await prefect.read_work_pool(docker_pool)).base_job_template["job_configuration"]
    assert (job["mem_limit"], job["memswap_limit"], job["container_create_kwargs"]["nano_cpus"]) == (
        "1g", "1g", 500_000_000)
    assert job["container_create_kwargs"]["cap_drop"] == ["ALL"] and job["image"].startswith("ariel-runtime")

    refusals = (
        ("--memory", "lots", "--memory: give a size in Docker's notation from 128m to 256g (e.g. 512m, 2g), or "
                             "'default'"),
        ("--memory", "64m", "--memory: give a size in Docker's notation from 128m to 256g (e.g. 512m, 2g), or "
                            "'default'"),
        ("--concurrent-runs", "0", "--concurrent-runs: give 1 to 10000, or 'default' for no limit"),
        ("--concurrent-runs", "two", "--concurrent-runs: 'two' is not a whole number, nor 'default'"),
        ("--cpus", "500", "--cpus: give 0.1 to 64 (e.g. 0.5, 2), or 'default'"),
    )
    with ThreadPoolExecutor(len(refusals)) as pool:  # each a process of its own, seconds of imports each
        answers = list(pool.map(lambda refusal: admin(home, "limits", "busy", refusal[0], refusal[1]), refusals))
    for (_, _, error), refused in zip(refusals, answers, strict=True):
        assert (refused.returncode, last_line(refused.stderr)) == (1, f"ariel admin: {error}"), refused.stderr
        assert "Traceback" not in refused.stderr
    # Nothing refused changed anything; one limit set back to the default leaves the others.
    back = admin(home, "limits", "busy", "--concurrent-runs", "default")
    assert back.stdout.startswith("'busy': no limit on runs at once, 1g of memory and 0.5 CPU(s) per run"), back.stdout
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_work_pool(agent["work_pool"])).concurrency_limit is None
        handed = [run.flow_run.id for run in await prefect.get_scheduled_flow_runs_for_work_pool(agent["work_pool"])]
        assert runs[2] in handed, handed
    unknown = admin(home, "limits", "nobody", "--cpus", "1")
    assert (unknown.returncode, last_line(unknown.stderr)) == (
        1, "ariel admin: no org 'nobody' in this install; `ariel admin orgs` lists them")


async def test_orgs_lists_members_agents_and_this_months_runs_tokens_and_cost(
    url: str, prefect_api: str, home: Path
) -> None:
    token = "dev:di:ledger:owner"
    await call(url, "dev:ed:ledger:member", "whoami")  # a second member
    await active_agent(url, token, "Counter")
    async with PrefectClient(prefect_api) as prefect:
        for outcome, used in ((Completed(), {"prompt_tokens": 1200, "cost_usd": 0.25}),
                              (Completed(), {"prompt_tokens": 300, "cost_usd": None})):
            run_id = UUID((await call(url, token, "run_agent", agent="counter"))["id"])
            await prefect.set_flow_run_state(run_id, Running(), force=True)
            await prefect.set_flow_run_state(run_id, outcome, force=True)
            await prefect.create_artifact(ArtifactCreate(
                key="usage", type="table", flow_run_id=run_id,
                data=[{"completion_tokens": 34, "llm_calls": 1, "tool_calls": 0, "duration_seconds": 1.0, **used}]))
    listed = admin(home, "orgs")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()[1:]
    assert header.split() == ["ORG", "NAME", "STATUS", "MEMBERS", "AGENTS", "RUNS", "FAILED", "TOKENS", "COST",
                              "LIMITS"]
    [ledger] = [row.split() for row in rows if row.startswith("ledger ")]
    assert ledger == ["ledger", "ledger", "active", "2", "1", "2", "0", "1,568", "$0.25", "+1", "unpriced",
                      "defaults"]


async def test_deleting_an_org_removes_everything_it_owns_but_never_while_a_run_is_in_flight(
    url: str, prefect_api: str, home: Path
) -> None:
    token = "dev:fay:doomed:owner"
    agent = await active_agent(url, token, "Worker")
    org_id = (await call(url, token, "whoami"))["workspace"]["id"]
    run_id = UUID((await call(url, token, "run_agent", agent="worker"))["id"])
    objects = home / "objects" / "orgs" / org_id / "runs" / str(run_id)
    objects.mkdir(parents=True)
    (objects / "kept").write_bytes(b"sealed transcript")
    async with PrefectClient(prefect_api) as prefect:
        artifact = await prefect.create_artifact(ArtifactCreate(key="transcript", type="markdown", data="# said",
                                                                flow_run_id=run_id))
        await prefect.set_flow_run_state(run_id, Running(), force=True)

    not_asked = admin(home, "delete", "doomed")  # no terminal to ask on
    assert (not_asked.returncode, last_line(not_asked.stderr)) == (
        1, "ariel admin: delete: give --yes to delete without being asked (no terminal to ask on)")
    busy = admin(home, "delete", "doomed", "--yes")
    assert (busy.returncode, last_line(busy.stderr)) == (
        1, "ariel admin: 'doomed' has 1 run(s) in progress, so nothing was deleted; cancel them or let them finish, "
           "then delete it")
    # Refused, it undid the suspension it began with: the org works as before.
    assert (await call(url, token, "get_agent", agent="worker"))["id"] == agent["id"]
    async with PrefectClient(prefect_api) as prefect:
        assert not (await prefect.read_deployment_by_name(agent["deployment"])).paused
        assert not (await prefect.read_work_pool(agent["work_pool"])).is_paused
        await prefect.set_flow_run_state(run_id, Cancelled(), force=True)
    # A deletion cut short (as if the object store had been down) leaves the org refused, saying why; it cannot be
    # resumed, only finished.
    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        await store.set_org_suspended(org_id, ORG_DELETING)
    finally:
        await store.close()
    status, body = mcp_status(url, token)
    assert (status, body["detail"]) == (403, "The organization 'doomed' is being deleted; if that was cut short, the "
                                             "install's operator finishes it with `ariel admin delete`.")
    resumed = admin(home, "resume", "doomed")
    assert (resumed.returncode, last_line(resumed.stderr)) == (
        1, "ariel admin: 'doomed' is being deleted (or its deletion was cut short), so it cannot be resumed; `ariel "
           "admin delete doomed` finishes it")
    done = admin(home, "delete", "doomed", "--yes")
    assert done.returncode == 0, done.stderr
    assert "'doomed' is deleted with everything it owned (1 run(s) among it)" in done.stdout
    async with PrefectClient(prefect_api) as prefect:
        with pytest.raises(ObjectNotFound):
            await prefect.read_flow_run(run_id)
        with pytest.raises(ObjectNotFound):
            await prefect.read_deployment_by_name(agent["deployment"])
        with pytest.raises(ObjectNotFound):
            await prefect.read_work_pool(agent["work_pool"])
        gone = ArtifactFilter(id=ArtifactFilterId(any_=[artifact.id]))
        assert await prefect.read_artifacts(artifact_filter=gone) == []
    assert not (home / "objects" / "orgs" / org_id).exists()
    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        assert await store.get_org(org_id) is None
    finally:
        await store.close()
    assert await audit(home, org_id) == [("admin.delete", OPERATOR, "doomed", "ok"),
                                         ("admin.resume", OPERATOR, "doomed", "failed"),
                                         ("admin.delete", OPERATOR, "doomed", "failed")]
