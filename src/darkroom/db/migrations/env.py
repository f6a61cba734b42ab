"""Alembic environment: runs on the connection darkroom hands it (see darkroom.db.migrate)."""

from alembic import context

from darkroom.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
