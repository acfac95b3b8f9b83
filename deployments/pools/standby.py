"""A Docker worker that hands each run to a container started before it: one fresh container per run, warm.

The stock `DockerWorker` creates a container when it picks a run up; the container then spends its first second
or more importing the run's code (and, on own hardware, litellm) before the run's first line.
`StandbyDockerWorker` keeps a container per pool and image already started (`python -m flows.standby`, with the
pool's limits and labels) and imported; a run picked up is written to that container's stdin (its environment,
the run token included: never in `docker inspect`), and the next standby starts at once. Each container still runs
exactly one run and is removed when it ends, as before.

Each run gets the runtime image it needs (`run_images.needs_full_image`): on Ariel's own pools most take the
pool's image's lean twin, when the engine has it; a run that calls its model itself or starts a stdio MCP server
takes the pool's (full) image. So a pool keeps standbys of up to two images.

How many: one of each image its runs took, and as many as it has runs coming soon that take that image
(`want_standbys`, which the worker host calls with what one query across its pools found scheduled). A burst
(twenty per-minute agents fall due in the same second) is so handed to containers that imported before it,
~0.3 CPU-s each after the handoff, not ~1.3 at once each. The first standby of an image starts as soon as the
last one is taken; the others once no run was handed on the worker host for `QUIET_SECONDS`, so that their
imports follow the burst before them rather than compete with it. And a waiting standby has the least CPU
weight Docker gives (`STANDBY_CPU_SHARES`) until it is handed its run: on a busy machine the runs' containers
go first, and the imports take what they leave. (Weights count among the engine's containers: the worker host,
Prefect and the app, outside them, are weighed against all the containers together.)

A standby is used only while it is what a new container would be: same image id (a rebuilt
`ariel-runtime:local` retires it), same limits and options (a changed pool template retires it),
still running. Otherwise, and when more runs come at once than standbys wait, the run gets a container
started for it (the cold path), which runs the same way. A standby idle past `IDLE_SECONDS` is removed, so
quiet pools hold no memory, and one past what the pool's coming runs need after `SURPLUS_SECONDS`.

A handed container is renamed `<run name>-<run id>-<hex>`; `run_of` reads the run back from that
name (Docker labels cannot change after creation), for `container_exits` and for operators' `docker ps
--filter name=<run id>`.

Example:
    >>> run_of("ariel-standby-1f2e3d4c")
    >>> run_of("0f3c9a1b-2c3d-4e5f-6071-8293a4b5c6d7-20261203-0659-1a2b")  # a slug's UUID is not the run's
    >>> run_of("crafty-tiger-0f3c9a1b-2c3d-4e5f-6071-8293a4b5c6d7-a1b2c3")
    UUID('0f3c9a1b-2c3d-4e5f-6071-8293a4b5c6d7')
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import docker
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

from deployments.images.runtime_image import lean_twin_problem
from deployments.pools.run_images import lean_image_of, needs_full_image
from deployments.pools.work_pools import is_own_pool, served_by
from flows.models import MODELS_HERE_ENV

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from prefect.client.schemas.objects import FlowRun
    from prefect.events import Event
    from prefect_docker.worker import DockerWorkerResult

STANDBY_LABEL = "ariel.standby"
POOL_LABEL = "io.prefect.work-pool-name"
RUN_LABEL = "io.prefect.flow-run-id"
STANDBY_COMMAND = ["python", "-m", "flows.standby"]
IDLE_SECONDS = 600.0
"""A standby nobody took for this long is removed: ~80 MB each (~240 MB with litellm, on own hardware), and a quiet
pool needs none."""
SURPLUS_SECONDS = 60.0
"""A standby past what the pool's coming runs need (they were deleted, their agent paused) is removed once it is
this old: one started for the next minute's run is taken before."""
QUIET_SECONDS = 2.0
"""The standbys of an image after its first start once no run was handed on this worker host for this long."""
TAKEN_SECONDS = 60.0  # a run handed out is left out of counts for this long: a count can be older than the handoff
RECIPE_SECONDS = 30.0
"""How long the container settings read from the pool's template serve the standbys started for coming runs
(Prefect's worker reads the pool again every 30 s); a run's own settings replace them at once."""
MAX_IMAGES = 2
"""Images one pool keeps standbys of at most: the lean image and the full."""
STANDBY_CPU_SHARES = 2
"""A waiting standby's CPU weight (Docker's `--cpu-shares`, the least it takes; a run's container has 1024): among
the engine's containers, its imports, for a run that is not there yet, get the CPU that runs under way leave idle.
Raised before it is handed its run. A weight, never a limit: on an idle machine it imports as fast as at 1024."""
DEFAULT_CPU_SHARES = 1024  # Docker's, what a container created without `cpu_shares` has
_KEPT_LABELS = re.compile(r"^(ariel\.|io\.prefect\.version$)")
# Anchored at the end: the run's name before it is the agent's slug, which its author chooses (a UUID, even).
_RUN_ID = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-[0-9a-f]{6}$")
# What a handed container takes over from a standby as it is: everything but these was fixed at its start.
_PER_RUN = frozenset({"environment", "name", "labels", "command"})
_ENDED = frozenset({"exited", "dead"})


def run_of(container_name: str) -> UUID | None:
    """The run a handed container executes, from its name; None for a standby not yet handed a run."""
    found = _RUN_ID.search(container_name)
    return UUID(found.group(1)) if found else None


class Handed:
    """When a run was last handed to a container on this worker host: its workers share one, so that no pool's
    standbys start their imports in the middle of another pool's burst."""

    def __init__(self) -> None:
        self.at = -math.inf


class _Standby:
    def __init__(self, container: Container, shape: str) -> None:
        # The image it runs, not the one its recipe read: a tag rebuilt meanwhile names another.
        self.container, self.shape, self.image_id = container, shape, str(container.attrs.get("Image", ""))
        self.started = time.monotonic()

    def fits(self, recipe: _Recipe) -> bool:
        return self.shape == recipe.shape and self.image_id == recipe.image_id


@dataclass(frozen=True)
class _Recipe:
    """What a standby of one image is started from: the container settings, their shape and the image's id."""

    settings: dict[str, Any]
    shape: str
    image_id: str
    made: float = field(default_factory=time.monotonic)

    @property
    def image(self) -> str:
        return str(self.settings.get("image"))


class StandbyDockerWorker(DockerWorker):
    """`DockerWorker`, but each run goes to a standby container when one fits."""

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Prefect's registry holds one class per key: a lookup of "docker" in this process must still find
        # the stock worker. The pool type (`type`) stays "docker".
        return "ariel-standby-docker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._standbys: dict[str, list[_Standby]] = {}  # by the name of their image, the longest waiting first
        self._recipes: dict[str, _Recipe] = {}  # by image: what its next standby is started from
        self._images: dict[bool, str] = {}  # the image a run takes, by whether it needs the full one (`_recipe`)
        self._coming: dict[str, set[UUID]] = {}  # by image: runs coming soon that take it (`want_standbys`)
        self._taken: dict[UUID, float] = {}  # runs handed out lately, and when
        self.handed = Handed()  # the worker host gives its workers one to share
        self._standby_lock = threading.Lock()
        self._replenishers: dict[str, threading.Thread] = {}  # starting the standbys of an image; one at a time
        self._warmed = False
        self._no_lean_said = ""  # why runs last took the full image though the lean one would do
        self._closed = False
        # The worker host turns this off for a pool it serves only while a run is due: a standby started then
        # would cost a container's imports and be removed, unused, when the worker stops after the run.
        self.keeps_standby = True

    async def sync_with_backend(self) -> None:
        """Prefect's sync; the first time, also start the pool's first standby, so its first run is warm too."""
        await super().sync_with_backend()
        if self._warmed or self._work_pool is None or not self.keeps_standby:
            return
        self._warmed = True
        try:
            # The image most runs of the pool take: the lean one on Ariel's own pools.
            self._replenish(await self._recipe(full=is_own_pool(self._work_pool_name)))
        except Exception as exc:  # no engine now, say: runs take the cold path, the worker goes on serving
            self._logger.warning(f"Could not start a standby container: {exc}")

    async def want_standbys(self, coming: Mapping[bool, Collection[UUID]]) -> None:
        """Keep a standby for each run coming soon: `coming` holds their ids by whether they need the full image
        (those already handed out are left out). Each image a run took keeps one regardless, while the pool keeps
        standbys at all."""
        if self._work_pool is None:  # not synced yet: the template is not known
            return
        wanted: dict[str, set[UUID]] = {}
        for full, runs in coming.items():
            if not runs:
                continue
            try:
                recipe = await self._recipe(full)
            except Exception as exc:  # the image missing and its pull failing, say: those runs start cold
                self._logger.warning(f"Could not prepare standby containers: {exc}")
                continue
            wanted.setdefault(recipe.image, set()).update(runs)
        with self._standby_lock:
            now = time.monotonic()
            self._taken = {run: at for run, at in self._taken.items() if now - at < TAKEN_SECONDS}
            self._coming = {image: runs - self._taken.keys() for image, runs in wanted.items()}
            recipes = [self._recipes[image] for image in wanted if image in self._recipes]
        for recipe in recipes:
            self._replenish(recipe)

    async def _recipe(self, full: bool) -> _Recipe:
        """What a standby for a run that needs the `full` image or not is started from: from the pool's template,
        read again after `RECIPE_SECONDS` (a run's own settings replace it sooner)."""
        with self._standby_lock:
            image = self._images.get(full)
            known = self._recipes.get(image) if image is not None else None
        if known is not None and time.monotonic() - known.made < RECIPE_SECONDS:
            return known
        assert self._work_pool is not None  # synced: the callers check
        # From the pool's template alone: what differs per run (env, labels, name) is not part of the shape.
        configuration = await self.job_configuration.from_template_and_values(self._work_pool.base_job_template, {})
        await asyncio.to_thread(self._choose_image, configuration, full)
        recipe = await asyncio.to_thread(self._plan_with_new_client, configuration)
        with self._standby_lock:
            self._images[full] = recipe.image
            known = self._recipes.get(recipe.image)
            if known is None or known.made <= recipe.made:  # a run's own, read meanwhile, is newer
                self._recipes[recipe.image] = recipe
        return recipe

    def _plan_with_new_client(self, configuration: DockerWorkerJobConfiguration) -> _Recipe:
        docker_client = self._get_client()  # type: ignore[no-untyped-call]
        try:
            return self._plan(docker_client, configuration)
        finally:
            docker_client.close()

    async def run(self, flow_run: FlowRun, configuration: DockerWorkerJobConfiguration,
                  task_status: Any = None) -> DockerWorkerResult:  # Prefect types it two ways
        """Prefect's run, in the image this run needs: the pool's image's lean twin unless it needs the full one."""
        full = needs_full_image(self._work_pool_name, dict(flow_run.parameters or {}))
        await asyncio.to_thread(self._choose_image, configuration, full)
        return await super().run(flow_run, configuration, task_status)

    def _choose_image(self, configuration: DockerWorkerJobConfiguration, full: bool) -> None:
        """Point `configuration` at the lean twin of its image when the run does not need the `full` image and the
        engine has the twin, built from the same code (one loaded without the other would run older code); else it
        keeps the pool's (full) image, and the worker says why, once."""
        lean = lean_image_of(configuration.image)
        if full or lean is None:
            return
        docker_client = self._get_client()  # type: ignore[no-untyped-call]
        try:
            problem = lean_twin_problem(docker_client, configuration.image)
        finally:
            docker_client.close()
        if problem is not None:
            self._say_no_lean(f"{problem[0].upper()}{problem[1:]}: runs take {configuration.image}, which is larger "
                              "and slower to start")
            return
        configuration.image = lean

    def _say_no_lean(self, why: str) -> None:
        if why != self._no_lean_said:
            self._no_lean_said = why
            self._logger.warning(why)

    def _plan(self, docker_client: DockerClient, configuration: DockerWorkerJobConfiguration) -> _Recipe:
        """The container settings of `configuration`, their shape, and the id of its image (pulled if need be)."""
        settings = self._build_container_settings(docker_client, configuration)
        if self._should_pull_image(docker_client, configuration=configuration):
            self._pull_image(docker_client, configuration)
        return _Recipe(settings, _shape(settings), str(docker_client.images.get(configuration.image).id))

    async def teardown(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.retire)
        await super().teardown(*exc_info)

    def _create_and_start_container(self, configuration: DockerWorkerJobConfiguration) -> tuple[Container, Event]:
        docker_client = self._get_client()  # type: ignore[no-untyped-call]
        try:
            recipe = self._plan(docker_client, configuration)
            # Named for its run before it is handed the run: from then on nothing takes it for a waiting standby,
            # and nothing that can fail is left to do once the run is in it.
            name = run_container_name(configuration.name, configuration.env.get("PREFECT__FLOW_RUN_ID") or "")
            container = self._take_standby(recipe, configuration.env.get("PREFECT__FLOW_RUN_ID") or "")
            if container is not None:
                standby_name = container.name
                # The run's weight before the run: from its first moment it is a run under way.
                if _rename(container, name) and _run_weight(container, recipe.settings) and _hand(
                        container, configuration.env):
                    self._logger.info(f"Standby container {standby_name!r} took the run as {name!r} "
                                      f"(image {configuration.image})")
                else:
                    _remove(container)
                    container = None
            if container is None:
                self._logger.info("No standby container fits; starting one for this run")
                container = _start(docker_client, recipe.settings, self._work_pool_name, name=name)
                if not _hand(container, configuration.env):
                    _remove(container)
                    raise RuntimeError(f"container {name} ended before it could be handed its run")
                self._logger.info(f"Docker container {name!r} started for the run (image {configuration.image})")
            created_event = self._emit_container_status_change_event(container, configuration)
        finally:
            docker_client.close()
        try:
            self._replenish(recipe)
        except Exception as exc:  # no thread to be had, say: the run is in its container, and goes on
            self._logger.warning(f"Could not start a standby container: {exc}")
        return container, created_event

    def _watch_container_safe(self, container: Container, configuration: DockerWorkerJobConfiguration,
                              created_event: Event) -> Container:
        """Prefect's watch, and the exit code read from the engine's events when the container was removed
        (`auto_remove`) before the watch read it: Prefect would take the snapshot from before the exit, exit
        code 0, for success, and report nothing; a run whose container was OOM-killed at start stayed Pending."""
        watched: Container = super()._watch_container_safe(
            container, configuration, created_event)
        state = watched.attrs.setdefault("State", {})
        if state.get("Status") not in _ENDED:
            state["ExitCode"], state["Status"] = self._exit_code(str(watched.id)), "exited"
        return watched

    def _exit_code(self, container_id: str) -> int:
        try:
            docker_client = self._get_client()  # type: ignore[no-untyped-call]
        except Exception:  # the engine went away with the container: unknown, reported as a crash
            return -1
        try:
            return exit_code_from_events(docker_client, container_id)
        finally:
            docker_client.close()

    def _take_standby(self, recipe: _Recipe, run_id: str) -> Container | None:
        """The standby of `recipe`'s image that waited longest for run `run_id`, if it is what a container started
        now would be; stale ones (an older image, another shape, stopped) are removed on the way."""
        with self._standby_lock:
            self.handed.at = time.monotonic()
            with suppress(ValueError):  # no standby is to start for this run again, whatever a count says
                taken = UUID(run_id)
                self._taken[taken] = self.handed.at
                for runs in self._coming.values():
                    runs.discard(taken)
        while True:
            with self._standby_lock:
                waiting = self._standbys.get(recipe.image)
                standby = waiting.pop(0) if waiting else None
            if standby is None:
                return None
            if standby.fits(recipe):
                try:
                    standby.container.reload()
                    if standby.container.status == "running":
                        return standby.container
                except Exception:  # gone, or the engine did not answer: either way not one to hand a run to
                    pass
            self._logger.info(f"Standby container {standby.container.name!r} is stale; removing it")
            _remove(standby.container)

    def _target(self, image: str) -> int:
        """Standbys of `image` to keep (under the lock): one, or one for each run coming that takes it."""
        return max(1, len(self._coming.get(image, ()))) if self.keeps_standby and not self._closed else 0

    def _replenish(self, recipe: _Recipe) -> None:
        """Start standbys of `recipe`'s image in the background until the pool has as many as it wants
        (`_target`), one at a time for each image; they replace those of that image of an older shape. Past
        `MAX_IMAGES`, the standbys of the image that waited longest are removed (the pool's template names another
        image now)."""
        image = recipe.image

        def fill() -> None:
            try:
                while True:
                    with self._standby_lock:
                        current = self._recipes.get(image, recipe)
                        have = sum(standby.fits(current) for standby in self._standbys.get(image, []))
                        if have >= self._target(image):
                            # Let go under the lock that decided it: a `_replenish` after this starts a new one.
                            self._replenishers.pop(image, None)
                            return
                        hold = have > 0 and time.monotonic() - self.handed.at < QUIET_SECONDS
                    if hold:  # a burst being handed out: its runs have the CPU first
                        time.sleep(QUIET_SECONDS / 4)
                        continue
                    if not self._start_standby(current):
                        # Its tag names another image than the recipe read (rebuilt just now): another would be
                        # the same; the next run's own settings, or the next count, bring the new image's.
                        with self._standby_lock:
                            self._replenishers.pop(image, None)
                        return
            except Exception as exc:  # the next run takes the cold path and tries again
                self._logger.warning(f"Could not start a standby container: {exc}")
                with self._standby_lock:
                    self._replenishers.pop(image, None)

        with self._standby_lock:
            known = self._recipes.get(image)
            if known is None or known.made <= recipe.made:
                self._recipes[image] = recipe
            if image in self._replenishers or self._target(image) == 0:
                return
            self._replenishers[image] = thread = threading.Thread(target=fill, name="standby", daemon=True)
            thread.start()

    def _start_standby(self, recipe: _Recipe) -> bool:
        """Start a standby of `recipe` and keep it; whether it fits `recipe` (else it is removed)."""
        client = docker.from_env()
        try:
            standby = _Standby(_start(client, recipe.settings, self._work_pool_name), recipe.shape)
        finally:
            client.close()
        removed: list[_Standby] = []
        with self._standby_lock:
            if self._closed or not standby.fits(recipe):  # the worker stopped while it started; or see above
                removed.append(standby)
            else:
                waiting = self._standbys.setdefault(recipe.image, [])
                removed += [old for old in waiting if not old.fits(recipe)]
                waiting[:] = [old for old in waiting if old.fits(recipe)] + [standby]
                while len(self._standbys) > MAX_IMAGES:
                    oldest = min((image for image in self._standbys if image != recipe.image),
                                 key=lambda image: min((s.started for s in self._standbys[image]), default=0.0))
                    removed += self._standbys.pop(oldest)
        for previous in removed:
            _remove(previous.container)
        return standby not in removed

    def retire_idle(self, idle_seconds: float = IDLE_SECONDS, surplus_seconds: float = SURPLUS_SECONDS) -> None:
        """Remove the standbys that waited longer than `idle_seconds`, those past what the pool wants that waited
        longer than `surplus_seconds`, or all when none is kept any more (called by the worker host's loop)."""
        now = time.monotonic()
        removed: list[_Standby] = []
        with self._standby_lock:
            for image, waiting in list(self._standbys.items()):
                kept = [standby for standby in waiting if self.keeps_standby and now - standby.started < idle_seconds]
                # The surplus goes newest first: the oldest are the likeliest to have finished importing.
                while len(kept) > self._target(image) and now - kept[-1].started >= surplus_seconds:
                    kept.pop()
                removed += [standby for standby in waiting if standby not in kept]
                if kept:
                    self._standbys[image] = kept
                else:
                    del self._standbys[image]
        for standby in removed:
            _remove(standby.container)

    def retire(self, wait_seconds: float = 3.0) -> None:
        """Remove the standbys now, and those being started: the worker is stopping."""
        with self._standby_lock:
            self._closed = True
            removed = [standby for waiting in self._standbys.values() for standby in waiting]
            self._standbys = {}
            starting = list(self._replenishers.values())
        for standby in removed:
            _remove(standby.container)
        deadline = time.monotonic() + wait_seconds
        for thread in starting:  # each removes what it started once it sees `_closed`
            thread.join(max(0.0, deadline - time.monotonic()))


def _shape(settings: dict[str, Any]) -> str:
    """What a standby must match to take a run: every container setting that is not the run's own."""
    return json.dumps({k: v for k, v in settings.items() if k not in _PER_RUN}, sort_keys=True, default=str)


def run_container_name(run_name: str | None, run_id: str) -> str:
    """A run's container's name: its run's name and id, and a suffix of its own (a retry gets a new container).

    >>> run_of(run_container_name("crafty-tiger", "0f3c9a1b-2c3d-4e5f-6071-8293a4b5c6d7"))
    UUID('0f3c9a1b-2c3d-4e5f-6071-8293a4b5c6d7')
    """
    return f"{run_name or 'ariel-run'}-{run_id}-{secrets.token_hex(3)}"


def _start(client: DockerClient, settings: dict[str, Any], pool: str, name: str | None = None) -> Container:
    """Start a container of `settings` that waits on stdin for its run: a standby, or one named for its run."""
    labels = dict(settings.get("labels") or {}) if name else {
        **{k: v for k, v in (settings.get("labels") or {}).items() if _KEPT_LABELS.match(k)}, STANDBY_LABEL: "yes"}
    labels[POOL_LABEL] = pool  # what `container_exits` and `remove_standbys` know an install's containers by
    kwargs = {k: v for k, v in settings.items() if k not in _PER_RUN}
    if not name:
        kwargs["cpu_shares"] = STANDBY_CPU_SHARES  # until it is handed a run (`_run_weight`)
    # Runs on an org's own hardware call their model themselves: their standby imports litellm before the run.
    environment = {MODELS_HERE_ENV: "1"} if is_own_pool(pool) else {}
    container = client.containers.create(
        **kwargs, command=STANDBY_COMMAND, environment=environment, labels=labels,
        name=name or f"ariel-standby-{secrets.token_hex(6)}", stdin_open=True,
    )
    try:
        container.start()
    except BaseException:
        _remove(container)
        raise
    return container


def _hand(container: Container, env: Mapping[str, str | None]) -> bool:
    """Write the run's environment to the container's stdin; False when that failed (the caller removes it)."""
    line = json.dumps({"env": {k: v for k, v in env.items() if v is not None}}) + "\n"
    try:
        sock = container.attach_socket(params={"stdin": 1, "stream": 1})
        try:
            raw: Any = getattr(sock, "_sock", sock)  # docker-py hands back a SocketIO over the real socket
            raw.sendall(line.encode())
        finally:
            # Sent is handed: a failed close must not have the caller start another container for the same run.
            with suppress(Exception):
                sock.close()
        return True
    except Exception:  # docker-py lets the connection's own errors through unwrapped
        return False


def _run_weight(container: Container, settings: Mapping[str, Any]) -> bool:
    """Give a standby about to be handed its run the CPU weight of a container started for it; False when the
    engine refused (the caller removes it, and the run takes the cold path)."""
    try:
        container.update(cpu_shares=settings.get("cpu_shares") or DEFAULT_CPU_SHARES)
        return True
    except Exception:  # the container ended meanwhile, or the engine did not answer
        return False


def _rename(container: Container, name: str) -> bool:
    try:
        container.rename(name)
        container.reload()
        return True
    except Exception:  # a clash, the engine gone: the caller removes it and starts one for the run
        return False


def exit_code_from_events(client: DockerClient, container_id: str, lookback_seconds: float = 3600) -> int:
    """How container `container_id` exited, from the engine's recent events (its `die` event carries the
    code, and outlives the container; the engine keeps its last 256 events, seconds' worth on a busy host); -1,
    "unknown", when none is found, which the worker reports as a crash (a run that had already reached a final
    state keeps it: Prefect refuses to crash a finished run)."""
    now = time.time()
    try:
        events = client.events(since=int(now - lookback_seconds), until=int(now) + 1, decode=True,
                               filters={"type": "container", "container": container_id, "event": "die"})
        try:
            for event in events:
                code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                if code is not None:
                    return int(code)
        finally:
            events.close()
    except Exception:  # the engine went away too: unknown
        pass
    return -1


def _remove(container: Container) -> bool:
    """Remove `container`; whether it was removed here. Already gone, or no engine: `remove_standbys` and the
    standby's own limit remain."""
    try:
        container.remove(force=True)
    except Exception:
        return False
    return True


def waiting_standbys(client: DockerClient, pool_prefix: str, running_only: bool = True) -> list[Container]:
    """The standby containers of the pools named `pool_prefix…` (one pool's name, or an install's prefix: not its
    orgs' own hardware's, `served_by`) that no run was handed yet. One removed meanwhile (its run ended, its pool host
    retired it) is not among them."""
    return [container for container in client.containers.list(all=not running_only, ignore_removed=True,
                                                               filters={"label": f"{STANDBY_LABEL}=yes"})
            if served_by(container.labels.get(POOL_LABEL, ""), pool_prefix) and container_run(container) is None]


def remove_standbys(pool_prefix: str) -> int:
    """Remove every standby container of an install's pools (left by a worker host that was killed)."""
    client = docker.from_env()
    try:
        left = waiting_standbys(client, pool_prefix, running_only=False)
        for container in left:
            _remove(container)
    finally:
        client.close()
    return len(left)


def remove_install_containers(pool_prefix: str) -> int:
    """Remove every container of an install's Ariel-hosted pools, runs in flight included, all at once; how many
    runs (distinct run ids) were removed.

    For `ariel up` stopping: the gateway and the Prefect server its runs report to stop with it, so a run left
    running would only retry them until it gave up. Its run stays Running (or Pending) in Prefect, and the next
    start's recovery sets it Crashed once its silence is judged and retries it. Containers of an org's own-hardware
    pool on the same engine are that org's `ariel worker`'s, not `ariel up`'s: they stay."""
    client = docker.from_env()
    try:
        # Sparse: one listing call, not an inspection of each container (the engine may hold many, and be busy).
        found = []
        for container in client.containers.list(all=True, sparse=True, filters={"label": POOL_LABEL}):
            labels = container.attrs.get("Labels") or {}
            pool = labels.get(POOL_LABEL, "")
            if served_by(pool, pool_prefix):
                name = ((container.attrs.get("Names") or [""])[0] or "").lstrip("/")
                try:
                    run = labelled_run(name, labels)
                except ValueError:  # a run label that is no run id: removed all the same, counted as no run
                    run = None
                found.append((container, run))
        removed: dict[str, bool] = {}

        def remove(container: Container) -> None:
            # Gone already (its run ended, its pool host removed it), or no engine: not counted.
            removed[str(container.id)] = _remove(container)

        threads = [threading.Thread(target=remove, args=(container,), daemon=True) for container, _run in found]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        client.close()
    return len({run for container, run in found if run is not None and removed.get(str(container.id))})


def run_containers(client: DockerClient, run_id: UUID | str, running_only: bool = True) -> list[Container]:
    """The containers of run `run_id`: started for it (Prefect's label) or a standby handed it (its name)."""
    found = {}
    by: list[dict[str, str | list[str] | bool]] = [{"label": f"{RUN_LABEL}={run_id}"}, {"name": str(run_id)}]
    for filters in by:
        # A container removed between the listing and its reading (its run just ended) is not among them.
        for container in client.containers.list(all=not running_only, filters=filters, ignore_removed=True):
            found[container.id] = container
    return list(found.values())


def running_runs(pool_prefix: str) -> Counter[UUID]:
    """How many containers run now for each run in the pools `pool_prefix` serves (`served_by`): two for a run
    whose retry started while its first attempt's container still ran. Standbys waiting for a run aside."""
    client = docker.from_env()
    try:
        runs: Counter[UUID] = Counter()
        for container in client.containers.list(filters={"label": "ariel.role=flow-run"}, ignore_removed=True):
            if served_by(container.labels.get(POOL_LABEL, ""), pool_prefix):
                with suppress(ValueError):  # a label that is no run id: not one of ours
                    if (run := container_run(container)) is not None:
                        runs[run] += 1
        return runs
    finally:
        client.close()


def container_run(container: Container) -> UUID | None:
    """The run `container` executes; None for a standby still waiting for one."""
    return labelled_run(container.name or "", container.labels)


def labelled_run(name: str, labels: Mapping[str, str]) -> UUID | None:
    """The run of a container so named and labelled: Prefect's label when it was started for the run, else the
    id in its name when it was a standby. ValueError for a label that is no run id."""
    return UUID(labels[RUN_LABEL]) if RUN_LABEL in labels else run_of(name)
