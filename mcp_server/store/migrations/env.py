"""Alembic environment: runs on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from mcp_server.store._schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table. Beware:
    # with foreign keys on, dropping a parent table's copy cascades to its children,
    # so add columns with plain op.add_column (see 0003).
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
