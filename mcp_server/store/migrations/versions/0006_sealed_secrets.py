"""Sealed secrets: each org's data key, wrapped by a key-encryption key, and its LLM providers, sealed by it.

`org_data_keys` holds an org's data keys (DEKs) only as the key-encryption
key (KEK) wrapped them, with the id of that KEK; `providers` holds each
provider's key only as ciphertext and nonce, sealed by the org's DEK of
`dek_version`. Neither holds anything readable without the KEK, which the
database never sees. Both are tenant tables under row-level security, like
agents (0002).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

TENANT_TABLES = ("org_data_keys", "providers")


def upgrade() -> None:
    op.create_table(
        "org_data_keys",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("kek_id", sa.String(200), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wrapped_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "providers",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("api_base", sa.Text, nullable=True),
        sa.Column("key_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("key_nonce", sa.LargeBinary, nullable=False),
        sa.Column("dek_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id", "dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
            name="fk_providers_data_key", ondelete="CASCADE",
        ),
    )
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
