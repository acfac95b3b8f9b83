"""`ariel up`: the embedded Prefect server, the default org's worker and the HTTP app, in one command."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from deployments.exceptions import DeploymentError
from deployments.images.runtime_image import docker_available, image_present
from deployments.pools.standby import remove_install_containers
from deployments.pools.work_pools import PoolType, install_prefix
from deployments.prefect_server import server_argv
from mcp_server.cli.environments import (
    ensure_runtime_image,
    is_credential,
    prefect_database,
    server_env,
    worker_env,
    worker_host_argv,
)
from mcp_server.cli.errors import StartupFailed
from mcp_server.cli.processes import GRACE_SECONDS, Children, ignore_stop_signals
from mcp_server.cli.supervision import Supervisor
from mcp_server.gateway import GATEWAY_PATH
from mcp_server.http.app import create_app
from mcp_server.http.serving import AppServer
from mcp_server.services.caller import Caller
from mcp_server.services.container import open_services
from mcp_server.services.upgrades import seal_provider_blocks
from mcp_server.settings import TRUSTING_PROFILES, ArielSettings
from mcp_server.store import Organization, Store

RUNTIME_FILE = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    """What a running `ariel up` uses, recorded for `ariel mcp` (stdio) to use the same."""

    prefect_api_url: str
    pool_type: PoolType

    def save(self, home: Path) -> None:
        (home / RUNTIME_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, home: Path) -> Runtime | None:
        try:
            return cls(**json.loads((home / RUNTIME_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def running_stack(settings: ArielSettings) -> tuple[str, PoolType]:
    """The Prefect API and pool type of the running `ariel up`, which host commands act through."""
    from mcp_server.services.exceptions import InvalidRequest

    runtime = Runtime.load(settings.home)
    if runtime is None and settings.prefect_api_url is not None:
        # An install whose app runs as `ariel serve` elsewhere: its settings say what it uses, as `serve` reads them.
        return settings.prefect_api_url, "process" if settings.worker_type == "process" else "docker"
    if runtime is None:
        raise InvalidRequest("start Ariel first with `ariel up` (it records the Prefect API to use), or set "
                             "ARIEL_PREFECT_API_URL (and ARIEL_STORE_URL) as the install's app has them")
    return settings.prefect_api_url or runtime.prefect_api_url, runtime.pool_type


def say(message: str) -> None:
    print(message, flush=True)


def wait_healthy(api_url: str, children: Children | None = None, timeout: float = 90.0) -> None:
    """Wait for the Prefect API to answer its health check: the one `children` started, or an external one."""
    started = time.monotonic()
    deadline, next_word = started + timeout, started + 5.0
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if children is not None and children.exited():
            break
        if time.monotonic() >= next_word:  # a long wait says it is one, and how long it may last
            next_word += 15.0
            say(f"waiting for the Prefect API at {api_url} to answer ({time.monotonic() - started:.0f} s of at most "
                f"{timeout:.0f} s)")
        time.sleep(0.3)
    if children is None:
        raise StartupFailed(f"the Prefect API at {api_url} (ARIEL_PREFECT_API_URL) did not answer its health check "
                            f"within {timeout:.0f} s; start it, or correct the URL")
    raise StartupFailed(
        f"the Prefect server did not become healthy at {api_url}; see {children.log_dir}/prefect-server.log"
    )


def answers_without_credential(api_url: str) -> bool:
    """Whether a Prefect API reads out its data to anyone (a server started without an auth string)."""
    try:
        return httpx.post(f"{api_url}/flow_runs/count", json={}, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server may listen on `host`:`port` now (as uvicorn binds: an address reused from TIME_WAIT is free).

    Raises StartupFailed when `host` is no address this machine may listen on (IPv6 ones included).
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise StartupFailed(f"ARIEL_HOST {host!r} does not resolve to an address of this machine; set it to one "
                            "(127.0.0.1 for this machine alone, 0.0.0.0 or :: for every interface)") from None
    # Every address the name gives (localhost: ::1 and 127.0.0.1), as the server binds each of them.
    for family, kind, _, _, address in dict.fromkeys((info[0], info[1], 0, "", info[4]) for info in found):
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                if exc.errno == errno.EACCES:
                    raise StartupFailed(f"port {port} needs privileges this user lacks; set ARIEL_PORT to one above "
                                        "1023") from None
                raise StartupFailed(f"cannot listen on {host} port {port} ({exc.strerror or exc}); set ARIEL_HOST "
                                    "to an address of this machine") from None
    return True


def choose_pool_type(settings: ArielSettings) -> PoolType:
    if settings.worker_type == "process":
        return "process"
    if docker_available():
        if settings.worker_type == "auto" and not image_present(settings.runtime_base_image, pull=False) \
                and not image_present(settings.runtime_image, pull=False):
            # Every runtime image builds on it, offline: without either no run could start in a container.
            say(f"Docker answers, but its base image {settings.runtime_base_image!r} is not there, so agents will "
                "run as local processes (a process work pool).")
            say("  To run them in containers, build it (sudo ./docker/setup-host.sh) and run `ariel up` again.")
            return "process"
        return "docker"
    if settings.worker_type == "docker":
        raise StartupFailed("ARIEL_WORKER_TYPE=docker but no Docker engine answers; start dockerd, or unset it")
    say("No Docker engine answers, so agents will run as local processes (a process work pool).")
    say("  To run them in containers, start Docker (see the README) and run `ariel up` again.")
    return "process"


async def prepare_orgs(settings: ArielSettings, api_url: str, pool_type: PoolType) -> tuple[str, str | None, int]:
    """Make the local user's pool, and re-deploy every org's agents to a pool of today's type and image.

    Returns (the install's pool-name prefix, the local user's pool, agents deployed). Without the re-deploy, a
    change of pool type or image would strand other orgs' agents on pools no
    worker serves. The local user (and so a personal org and its pool) exists only where the profile trusts
    whoever reaches the machine (desktop, dev): on a shared server every org, and its pool with its first
    agent, comes from a person with a key.
    """
    if role := await Store.unbound_role(settings.resolved_store_url):
        unbound = (f"the store's PostgreSQL role {role!r} is a superuser or has BYPASSRLS, which row-level "
                   "security does not bind: nothing in the database would keep one org's rows from another's query")
        if settings.profile not in TRUSTING_PROFILES:
            raise StartupFailed(f"{unbound}. Connect as a role without them; for example, as a superuser, for a "
                                f"database Ariel has not used yet: {_bound_role_sql(settings)}")
        say(f"Warning: {unbound}; on a shared server (ARIEL_PROFILE saas, hybrid, onprem) Ariel refuses to start so.")
    async with open_services(settings, api_url, pool_type) as services:
        name = None
        if settings.profile in TRUSTING_PROFILES:
            local = await services.auth.local_caller("ariel up")
            name = await services.agents.ensure_pool(local)
        # Keys of older releases' provider blocks go into the sealed store, and the blocks away.
        if moved := await seal_provider_blocks(services.secrets):
            say(f"Moved {moved} provider key(s) from Prefect blocks into the sealed store")
        deployed = 0
        for org in await services.store.all_orgs():
            upkeep = platform_caller(org)
            try:
                deployed += await services.agents.redeploy_all(upkeep)
            except DeploymentError as exc:  # one org's pool or deployment in the way must not keep every org down
                say(f"Warning: the agents of org {org.slug} were not deployed again: {exc}")
                continue
            # After the deploy, which moved the org's agents to its named pool: older releases' pools go once empty.
            if retired := await services.agents.retire_legacy_pools(upkeep):
                named, _ = await services.agents.org_pool(upkeep)
                say(f"Removed work pool {', '.join(retired)}, named before pools had names: the agents of org "
                    f"{org.slug} run from {named} now")
        return install_prefix(services.agents.install_id), name, deployed


def _bound_role_sql(settings: ArielSettings) -> str:
    """What a database admin runs to give the store a role that row-level security binds."""
    url = make_url(settings.resolved_store_url)
    database = url.database or "ariel"
    # Its query goes too: libpq takes a password there as well, and this is printed.
    fitting = url.set(username="ariel_store", password="PASSWORD", query={})
    return (f"CREATE ROLE ariel_store LOGIN PASSWORD '<a new password>' NOSUPERUSER NOBYPASSRLS; "
            f"ALTER DATABASE \"{database}\" OWNER TO ariel_store; then set ARIEL_STORE_URL to "
            f"{fitting.render_as_string(hide_password=False)}")


def platform_caller(org: Organization) -> Caller:
    """Ariel itself, acting in `org` for upkeep no person asked for."""
    return Caller(user_id="ariel", user_label="ariel up", org_id=org.id, org_slug=org.slug, org_name=org.name,
                  role="owner", source="local", origin="ariel up")


# What an HTTP client sends in each auth mode that checks credentials, as a placeholder a person fills in.
BEARER_PLACEHOLDERS = {
    "api_key": "Bearer <an API key: `ariel create-key`, or manage_org create_key>",
    "oidc": "Bearer <an access token from your identity provider>",
    "dev": "Bearer <a dev token, see the README's Identity>",
}


def client_config(settings: ArielSettings, environ: Mapping[str, str] | None = None) -> str:
    """The MCP client configuration (Claude Desktop's `mcpServers`) that reaches this install as it runs.

    Over HTTP: its URL, with the Authorization header every call needs when the auth mode checks credentials.
    Over stdio (`ariel mcp`, which acts as the local user with the store's own rights): only where the profile
    trusts the machine's user, and with every ARIEL_ setting this process was given, so that it opens the same
    store and Prefect; a secret's value is a placeholder, never printed.
    """
    environ = os.environ if environ is None else environ
    http: dict[str, object] = {"url": f"{settings.base_url}/mcp"}
    if settings.auth_mode in BEARER_PLACEHOLDERS:
        http["headers"] = {"Authorization": BEARER_PLACEHOLDERS[settings.auth_mode]}
    servers: dict[str, object] = {"ariel": http}
    if settings.profile in TRUSTING_PROFILES:
        env = {"ARIEL_HOME": str(settings.home)}
        for name, value in sorted(environ.items()):
            if name.upper().startswith("ARIEL_") and name.upper() not in ("ARIEL_HOME", "ARIEL_PORT", "ARIEL_HOST"):
                env[name] = (f"<the value of {name} in this environment>" if _holds_secret(name, value) else value)
        ariel = shutil.which("ariel") or str(Path(sys.executable).parent / "ariel")
        servers["ariel-stdio"] = {"command": ariel, "args": ["mcp"], "env": env}
    return json.dumps({"mcpServers": servers}, indent=2)


def _holds_secret(name: str, value: str) -> bool:
    """Whether the variable's value is a credential, or may hold one: the store's URL (a password, in the
    authority or a query parameter, that a URL parser may not find), any URL with a password."""
    if is_credential(name) or name.upper() == "ARIEL_STORE_URL":
        return True
    try:
        return urlsplit(value).password is not None
    except ValueError:  # not a URL that parses: shown only when nothing in it looks like one
        return "@" in value


# A request still being answered (run_agent waits up to 600 s for a run) would otherwise hold the HTTP app's
# shutdown that long; with the children's grace, `ariel up` stops within 10 s of the signal.
APP_SHUTDOWN_SECONDS = 2
# From the signal to the children's SIGKILL: the spec's 10 s, less a second for the kill and the reaping. What the
# app's shutdown leaves of it goes to the children (at least GRACE_SECONDS): a Prefect server writing to its
# database on a busy disk has been seen to need more than 5 s, and a kill then loses what it was writing.
STOP_SECONDS = 9.0


class _RemovingContainers(threading.Thread):
    """Removes the install's run and standby containers (started at once): runs in flight cannot go on without the
    gateway and Prefect, which stop with `ariel up`; the next start retries them. `runs`: how many were removed
    (None until it is done)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(name="remove-containers", daemon=True)
        self.prefix = prefix
        self.runs: int | None = None
        self.failed: str | None = None
        self.start()

    def run(self) -> None:
        try:
            self.runs = remove_install_containers(self.prefix)
        except Exception as exc:  # no engine now: nothing of ours runs in it either
            self.failed = type(exc).__name__

    def report(self) -> None:
        """Say what it did, from the thread that prints everything else (never after "Stopped.")."""
        if self.failed is not None:
            say(f"  Could not look for run containers ({self.failed}).")
        elif self.runs is None:
            say("  Run containers are still being removed; `docker ps` shows what is left.")
        elif self.runs:
            plural = self.runs != 1
            say(f"  Stopped {self.runs} run{'s' if plural else ''} in flight; the next `ariel up` retries "
                f"{'them' if plural else 'it'} as after a crash (each such stop uses one of a run's retries).")


def up(settings: ArielSettings) -> None:
    """Start everything, serve until SIGINT (Ctrl-C) or SIGTERM, then stop every child process.

    Once up, a child that dies (the Prefect server, the worker host) is started again, after a backoff
    (supervision.py); if this process dies, the kernel kills its children (processes.py).

    Expects `stop_on_signals()` in force (the `ariel` command sets it first): both signals then end here in the
    `finally`, at any stage, even when SIGINT was inherited ignored; and the children start with both at their
    defaults.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    pool_host_key = (settings.pool_host_key.get_secret_value() if settings.pool_host_key is not None
                     else f"ariel_ph_{secrets.token_urlsafe(32)}")  # a fresh one each start: nothing to leak
    settings = settings.model_copy(update={"pool_host_key": SecretStr(pool_host_key)})
    _port_must_be_free(settings)
    _keys_must_be_readable(settings)
    children = Children(settings.home / "logs")
    app_server: AppServer | None = None
    docker_prefix: str | None = None  # the install's Docker pools, once known: their containers go when it stops
    try:
        api_url = settings.prefect_api_url
        if api_url is None:
            if not port_free("127.0.0.1", settings.prefect_port):
                raise StartupFailed(
                    f"port {settings.prefect_port} is in use; set ARIEL_PREFECT_PORT, "
                    "or ARIEL_PREFECT_API_URL to use a running Prefect server"
                )
            api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
            say(f"Starting the Prefect server on port {settings.prefect_port} (its database: "
                f"{prefect_database(settings)}) ...")
            # Only the control plane holds its credential: workers and runs go through the gateway.
            auth_string = settings.prefect_credential(create=True)
            assert auth_string is not None  # made just now when missing
            children.start(
                "prefect-server",
                server_argv(settings.prefect_port),
                server_env(api_url, settings, auth_string),
            )
        _reach_prefect(settings, api_url, children)
        pool_type = choose_pool_type(settings)
        if pool_type == "docker" and settings.build_image:
            ensure_runtime_image(settings, say)
        prefix, org_pool = _prepare(settings, api_url, pool_type)
        docker_prefix = prefix if pool_type == "docker" else None

        # One process runs a stock worker for every pool of this install, including pools made later; it
        # polls through the gateway, which starts answering once the app below serves.
        children.start(
            "worker",
            worker_host_argv(settings, pool_type, prefix),
            worker_env(api_url, settings, pool_host_key),
        )
        _say_up(settings, api_url, pool_type, org_pool, children.log_dir)
        # From here, not before: a child that cannot even start should fail `ariel up`, not loop.
        Supervisor(children, report=say).start()
        app_server = _app_server(settings, api_url, pool_type)
        app_server.run()
    finally:
        ignore_stop_signals()  # also when an error, not a signal, brought us here
        say("Stopping ...")
        grace = _children_grace(app_server.shutdown_began if app_server is not None else None)
        # Beside the children's stop and within its grace, not after it: the whole stop stays within STOP_SECONDS.
        until = time.monotonic() + grace
        removing = _RemovingContainers(docker_prefix) if docker_prefix is not None else None
        killed = children.stop_all(grace)
        if removing is not None:
            removing.join(max(0.0, until - time.monotonic()))
            removing.report()
        say(f"Stopped (killed {', '.join(killed)}, not stopped {grace:.0f} s after SIGTERM)." if killed
            else "Stopped.")


def _children_grace(app_stop_began: float | None) -> float:
    """What the children get after SIGTERM: what is left of STOP_SECONDS since the app began to stop, if it did."""
    if app_stop_began is None:  # stopped before the app served, or by an error
        return GRACE_SECONDS
    return max(GRACE_SECONDS, STOP_SECONDS - (time.monotonic() - app_stop_began))


def serve(settings: ArielSettings) -> None:
    """`ariel serve`: the HTTP app alone (MCP, the Prefect gateway), on a Prefect server that runs elsewhere.

    For installs whose parts run apart (SaaS, compose): several of these may serve one store and one Prefect;
    the pool host runs as `ariel pool-host`, with the same ARIEL_POOL_HOST_KEY. Starts no child; stops as
    uvicorn does on SIGINT or SIGTERM (expects `stop_on_signals()` in force, as `up`).
    """
    api_url = settings.prefect_api_url
    if not api_url:  # unset, or set empty
        raise StartupFailed("no Prefect server given: set ARIEL_PREFECT_API_URL to a running one (and "
                            "ARIEL_PREFECT_AUTH_STRING to its credential); `ariel up` starts one of its own instead")
    settings.home.mkdir(parents=True, exist_ok=True)
    _port_must_be_free(settings)
    _keys_must_be_readable(settings)
    _reach_prefect(settings, api_url, None)
    # The pools' type is the install's choice, not this machine's: the Docker engine is the pool host's.
    pool_type: PoolType = "process" if settings.worker_type == "process" else "docker"
    _, org_pool = _prepare(settings, api_url, pool_type)
    kept_in_files = [name for name, unset in (
        ("ARIEL_RUN_TOKEN_KEY", settings.run_token_key is None),
        ("ARIEL_CONFIG_SIGNING_KEY", settings.config_signing_key is None),
        ("ARIEL_KEK", settings.kek is None and settings.kek_file is None and settings.kek_backend == "local"),
    ) if unset]
    if kept_in_files:
        say(f"Note: {', '.join(kept_in_files)} unset, so kept in files of {settings.home}; every app process of "
            "this install needs the same ones: set them in the environment before starting a second.")
    if settings.pool_host_key is None:
        say("Note: ARIEL_POOL_HOST_KEY is unset, so no pool host can serve this install's pools and runs stay "
            "Scheduled; set one key here and in `ariel pool-host`'s environment (see the README).")
    _say_up(settings, api_url, pool_type, org_pool, None)
    try:
        _app_server(settings, api_url, pool_type).run()
    finally:
        ignore_stop_signals()
        say("Stopped.")


def _keys_must_be_readable(settings: ArielSettings) -> None:
    """The local key-encryption keys, read as the process starts, not at its first seal (a provider set, a run's
    journal): a malformed ARIEL_KEK would have Ariel say it is up, then fail every secret. KekUnavailable names the
    setting, never the key."""
    if settings.kek_backend != "local":
        return  # a KMS answers when asked: its first use says what is wrong with it
    from mcp_server.services.sealing import LocalKeyring, keyring_from_settings

    keyring = keyring_from_settings(settings)
    if isinstance(keyring, LocalKeyring):
        keyring.known()  # the current key (made on first use when it is the default file) and every older one


def _port_must_be_free(settings: ArielSettings) -> None:
    if not port_free(settings.host, settings.port):
        raise StartupFailed(f"port {settings.port} on {settings.host} is in use; set ARIEL_PORT to a free one")


def _reach_prefect(settings: ArielSettings, api_url: str, children: Children | None) -> None:
    started = time.monotonic()
    wait_healthy(api_url, children)
    say(f"Prefect API ready in {time.monotonic() - started:.1f} s")
    if settings.prefect_api_url is not None and answers_without_credential(api_url):
        say(f"Warning: the Prefect API at {api_url} answers without a credential: any process that reaches it "
            "reads every org's runs and can change them. Set PREFECT_SERVER_API_AUTH_STRING on that server and "
            "the same in ARIEL_PREFECT_AUTH_STRING here.")


def _prepare(settings: ArielSettings, api_url: str, pool_type: PoolType) -> tuple[str, str | None]:
    """Pools and deployments as this start needs them, recorded for the host commands; (pool prefix, local pool)."""
    prefix, org_pool, redeployed = asyncio.run(prepare_orgs(settings, api_url, pool_type))
    if redeployed:
        say(f"Deployed {redeployed} existing agent(s) to {pool_type} work pools")
    Runtime(api_url, pool_type).save(settings.home)
    return prefix, org_pool


def _say_up(settings: ArielSettings, api_url: str, pool_type: PoolType, org_pool: str | None,
            log_dir: Path | None) -> None:
    ui_url = api_url.removesuffix("/api")
    say("")
    say(f"Ariel is up. Work pool: {org_pool} ({pool_type})" if org_pool else
        f"Ariel is up. Work pools: one per org ({pool_type}), made with its first agent")
    say(f"  MCP (streamable HTTP): {settings.base_url}/mcp")
    say(f"  Prefect UI:            {ui_url}" + (f" (password: the line in {settings.prefect_auth_file})"
                                               if settings.prefect_api_url is None else ""))
    say(f"  Prefect gateway:       {settings.base_url}{GATEWAY_PATH}/api (workers and runs; see the README)")
    if log_dir is not None:
        say(f"  Logs:                  {log_dir}")
    say("MCP client config (Claude Desktop style" + ("; HTTP, or stdio via `ariel mcp`):"
                                                     if settings.profile in TRUSTING_PROFILES else "):"))
    say(client_config(settings))
    say("Press Ctrl-C to stop.")


def _app_server(settings: ArielSettings, api_url: str, pool_type: PoolType) -> AppServer:
    """The HTTP app's server; its `run()` serves until a signal.

    uvicorn handles both signals while it serves, then hands the signal back to stop_on_signals' handler.
    """
    app = create_app(settings, api_url, pool_type)
    # The asyncio loop, never uvloop: the egress guard of the gateway's model calls is an audit hook on
    # socket.connect, which uvloop's connections (made in C) would not pass.
    return AppServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", loop="asyncio",
                                    timeout_graceful_shutdown=APP_SHUTDOWN_SECONDS))
