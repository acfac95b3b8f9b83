"""What the processes the `ariel` command starts are given: which settings and credentials, which image.

Kept apart from stack.py (the HTTP app, uvicorn, the services) so that `ariel pool-host` prepares its worker
host without importing the control plane.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from urllib.parse import parse_qsl

from deployments.exceptions import ImageBuildFailed
from deployments.images.runtime_image import SOURCE_ROOT, RuntimeImageBuilder
from flows.network.guard import PRIVATE_NETWORKS_ENV, PROTECTED_ENDPOINTS_ENV, control_plane_hosts, egress_environment
from mcp_server.cli.errors import StartupFailed
from mcp_server.settings import GATEWAY_PATH, ArielSettings


def prefect_env(api_url: str, settings: ArielSettings) -> dict[str, str]:
    """The environment of the Prefect server and the worker host; a process pool's flow runs inherit it.

    ARIEL_PROTECTED_ENDPOINTS gains the control plane's services (Ariel's HTTP
    app, the Prefect API), the set a Docker pool's runs get too, which the
    runtime then refuses; an operator's own entries (say, the store's database)
    are kept, first. No Prefect or Ariel credential of this shell passes on:
    each child gets the one it needs, from `server_env` or `worker_env`.
    """
    env = {name: value for name, value in os.environ.items() if not is_credential(name)}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(settings.home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS=str(settings.worker_query_seconds),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        # Prefect's client otherwise sends usage analytics to a third party from every process and run.
        DO_NOT_TRACK="1",
    )
    control_plane = [*control_plane_hosts(settings.host, settings.port, api_url), *settings.service_endpoints()]
    env.pop(PRIVATE_NETWORKS_ENV, None)  # the install's setting, not this shell's
    env.update(egress_environment([*filter(None, [os.environ.get(PROTECTED_ENDPOINTS_ENV)]), *control_plane],
                                  refuse_private_networks=not settings.mcp_private_networks))
    return env


def is_credential(name: str) -> bool:
    """Variables that hold a credential of the control plane or of Prefect: never handed to a child as they are."""
    upper = name.upper()
    return upper in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING") or (
        upper.startswith("ARIEL_")
        and upper.endswith(("_KEY", "_AUTH_STRING", "_SECRET", "_KEK", "_HEADERS", "_PASSWORD"))
    ) or upper.startswith("ARIEL_KEK")


def is_prefect_server_setting(name: str) -> bool:
    """Prefect's settings of its server (database, services). Never a worker's: a Prefect worker copies its settings
    into every run, whose container would get the server's database address and password, and whose Prefect would
    then import the database driver the runtime images leave out."""
    return name.upper().startswith(("PREFECT_SERVER_", "PREFECT_API_DATABASE_", "PREFECT_API_SERVICES_"))


def _server_side(name: str) -> bool:
    upper = name.upper()
    if is_prefect_server_setting(upper):
        return True
    return upper.startswith("ARIEL_") and upper not in ("ARIEL_HOME", PROTECTED_ENDPOINTS_ENV, PRIVATE_NETWORKS_ENV)


# Prefect's scheduler makes each deployment's runs up to an hour ahead, and up to 100: 60 runs per per-minute agent,
# inserted at once into the embedded server's SQLite (and deleted again whenever the agent's schedule changes or
# it is paused). Ten minutes ahead (and at least 3 runs, Prefect's default) is plenty for a loop that tops them up
# every minute, and a sixth of the writes. An operator's own values, set in the environment, win.
SCHEDULER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT10M",  # a pydantic timedelta: ISO 8601
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "10",
}


def server_env(api_url: str, settings: ArielSettings, auth_string: str) -> dict[str, str]:
    """The embedded Prefect server's environment: it requires the control plane's auth string on every route."""
    return {**SCHEDULER_ENV, **prefect_env(api_url, settings), "PREFECT_SERVER_API_AUTH_STRING": auth_string}


def prefect_database(settings: ArielSettings) -> str:
    """Where the embedded Prefect server keeps its data, for people: Prefect's own setting in `ariel up`'s
    environment (`PREFECT_API_DATABASE_CONNECTION_URL`, passed to that server alone), else SQLite in ARIEL_HOME.

    >>> import os; from pathlib import Path; from unittest import mock
    >>> with mock.patch.dict(os.environ, {"PREFECT_API_DATABASE_CONNECTION_URL":
    ...         "postgresql+asyncpg://prefect:s3cret@db.internal:5432/prefect"}):
    ...     prefect_database(ArielSettings(home=Path("/h")))
    'PostgreSQL at db.internal:5432/prefect'
    >>> with mock.patch.dict(os.environ, {"PREFECT_API_DATABASE_CONNECTION_URL":
    ...         "postgresql+asyncpg://prefect:s3cret@/prefect?host=/var/run/postgresql"}):
    ...     prefect_database(ArielSettings(home=Path("/h")))
    'PostgreSQL at /var/run/postgresql/prefect'
    >>> with mock.patch.dict(os.environ, {"PREFECT_API_DATABASE_CONNECTION_URL":
    ...         "postgresql+asyncpg://prefect:s3cr@t:pw@db.internal:5432/prefect"}):
    ...     prefect_database(ArielSettings(home=Path("/h")))
    'PostgreSQL at db.internal:5432/prefect'
    >>> prefect_database(ArielSettings(home=Path("/h")))
    'SQLite at /h/prefect/prefect.db'
    """
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "")
    if not url:
        return f"SQLite at {settings.home / 'prefect' / 'prefect.db'}"
    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):  # sqlite:///path: a path, no credentials
        return f"SQLite at {rest.removeprefix('/') or rest}"
    # By hand, not SQLAlchemy's make_url: a password may hold '@' unencoded, which make_url takes for the end of
    # the password (printing the rest) or refuses with a ValueError that quotes it. Never anything before the
    # last '@'; a socket directory stands in for a host (`?host=/var/run/postgresql`).
    place, _, query = rest.rpartition("@")[2].partition("?")
    kind = "PostgreSQL" if scheme.startswith("postgresql") else scheme
    if place.startswith("/"):
        host = next((value for name, value in parse_qsl(query) if name == "host"), "localhost")
        return f"{kind} at {host}{place}"
    return f"{kind} at {place}"


def gateway_url(settings: ArielSettings) -> str:
    """The Prefect API as workers and runs on this host reach it: through the gateway in Ariel's HTTP app."""
    return f"{settings.local_url}{GATEWAY_PATH}/api"  # loopback: the pool host runs beside the app


def worker_host_argv(settings: ArielSettings, pool_type: str, prefix: str) -> list[str]:
    """The command of the worker host serving an install's pools, as `ariel up` and `ariel pool-host` start it."""
    argv = [sys.executable, "-m", "deployments.pools.worker_host", "--type", pool_type, "--prefix", prefix,
            "--idle-workers", str(settings.idle_workers)]
    return argv if settings.max_runs is None else [*argv, "--max-runs", str(settings.max_runs)]


def worker_env(api_url: str, settings: ArielSettings, pool_host_key: str, gateway: str | None = None) -> dict[str, str]:
    """The worker host's environment: the gateway's URL and the pool host's key, never the control plane's.

    `gateway`: the Prefect API as the gateway serves it; default this host's app (`gateway_url`). The key goes
    both ways Prefect clients send one (bearer, and basic auth, which the event stream uses). The protected
    endpoints still name the Prefect API at `api_url` itself: a process pool's runs, on this host, must not
    reach it under any name.
    """
    # A stock worker copies every PREFECT_ setting it has into each run, and a process pool's runs inherit the
    # rest: nothing of the server's (its database URL holds a password) or of Ariel's own configuration (the
    # store's URL, keys) goes to the worker host; it needs none of it.
    env = {name: value for name, value in prefect_env(api_url, settings).items() if not _server_side(name)}
    env.update(PREFECT_API_URL=gateway or gateway_url(settings), PREFECT_API_KEY=pool_host_key,
               PREFECT_API_AUTH_STRING=f"pool-host:{pool_host_key}")
    # A process worker runs flows on this host: make the runtime importable from any directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    return env


def ensure_runtime_image(settings: ArielSettings, say: Callable[[str], None]) -> None:
    """Build the runtime image (`settings.runtime_image`) when missing or older than the code, saying so."""
    try:
        RuntimeImageBuilder(
            tag=settings.runtime_image, base_image=settings.runtime_base_image, catalog=settings.stdio_catalog
        ).ensure(say)
    except ImageBuildFailed as exc:
        raise StartupFailed(str(exc)) from exc
