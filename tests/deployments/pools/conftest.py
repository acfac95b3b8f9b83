"""What the pool tests share: the real Docker engine, and the removal of every container a test of theirs left."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

BASE_IMAGE = "ariel-base:bookworm"
TEST_LABEL = ("ariel.test", "pools")  # on every container these tests start, so that teardown finds them


@pytest.fixture
def engine(docker_engine: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    for container in client.containers.list(all=True, filters={"label": "=".join(TEST_LABEL)}):
        container.remove(force=True)
    client.close()
