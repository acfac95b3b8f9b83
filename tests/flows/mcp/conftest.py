"""Fixtures of the MCP runtime tests: real MCP servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.mcp.servers import everything_http


@pytest.fixture(scope="session")
def everything_url() -> Iterator[str]:
    """server-everything (npm) over streamable HTTP, installed on first use; its MCP endpoint's URL."""
    with everything_http() as url:
        yield url
