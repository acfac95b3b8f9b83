"""Ariel's Prefect gateway: the only way into the Prefect API for anything but the control plane.

Prefect's open-source server has one credential for everything. Ariel keeps
it in the control plane and puts this reverse proxy in front of the API for
workers (ours and customers') and flow-run containers. Each presents a scoped
credential; the gateway lets through only the routes and the objects in its
scope, and answers other organizations' objects exactly like missing ones.

- worker keys (`ariel_wk_…`, an org's own hardware) and the pool host's key
  (`ariel_ph_…`, the workers `ariel up` runs): their pools, those pools' runs,
  deployments and flows; polling, states, heartbeats, logs, events.
- run tokens (`ariel_rt_…`), minted by the gateway for each run it hands to a
  worker and put into that run's environment: that run alone.

Served under `/prefect` by the HTTP app: `PREFECT_API_URL=http://host:8765/prefect/api`.
"""

from mcp_server.gateway.app import Gateway
from mcp_server.settings import GATEWAY_PATH

__all__ = ["GATEWAY_PATH", "Gateway"]
