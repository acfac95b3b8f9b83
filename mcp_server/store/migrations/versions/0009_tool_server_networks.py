"""MCP servers on an organization's own network, listed by its own-hardware worker.

`tool_servers.network` says where a server's tools are listed from: `platform`
(Ariel's control plane connects to it, as before) or `own` (only the network
of the org's own-hardware worker reaches it: a listing run in the org's own
pool connects there and reports the tools back through the gateway).
`listing` is the last listing asked of that worker, as JSON: when, the flow
run, and what came of it (`asked`, `listed`, or `failed` with the problem).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    # Plain ADD COLUMNs, never batch mode (see 0003: on SQLite it would cascade-delete rows).
    op.add_column("tool_servers", sa.Column("network", sa.String(8), nullable=False, server_default="platform"))
    op.add_column("tool_servers", sa.Column("listing", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("tool_servers", "listing")
    op.drop_column("tool_servers", "network")
