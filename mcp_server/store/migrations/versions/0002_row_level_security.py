"""Row-level security on tenant tables (PostgreSQL): a second wall behind the org filters.

Every tenant-scoped transaction sets `ariel.org_id`; rows of other orgs are
invisible to it and cannot be written, even by a query that forgot its filter.
FORCE applies the policy to the tables' owner too. Superusers bypass RLS, so
Ariel must connect as an ordinary role. SQLite has no RLS: nothing to do.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"

TENANT_TABLES = ("agents", "agent_versions")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY org_isolation ON {table} "
            "USING (org_id = current_setting('ariel.org_id', true)) "
            "WITH CHECK (org_id = current_setting('ariel.org_id', true))"
        )
