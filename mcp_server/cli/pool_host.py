"""`ariel pool-host`: Ariel's own worker host as a process of its own, for installs whose parts run apart.

`ariel up` starts its pool host itself, beside the app. Where the app runs as
`ariel serve` (SaaS, compose, several replicas), this command runs the pool
host: one worker host (`deployments.pools.worker_host`) serving every org's
platform pools of the install, through the gateway of the app at `--server`,
with the pool host's key (ARIEL_POOL_HOST_KEY, the same in the app's
environment) and nothing else of the control plane: no store, no Prefect
credential. It asks the gateway which pools it is to serve (the install's
prefix and pool type) and the runtime image their runs use, builds that image
when missing or stale (from this machine's ARIEL_RUNTIME_BASE_IMAGE and
ARIEL_STDIO_CATALOG), and starts the worker host again when it dies, with the same
backoff and stop within 10 s as `ariel up`'s children.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

import docker

from deployments.images.runtime_image import docker_available, image_present, lean_twin_problem
from deployments.pools.run_images import lean_image_of
from mcp_server.cli.environments import ensure_runtime_image, worker_env, worker_host_argv
from mcp_server.cli.errors import StartupFailed
from mcp_server.cli.processes import Children, ignore_stop_signals
from mcp_server.cli.supervision import Supervisor
from mcp_server.cli.worker import WorkerFailed, ask_gateway
from mcp_server.settings import GATEWAY_PATH, ArielSettings


def run_pool_host(settings: ArielSettings, server: str) -> None:
    """Serve the install's pools until SIGINT or SIGTERM; the worker host again whenever it dies.

    Expects `stop_on_signals()` in force: a signal then raises SystemExit here, which stops the worker host
    (SIGTERM, then SIGKILL). Returns only by raising.
    """
    if settings.pool_host_key is None:
        raise WorkerFailed("set ARIEL_POOL_HOST_KEY to the key the app (`ariel serve`) was started with; make one "
                           "with `openssl rand -hex 32` and give both the same")
    key = settings.pool_host_key.get_secret_value()
    server = server.rstrip("/")
    try:
        address = urlsplit(server)
        address.port  # noqa: B018 - parsed here, where a bad one gets a message, not later with a traceback
    except ValueError:
        address = None
    if address is None or not server.startswith(("http://", "https://")) or not address.hostname:
        raise WorkerFailed(f"--server: {server!r} is not a URL; give the app's address, e.g. http://ariel-app:8765")
    if server.startswith("http://") and not _private(server):
        # The key, and every run's token and provider key after it, would cross a public network in clear.
        raise WorkerFailed(f"--server: {server} is plain http to a public address; use https, or the app's "
                           "address on your own network")
    answer = ask_gateway(server, key, "it is not the ARIEL_POOL_HOST_KEY the app was started with")
    prefix, pool_type, image = answer.get("pool_prefix"), answer.get("pool_type"), answer.get("runtime_image")
    if not isinstance(prefix, str) or pool_type not in ("docker", "process") or not isinstance(image, str):
        raise WorkerFailed(f"{server} named no pools for this key; is ARIEL_POOL_HOST_KEY the app's pool host key "
                           "(a worker key, ariel_wk_..., is for `ariel worker`), and the app of the same release?")
    if pool_type == "docker":
        if not docker_available():
            raise WorkerFailed("no Docker engine answers here, and this install runs agents in containers: start "
                               "Docker (or set DOCKER_HOST), then run this again")
        if settings.build_image:  # the image the app's pools name, whatever this machine's setting says
            try:
                ensure_runtime_image(settings.model_copy(update={"runtime_image": image}), _say)
            except StartupFailed as exc:
                raise WorkerFailed(str(exc)) from None
        elif not image_present(image):  # else every run would fail at its container's start, one by one
            raise WorkerFailed(f"the runtime image {image} is not on this Docker engine (nor in a registry its name "
                               "names), and ARIEL_BUILD_IMAGE is false: build it in a checkout of this release with "
                               "`ariel build-image`, or load it (`docker save` there, `docker load` here)")
        else:
            if (lean := lean_image_of(image)) is not None:
                image_present(lean)  # pulled, if its name names a registry
            if problem := _lean_problem(image):  # runs go on, in the larger image
                _say(f"The lean runtime image will not be used: {problem}. Every run takes {image}, larger and "
                     "slower to start; load both images of one build as you loaded the full one.")
    # The protected endpoints a process pool's runs get: the app, under its name here and loopback's.
    here = settings.model_copy(update={"host": address.hostname or "127.0.0.1",
                                       "port": address.port or (443 if address.scheme == "https" else 80)})
    gateway = f"{server}{GATEWAY_PATH}/api"
    _say(f"Serving the {pool_type} work pools {prefix}* of {server} (Ctrl-C stops the pool host).")
    argv = worker_host_argv(settings, str(pool_type), prefix)
    children = Children(log_dir=None)  # the worker host's output is this process's: a container's log, a terminal
    try:
        children.start("worker", argv, worker_env(gateway, here, key, gateway=gateway))
        Supervisor(children, report=_say).start()
        while True:
            time.sleep(3600)  # a stop signal ends this
    finally:
        ignore_stop_signals()
        children.stop_all()


def _lean_problem(image: str) -> str | None:
    client = docker.from_env()
    try:
        return lean_twin_problem(client, image)
    finally:
        client.close()


def _say(line: str) -> None:
    print(line, flush=True)


def _private(url: str) -> bool:
    """Whether every address `url`'s host has is loopback or on a private network (an operator's own)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise WorkerFailed(f"--server: cannot resolve {host!r} ({exc.strerror or exc}); check the name, or that its "
                           "service is up") from None
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and all(address.is_loopback or address.is_private for address in addresses)
