"""The control-plane store: organizations, agents and their versions."""

from mcp_server.store._records import AgentRecord, AgentVersion, Organization
from mcp_server.store._store import Store

__all__ = ["AgentRecord", "AgentVersion", "Organization", "Store"]
