"""Fixtures shared by every test: real services, each started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.images.runtime_image import docker_available
from tests.support import http_service, need, prefect_server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Suites make hundreds of calls against one app; the rate limit has its own tests (test_http_hardening).
os.environ.setdefault("ARIEL_RATE_LIMIT_PER_MINUTE", "0")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    need(docker_available(), "no Docker engine answers (start dockerd; see the README)")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the whole session; its API URL."""
    from prefect.logging.handlers import APILogWorker

    with prefect_server(tmp_path_factory.mktemp("prefect")) as api_url:
        yield api_url
        # Send in-process flows' queued log lines while the server still answers.
        APILogWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def service_host() -> Iterator[str]:
    """'127.0.0.1:PORT' of a loopback HTTP service answering JSON with answer 42."""
    with http_service() as host:
        yield host


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ariel-home"
