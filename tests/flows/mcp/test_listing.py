"""A listing run (`flows.mcp.listing`): it lists an MCP server from where it runs and reports through the gateway.

The run is made in a real Prefect server and played in its own process through
Ariel's real gateway, with its own run token, against a real MCP server on
127.0.0.1 that wants a bearer token. What the gateway answers a run that was
not asked to list, or whose request was changed, copied to another org, or is
too old, is checked on the gateway's own route.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Pending, Running

from flows.config import McpServerRef
from flows.mcp.listing import FLOW_NAME, LISTING_ROUTE, ListingRequest, list_tools_run
from flows.signing import VERIFY_KEY_ENV
from tests.flows.mcp.servers import serving, tool_server
from tests.flows.support import SIGNER, RunGateway, _made_run, config, run_gateway

ORG = "o" * 32
TOKEN = "tok-listing-8e2f61c0a9"


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


@dataclass
class Registry:
    """The control plane's side as the gateway sees it: one server's headers, and the reports it was given."""

    url: str
    headers: dict[str, str]
    reports: list[tuple[str, str, list[dict[str, Any]] | None, str | None]] = field(default_factory=list)

    async def listing_access(self, org_id: str, server_id: str, url: str) -> dict[str, Any]:
        if (org_id, server_id, url) != (ORG, "srv-intranet", self.url):
            return {"error": "the MCP server no longer exists in this organization"}
        return {"headers": self.headers}

    async def record_worker_listing(self, org_id: str, server_id: str, run_id: str,
                                    tools: list[dict[str, Any]] | None, problem: str | None) -> str:
        self.reports.append((org_id, server_id, tools, problem))
        return f"kept {len(tools or [])} tool(s)"


def request(url: str, org_id: str = ORG, issued: datetime | None = None) -> ListingRequest:
    ref = McpServerRef(name="intranet", server_id="srv-intranet", transport="http", url=url)
    return ListingRequest(org_id=org_id, server=ref, issued_at=(issued or datetime.now(UTC)).isoformat())


def made(asked: ListingRequest) -> str:
    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(flow(name=FLOW_NAME)(list_tools_run), state=Pending(),
                                          parameters={"request": asked.model_dump(mode="json")}).id)


def played(gateway: RunGateway, run_id: str, org_id: str = ORG) -> dict[str, Any]:
    token = gateway.tokens.mint(UUID(run_id), org_id, attempt=0, ttl_seconds=600)
    env = {**os.environ, VERIFY_KEY_ENV: SIGNER.verify_key, "PREFECT_API_URL": gateway.api_url,
           "PREFECT_API_KEY": token, "ARIEL_TEST_FLOW_RUN_ID": run_id}
    done = subprocess.run([sys.executable, "-m", "tests.flows.mcp.listing_runner"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def ask(gateway: RunGateway, run_id: str, org_id: str = ORG) -> httpx.Response:
    """What the gateway answers the run `run_id` (with a token of `org_id`) asking for its server's headers."""
    token = gateway.tokens.mint(UUID(run_id), org_id, attempt=0, ttl_seconds=600)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Running(), force=True)
    return httpx.get(gateway.api_url.removesuffix("/api") + LISTING_ROUTE,
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_listing_run_lists_the_server_with_the_headers_the_gateway_gives_and_reports_its_tools(
    prefect_api: str
) -> None:
    with serving(tool_server(token=TOKEN)) as url:
        registry = Registry(url, {"Authorization": f"Bearer {TOKEN}"})
        with run_gateway(prefect_api, {}, tool_listings=registry) as gateway:
            outcome = played(gateway, made(SIGNER.sign(request(url))))

    assert (outcome["state"], outcome["result"]) == ("Completed", "kept 4 tool(s)"), outcome
    [(org_id, server_id, tools, problem)] = registry.reports
    assert (org_id, server_id, problem) == (ORG, "srv-intranet", None)
    assert [tool["name"] for tool in tools or []] == ["lookup", "forecast", "long", "nap"]
    assert (tools or [])[0]["description"] == "Looks up the weather of a city."
    assert (tools or [])[0]["input_schema"]["properties"] == {"city": {"type": "string"}}


def test_a_server_the_run_cannot_open_is_reported_with_why(prefect_api: str) -> None:
    with serving(tool_server(token=TOKEN)) as url:
        registry = Registry(url, {})  # no credential: the server answers 401
        with run_gateway(prefect_api, {}, tool_listings=registry) as gateway:
            outcome = played(gateway, made(SIGNER.sign(request(url))))

    assert outcome["state"] == "Completed", outcome
    [(_, _, tools, problem)] = registry.reports
    assert tools is None and problem is not None and "authentication" in problem, problem


def test_the_gateway_gives_nothing_to_a_run_whose_request_is_unsigned_changed_another_orgs_or_too_old(
    prefect_api: str
) -> None:
    url = "http://127.0.0.1:9/mcp"
    registry = Registry(url, {"Authorization": f"Bearer {TOKEN}"})
    signed = SIGNER.sign(request(url))
    changed = signed.model_copy(update={"server": signed.server.model_copy(update={"url": "http://10.9.9.9/mcp"})})
    with run_gateway(prefect_api, {}, tool_listings=registry) as gateway:
        fine = ask(gateway, made(signed))
        unsigned = ask(gateway, made(request(url)))
        tampered = ask(gateway, made(changed))
        elsewhere = ask(gateway, made(signed), org_id="e" * 32)
        stale = ask(gateway, made(SIGNER.sign(request(url, issued=datetime.now(UTC) - timedelta(minutes=16)))))
        agent_run = ask(gateway, _made_run(SIGNER.sign(config()), None))

    assert fine.status_code == 200 and fine.json() == {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    for refused in (unsigned, tampered, elsewhere, agent_run):
        assert (refused.status_code, refused.json()["error"]) == (409, "tampered"), refused.text
        assert TOKEN not in refused.text
    assert "does not match its signature" in tampered.json()["detail"]
    assert "another organization's" in elsewhere.json()["detail"]
    assert (stale.status_code, stale.json()["error"]) == (409, "expired")
    assert registry.reports == []
