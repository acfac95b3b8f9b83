"""Listing an MCP server's tools from where the org's runs execute: its own-hardware worker.

An org whose pool runs on its own hardware (`ariel worker`) can name MCP
servers that only its network reaches (`manage_tools add … network='own'`).
Ariel's control plane cannot connect to those, so it asks the worker instead:
it starts a run of `list_tools_run` in the org's own pool with a
`ListingRequest` it signed. The run checks the signature (as an agent run
checks its configuration), fetches the server's headers from Ariel's gateway
with its run token, connects exactly as an agent run would
(`flows.mcp.client.list_server_tools`: the address is checked where the run
executes), and posts what the server listed, or why it could not, back to the
gateway. The control plane screens and pins the tools as if it had listed them
itself; nothing of the listing is a secret, and no header leaves the run.

Example (the control plane's side: `mcp_server.services.tool_listing`)::

    request = signer.sign(ListingRequest(org_id=org, server=ref, issued_at=utc_now().isoformat()))
    await client.create_flow_run_from_deployment(deployment_id, parameters={"request": request.model_dump()})
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from typing import Any, Literal

import httpx
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from flows.config import McpServerRef
from flows.credentials import FETCH_SECONDS, McpServerAccess, gateway_url, json_object, run_token
from flows.engine.context import api_url
from flows.engine.logs import run_logger
from flows.exceptions import ConfigTampered, RuntimeFailure
from flows.mcp.client import McpRefused, list_server_tools
from flows.network.guard import protected_in_environment
from flows.signing import VERIFY_KEY_ENV, canonical, decode_public_key
from flows.tls import tls_for

LISTING_ROUTE = "/ariel/v1/listing"  # the gateway's; mcp_server.gateway.app.LISTING_ROUTE
FLOW_NAME = "ariel-mcp-listing"
# Module form, like the agent's: it resolves on a process worker and in the runtime image alike.
ENTRYPOINT = "flows.mcp.listing.list_tools_run"  # dotted: see deployments.agents.compiler
LISTING_CONNECT_SECONDS = 30.0


class ListingRequest(BaseModel):
    """What the control plane asks a worker to list: one server of one org, signed, with when it was asked.

    The gateway refuses a request older than its limit, so a signed request copied into another run later
    opens nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Signed with the same key as run configurations: this field keeps one kind of signed message from ever
    # passing for the other (RunConfig has no such field, and both forbid extra fields).
    kind: Literal["mcp-listing"] = "mcp-listing"
    org_id: str
    server: McpServerRef = Field(description="The server as runs name it (http or sse); its credentials are not "
                                 "here: the run fetches them from the gateway.")
    issued_at: str = Field(description="When the control plane asked (ISO 8601, UTC).")
    signature: str | None = None


def verify_request(request: ListingRequest | dict[str, Any], public_key: str | None) -> ListingRequest:
    """The request, when it carries the control plane's signature over exactly its fields; else `ConfigTampered`."""
    try:
        request = request if isinstance(request, ListingRequest) else ListingRequest.model_validate(request)
    except ValueError:
        raise ConfigTampered("tampered: the listing request is not one Ariel makes") from None
    if not public_key or request.signature is None:
        raise ConfigTampered("tampered: the listing request is unsigned, or the run has no key to check it with "
                             f"({VERIFY_KEY_ENV}); only Ariel's manage_tools starts listing runs")
    try:
        signature = base64.b64decode(request.signature, validate=True)
        decode_public_key(public_key).verify(signature, canonical(request))
    except (binascii.Error, InvalidSignature):
        raise ConfigTampered("tampered: the listing request does not match its signature; only Ariel's "
                             "manage_tools starts listing runs") from None
    return request


async def list_tools_run(request: ListingRequest) -> str:
    """List one MCP server's tools from this worker's network and report them to Ariel (the run function of the
    `FLOW_NAME` flow, executed by `flows.engine`)."""
    logger = run_logger()
    verify_request(request, os.environ.get(VERIFY_KEY_ENV))
    ref = request.server
    url = gateway_url(LISTING_ROUTE)
    token = run_token()
    if url is None or token is None:
        raise RuntimeFailure("this listing run has no run token: listing runs get one when an Ariel work pool's "
                             "worker starts them through Ariel's Prefect gateway")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=FETCH_SECONDS, trust_env=False, verify=tls_for(url)) as gateway:
        answer = await gateway.get(url, headers=headers)
        body = json_object(answer)
        if answer.status_code != 200:
            raise RuntimeFailure(f"Ariel's gateway gave no access to MCP server {ref.name!r}: "
                                 f"{body.get('detail') or f'status {answer.status_code}'}")
        given = body.get("headers")
        given = given if isinstance(given, dict) else {}
        access = McpServerAccess(headers={str(k): SecretStr(str(v)) for k, v in given.items()})
        protected = await asyncio.to_thread(protected_in_environment, api_url())
        report: dict[str, Any]
        try:
            tools = await list_server_tools(ref, access, protected, connect_seconds=LISTING_CONNECT_SECONDS,
                                            logger=logger)
            report = {"tools": [{"name": tool.name, "description": tool.description or "",
                                 "input_schema": dict(tool.input_schema or {})} for tool in tools]}
            logger.info("MCP server %s lists %d tool(s): %s", ref.name, len(tools),
                        ", ".join(tool.name for tool in tools)[:500])
        except McpRefused as exc:  # redacted already (`list_server_tools`): a server may echo its credential
            report = {"problem": str(exc)}
            logger.warning("MCP server %s could not be listed from this worker: %s", ref.name, exc)
        posted = await gateway.post(url, headers=headers, json=report)
        done = json_object(posted)
        if posted.status_code != 200:
            raise RuntimeFailure(f"Ariel did not take the listing of MCP server {ref.name!r}: "
                                 f"{done.get('detail') or f'status {posted.status_code}'}")
    return str(done.get("done") or "reported")
