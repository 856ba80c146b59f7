"""Fixtures shared by every test folder.

Service-specific fixtures live in each folder's own conftest.py.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from astralboot.common.lab.netns import Lab

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session", autouse=True)
def _runtime_folders() -> Iterator[None]:
    """Remove the short runtime folders that write_config made for long test paths."""
    before = set(Path(tempfile.gettempdir()).glob("ab-run-*"))
    yield
    for path in set(Path(tempfile.gettempdir()).glob("ab-run-*")) - before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path (UNIX socket paths must stay short)."""
    path = Path(tempfile.mkdtemp(prefix="ab-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A boot network: server namespace with br0 at 192.0.2.1/24."""
    with Lab() as network:
        yield network


def _admin_engine():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa
    return sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    import sqlalchemy as sa
    name = f"astralboot_test_{secrets.token_hex(4)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
