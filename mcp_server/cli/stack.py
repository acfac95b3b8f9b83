"""`ariel up`: the embedded Prefect server, the default org's worker and the HTTP app, in one command."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

from deployments.exceptions import ImageBuildFailed
from deployments.images.runtime_image import SOURCE_ROOT, RuntimeImageBuilder, docker_available
from deployments.pools.work_pools import PoolType, install_prefix
from flows.network.guard import PROTECTED_ENDPOINTS_ENV, control_plane_hosts
from mcp_server.cli.errors import StartupFailed
from mcp_server.cli.processes import GRACE_SECONDS, Children, ignore_stop_signals
from mcp_server.cli.supervision import Supervisor
from mcp_server.gateway import GATEWAY_PATH
from mcp_server.http.app import create_app
from mcp_server.services.caller import Caller
from mcp_server.services.container import open_services
from mcp_server.services.upgrades import seal_provider_blocks
from mcp_server.settings import ArielSettings
from mcp_server.store import Organization

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


def say(message: str) -> None:
    print(message, flush=True)


def prefect_env(api_url: str, settings: ArielSettings) -> dict[str, str]:
    """The environment of the Prefect server and the worker host; a process pool's flow runs inherit it.

    ARIEL_PROTECTED_ENDPOINTS gains the control plane's services (Ariel's HTTP
    app, the Prefect API), the set a Docker pool's runs get too, which the
    runtime then refuses; an operator's own entries (say, the store's database)
    are kept, first. No Prefect or Ariel credential of this shell passes on:
    each child gets the one it needs, from `server_env` or `worker_env`.
    """
    env = {name: value for name, value in os.environ.items() if not _is_credential(name)}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(settings.home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS=str(settings.worker_query_seconds),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        # Prefect's client otherwise sends usage analytics to a third party from every process and run.
        DO_NOT_TRACK="1",
    )
    control_plane = control_plane_hosts(settings.host, settings.port, api_url)
    env[PROTECTED_ENDPOINTS_ENV] = ",".join(filter(None, [os.environ.get(PROTECTED_ENDPOINTS_ENV), *control_plane]))
    return env


def _is_credential(name: str) -> bool:
    """Variables that hold a credential of the control plane or of Prefect: never handed to a child as they are."""
    upper = name.upper()
    return upper in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING") or (
        upper.startswith("ARIEL_") and upper.endswith(("_KEY", "_AUTH_STRING", "_SECRET", "_KEK"))
    ) or upper.startswith("ARIEL_KEK")


def _server_side(name: str) -> bool:
    upper = name.upper()
    if upper.startswith(("PREFECT_SERVER_", "PREFECT_API_DATABASE_", "PREFECT_API_SERVICES_")):
        return True
    return upper.startswith("ARIEL_") and upper not in ("ARIEL_HOME", PROTECTED_ENDPOINTS_ENV)


def server_env(api_url: str, settings: ArielSettings, auth_string: str) -> dict[str, str]:
    """The embedded Prefect server's environment: it requires the control plane's auth string on every route."""
    return {**prefect_env(api_url, settings), "PREFECT_SERVER_API_AUTH_STRING": auth_string}


def gateway_url(settings: ArielSettings) -> str:
    """The Prefect API as workers and runs on this host reach it: through the gateway in Ariel's HTTP app."""
    return f"{settings.local_url}{GATEWAY_PATH}/api"  # loopback: the pool host runs beside the app


def worker_env(api_url: str, settings: ArielSettings, pool_host_key: str) -> dict[str, str]:
    """The worker host's environment: the gateway's URL and the pool host's key, never the control plane's.

    The key goes both ways Prefect clients send one (bearer, and basic auth, which the event stream uses). The
    protected endpoints still name the Prefect API at `api_url` itself: a process pool's runs, on this host,
    must not reach it under any name.
    """
    # A stock worker copies every PREFECT_ setting it has into each run, and a process pool's runs inherit the
    # rest: nothing of the server's (its database URL holds a password) or of Ariel's own configuration (the
    # store's URL, keys) goes to the worker host; it needs none of it.
    env = {name: value for name, value in prefect_env(api_url, settings).items() if not _server_side(name)}
    env.update(PREFECT_API_URL=gateway_url(settings), PREFECT_API_KEY=pool_host_key,
               PREFECT_API_AUTH_STRING=f"pool-host:{pool_host_key}")
    # A process worker runs flows on this host: make the runtime importable from any directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    return env


def wait_healthy(api_url: str, children: Children, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if children.exited():
            break
        time.sleep(0.3)
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
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def choose_pool_type(settings: ArielSettings) -> PoolType:
    if settings.worker_type == "process":
        return "process"
    if docker_available():
        return "docker"
    if settings.worker_type == "docker":
        raise StartupFailed("ARIEL_WORKER_TYPE=docker but no Docker engine answers; start dockerd, or unset it")
    say("No Docker engine answers, so agents will run as local processes (a process work pool).")
    say("  To run them in containers, start Docker (see the README) and run `ariel up` again.")
    return "process"


async def prepare_orgs(settings: ArielSettings, api_url: str, pool_type: PoolType) -> tuple[str, str, int]:
    """Make the local user's pool, and re-deploy every org's agents to a pool of today's type and image.

    Returns (the install's pool-name prefix, the local user's pool, agents deployed). Without the re-deploy, a
    change of pool type or image would strand other orgs' agents on pools no
    worker serves.
    """
    async with open_services(settings, api_url, pool_type) as services:
        local = await services.auth.local_caller("ariel up")
        name = await services.agents.ensure_pool(local)
        # Keys of older releases' provider blocks go into the sealed store, and the blocks away.
        if moved := await seal_provider_blocks(services.secrets):
            say(f"Moved {moved} provider key(s) from Prefect blocks into the sealed store")
        deployed = 0
        for org in await services.store.all_orgs():
            deployed += await services.agents.redeploy_all(platform_caller(org))
        return install_prefix(services.agents.install_id), name, deployed


def platform_caller(org: Organization) -> Caller:
    """Ariel itself, acting in `org` for upkeep no person asked for."""
    return Caller(user_id="ariel", user_label="ariel up", org_id=org.id, org_slug=org.slug, org_name=org.name,
                  role="owner", source="local", origin="ariel up")


def client_config(settings: ArielSettings, runtime: Runtime) -> str:
    ariel = shutil.which("ariel") or str(Path(sys.executable).parent / "ariel")
    config = {
        "mcpServers": {
            "ariel": {"url": settings.mcp_url},
            "ariel-stdio": {"command": ariel, "args": ["mcp"], "env": {"ARIEL_HOME": str(settings.home)}},
        }
    }
    return json.dumps(config, indent=2)


# A request still being answered (run_agent waits up to 600 s for a run) would otherwise hold the HTTP app's
# shutdown that long; with the children's grace, `ariel up` stops within 10 s of the signal.
APP_SHUTDOWN_SECONDS = 2


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
    if not port_free(settings.host, settings.port):
        raise StartupFailed(f"port {settings.port} on {settings.host} is in use; set ARIEL_PORT to a free one")
    children = Children(settings.home / "logs")
    try:
        api_url = settings.prefect_api_url
        if api_url is None:
            if not port_free("127.0.0.1", settings.prefect_port):
                raise StartupFailed(
                    f"port {settings.prefect_port} is in use; set ARIEL_PREFECT_PORT, "
                    "or ARIEL_PREFECT_API_URL to use a running Prefect server"
                )
            api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
            say(f"Starting the Prefect server on port {settings.prefect_port} ...")
            # Only the control plane holds its credential: workers and runs go through the gateway.
            auth_string = settings.prefect_credential(create=True)
            assert auth_string is not None  # made just now when missing
            children.start(
                "prefect-server",
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(settings.prefect_port)],
                server_env(api_url, settings, auth_string),
            )
        started = time.monotonic()
        wait_healthy(api_url, children)
        say(f"Prefect API ready in {time.monotonic() - started:.1f} s")
        if settings.prefect_api_url is not None and answers_without_credential(api_url):
            say(f"Warning: the Prefect API at {api_url} answers without a credential: any process that reaches it "
                "reads every org's runs and can change them. Set PREFECT_SERVER_API_AUTH_STRING on that server and "
                "the same in ARIEL_PREFECT_AUTH_STRING here.")

        pool_type = choose_pool_type(settings)
        if pool_type == "docker" and settings.build_image:
            try:
                RuntimeImageBuilder(
                    tag=settings.runtime_image, base_image=settings.runtime_base_image, catalog=settings.stdio_catalog
                ).ensure(say)
            except ImageBuildFailed as exc:
                raise StartupFailed(str(exc)) from exc
        prefix, org_pool, redeployed = asyncio.run(prepare_orgs(settings, api_url, pool_type))
        runtime = Runtime(api_url, pool_type)
        if redeployed:
            say(f"Deployed {redeployed} existing agent(s) to work pool {org_pool}")
        runtime.save(settings.home)

        # One process runs a stock worker for every pool of this install, including pools made later; it
        # polls through the gateway, which starts answering once the app below serves.
        children.start(
            "worker",
            [sys.executable, "-m", "deployments.pools.worker_host", "--type", pool_type, "--prefix", prefix],
            worker_env(api_url, settings, pool_host_key),
        )
        ui_url = api_url.removesuffix("/api")
        say("")
        say(f"Ariel is up. Work pool: {org_pool} ({pool_type})")
        say(f"  MCP (streamable HTTP): {settings.mcp_url}")
        say(f"  Prefect UI:            {ui_url}" + (f" (password: the line in {settings.prefect_auth_file})"
                                                   if settings.prefect_api_url is None else ""))
        say(f"  Prefect gateway:       {settings.base_url}{GATEWAY_PATH}/api (workers and runs; see the README)")
        say(f"  Logs:                  {children.log_dir}")
        say("MCP client config (Claude Desktop style; HTTP, or stdio via `ariel mcp`):")
        say(client_config(settings, runtime))
        say("Press Ctrl-C to stop.")
        # From here, not before: a child that cannot even start should fail `ariel up`, not loop.
        Supervisor(children, report=say).start()
        app = create_app(settings, api_url, pool_type)
        # uvicorn handles both signals while it serves, then hands the signal back to stop_on_signals' handler.
        uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                      timeout_graceful_shutdown=APP_SHUTDOWN_SECONDS)).run()
    finally:
        ignore_stop_signals()  # also when an error, not a signal, brought us here
        say("Stopping ...")
        killed = children.stop_all()
        say(f"Stopped (killed {', '.join(killed)}, not stopped {GRACE_SECONDS:.0f} s after SIGTERM)." if killed
            else "Stopped.")

