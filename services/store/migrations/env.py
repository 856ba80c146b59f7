"""Alembic environment: always run with a connection the store hands in.

The store calls :func:`astralboot.services.store.database.migrate`, which
puts an open connection in ``config.attributes["connection"]``; there is
no alembic.ini and no URL here. ``render_as_batch`` lets SQLite alter
tables (it rebuilds them, keeping their rows).
"""

from alembic import context

from astralboot.services.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through astralboot.services.store.database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
