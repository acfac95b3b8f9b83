"""The worker host writes how a run's container ended, as the Docker engine tells it, on the run.

Real containers on the real engine (the offline base image), a real Prefect API; the containers carry the
labels the Docker worker gives a run's container, and are removed as they exit, as a run's are.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.pools.container_exits import RECONNECT_SECONDS, ContainerExit, _Follower, recorded_exits, watch
from deployments.runs.logs import read_log_page
from tests.deployments.pools.conftest import BASE_IMAGE, TEST_LABEL

# A second's pause first. Twice in CI, under load, the container was killed at its limit with no `oom` event at
# all (exit 137 only), even 1.5 s after its `die`; the likely cause, not proven: the engine sets up its OOM watch
# of a container just after starting it, and an allocation made at once beat it.
ALLOCATE = "import time\ntime.sleep(1)\nchunks = []\nwhile True:\n    chunks.append(bytearray(10**6))"


@flow(name="container-exits-probe")
def probe() -> None:
    """Never run: only its runs are made, as records for the containers below."""


@pytest.fixture
async def prefect(prefect_api: str) -> AsyncIterator[PrefectClient]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):  # what the watcher's get_client() reaches
        async with PrefectClient(prefect_api) as client:
            yield client


@asynccontextmanager
async def watching(prefix: str) -> AsyncIterator[None]:
    watcher = asyncio.create_task(watch(prefix))
    await asyncio.sleep(1)  # subscribed before the first container starts
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def start(engine: docker.DockerClient, run_id: uuid.UUID, pool: str, command: list[str], **options: Any) -> Any:
    labels = {"ariel.role": "flow-run", "ariel.org": "o" * 32, "io.prefect.flow-run-id": str(run_id),
              "io.prefect.work-pool-name": pool, TEST_LABEL[0]: TEST_LABEL[1]}
    return engine.containers.run(BASE_IMAGE, command, labels=labels, detach=True, auto_remove=True, **options)


async def exit_written(prefect: PrefectClient, run_id: uuid.UUID, timeout: float = 30) -> ContainerExit:
    for _ in range(int(timeout * 2)):
        lines = (await read_log_page(prefect, run_id, min_level="warning")).lines
        found = recorded_exits(lines)
        if found:
            assert len(found) == 1, lines
            return found[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no container exit was written on run {run_id}")


def prefix() -> str:
    return f"ariel-{uuid.uuid4().hex[:8]}-"


async def test_a_container_killed_at_its_memory_limit_is_written_as_oom_killed(
    engine: docker.DockerClient, prefect: PrefectClient
) -> None:
    run = await prefect.create_flow_run(probe)
    pool = prefix()
    async with watching(pool):
        start(engine, run.id, f"{pool}0f3c-docker", ["python3", "-c", ALLOCATE], mem_limit="32m",
              memswap_limit="32m")
        ended = await exit_written(prefect, run.id)
    assert ended.exit_code == 137 and ended.oom_killed and not ended.killed_outside, ended


def engine_event(action: str, run_id: uuid.UUID, container: str = "c" * 64, **attributes: str) -> dict[str, Any]:
    """One event of the engine's stream, as docker-py decodes it, for a run container of pool `p-docker`."""
    labels = {"io.prefect.flow-run-id": str(run_id), "io.prefect.work-pool-name": "p-docker", "name": "run-c"}
    return {"Action": action, "Actor": {"ID": container, "Attributes": {**labels, **attributes}},
            "time": 1, "timeNano": 10**9}


def test_an_oom_notice_that_comes_after_the_exit_still_names_the_memory_limit() -> None:
    """The engine's OOM notice and the container's exit reach it by two paths: under load `die` can come first."""
    run_id, held = uuid.uuid4(), list[str]()
    follower = _Follower("p", held.append)
    assert follower.fold(engine_event("die", run_id, exitCode="137")) is None
    assert held == ["c" * 64]
    found = follower.fold(engine_event("oom", run_id))
    assert found is not None and found[0] == run_id and found[1].oom_killed and not found[1].killed_outside
    assert follower.overdue("c" * 64) is None  # written once


def test_an_exit_137_with_no_oom_notice_is_given_up_as_killed_from_outside() -> None:
    run_id, held = uuid.uuid4(), list[str]()
    follower = _Follower("p", held.append)
    assert follower.fold(engine_event("die", run_id, exitCode="137")) is None
    found = follower.overdue(held[0])
    assert found is not None and found[1].killed_outside and not found[1].oom_killed, found
    assert follower.fold(engine_event("oom", run_id)) is None  # too late: the exit is written already
    assert follower.seen == {} and follower.held == {}  # nothing kept of a container that is gone


def test_an_exit_137_after_its_oom_or_kill_event_is_written_at_once() -> None:
    held: list[str] = []
    follower = _Follower("p", held.append)
    oomed, killed = uuid.uuid4(), uuid.uuid4()
    assert follower.fold(engine_event("oom", oomed, container="a")) is None
    by_oom = follower.fold(engine_event("die", oomed, container="a", exitCode="137"))
    assert follower.fold(engine_event("kill", killed, container="b", signal="9")) is None
    by_kill = follower.fold(engine_event("die", killed, container="b", exitCode="137"))
    assert held == []
    assert by_oom is not None and by_oom[1].oom_killed, by_oom
    assert by_kill is not None and by_kill[1].kill_signal == "9" and not by_kill[1].oom_killed, by_kill


async def test_a_docker_killed_container_is_written_as_killed_from_outside_not_oom(
    engine: docker.DockerClient, prefect: PrefectClient
) -> None:
    run = await prefect.create_flow_run(probe)
    pool = prefix()
    async with watching(pool):
        container = start(engine, run.id, f"{pool}0f3c-docker", ["sleep", "60"])
        await asyncio.sleep(1)
        container.kill()
        ended = await exit_written(prefect, run.id)
    assert ended.exit_code == 137 and not ended.oom_killed and ended.kill_signal == "9", ended
    assert ended.killed_outside
    assert "signal 9 sent through the Docker API" in ended.line()


async def test_an_exit_137_with_no_oom_or_kill_event_is_written_as_killed_outside_once_no_notice_comes(
    engine: docker.DockerClient, prefect: PrefectClient
) -> None:
    """What a SIGKILL from outside the engine looks like to it: the watcher waits a moment for a late OOM notice,
    then writes it."""
    run = await prefect.create_flow_run(probe)
    pool = prefix()
    async with watching(pool):
        start(engine, run.id, f"{pool}0f3c-docker", ["sh", "-c", "exit 137"])
        ended = await exit_written(prefect, run.id)
    assert ended.exit_code == 137 and not ended.oom_killed and ended.kill_signal is None, ended
    assert ended.killed_outside and "killed from outside the Docker engine" in ended.line()


async def test_another_installs_containers_and_clean_exits_are_not_written(
    engine: docker.DockerClient, prefect: PrefectClient
) -> None:
    theirs, clean, ours = [await prefect.create_flow_run(probe) for _ in range(3)]
    pool = prefix()
    async with watching(pool):
        start(engine, theirs.id, f"{prefix()}0f3c-docker", ["sh", "-c", "exit 3"])
        start(engine, clean.id, f"{pool}0f3c-docker", ["true"])
        await asyncio.sleep(2)
        start(engine, ours.id, f"{pool}0f3c-docker", ["sh", "-c", "exit 3"])
        ended = await exit_written(prefect, ours.id)  # written after the others died
    assert ended == ContainerExit(container=ended.container, exit_code=3)
    for run in (theirs, clean):
        assert (await read_log_page(prefect, run.id, min_level="warning")).lines == []


@contextmanager
def engine_that_drops_its_first_events_stream(folder: Path) -> Iterator[str]:
    """A unix socket relayed to the Docker engine's, which drops the first `/events` request unanswered: what a
    restart of the engine between the watcher's connect and its stream looks like. Yields a DOCKER_HOST."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "docker.sock"))
    listener.listen()
    dropped: list[bool] = []
    opened: list[socket.socket] = []  # closed as the test ends, the relays' threads then see an OSError and stop

    def relay(source: socket.socket, target: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for end in (source, target):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            opened.append(client)
            first = client.recv(65536)
            if b"/events" in first.split(b"\r\n", 1)[0] and not dropped:
                dropped.append(True)
                client.close()
                continue
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            opened.append(engine)
            engine.connect("/var/run/docker.sock")
            engine.sendall(first)
            for ends in ((client, engine), (engine, client)):
                threading.Thread(target=relay, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"unix://{folder / 'docker.sock'}"
    finally:
        for each in (listener, *opened):
            each.close()
        assert dropped, "the watcher never asked for the events stream"


async def test_the_watcher_goes_on_when_its_events_stream_is_dropped_as_it_opens(
    engine: docker.DockerClient, prefect: PrefectClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docker-py lets requests' ConnectionError through unwrapped, which once ended the watcher for good: no exit
    was written again until the worker host restarted."""
    run = await prefect.create_flow_run(probe)
    pool = prefix()
    with engine_that_drops_its_first_events_stream(tmp_path) as docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)
        async with watching(pool):
            await asyncio.sleep(RECONNECT_SECONDS + 1)  # dropped, and opened again
            container = start(engine, run.id, f"{pool}0f3c-docker", ["sleep", "60"])
            await asyncio.sleep(1)
            container.kill()
            ended = await exit_written(prefect, run.id)
    assert ended.exit_code == 137 and ended.killed_outside, ended
