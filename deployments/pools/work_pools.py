"""Per-organization work pools, made from Prefect's stock job templates.

The Docker pool starts from `DockerWorker.get_default_base_job_template()`.
What the platform fixes (image, network mode, privileges, mounts, resource
limits) is removed from the template's variables and written as a literal into
its job configuration, so a deployment's or run's job variables cannot change
it: Prefect fills only `{{ placeholders }}` from job variables.

Example:
    >>> template = docker_job_template(image="ariel-runtime:local", org_id="0f3c")
    >>> template["job_configuration"]["network_mode"]
    'host'
    >>> "privileged" in template["variables"]["properties"]
    False
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType, WorkPool
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker
from prefect_docker.worker import DockerWorker

from deployments.exceptions import PoolOwnedElsewhere, PoolTypeMismatch
from deployments.pools.limits import DEFAULT_CPUS, DEFAULT_MEMORY_LIMIT, DEFAULT_PIDS_LIMIT
from flows.network.guard import egress_environment
from flows.signing import VERIFY_KEY_ENV
from flows.telemetry import TELEMETRY_ENV

PoolType = Literal["docker", "process"]
# How long after a crash run recovery may still retry a run in its pool: its look back
# (`deployments.runs.recovery.LOOK_BACK` is this), and so how long a pool is kept for a crashed run of it.
RETRY_WINDOW = timedelta(minutes=30)



POOL_PREFIX = "ariel-"


def install_prefix(install_id: str) -> str:
    """What every pool name of one installation starts with: a worker host serves only those.

    >>> install_prefix("9a8b7c6d5e4f30211203f4e5d6c7b8a9")
    'ariel-9a8b7c6d-'
    """
    return f"{POOL_PREFIX}{install_id[:8]}-"


# A slug a pool's name may hold: Prefect's name rules, and never 12 hex digits, the shape of the id part of an older
# release's pool names (`legacy_pool_name`): an org slugged so would take another org's older pool.
_NAMEABLE_SLUG = re.compile(r"(?![0-9a-f]{12}$)[a-z0-9][a-z0-9-]{0,62}")


def pool_name(install_id: str, org_slug: str, org_id: str, pool_type: PoolType) -> str:
    """The name of an organization's platform pool of one type: the install's id, then the org's slug for people
    reading the Prefect UI.

    Unique without a lookup: slugs are unique within an install and never change. A slug a name cannot hold (12
    hex digits, the shape of an older name; or any other spelling, should one reach the store) gives the org's id
    instead, as releases before names did. The install id keeps apart the pools of installs that share one
    Prefect server (every desktop's org is "personal"). Tenancy never rests on the name: the pool's description
    carries the org's tag (`ensure_pool`).

    >>> pool_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "acme", "0f3c9a1b2c3d4e5f60718293a4b5c6d7", "docker")
    'ariel-9a8b7c6d-acme-docker'
    >>> pool_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "Acme/EU", "0f3c9a1b2c3d4e5f60718293a4b5c6d7", "docker")
    'ariel-9a8b7c6d-0f3c9a1b2c3d-docker'
    """
    if _NAMEABLE_SLUG.fullmatch(org_slug) is None:
        return legacy_pool_name(install_id, org_id, pool_type)
    return f"{install_prefix(install_id)}{org_slug}-{pool_type}"


def legacy_pool_name(install_id: str, org_id: str, pool_type: PoolType) -> str:
    """The platform pool's name in releases before names: the org's id, which `upgrades` moves agents from.

    >>> legacy_pool_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "0f3c9a1b2c3d4e5f60718293a4b5c6d7", "docker")
    'ariel-9a8b7c6d-0f3c9a1b2c3d-docker'
    """
    return f"{install_prefix(install_id)}{org_id[:12]}-{pool_type}"


def platform_pool_pattern(prefix: str, pool_types: Sequence[str] = ("docker", "process")) -> re.Pattern[str]:
    """What the install's platform pools' names (of `pool_types`) match in full, named by slug or by id, and never
    an org's own-hardware pool (`-own`).

    >>> pattern = platform_pool_pattern("ariel-9a8b7c6d-")
    >>> [bool(pattern.fullmatch(name)) for name in ("ariel-9a8b7c6d-acme-docker", "ariel-9a8b7c6d-0f3c9a1b2c3d-process",
    ...                                             "ariel-9a8b7c6d-0f3c9a1b2c3d-own", "ariel-11112222-acme-docker")]
    [True, True, False, False]
    """
    return re.compile(rf"{re.escape(prefix)}[a-z0-9][a-z0-9-]*-({'|'.join(map(re.escape, pool_types))})")


OWN_POOL_SUFFIX = "-own"


def is_own_pool(name: str | None) -> bool:
    """Whether `name` is an org's own-hardware pool (`own_pool_name`).

    >>> is_own_pool("ariel-9a8b7c6d-0f3c9a1b2c3d-own"), is_own_pool("ariel-9a8b7c6d-acme-docker"), is_own_pool(None)
    (True, False, False)
    """
    return name is not None and name.endswith(OWN_POOL_SUFFIX)


def served_by(pool: str, prefix: str) -> bool:
    """Whether a container of `pool` is the business of a worker host serving `prefix`: an install's prefix (Ariel's
    own pool host: never an org's own hardware's pools, whose worker may share the Docker engine), or one pool's
    whole name (an org's own worker).

    >>> install, own = "ariel-9a8b7c6d-", "ariel-9a8b7c6d-0f3c9a1b2c3d-own"
    >>> served_by("ariel-9a8b7c6d-acme-docker", install), served_by(own, install), served_by(own, own)
    (True, False, True)
    """
    return pool == prefix or (pool.startswith(prefix) and not is_own_pool(pool))


def own_pool_name(install_id: str, org_id: str) -> str:
    """The pool of an org's own hardware: served by the org's workers (worker keys), never by Ariel's pool host.

    Still named by the org's id: a customer's running `ariel worker` learnt the name when it started, and a new
    one would strand it until someone restarts it.

    >>> own_pool_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "0f3c9a1b2c3d4e5f60718293a4b5c6d7")
    'ariel-9a8b7c6d-0f3c9a1b2c3d-own'
    """
    return f"{install_prefix(install_id)}{org_id[:12]}{OWN_POOL_SUFFIX}"


def org_pool_names(install_id: str, org_slug: str, org_id: str) -> list[str]:
    """Every pool the org may have: each type's, older releases' names too, and its own hardware's."""
    names = [pool_name(install_id, org_slug, org_id, kind) for kind in ("docker", "process")]
    names += [legacy_pool_name(install_id, org_id, kind) for kind in ("docker", "process")]
    return [*dict.fromkeys(names), own_pool_name(install_id, org_id)]


# The org's tag `ensure_pool` ends a description with: only there, since the org's name before it is its own.
_ORG_IN_DESCRIPTION = re.compile(r"\(org:([0-9a-f]{32})\)$")


def org_tag(org_id: str) -> str:
    """The tag every Prefect object of an organization carries."""
    return f"org:{org_id}"


def org_name_tag(org_slug: str) -> str:
    """The tag that names an org's agents and runs in the Prefect UI, beside `org_tag`'s id.

    Only for people to read: tenancy rests on `org_tag` alone.

    >>> org_name_tag("acme")
    'org-name:acme'
    """
    return f"org-name:{org_slug}"


def docker_job_template(
    image: str,
    org_id: str,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    cpus: float = DEFAULT_CPUS,
    protected_endpoints: Sequence[str] = (),
    verify_key: str | None = None,
    telemetry: bool = False,
    refuse_private_networks: bool = False,
) -> dict[str, Any]:
    """The hardened Docker base job template of one organization's pool; limits are the org's plan.

    `protected_endpoints` (`host:port`, Ariel's HTTP app for one) reach each
    run as ARIEL_PROTECTED_ENDPOINTS: the runtime's `http_request` refuses them,
    as it refuses the Prefect API; with `refuse_private_networks`, every
    private address too (`flows.network.guard.PRIVATE_NETWORKS_ENV`).
    `verify_key` (the control plane's public key) reaches each run as
    ARIEL_CONFIG_VERIFY_KEY: the runtime refuses a configuration it did not sign.

    >>> template = docker_job_template("ariel-runtime:local", "0f3c", protected_endpoints=["127.0.0.1:8765"])
    >>> template["job_configuration"]["env"]["ARIEL_PROTECTED_ENDPOINTS"]
    '127.0.0.1:8765'
    >>> template["job_configuration"]["env"]["PREFECT_API_KEY"]  # the worker's own key never reaches a run
    ''
    """
    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    fixed: dict[str, Any] = {
        "image": image,
        # Flow-run containers reach the Prefect API on the host's loopback.
        "network_mode": "host",
        "networks": [],
        "privileged": False,
        "volumes": [],
        "image_pull_policy": "IfNotPresent",
        "mem_limit": memory_limit,
        "memswap_limit": memory_limit,
        # Removed from the variables so no job variable can pass arbitrary
        # container options (mounts, devices, capabilities) to Docker.
        "container_create_kwargs": {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "nano_cpus": int(cpus * 1e9),
            "pids_limit": DEFAULT_PIDS_LIMIT,
        },
        "labels": {"ariel.org": org_id, "ariel.role": "flow-run"},
        # Ariel's engine (`flows.engine`), not Prefect's `flow-run execute`: the run imports no Prefect.
        "command": RUN_COMMAND,
    }
    properties = template["variables"]["properties"]
    for key, value in fixed.items():
        properties.pop(key, None)
        template["job_configuration"][key] = value
    template["variables"]["required"] = [
        key for key in template["variables"].get("required", []) if key not in fixed
    ]
    # Containers are removed when their run ends; logs live in the Prefect API.
    properties["auto_remove"]["default"] = True
    # The worker passes its own PREFECT_HOME on, which is not writable in the container.
    properties["env"]["default"] = {"PREFECT_HOME": "/home/ariel/.prefect"}
    env = egress_environment(protected_endpoints, refuse_private_networks)
    if verify_key:
        env[VERIFY_KEY_ENV] = verify_key
    if telemetry:  # runs export their spans and metrics through the gateway (flows.telemetry)
        env[TELEMETRY_ENV] = "on"
    # A literal, not the `env` variable's default: Prefect merges a deployment's `env` over it
    # key by key, so an `env` job variable adds to it instead of replacing it.
    template["job_configuration"]["env"] = {**NO_WORKER_CREDENTIAL, **HEARTBEAT_ENV, **env}
    return _ariel_env_fixed(template)


RUN_COMMAND = "python -m flows.engine"
"""What a run's container (or process) executes: Ariel's engine (`flows.engine`), which imports no Prefect."""


NO_WORKER_CREDENTIAL = {"PREFECT_API_KEY": "", "PREFECT_API_AUTH_STRING": ""}
# Prefect's own engine sends none more often than every 30 s (its `MINIMUM_HEARTBEAT_INTERVAL`); Ariel's keeps to that.
HEARTBEAT_SECONDS = 30
HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
"""Every run sends Prefect a heartbeat: a run that falls silent has lost its machine or container
(`deployments.runs.silent_runs`)."""
"""Over what a stock worker copies of its own settings into every run: its credential (a worker key) must not
reach a run. The gateway puts the run's own token over these, in the run's job variables."""


def process_job_template(verify_key: str | None = None, telemetry: bool = False) -> dict[str, Any]:
    """The process pool's template: Prefect's stock one (desktop use, runs on the host).

    `verify_key` reaches each run as ARIEL_CONFIG_VERIFY_KEY, a literal as in the Docker pool's: the process
    worker starts a run with its own environment with the job's `env` over it.

    >>> process_job_template("Zm9v")["job_configuration"]["env"]["ARIEL_CONFIG_VERIFY_KEY"]
    'Zm9v'
    """
    template = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    # Fixed, as the Docker pool's; Ariel's process worker runs it in its own interpreter (`worker_host`).
    template["variables"]["properties"].pop("command", None)
    template["job_configuration"]["command"] = RUN_COMMAND
    env = {VERIFY_KEY_ENV: verify_key} if verify_key else {}
    if telemetry:
        env[TELEMETRY_ENV] = "on"
    template["job_configuration"]["env"] = {**NO_WORKER_CREDENTIAL, **HEARTBEAT_ENV, **env}
    return _ariel_env_fixed(template)


def _ariel_env_fixed(template: dict[str, Any]) -> dict[str, Any]:
    """No job variable may set an ARIEL_ variable: Prefect merges a deployment's or run's `env` over the template's
    literal one, so `env: {ARIEL_CONFIG_VERIFY_KEY: <another key>}` would let a forged configuration pass.

    The Prefect server checks job variables against this schema when a run is made from a deployment, or its job
    variables changed; `additionalProperties: false` also refuses the dotted form (`env.ARIEL_...`). Prefect does
    not check the job variables of a run made with POST /flow_runs: only a gateway in front of its API can.
    """
    variables = template["variables"]
    variables["properties"]["env"]["propertyNames"] = {"not": {"pattern": "^ARIEL_"}}
    variables["additionalProperties"] = False
    return template


async def ensure_pool(
    client: PrefectClient, name: str, pool_type: PoolType, template: dict[str, Any], org_id: str,
    org_label: str | None = None, concurrency_limit: int | None = None, paused: bool = False,
) -> WorkPool:
    """Create the pool, or bring an existing one's template, description, concurrency limit and pause up to date.
    Idempotent.

    `org_label` (the org's name and slug) heads the description operators read in the Prefect UI; the org's tag
    in it is what counts: a pool whose description names another org is refused (`PoolOwnedElsewhere`), whatever
    its name. `concurrency_limit` (runs at once; None: no limit)
    and `paused` (a suspended org's) are the operator's (`ariel admin`): Prefect hands a paused pool's runs, and
    runs past its limit, to no worker.
    """
    description = (f"Ariel agents of {org_label} ({org_tag(org_id)})" if org_label
                   else f"Ariel agents of organization {org_id} ({org_tag(org_id)})")
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        try:
            return await client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template, description=description,
                               concurrency_limit=concurrency_limit, is_paused=paused)
            )
        except ObjectAlreadyExists:  # a concurrent first deploy of the same org made it
            pool = await client.read_work_pool(name)
    if pool.type != pool_type:
        raise PoolTypeMismatch(f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}")
    owner = _ORG_IN_DESCRIPTION.search(pool.description or "")
    if owner is not None and owner.group(1) != org_id:
        # Names are for people: an older pool, or another install's, must never take this org's runs.
        raise PoolOwnedElsewhere(f"work pool {name!r} exists and belongs to another organization; nothing was "
                                 "deployed: tell the install's operator")
    if (pool.base_job_template != template or pool.description != description
            or pool.concurrency_limit != concurrency_limit or pool.is_paused != paused):
        await client.update_work_pool(name, WorkPoolUpdate(
            base_job_template=template, description=description, concurrency_limit=concurrency_limit,
            is_paused=paused))
        pool = await client.read_work_pool(name)
    return pool


async def refresh_pool(
    client: PrefectClient, name: str, pool_type: PoolType, template: dict[str, Any], org_id: str, **settings: Any,
) -> bool:
    """`ensure_pool` for a pool that exists, and nothing for one that does not: whether it exists.

    For an org's pool of an older release's name while runs still wait in it (`retire_pool`): they start from
    its template, so a new image or key must reach it too.
    """
    try:
        await client.read_work_pool(name)
    except ObjectNotFound:
        return False
    await ensure_pool(client, name, pool_type, template, org_id, **settings)
    return True


async def hold_pools(client: PrefectClient, install_id: str, org_slug: str, org_id: str, paused: bool,
                     concurrency_limit: int | None, resources: tuple[str, float] | None = None) -> None:
    """Pause (or resume) every pool the org has and set their concurrency limit, and with `resources` (memory in
    Docker's notation, CPUs) each Docker pool's per run container: the pools its agents left (for its own hardware,
    or back) may still hold runs. Missing ones are fine. The rest of each template stays as it is (`ariel admin`
    may not hold the app's settings)."""
    for name in org_pool_names(install_id, org_slug, org_id):
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            continue
        changes: dict[str, Any] = {"is_paused": paused, "concurrency_limit": concurrency_limit}
        job = pool.base_job_template.get("job_configuration", {})
        if resources is not None and pool.type == "docker" and "mem_limit" in job:
            template = copy.deepcopy(pool.base_job_template)
            memory, cpus = resources
            template["job_configuration"]["mem_limit"] = template["job_configuration"]["memswap_limit"] = memory
            template["job_configuration"].setdefault("container_create_kwargs", {})["nano_cpus"] = int(cpus * 1e9)
            changes["base_job_template"] = template
        await client.update_work_pool(name, WorkPoolUpdate(**changes))


async def retire_pool(client: PrefectClient, name: str, now: datetime | None = None) -> bool:
    """Delete the pool once nothing needs it; whether it went (False while something does, or when it is gone).

    Needed while a deployment is in it, a run waits in it or runs from it, or a run of it crashed recently
    (`deployments.runs.recovery` may yet schedule it again there).
    """
    pool_filter = WorkPoolFilter(name=WorkPoolFilterName(any_=[name]))
    try:
        await client.read_work_pool(name)
    except ObjectNotFound:
        return False
    if await client.read_deployments(work_pool_filter=pool_filter, limit=1):
        return False
    live = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[
        StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED])))
    crashed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
                            end_time=FlowRunFilterEndTime(after_=(now or datetime.now(UTC)) - RETRY_WINDOW))
    for runs in (live, crashed):
        if await client.read_flow_runs(work_pool_filter=pool_filter, flow_run_filter=runs, limit=1):
            return False
    with suppress(ObjectNotFound):
        await client.delete_work_pool(name)
    return True


async def remove_pools(client: PrefectClient, install_id: str, org_slug: str, org_id: str) -> None:
    """Delete the organization's pools of every type; missing ones are fine."""
    for pool in org_pool_names(install_id, org_slug, org_id):
        with suppress(ObjectNotFound):
            await client.delete_work_pool(pool)
