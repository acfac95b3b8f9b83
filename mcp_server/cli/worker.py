"""`ariel worker`: a Prefect Docker worker for an org's own hardware, through Ariel's Prefect gateway.

The worker holds a worker key and nothing else: it reaches Prefect only
through the gateway of the Ariel server it is pointed at, which lets it serve
its org's own-hardware pool alone and hands each run its own token. What runs
is the worker host Ariel's own pools run on (`deployments.pools.worker_host`)
for that one pool: Prefect's Docker worker handing each run to a standby
container started and imported before it, and writing how each run's container
ended on its run. This command asks the server which pool the key serves, sets
the environment, and starts the worker again when it dies (a worker gives up
after some minutes without its API), with the same backoff and stop within
10 s as `ariel up`'s children.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_server.auth.worker_keys import worker_key_prefix
from mcp_server.cli.environments import is_prefect_server_setting
from mcp_server.cli.processes import Children, ignore_stop_signals
from mcp_server.cli.supervision import Supervisor
from mcp_server.settings import MaxRuns, is_loopback_url

KEY_ENV = "ARIEL_WORKER_KEY"
POLL_SECONDS = "2"  # Prefect's default of 10 s would be most of a run's start-up time


class WorkerFailed(Exception):
    """`ariel worker` cannot start; the message says why and what to do."""


class WorkerSettings(BaseSettings):
    """The settings an own-hardware worker reads: the machine has none of the install's others."""

    model_config = SettingsConfigDict(env_prefix="ARIEL_", extra="ignore")

    max_runs: MaxRuns = None


def worker_host_command(pool: str) -> list[str]:
    """The worker host serving `pool` alone, with the machine's ARIEL_MAX_RUNS if it sets one (it also bounds the
    standby containers kept for the runs coming)."""
    try:
        max_runs = WorkerSettings().max_runs
    except ValidationError:
        raise WorkerFailed(f"ARIEL_MAX_RUNS={os.environ.get('ARIEL_MAX_RUNS', '')!r}: give a whole number from 1 to "
                           "10000 (runs this machine runs at once), or leave it unset for its default") from None
    argv = [sys.executable, "-m", "deployments.pools.worker_host", "--type", "docker", "--pool", pool]
    return argv if max_runs is None else [*argv, "--max-runs", str(max_runs)]


def ask_gateway(server: str, key: str, refused: str) -> dict[str, object]:
    """What the server's gateway says `key` may serve (its WORKER_ROUTE); `refused`: what to say on a 401."""
    url = f"{server.rstrip('/')}/prefect/ariel/v1/worker"
    try:
        answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=15)
    except httpx.HTTPError as exc:
        raise WorkerFailed(f"cannot reach Ariel at {server} ({type(exc).__name__}: {exc}); check --server") from None
    if answer.status_code == 401:
        raise WorkerFailed(f"{server} does not accept this key: {refused}")
    try:
        body = answer.json() if answer.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise WorkerFailed(f"{server} answered {answer.status_code} to {url}; is it an Ariel server of the same "
                           "release?")
    return body


def worker_pool(server: str, key: str) -> str:
    """The pool `key` serves, as the server's gateway says."""
    pool = ask_gateway(server, key, "it was revoked or mistyped, or the admin who made it left the org or is no "
                       "longer an admin (an admin lists keys with manage_org list_worker_keys and makes a new one "
                       "with create_worker_key)").get("work_pool")
    if not isinstance(pool, str):
        raise WorkerFailed(f"{server} named no work pool for this key; is it a worker key (ariel_wk_...), and the "
                           "server an Ariel server of the same release?")
    return pool


def worker_environment(server: str, key: str) -> dict[str, str]:
    """The worker's environment: Prefect through the gateway, with the worker key both ways clients send one."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", KEY_ENV)
           and not is_prefect_server_setting(name)}
    env.update(
        PREFECT_API_URL=f"{server.rstrip('/')}/prefect/api",
        PREFECT_API_KEY=key,
        PREFECT_API_AUTH_STRING=f"worker:{key}",
        PREFECT_WORKER_QUERY_SECONDS=env.get("PREFECT_WORKER_QUERY_SECONDS", POLL_SECONDS),
        # Prefect's client otherwise sends usage analytics to a third party; the customer may still opt in.
        DO_NOT_TRACK=env.get("DO_NOT_TRACK", "1"),
    )
    return env


def run_worker(server: str, key: str | None) -> None:
    """Run the worker host for the key's pool, again whenever it dies, until SIGINT or SIGTERM.

    Expects `stop_on_signals()` in force: a signal then raises SystemExit here, which stops the worker (SIGTERM,
    then SIGKILL). Returns only by raising.
    """
    key = (key or os.environ.get(KEY_ENV, "")).strip()
    if not key:
        raise WorkerFailed(f"give the worker key with --key or {KEY_ENV} (an admin makes one with "
                           "manage_org create_worker_key, or `ariel worker-key create`)")
    if worker_key_prefix(key) is None:
        raise WorkerFailed("that is not a worker key; worker keys look like ariel_wk_<8 hex digits>_<secret>")
    if not server.startswith(("http://", "https://")) or not _parses(server):
        raise WorkerFailed(f"--server: {server!r} is not a URL; give Ariel's address, e.g. https://ariel.example.com")
    if server.startswith("http://") and not is_loopback_url(server):
        # The key, and every run's token and provider key after it, would cross the network in clear.
        raise WorkerFailed(f"--server: {server} is plain http to another machine; use https")
    from deployments.images.runtime_image import docker_available

    if not docker_available():
        raise WorkerFailed("no Docker engine answers here; agents run in containers: start Docker, then run this "
                           "again (see the README: Run agents on your own hardware)")
    pool = worker_pool(server, key)
    argv = worker_host_command(pool)
    print(f"Serving work pool {pool} of {server} (Ctrl-C stops the worker).", flush=True)
    children = Children(log_dir=None)  # the worker's output is this terminal's
    try:
        children.start("worker", argv, worker_environment(server, key))
        Supervisor(children, report=lambda line: print(line, flush=True)).start()
        while True:
            time.sleep(3600)  # a stop signal ends this
    finally:
        ignore_stop_signals()
        children.stop_all()


def _parses(url: str) -> bool:
    """Whether `url` is one httpx can send to (a port that is a number, a host).

    >>> _parses("https://ariel.example.com"), _parses("https://host:80a"), _parses("https://")
    (True, False, False)
    """
    try:
        return bool(httpx.URL(url).host)
    except (httpx.InvalidURL, ValueError):
        return False
