"""Fixtures of the runtime tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.flows.network.support import FakeDNS, Server, server
from tests.flows.support import OpenAICompatible
from tests.support import http_service


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    OpenAICompatible.requests = []
    OpenAICompatible.failures_left = 0
    OpenAICompatible.refuses_key = False
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-test")
    with http_service(OpenAICompatible) as host:
        yield f"http://{host}/v1"


@pytest.fixture
def stand_in_api() -> Iterator[Server]:
    """Stands in for the Prefect API: a loopback server no agent may reach."""
    with server() as api:
        yield api


@pytest.fixture
def service() -> Iterator[Server]:
    """An agent's own service, on another loopback port."""
    with server() as answering:
        yield answering


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """Fake answers for `.test` names (FakeDNS); every other name resolves as it always does."""
    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".test"):
            return real(host, port, *args, **kwargs)
        fake.lookups.append(name)
        if name not in fake.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        queue = fake.answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0)))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake
