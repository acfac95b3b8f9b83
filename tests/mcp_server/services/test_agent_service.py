"""AgentService against the store and Prefect: creating is all or nothing, and providers are the org's own."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.states import Completed, Running, Scheduled
from starlette.requests import Request
from starlette.responses import Response

from deployments.agents import naming
from deployments.agents.naming import reservation_name
from deployments.agents.signing import Ed25519ConfigSigner
from mcp_server.services.agents import AgentService
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import InvalidRequest, NotFound, Unavailable
from mcp_server.store import Organization, Store
from tests.support import Forward, free_port, prefect_proxy


async def local_install(tmp_path: Path, prefect_api: str) -> tuple[Store, Organization, AgentService]:
    """A desktop install's store (its local owner's org) and its agent service on process pools."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    _, org = await store.ensure_local_owner()
    service = AgentService(store, prefect_api, "process", "ariel-runtime:local", await store.installation_id(),
                           signer=Ed25519ConfigSigner.generate())
    return store, org, service


def owner_of(org: Organization) -> Caller:
    """The local user, as owner of `org`."""
    return Caller(user_id="local", user_label="local", org_id=org.id, org_slug=org.slug, org_name=org.name,
                  role="owner", source="local", origin="test")


async def test_an_agent_prefect_refused_is_not_left_in_the_store(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    org = await store.ensure_personal_org()
    caller = owner_of(org)
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    service = AgentService(
        store, dead_api, "process", "ariel-runtime:local", await store.installation_id(),
        signer=Ed25519ConfigSigner.generate(),
    )
    spec = {"name": "Orphan", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    with pytest.raises(Unavailable, match=f"the Prefect API at {dead_api} did not answer; is `ariel up` running"):
        await service.create(caller, spec)
    assert await store.list_agents(org.id) == []
    [event] = await store.audit_events(org.id)
    assert (event.action, event.target, event.outcome) == ("agent.create", "Orphan", "failed")
    assert event.detail is not None and "did not answer" in event.detail
    await store.close()


async def test_an_agent_names_its_own_orgs_provider_only(tmp_path: Path, prefect_api: str) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    user, org = await store.ensure_local_owner()
    other = await store.create_org("other", "Other", user.id)
    install = await store.installation_id()
    service = AgentService(
        store, prefect_api, "process", "ariel-runtime:local", install, signer=Ed25519ConfigSigner.generate()
    )
    name = f"keyed-{install[:8]}"
    await store.add_data_key(other.id, 1, "kek", b"wrapped")  # sealing itself is tested in test_sealing
    await store.put_provider(other.id, name, None, b"sealed", b"nonce", 1)
    spec = {"name": "Keyed", "instructions": "x", "model": "openai/gpt-4o-mini", "provider": name}
    with pytest.raises(InvalidRequest, match=f"provider: there is no provider {name!r} here"):
        await service.create(owner_of(org), spec)
    await store.add_data_key(org.id, 1, "kek", b"wrapped")
    await store.put_provider(org.id, name, None, b"sealed", b"nonce", 1)
    agent = await service.create(owner_of(org), spec)
    assert agent.deployment is not None
    async with PrefectClient(prefect_api) as client:
        deployment = await client.read_deployment_by_name(agent.deployment)
    # The run's config names it by the spec's name: it is opened in the org the run belongs to, whatever it says.
    assert deployment.parameters["config"]["provider"] == name
    await store.close()


async def test_a_model_whose_provider_litellm_cannot_tell_is_refused_before_anything_is_made(
    tmp_path: Path, prefect_api: str,
) -> None:
    """Every run of it would fail at its first step ("LLM Provider NOT provided"): said at create and change."""
    store, org, service = await local_install(tmp_path, prefect_api)
    caller = owner_of(org)
    with pytest.raises(InvalidRequest, match=r"^the agent was not created: model: litellm cannot tell which provider "
                       r"serves 'scripted/reply'; a model id starts with its provider.*'ariel/scripted'"):
        await service.create(caller, {"name": "Typo", "instructions": "x", "model": "scripted/reply"})
    assert await store.list_agents(org.id) == []
    agent = await service.create(caller, {"name": "Typo", "instructions": "x", "model": "ariel/scripted",
                                          "script": [{"reply": "hi"}]})
    with pytest.raises(InvalidRequest, match="^the agent was not changed: model: litellm cannot tell"):
        await service.update(caller, agent.id, "change", {"model": "gpt4o"})
    # litellm knows some providers by their base URL, the agent's or its provider's: as a run's call will.
    groq = {"model": "llama-3.1-8b-instant", "api_base": "https://api.groq.com/openai/v1"}
    assert (await service.update(caller, agent.id, "change", groq)).model == groq["model"]
    await store.add_data_key(org.id, 1, "kek", b"wrapped")  # sealing itself is tested in test_sealing
    await store.put_provider(org.id, "groq-main", "https://api.groq.com/openai/v1", b"sealed", b"nonce", 1)
    keyed = {"model": "llama-3.1-8b-instant", "api_base": "", "provider": "groq-main"}
    assert (await service.update(caller, agent.id, "change", keyed)).model == groq["model"]
    await store.close()


async def test_a_model_that_takes_an_api_key_is_refused_when_the_agent_gives_it_none(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a Docker pool nothing else would give its runs one ("Missing credentials" at every first step); on a process
    pool a key in the app's environment reaches them."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    _, org = await store.ensure_local_owner()
    caller = owner_of(org)
    docker, process = [AgentService(store, prefect_api, kind, "ariel-runtime:local", await store.installation_id(),
                                    signer=Ed25519ConfigSigner.generate()) for kind in ("docker", "process")]
    with pytest.raises(InvalidRequest, match=r"^the agent was not created: model: 'openai/gpt-4o-mini' takes an API "
                       r"key, and the agent names no provider to hold it: give provider.*or api_base"):
        await docker.create(caller, {"name": "Paid", "instructions": "x", "model": "openai/gpt-4o-mini"})
    assert await store.list_agents(org.id) == []
    agent = await docker.create(caller, {"name": "Paid", "instructions": "x", "model": "openai/gpt-4o-mini",
                                         "api_base": "https://llm.example.test/v1"})
    with pytest.raises(InvalidRequest, match="^the agent was not changed: model: 'openai/gpt-4o-mini' takes an API"):
        await docker.update(caller, agent.id, "change", {"api_base": ""})
    # A hosted service's address is no keyless server of one's own.
    with pytest.raises(InvalidRequest, match="^the agent was not changed: model: 'llama-3.1-8b-instant' takes an API"):
        await docker.update(caller, agent.id, "change", {"model": "llama-3.1-8b-instant",
                                                         "api_base": "https://api.groq.com/openai/v1"})
    # A model served by a base URL of one's own, or by a machine's own credentials, is the machine's to have.
    for model in ("ollama/llama3", "bedrock/anthropic.claude-3"):
        assert (await docker.update(caller, agent.id, "change", {"model": model, "api_base": ""})).model == model
    assert (await process.create(caller, {"name": "Local", "instructions": "x", "model": "gpt-4o-mini"})).model \
        == "gpt-4o-mini"
    await store.close()


async def test_an_agent_just_approved_says_when_its_schedule_runs_it_before_prefect_has_made_those_runs(
    tmp_path: Path, prefect_api: str,
) -> None:
    """Prefect's scheduler makes a deployment's runs once a minute: until then get_agent reads them from the
    schedule, not as 'never'. Paused, it runs at no time."""
    store, org, service = await local_install(tmp_path, prefect_api)
    caller = owner_of(org)
    agent = await service.create(caller, {"name": "Daily", "instructions": "x", "model": "ariel/scripted",
                                          "script": [{"reply": "hi"}], "schedule": {"cron": "0 8 * * *"}})
    await service.update(caller, agent.id, "approve", {})
    before = datetime.now(UTC)
    seen = (await service.get(caller, agent.id)).next_runs
    assert seen is not None and len(seen) == 3, seen
    assert all(time > before and (time.hour, time.minute) == (8, 0) for time in seen), seen
    assert [later - earlier for earlier, later in zip(seen, seen[1:], strict=False)] == [timedelta(days=1)] * 2
    await service.update(caller, agent.id, "pause", {})
    assert (await service.get(caller, agent.id)).next_runs == []
    await store.close()


async def test_a_refused_delete_of_a_missing_agent_is_audited_like_a_refused_change(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    org = await store.ensure_personal_org()
    caller = owner_of(org)
    # Refused before Prefect is asked: no Prefect server is needed.
    service = AgentService(
        store, f"http://127.0.0.1:{free_port()}/api", "process", "ariel-runtime:local", await store.installation_id(),
        signer=Ed25519ConfigSigner.generate(),
    )
    with pytest.raises(NotFound, match="no agent 'ghost'"):
        await service.update(caller, "ghost", "change", {"instructions": "y"})
    for confirm in (True, False):
        with pytest.raises(NotFound, match="no agent 'ghost'"):
            await service.delete(caller, "ghost", confirm=confirm)
    events = sorted(await store.audit_events(org.id), key=lambda event: event.action)
    assert [(e.action, e.target, e.outcome, e.actor, e.origin) for e in events] == [
        ("agent.change", "ghost", "failed", "local", "test"),
        ("agent.delete", "ghost", "failed", "local", "test"),
        ("agent.delete", "ghost", "failed", "local", "test"),
    ]
    assert {e.detail for e in events} == {"no agent 'ghost'; list_agents shows the agents you can use, by id and slug"}
    await store.close()


async def test_a_redeploy_deploys_the_version_current_when_its_turn_comes_not_the_one_it_listed(
    postgres_url: str, prefect_api: str
) -> None:
    # Replica B restarts (and redeploys every agent) while replica A is changing one: A holds the agent's turn
    # from reading it to deploying its new version; B's redeploy waits, then deploys what the store holds then.
    store, replica_a = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        _, org = await store.ensure_local_owner()
        service = AgentService(store, prefect_api, "process", "ariel-runtime:local", await store.installation_id(),
                               signer=Ed25519ConfigSigner.generate())
        spec = {"name": "Turned", "instructions": "First.", "model": "ariel/scripted", "script": [{"reply": "1"}]}
        agent = await service.create(owner_of(org), spec)
        async with replica_a.turn(f"agent:{agent.id}"):
            redeploying = asyncio.create_task(service.redeploy_all(owner_of(org)))
            await asyncio.sleep(1)
            assert not redeploying.done(), "the redeploy did not wait for the agent's turn"
            first = await replica_a.get_version(org.id, agent.id, 1)
            assert first is not None
            await replica_a.add_version(org.id, agent.id, 1, "Turned", {**first.spec, "instructions": "Second."},
                                        "replica A")
        assert await asyncio.wait_for(redeploying, 60) == 1
        async with PrefectClient(prefect_api) as prefect:
            deployment = await prefect.read_deployment_by_name(str(agent.deployment))
        assert (deployment.parameters["config"]["version"], deployment.parameters["config"]["instructions"]) == (
            2, "Second.")
    finally:
        await store.close()
        await replica_a.close()


async def test_an_orgs_agents_move_from_its_id_named_pool_to_its_named_one_which_goes_once_no_run_needs_it(
    tmp_path: Path, prefect_api: str
) -> None:
    """An install of a release before names: its org's pool is `ariel-<install>-<org id>-<type>`."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.states import Cancelled

    from deployments.pools.work_pools import ensure_pool as make_pool
    from deployments.pools.work_pools import install_prefix, legacy_pool_name, process_job_template

    store, org, service = await local_install(tmp_path, prefect_api)
    install = service.install_id
    owner = owner_of(org)
    named, _ = await service.org_pool(owner)
    assert named == f"{install_prefix(install)}personal-process"
    agent = await service.create(owner, {"name": "Mover", "instructions": "x", "model": "ariel/scripted",
                                         "script": [{"reply": "moved"}]})
    legacy = legacy_pool_name(install, org.id, "process")
    async with PrefectClient(prefect_api) as prefect:
        # As the older release left it: the deployment, and a run waiting, in the id-named pool.
        await make_pool(prefect, legacy, "process", process_job_template(), org.id)
        deployment = await prefect.read_deployment_by_name(str(agent.deployment))
        await prefect.update_deployment(deployment.id, DeploymentUpdate(work_pool_name=legacy))
        waiting = await prefect.create_flow_run_from_deployment(deployment.id)
        assert waiting.work_pool_name == legacy

        assert await service.redeploy_all(owner) == 1
        assert (await prefect.read_deployment(deployment.id)).work_pool_name == named
        # The run left in it starts from its template: kept as the org's is (here: the verify key runs check).
        assert (await prefect.read_work_pool(legacy)).base_job_template == (
            await prefect.read_work_pool(named)).base_job_template
        assert await service.retire_legacy_pools(owner) == []  # a run still waits in it
        await prefect.read_work_pool(legacy)

        await prefect.set_flow_run_state(waiting.id, Cancelled(), force=True)
        assert await service.retire_legacy_pools(owner) == [legacy]
        assert legacy not in [pool.name for pool in await prefect.read_work_pools()]
        assert await service.retire_legacy_pools(owner) == []  # nothing left to do
    await store.close()


async def test_a_pool_of_the_orgs_name_that_belongs_to_another_org_is_refused_not_taken(
    tmp_path: Path, prefect_api: str
) -> None:
    from deployments.exceptions import PoolOwnedElsewhere
    from deployments.pools.work_pools import ensure_pool as make_pool
    from deployments.pools.work_pools import process_job_template

    store, org, service = await local_install(tmp_path, prefect_api)
    named, _ = await service.org_pool(owner_of(org))
    async with PrefectClient(prefect_api) as prefect:
        other = "f" * 32
        await make_pool(prefect, named, "process", process_job_template(), other, org_label="Other (other)")
        with pytest.raises(PoolOwnedElsewhere, match="belongs to another organization"):
            await service.ensure_pool(owner_of(org))
        assert f"(org:{other})" in str((await prefect.read_work_pool(named)).description)
        await prefect.delete_work_pool(named)
    await store.close()


async def test_two_installs_on_one_prefect_creating_the_same_agent_at_once_each_get_a_deployment_of_their_own(
    tmp_path: Path, prefect_api: str,
) -> None:
    """Each desktop's org is `personal`: two installs sharing a Prefect server may make the same agent at once, and
    Prefect would update a deployment of the same name in place, one tenant's agent taking over the other's."""
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    installs = [await local_install(tmp_path / side, prefect_api) for side in ("a", "b")]
    name = f"Racer {uuid.uuid4().hex[:6]}"
    spec = {"name": name, "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    made = await asyncio.gather(*(service.create(owner_of(org), spec) for _, org, service in installs))
    for _, org, service in installs:  # what `ariel up` does at each start
        await service.redeploy_all(owner_of(org))

    flow = made[0].slug
    names = sorted(str(agent.deployment) for agent in made)
    async with PrefectClient(prefect_api) as prefect:
        deployments = {agent.id: await prefect.read_deployment_by_name(str(agent.deployment)) for agent in made}
        under_flow = await prefect.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
    # Named for people: the flow by the agent, its deployment by the org; the second to ask, by part of its id too.
    assert names[0] == f"{flow}/personal" and re.fullmatch(rf"{flow}/personal-[0-9a-f]{{8}}", names[1]), names
    for agent in made:
        assert f"agent:{agent.id}" in deployments[agent.id].tags
        assert deployments[agent.id].parameters["config"]["agent_id"] == agent.id
    assert len(under_flow) == 2  # and the redeploys at start made no third
    for store, _, _ in installs:
        await store.close()


async def test_an_agent_whose_name_was_lost_with_prefects_data_and_taken_meanwhile_goes_on_under_a_free_one(
    tmp_path: Path, prefect_api: str,
) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    (store, org, service), (other_store, other_org, other_service) = [
        await local_install(tmp_path / side, prefect_api) for side in ("a", "b")]
    spec = {"name": f"Keeper {uuid.uuid4().hex[:6]}", "instructions": "x", "model": "ariel/scripted",
            "script": [{"reply": "hi"}]}
    agent = await service.create(owner_of(org), spec)
    async with PrefectClient(prefect_api) as prefect:  # Prefect's data is lost: the deployment and the reservation
        await prefect.delete_deployment((await prefect.read_deployment_by_name(str(agent.deployment))).id)
        await prefect.delete_variable_by_name(reservation_name(agent.slug, "personal"))
    taker = await other_service.create(owner_of(other_org), spec)  # another install's agent of the same names

    await service.redeploy_all(owner_of(org))  # `ariel up` starting again
    again = await service.get(owner_of(org), agent.id, full=False)
    record = await store.find_agent(org.id, agent.id)
    async with PrefectClient(prefect_api) as prefect:
        mine = await prefect.read_deployment_by_name(str(again.deployment))
        theirs = await prefect.read_deployment_by_name(str(taker.deployment))
    assert taker.deployment == f"{agent.slug}/personal"
    assert again.deployment == f"{agent.slug}/personal-{agent.id[:8]}"
    assert record is not None and record.deployment_name == f"personal-{agent.id[:8]}"
    assert record.deployment_id == str(mine.id) and f"agent:{agent.id}" in mine.tags
    assert f"agent:{taker.id}" in theirs.tags and f"agent:{agent.id}" not in theirs.tags
    for opened in (store, other_store):
        await opened.close()


@contextmanager
def holding_deploys(prefect_api: str) -> Iterator[tuple[str, asyncio.Event, list[asyncio.AbstractEventLoop]]]:
    """A proxy in front of Prefect that holds the answer to the first deployment it makes: Prefect has made it, its
    answer never comes. Yields the proxy's API URL and the event set (on the loop given in the list) once that
    deployment is made."""
    made = asyncio.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    over: list[bool] = []

    async def around(request: Request, forward: Forward) -> Response:
        answer = await forward()
        if request.method == "POST" and request.url.path == "/api/deployments/" and not made.is_set():
            loops[0].call_soon_threadsafe(made.set)
            while not over:  # the answer is lost: the caller gives up first
                await asyncio.sleep(0.1)
        return answer  # type: ignore[no-any-return]  # a starlette Response

    with prefect_proxy(prefect_api, around) as proxy:
        try:
            yield proxy, made, loops
        finally:
            over.append(True)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
async def test_a_create_cancelled_while_prefect_deploys_leaves_no_agent_deployment_or_name(
    tmp_path: Path, prefect_api: str, store_kind: str, request: pytest.FixtureRequest,
) -> None:
    """A client that cancels create_agent (`notifications/cancelled`) cancels the anyio scope of the call, which
    cancels every await in it again: the clean-up runs shielded to its end all the same."""
    url = (f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}" if store_kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    store = await Store.open(url)
    org = await store.ensure_personal_org()
    name = f"Quitter {uuid.uuid4().hex[:6]}"
    spec = {"name": name, "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    with holding_deploys(prefect_api) as (proxy, made, loops):
        loops.append(asyncio.get_running_loop())
        service = AgentService(store, proxy, "process", "ariel-runtime:local", await store.installation_id(),
                               signer=Ed25519ConfigSigner.generate())
        async with anyio.create_task_group() as calls:
            calls.start_soon(service.create, owner_of(org), spec)
            await made.wait()
            calls.cancel_scope.cancel()

    assert await store.list_agents(org.id) == []
    slug = name.lower().replace(" ", "-")
    async with PrefectClient(prefect_api) as prefect:
        assert await prefect.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[slug]))) == []
        assert await prefect.read_variable_by_name(reservation_name(slug, org.slug)) is None
    [event] = await store.audit_events(org.id)
    assert (event.action, event.outcome, event.detail) == ("agent.create", "failed", "cancelled before it answered")
    if store_kind == "postgresql":  # the agent's turn, an advisory lock of a session of its own, was let go
        assert await advisory_locks(url) == 0
    await store.close()


async def advisory_locks(url: str) -> int:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()")).fetchone()
    return int(row[0]) if row else -1


async def test_an_agents_health_says_when_its_runs_wait_past_their_time_or_start_late(
    tmp_path: Path, prefect_api: str,
) -> None:
    # What a person sees of an install that runs fewer runs than fall due, instead of lateness left unexplained.
    store, org, service = await local_install(tmp_path, prefect_api)
    spec = {"name": f"Punctual {uuid.uuid4().hex[:6]}", "instructions": "x", "model": "ariel/scripted",
            "script": [{"reply": "hi"}]}
    agent = await service.create(owner_of(org), spec)
    assert (await service.get(owner_of(org), agent.id)).health == "no finished runs yet"
    async with PrefectClient(prefect_api) as prefect:
        deployment = await prefect.read_deployment_by_name(str(agent.deployment))
        due = datetime.now(UTC) - timedelta(minutes=2)  # due two minutes ago; no worker serves this pool
        run = await prefect.create_flow_run_from_deployment(deployment.id, state=Scheduled(scheduled_time=due))

        waiting = await service.get(owner_of(org), agent.id)

        assert waiting.recent_runs and (waiting.recent_runs[0].late_seconds or 0) >= 120
        assert waiting.health is not None and waiting.health.startswith(
            "no finished runs yet; 1 run waits past its time, the oldest by 2 min (this install runs fewer runs "
            "at once than fall due, or its worker is down)"), waiting.health

        await prefect.set_flow_run_state(run.id, Running(), force=True)  # picked up at last
        await prefect.set_flow_run_state(run.id, Completed(), force=True)
        done = await service.get(owner_of(org), agent.id)
    [view] = done.recent_runs or []
    assert view.late_seconds is not None and 120 <= view.late_seconds < 300
    assert done.health is not None and re.fullmatch(
        r"1 of the last 1 finished runs completed; the newest completed; runs start late: 1\d\d s after their "
        r"time at the median of the last 1 \(this install runs fewer runs at once than fall due, or its worker "
        r"was down\)", done.health), done.health
    await store.close()


async def test_a_name_left_reserved_by_a_create_that_failed_goes_to_the_orgs_next_agent_of_that_name(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, org, service = await local_install(tmp_path, prefect_api)
    tag = uuid.uuid4().hex[:6]
    spec = {"name": f"Phoenix {tag}", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    slug = f"phoenix-{tag}"
    # What a create that failed with Prefect unreachable left: its agent's reservation, and no row of its agent.
    async with PrefectClient(prefect_api) as prefect:
        await prefect.create_variable(VariableCreate(
            name=reservation_name(slug, org.slug), value={"deployment": f"{slug}/{org.slug}",
                                                          "agent": uuid.uuid4().hex, "org": org.id},
            tags=["ariel", f"org:{org.id}"]))
    monkeypatch.setattr(naming, "RECLAIM_AFTER", timedelta(0))  # as if it were ten minutes old

    agent = await service.create(owner_of(org), spec)

    assert agent.deployment == f"{slug}/{org.slug}"
    async with PrefectClient(prefect_api) as prefect:
        held = await prefect.read_variable_by_name(reservation_name(slug, org.slug))
    assert held is not None and held.value == {"deployment": f"{slug}/{org.slug}", "agent": agent.id, "org": org.id}
    await store.close()


async def test_an_approval_or_pause_prefect_did_not_take_says_it_was_saved_and_approving_again_deploys_it(
    tmp_path: Path, prefect_api: str,
) -> None:
    # The store takes the approval (or pause) before Prefect does: with Prefect away the agent reads approved
    # while its schedule stays paused, and the person must hear that, not a bare failure.
    store, org, service = await local_install(tmp_path, prefect_api)
    caller = owner_of(org)
    spec = {"name": "Held", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}],
            "schedule": {"interval_seconds": 3600}}
    agent = await service.create(caller, spec)
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    cut_off = AgentService(store, dead_api, "process", "ariel-runtime:local", service.install_id,
                           signer=Ed25519ConfigSigner.generate())
    away = f"(the Prefect API at {dead_api} did not answer; is `ariel up` running"
    with pytest.raises(Unavailable) as approval:
        await cut_off.update(caller, "held", "approve", {})
    assert str(approval.value).startswith(f"the approval of version 1 was saved but could not be deployed {away}")
    assert str(approval.value).endswith("; approve again, or run `ariel up` again (it re-deploys every agent)")
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_deployment_by_name(str(agent.deployment))).paused  # still as it was

    await service.update(caller, "held", "approve", {})
    async with PrefectClient(prefect_api) as prefect:
        assert not (await prefect.read_deployment_by_name(str(agent.deployment))).paused
    with pytest.raises(Unavailable, match=re.escape(f"the pause was saved but could not be deployed {away}")):
        await cut_off.update(caller, "held", "pause", {})
    await service.update(caller, "held", "pause", {})
    async with PrefectClient(prefect_api) as prefect:
        assert (await prefect.read_deployment_by_name(str(agent.deployment))).paused
    await store.close()


async def test_a_worker_key_whose_move_prefect_cut_short_is_revoked_and_the_agents_it_moved_go_back(
    tmp_path: Path, prefect_api: str,
) -> None:
    # Two agents move to the org's own pool one by one; Prefect refuses the second. The key was never shown: it is
    # revoked, and the first agent must not stay in a pool that no key serves, its runs waiting for ever.
    import json

    from mcp_server.services.orgs import OrgService

    refusing: dict[str, int | bool] = {"on": False, "moves": 0}

    async def around(request: Request, forward: Forward) -> Response:
        moving = refusing["on"] and request.method == "PATCH" and "/deployments/" in request.url.path and str(
            json.loads(await request.body()).get("work_pool_name", "")).endswith("-own")
        if moving:
            refusing["moves"] = int(refusing["moves"]) + 1
            if refusing["moves"] == 2:
                return Response("refused by the test", 500)
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    store, org, _ = await local_install(tmp_path, prefect_api)
    with prefect_proxy(prefect_api, around) as proxy:
        service = AgentService(store, proxy, "process", "ariel-runtime:local", await store.installation_id(),
                               signer=Ed25519ConfigSigner.generate())
        caller = owner_of(org)
        made = [await service.create(caller, {"name": name, "instructions": "x", "model": "ariel/scripted",
                                              "script": [{"reply": "hi"}]}) for name in ("First", "Second")]
        refusing["on"] = True
        with pytest.raises(Exception):  # noqa: B017 - which error Prefect's refusal becomes is not the point here
            await OrgService(store, service, "none").manage(caller, "create_worker_key", None, None, "box", None,
                                                            None, False)
    assert refusing["moves"] == 2
    assert await store.worker_keys(org.id, active_only=True) == []
    async with PrefectClient(prefect_api) as prefect:
        pools = [(await prefect.read_deployment_by_name(str(agent.deployment))).work_pool_name for agent in made]
    assert all(pool is not None and pool.endswith("-process") for pool in pools), pools
    await store.close()
