"""How a run's container ended, as the Docker engine tells it, written onto the run for `diagnose_run`.

The stock Docker worker reports only the exit code ("exited with non-zero status
code 137"), and Prefect's hint for 137 reads "likely out-of-memory"; but a
`docker kill` ends with 137 as well. The engine knows which: it publishes an
`oom` event when the kernel's OOM killer struck the container at its memory
limit (the same containerd event that sets `State.OOMKilled`), and a `kill`
event with the signal when someone kills or stops it through its API. Run
containers are removed as they exit (`auto_remove`), so `docker inspect`
afterwards races the removal; the events stream does not.

`watch` follows that stream for one install's run containers (label
`ariel.role=flow-run`, pool label `io.prefect.work-pool-name` under the
install's prefix) and writes each non-zero exit as one WARNING line on the
container's flow run (its `io.prefect.flow-run-id` label, or for a container
that was a standby the run id in its name, `standby.run_of`): operators see it in the Prefect
UI, and `deployments.runs.diagnosis` reads it back with `ContainerExit.parse`.
Only the exit code, the OOM flag and a signal number are written: nothing of
the container's output, which may hold what a tool was sent.

Example:
    >>> ended = ContainerExit(container="digest-run", exit_code=137, oom_killed=True)
    >>> ended.line()
    'Container digest-run exited with code 137: OOM-killed at its memory limit (Docker: State.OOMKilled)'
    >>> ContainerExit.parse(ended.line()) == ended
    True
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import docker
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from deployments.pools.standby import POOL_LABEL, labelled_run
from deployments.pools.work_pools import served_by

LOGGER_NAME = "ariel.container_exits"
_WARNING = 30
_FILTERS = {"type": "container", "label": ["ariel.role=flow-run"], "event": ["oom", "kill", "die"]}

# Exits that happened while this process was down (a restarted worker host) are still in the engine's recent
# events: replay this far back once at start, so that a run whose container died meanwhile still gets its cause.
REPLAY_SECONDS = 300
RECONNECT_SECONDS = 5.0
_REMEMBERED = 2000  # containers whose exit was handled, so that a replay does not write it twice
LATE_OOM_SECONDS = 1.5
"""How long an exit 137 with neither an `oom` nor a `kill` event before it waits for a late `oom`: the engine's
OOM notice and the container's exit reach it by two paths, and under load the `die` can come first (seen in CI;
~25 ms apart here when idle). Recovery's `SETTLE` waits this out before it reads the exit."""

_OOM = "OOM-killed at its memory limit (Docker: State.OOMKilled)"
_KILLED_BY_API = "killed from outside: signal {signal} sent through the Docker API (docker kill or docker stop)"
_KILLED_ELSEWHERE = "killed from outside the Docker engine (SIGKILL, not OOM-killed)"
_LINE = re.compile(r"^Container (?P<container>\S+) exited with code (?P<code>-?\d+)(?:: (?P<why>.*))?$")
_SIGNAL = re.compile(r"^killed from outside: signal (?P<signal>\S+) sent through the Docker API")


@dataclass(frozen=True)
class ContainerExit:
    """One run container's end: its exit code, whether the engine OOM-killed it, the signal sent through its API."""

    container: str
    exit_code: int
    oom_killed: bool = False
    kill_signal: str | None = None

    @property
    def killed_outside(self) -> bool:
        """Killed, and not by its memory limit: a signal through the engine's API, or SIGKILL (137) from elsewhere."""
        return not self.oom_killed and (self.kill_signal is not None or self.exit_code == 137)

    def line(self) -> str:
        """The log line written on the run; `parse` reads it back."""
        if self.oom_killed:
            why = _OOM
        elif self.kill_signal is not None:
            why = _KILLED_BY_API.format(signal=self.kill_signal)
        elif self.exit_code == 137:
            why = _KILLED_ELSEWHERE
        else:
            return f"Container {self.container} exited with code {self.exit_code}"
        return f"Container {self.container} exited with code {self.exit_code}: {why}"

    @classmethod
    def parse(cls, message: str) -> ContainerExit | None:
        """The exit a log line of `line`'s form tells of; None for any other line."""
        found = _LINE.match(message)
        if found is None:
            return None
        why = found.group("why") or ""
        signal = _SIGNAL.match(why)
        return cls(container=found.group("container"), exit_code=int(found.group("code")),
                   oom_killed=why == _OOM, kill_signal=signal.group("signal") if signal else None)


def recorded_exits(lines: Iterable[Any]) -> list[ContainerExit]:
    """The exits the worker host wrote among a run's log lines (`LogLine`s), in order.

    Only lines of its own logger count: a run may log any text under any other name, an imitation included.
    """
    return [ended for line in lines
            if getattr(line, "logger", None) == LOGGER_NAME and (ended := ContainerExit.parse(line.message))]


@dataclass
class _Seen:
    oom_killed: bool = False
    kill_signal: str | None = None


Found = tuple[UUID, ContainerExit, datetime]
"""An exit to write: on which run, what, and when the container died."""


class _Follower:
    """Folds the engine's oom, kill and die events of one install's run containers into `ContainerExit`s.

    An exit 137 with no `oom` or `kill` event before it is held (`on_hold(container_id)`) until an `oom` comes
    late or `overdue` gives it up as killed from outside."""

    def __init__(self, pool_prefix: str, on_hold: Callable[[str], Any] = lambda _container_id: None) -> None:
        self.pool_prefix = pool_prefix
        self.on_hold = on_hold
        self.seen: dict[str, _Seen] = {}
        self.handled: OrderedDict[str, None] = OrderedDict()
        self.held: dict[str, Found] = {}

    def overdue(self, container_id: str) -> Found | None:
        """The held exit of `container_id`, given up waiting for its OOM notice; None when one came meanwhile."""
        return self.held.pop(container_id, None)

    def fold(self, event: dict[str, Any]) -> Found | None:
        """Take one event; on a non-zero `die` of one of our runs' containers, what to write on which run."""
        actor = event.get("Actor") or {}
        container_id: str = actor.get("ID") or event.get("id") or ""
        labels: dict[str, str] = actor.get("Attributes") or {}
        if not container_id or not served_by(labels.get(POOL_LABEL, ""), self.pool_prefix):
            return None
        action = event.get("Action") or event.get("status")
        if action == "oom" and (held := self.held.pop(container_id, None)) is not None:  # after the exit
            return held[0], replace(held[1], oom_killed=True), held[2]
        if action != "die" and container_id in self.handled:  # too late, or replayed after a reconnect
            return None
        seen = self.seen.setdefault(container_id, _Seen())
        if action == "oom":
            seen.oom_killed = True
        elif action == "kill":
            seen.kill_signal = labels.get("signal") or seen.kill_signal
        elif action == "die":
            self.seen.pop(container_id, None)
            if container_id in self.handled:
                return None
            self.handled[container_id] = None
            if len(self.handled) > _REMEMBERED:
                self.handled.popitem(last=False)
            try:
                code = int(labels.get("exitCode", ""))
                run_id = labelled_run(labels.get("name", ""), labels)
            except ValueError:
                return None
            if run_id is None:  # a standby removed before any run was handed to it
                return None
            if code == 0 and not seen.oom_killed:
                return None
            ended = ContainerExit(container=labels.get("name", container_id[:12]), exit_code=code,
                                  oom_killed=seen.oom_killed, kill_signal=seen.kill_signal)
            at = datetime.fromtimestamp(event.get("timeNano", time.time_ns()) / 1e9, UTC)
            if code == 137 and not seen.oom_killed and seen.kill_signal is None:
                self.held[container_id] = (run_id, ended, at)
                self.on_hold(container_id)
                return None
            return run_id, ended, at
        return None


async def watch(pool_prefix: str, write: Callable[[UUID, ContainerExit, datetime], Any] | None = None) -> None:
    """Follow the engine's events until cancelled, writing each exit of this install's run containers on its run.

    `write` (default: a WARNING log line on the run, through this process's Prefect API) is awaited per exit.
    A lost engine connection is reopened from the last event seen; a failed write is retried until it lands.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Found] = asyncio.Queue()

    def give_up_waiting(container_id: str) -> None:
        if (found := follower.overdue(container_id)) is not None:
            queue.put_nowait(found)

    follower = _Follower(pool_prefix, lambda container_id: loop.call_later(LATE_OOM_SECONDS, give_up_waiting,
                                                                           container_id))
    since = int(time.time()) - REPLAY_SECONDS
    writer = asyncio.create_task(_write_all(queue, write or write_exit))
    try:
        while True:
            since = await _follow_once(loop, follower, since, queue)
            await asyncio.sleep(RECONNECT_SECONDS)
    finally:
        writer.cancel()


async def _follow_once(loop: asyncio.AbstractEventLoop, follower: _Follower, since: int,
                       queue: asyncio.Queue[Found]) -> int:
    """Read the events stream until it ends; returns the time to reopen it from."""
    try:
        client, stream = await _opened(loop, since)
    except Exception as exc:  # DockerException, or requests' own errors, which docker-py lets through unwrapped
        print(f"container exits: no Docker engine answers ({type(exc).__name__}); retrying", flush=True)
        return since
    ended: asyncio.Future[int] = loop.create_future()

    def take(event: dict[str, Any]) -> None:  # on the loop, as the follower's timers are
        if (found := follower.fold(event)) is not None:
            queue.put_nowait(found)

    def follow() -> None:
        last = since
        try:
            for event in _events(stream):
                last = max(last, int(event.get("time", last)))
                loop.call_soon_threadsafe(take, event)
        except Exception as exc:  # the engine went away or the stream was closed: reopen from `last`
            print(f"container exits: the Docker events stream ended ({type(exc).__name__})", flush=True)
        finally:
            with suppress(RuntimeError):  # the loop is closed: nobody waits for this stream any more
                loop.call_soon_threadsafe(_settle, ended, last)

    # A daemon thread, not asyncio.to_thread: the stream blocks in a read, and interpreter exit must not wait for it.
    threading.Thread(target=follow, name="container-exits", daemon=True).start()
    try:
        return await ended
    finally:
        stream.close()
        client.close()


async def _opened(loop: asyncio.AbstractEventLoop, since: int) -> tuple[docker.DockerClient, Any]:
    """The engine's client and its event stream, opened in a daemon thread: a slow engine must not stall the loop
    that serves every pool (its polls, its heartbeats), nor hold up the interpreter's exit. A pair that opens after
    the watcher stopped waiting is closed there."""
    opened: asyncio.Future[tuple[docker.DockerClient, Any]] = loop.create_future()

    def hand_over(pair: tuple[docker.DockerClient, Any] | None, error: BaseException | None) -> None:
        if opened.done():  # the watcher stopped meanwhile
            if pair is not None:
                _close(*pair)
        elif error is not None:
            opened.set_exception(error)
        else:
            opened.set_result(cast(tuple[docker.DockerClient, Any], pair))

    def open_in_thread() -> None:
        try:
            pair, error = _open(since), None
        except Exception as exc:
            pair, error = None, exc
        try:
            loop.call_soon_threadsafe(hand_over, pair, error)
        except RuntimeError:  # the loop is closed: nobody will ever read the pair
            if pair is not None:
                _close(*pair)

    threading.Thread(target=open_in_thread, name="container-exits-open", daemon=True).start()
    return await opened


def _close(client: docker.DockerClient, stream: Any) -> None:
    with suppress(Exception):
        stream.close()
    with suppress(Exception):
        client.close()


def _open(since: int) -> tuple[docker.DockerClient, Any]:
    client = docker.from_env()
    try:
        return client, client.events(since=since, filters=_FILTERS, decode=True)
    except BaseException:
        client.close()
        raise


def _settle(ended: asyncio.Future[int], last: int) -> None:
    if not ended.done():  # cancelled when the watcher stops
        ended.set_result(last)


def _events(stream: Any) -> Iterator[dict[str, Any]]:
    yield from stream


async def _write_all(queue: asyncio.Queue[Found],
                     write: Callable[[UUID, ContainerExit, datetime], Any]) -> None:
    while True:
        run_id, ended, at = await queue.get()
        print(f"run {run_id}: {ended.line()}", flush=True)
        for delay in (1, 2, 5, 10, 30, 60, *[60] * 60):  # about an hour: a Prefect server restarting comes back
            try:
                await write(run_id, ended, at)
                break
            except ObjectNotFound:
                break  # the run was deleted, or is another install's
            except PrefectHTTPStatusError as exc:
                if 400 <= exc.response.status_code < 500 and exc.response.status_code != 429:
                    print(f"run {run_id}: its container's exit was refused ({exc.response.status_code})", flush=True)
                    break  # out of this worker's scope (the gateway's 404): retrying will not change that
                await asyncio.sleep(delay)
            except Exception as exc:
                print(f"run {run_id}: could not record its container's exit ({type(exc).__name__}); "
                      f"retrying in {delay} s", flush=True)
                await asyncio.sleep(delay)


async def write_exit(run_id: UUID, ended: ContainerExit, at: datetime) -> None:
    """Write `ended` on the run as a WARNING log line, at the time the container died."""
    async with get_client() as client:
        await client.create_logs([LogCreate(name=LOGGER_NAME, level=_WARNING, message=ended.line(), timestamp=at,
                                            flow_run_id=run_id)])
