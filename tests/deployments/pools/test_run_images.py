"""Each run gets the runtime image it needs: the lean twin where the gateway calls its model and no stdio MCP server
starts, the full image otherwise, and the full one whenever the engine lacks the twin.

The choice is the worker's (`StandbyDockerWorker._choose_image`), on the real engine with images tagged for this
test from the offline base image.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import docker
import pytest
from prefect_docker.worker import DockerWorkerJobConfiguration

from deployments.images.runtime_image import CODE_HASH_LABEL
from deployments.pools.run_images import lean_image_of, needs_full_image
from deployments.pools.standby import StandbyDockerWorker
from flows.config import McpServerRef
from tests.deployments.pools.conftest import BASE_IMAGE
from tests.flows.support import SIGNER, config

ARIEL_POOL = "ariel-1a2b3c4d-acme-docker"
OWN_POOL = "ariel-1a2b3c4d-0f3c9a1b2c3d-own"
STDIO = McpServerRef(name="everything", server_id="s1", transport="stdio", command=["mcp-server-everything", "stdio"])
HTTP = McpServerRef(name="weather", server_id="s2", transport="http", url="https://weather.example.com/mcp")


def parameters(**overrides: Any) -> dict[str, Any]:
    return {"config": SIGNER.sign(config(**overrides)).model_dump(mode="json")}


@pytest.mark.parametrize(("pool", "run", "full"), [
    (ARIEL_POOL, parameters(), False),
    (ARIEL_POOL, parameters(model="openai/gpt-4o-mini", provider="main"), False),
    (ARIEL_POOL, parameters(mcp_servers=[HTTP]), False),
    # A stdio server starts inside the run's container: Node.js and the catalog are in the full image only.
    (ARIEL_POOL, parameters(mcp_servers=[HTTP, STDIO]), True),
    # A run that calls its model itself needs litellm.
    (ARIEL_POOL, parameters(model="bedrock/anthropic.claude-3", provider="main"), True),
    (OWN_POOL, parameters(), True),
    # Not an Ariel configuration (a run made by hand in the Prefect UI): the full image, where it fails as anywhere.
    (ARIEL_POOL, {"config": {"model": "x"}}, True),
    (ARIEL_POOL, {}, True),
])
def test_which_runs_need_the_full_image(pool: str, run: dict[str, Any], full: bool) -> None:
    assert needs_full_image(pool, run) is full


@pytest.fixture
def images(docker_engine: None) -> Iterator[tuple[str, str]]:
    """A full image and its lean twin, of this test only."""
    client = docker.from_env()
    full = f"ariel-runtime:images-test-{uuid.uuid4().hex[:12]}"
    lean = lean_image_of(full)
    assert lean == full.replace("ariel-runtime:", "ariel-runtime-lean:")
    base = client.images.get(BASE_IMAGE)
    base.tag(full)
    base.tag(lean)
    yield full, lean
    for name in (full, lean):
        with suppress(docker.errors.ImageNotFound):
            client.images.remove(name)
    client.close()


def chosen(worker: StandbyDockerWorker, image: str, full: bool) -> str:
    configuration = DockerWorkerJobConfiguration(image=image)
    worker._choose_image(configuration, full)
    return configuration.image


def test_the_worker_gives_a_run_the_lean_twin_unless_it_needs_the_full_image(images: tuple[str, str]) -> None:
    full, lean = images
    worker = StandbyDockerWorker(work_pool_name=ARIEL_POOL)
    assert chosen(worker, full, full=False) == lean
    assert chosen(worker, full, full=True) == full


def test_without_the_lean_twin_every_run_takes_the_full_image_and_the_worker_says_so_once(
    images: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    full, lean = images
    docker.from_env().images.remove(lean)
    worker = StandbyDockerWorker(work_pool_name=ARIEL_POOL)
    with caplog.at_level(logging.WARNING):
        assert chosen(worker, full, full=False) == full
        assert chosen(worker, full, full=False) == full
    said = [record.getMessage() for record in caplog.records if lean in record.getMessage()]
    assert len(said) == 1 and "`ariel build-image`" in said[0], said


def test_a_lean_twin_of_another_build_is_not_used(images: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    # As when only the full image of a new release was loaded (`docker load`), its lean twin left from the last one.
    full, lean = images
    client = docker.from_env()
    try:
        client.images.build(fileobj=io.BytesIO(f"FROM {BASE_IMAGE}\nLABEL {CODE_HASH_LABEL}=older\n".encode()),
                            tag=lean, rm=True)
    finally:
        client.close()
    worker = StandbyDockerWorker(work_pool_name=ARIEL_POOL)
    with caplog.at_level(logging.WARNING):
        assert chosen(worker, full, full=False) == full
    assert any("built from other code" in record.getMessage() for record in caplog.records)
