"""Listing runs in Prefect: one deployment of `flows.mcp.listing` per own-hardware pool, and a run per listing.

The control plane cannot reach an MCP server on a customer's own network; the
org's own-hardware worker can. A listing is a flow run of that pool's listing
deployment, with the signed `ListingRequest` as its only parameter. Operators
see these runs in the Prefect UI under the flow `ariel-mcp-listing`, tagged
with the org like its agents' runs (and so listed in chat beside them).

Example (needs a Prefect server)::

    async with PrefectClient(api_url) as client:
        run_id = await start_listing(client, "ariel-9a8b-0f3c-own", org_id, "intranet", signed.model_dump())
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.utilities.callables import parameter_schema

from deployments.pools.work_pools import org_tag
from flows.mcp.listing import ENTRYPOINT, FLOW_NAME, list_tools_run

LISTING_TAG = "ariel:listing"
# What listing runs accept; Prefect enforces it on every run.
PARAMETER_SCHEMA: dict[str, Any] = parameter_schema(list_tools_run).model_dump_for_openapi()


async def start_listing(client: PrefectClient, pool_name: str, org_id: str, server_name: str,
                        request: dict[str, Any]) -> UUID:
    """A new run of the pool's listing deployment (made, or brought up to date, first); returns the run's id."""
    flow_id = await client.create_flow_from_name(FLOW_NAME)
    # Prefect's deployment create is an upsert by flow and name: two listings at once make one deployment.
    deployment_id = await client.create_deployment(
        flow_id=flow_id,
        name=pool_name,
        work_pool_name=pool_name,
        entrypoint=ENTRYPOINT,
        parameter_openapi_schema=PARAMETER_SCHEMA,
        enforce_parameter_schema=True,
        tags=sorted({"ariel", org_tag(org_id), LISTING_TAG}),
        description="Ariel lists the tools of MCP servers on this organization's own network from here",
        pull_steps=[],
    )
    run = await client.create_flow_run_from_deployment(
        deployment_id, parameters={"request": request}, name=f"list-tools-{server_name}",
    )
    return run.id
