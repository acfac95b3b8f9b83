"""What the pool tests share: the real Docker engine, and the removal of every container a test of theirs left."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import suppress

import docker
import pytest

BASE_IMAGE = "ariel-base:bookworm"
# On every container these tests start, so that teardown finds them; of this test process only, so that it never
# removes the containers of a test running beside it (pytest-xdist's other worker).
TEST_LABEL = ("ariel.test", f"pools-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def engine(docker_engine: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    # A test's auto-removed container may go between the listing and its removal: gone is what is wanted.
    for container in client.containers.list(all=True, filters={"label": "=".join(TEST_LABEL)}, ignore_removed=True):
        with suppress(docker.errors.NotFound):
            container.remove(force=True)
    client.close()
