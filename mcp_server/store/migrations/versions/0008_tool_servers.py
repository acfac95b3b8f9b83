"""MCP servers as agent tools: each org's registry of servers, and who owns each agent.

`tool_servers` holds an org's servers (owner_user_id NULL) and its users' own
(owner_user_id set): where a server is, how Ariel signs in to it (a bearer
token, an API-key header or OAuth tokens, only as the org's data key sealed
them, like providers in 0006), whether an admin approved it, the tools it
listed last and the fingerprints approved (`pins`). A name is unique per org
and owner: a user's server may share its name with the org's, and stands in
for it in that user's agents. A tenant table under row-level security, like
agents (0002).

`agents.owner_user_id` is the user who created an agent, whose own servers
its names resolve to first; NULL for agents made before this migration, which
resolve to the org's servers only.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # A plain ADD COLUMN, never batch mode (see 0003: on SQLite it would cascade-delete rows).
    op.add_column("agents", sa.Column("owner_user_id", sa.String(32), nullable=True))
    op.create_table(
        "tool_servers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("owner_user_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("catalog_name", sa.String(64), nullable=True),
        sa.Column("auth", sa.String(8), nullable=False),
        sa.Column("header_name", sa.String(100), nullable=True),
        sa.Column("secret_ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("secret_nonce", sa.LargeBinary, nullable=True),
        sa.Column("secret_dek_version", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("tools", sa.JSON, nullable=False),
        sa.Column("pins", sa.JSON, nullable=True),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("created_by_label", sa.String(300), nullable=False),
        sa.Column("approved_by", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id", "secret_dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
            name="fk_tool_servers_data_key", ondelete="CASCADE",
        ),
    )
    # NULL never equals NULL in a unique constraint: the org's servers (no owner) are made unique by coalescing.
    op.create_index("uq_tool_servers_org_owner_name", "tool_servers",
                    ["org_id", sa.text("coalesce(owner_user_id, '')"), "name"], unique=True)
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE tool_servers ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tool_servers FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY org_isolation ON tool_servers "
        "USING (org_id = current_setting('ariel.org_id', true)) "
        "WITH CHECK (org_id = current_setting('ariel.org_id', true))"
    )


def downgrade() -> None:
    op.drop_table("tool_servers")
    op.drop_column("agents", "owner_user_id")
