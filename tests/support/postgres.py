"""Throw-away PostgreSQL databases for tests and benchmarks.

The local server (127.0.0.1:5432, user postgres, trust authentication)
is what ``run.sh`` sets up; each database lives only as long as its block.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
ADMIN_URL = f"{SERVER}/test"  # where databases are made and dropped from


def admin_engine() -> sa.Engine:
    """An engine on the admin database, outside transactions (CREATE/DROP DATABASE)."""
    return sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextmanager
def scratch_database(prefix: str = "astralboot") -> Iterator[str]:
    """The URL of a new, empty database; dropped afterwards, connections and all."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"{SERVER}/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :n"), {"n": name})
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()
