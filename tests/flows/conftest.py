"""Fixtures of the runtime tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.support import OpenAICompatible
from tests.support import http_service


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    OpenAICompatible.requests = []
    OpenAICompatible.failures_left = 0
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-test")
    with http_service(OpenAICompatible) as host:
        yield f"http://{host}/v1"
