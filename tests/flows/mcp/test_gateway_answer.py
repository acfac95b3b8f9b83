"""What Ariel's gateway hands a run about its MCP servers: headers and pins of the servers its signed config names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import McpServerRef, RunConfig
from tests.flows.support import SIGNER, RunGateway, _made_run, config, run_gateway

REGISTRY: dict[str, dict[str, Any]] = {
    "srv-a": {"headers": {"Authorization": "Bearer tok-a-12345678"}, "pins": {"echo": "d" * 64}},
    "srv-b": {"error": "it awaits approval; an admin approves it with manage_tools approve"},
    "srv-other": {"headers": {"X-Api-Key": "key-other-12345678"}, "pins": {}},
}


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def ref(server_id: str) -> McpServerRef:
    return McpServerRef(name=server_id.removeprefix("srv-"), server_id=server_id, transport="http",
                        url="http://127.0.0.1:9/mcp")


def run_context(gateway: RunGateway, run: RunConfig) -> dict[str, Any]:
    """The gateway's answer to a run of `run` (made in Prefect, signed) asking with its own token."""
    signed = SIGNER.sign(run)
    token = gateway.tokens.mint(UUID(_made_run(signed, None)), signed.org_id, attempt=0, ttl_seconds=600)
    answer = httpx.get(gateway.api_url.removesuffix("/api") + "/ariel/v1/run",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_run_gets_the_entries_of_the_servers_its_config_names_and_no_other(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}, REGISTRY) as gateway:
        body = run_context(gateway, config(mcp_servers=[ref("srv-a"), ref("srv-b"), ref("srv-gone")]))
    assert body == {
        "provider": None,
        "models": "gateway",
        "mcp": {
            "srv-a": REGISTRY["srv-a"],
            "srv-b": REGISTRY["srv-b"],
            "srv-gone": {"error": "it no longer exists in this organization"},
        },
    }


def test_a_run_with_no_mcp_servers_gets_no_mcp_entry(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}, REGISTRY) as gateway:
        assert run_context(gateway, config()) == {"provider": None, "models": "gateway"}
