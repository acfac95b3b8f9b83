"""The pool host's Docker worker reports how a run's container ended, even when the container is gone first.

Run containers are removed as they exit (`auto_remove`). Prefect's watch reads the exit code from its last
snapshot of the container; when the container died and was removed before the watch looked (a container
OOM-killed while it imports, on a busy host), that snapshot is from before the exit and says 0, and the run
would stay Pending forever. Real containers on the real engine (the offline base image).
"""

from __future__ import annotations

import time
from typing import Any

import docker
from prefect_docker.worker import DockerWorkerJobConfiguration

from deployments.pools.standby import StandbyDockerWorker, exit_code_from_events
from tests.deployments.pools.conftest import BASE_IMAGE, TEST_LABEL


def start(engine: docker.DockerClient, command: str) -> Any:
    return engine.containers.run(BASE_IMAGE, ["sh", "-c", command], labels=dict([TEST_LABEL]), detach=True,
                                 auto_remove=True)


def gone(engine: docker.DockerClient, container_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.containers.list(all=True, filters={"id": container_id}, ignore_removed=True):
        assert time.monotonic() < deadline, "the container was not removed"
        time.sleep(0.1)


def watch(container: Any) -> Any:
    worker = StandbyDockerWorker(work_pool_name="ariel-test-standby-worker")
    configuration = DockerWorkerJobConfiguration(image=BASE_IMAGE, stream_output=True, auto_remove=True)
    return worker._watch_container_safe(container, configuration, created_event=None)  # type: ignore[arg-type]


def test_a_container_removed_before_the_watch_reports_its_real_exit_code(engine: docker.DockerClient) -> None:
    container = start(engine, "exit 137")
    gone(engine, str(container.id))
    assert container.attrs["State"]["ExitCode"] == 0  # the stale snapshot Prefect's watch would have used

    watched = watch(container)

    assert watched.attrs["State"]["ExitCode"] == 137


def test_a_container_watched_to_its_end_keeps_the_code_it_exited_with(engine: docker.DockerClient) -> None:
    container = start(engine, "sleep 1; exit 3")

    watched = watch(container)

    assert watched.attrs["State"]["ExitCode"] == 3


def test_a_container_the_engine_has_no_exit_for_counts_as_unknown_never_as_success(
    engine: docker.DockerClient,
) -> None:
    assert exit_code_from_events(engine, "0" * 64) == -1
