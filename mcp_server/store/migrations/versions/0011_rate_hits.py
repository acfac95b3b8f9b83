"""Rate-limit hits, shared by every app process of an install.

Each row is one counted event of one key (a user's tool call) at an epoch time.
Every `ariel up` replica and every `ariel mcp` of one install counts against
the same rows, so a user's limit is one limit, not one per process
(`mcp_server.store._rate_hits`). Not tenant data: keys name users, not orgs'
objects, and rows live one window (a minute). No id column: one would be a
counter that every tool call advances, for ever.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "rate_hits",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_rate_hits_key_at", "rate_hits", ["key", "at"])
    op.create_index("ix_rate_hits_at", "rate_hits", ["at"])


def downgrade() -> None:
    op.drop_table("rate_hits")
