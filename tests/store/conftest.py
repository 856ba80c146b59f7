"""Fixtures for the store's tests (helpers live in store_lab.py).

Every test that touches the database runs on both backends (``backend``):
an SQLite file and a fresh PostgreSQL database.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from store_lab import (BACKENDS, RULES_TOML, StoreLab, database_for, write_store_config)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ipfs"))
from jsipfs import IpfsNode  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database(backend: str, short_tmp: Path) -> Iterator[str]:
    with database_for(backend, short_tmp) as url:
        yield url


@pytest.fixture
def store_factory(short_tmp: Path, database: str) -> Iterator[Any]:
    """Start a store on this test's database: ``store_factory(extra=..., raw=...)``."""
    labs: list[StoreLab] = []

    def start(name: str = "store", **kwargs: Any) -> StoreLab:
        folder = short_tmp / name
        lab = StoreLab(folder, write_store_config(folder, database, **kwargs))
        labs.append(lab)
        return lab.__enter__()

    yield start
    for lab in reversed(labs):
        lab.__exit__(None, None, None)


@pytest.fixture(scope="module", params=BACKENDS)
def rules_store(request: pytest.FixtureRequest) -> Iterator[StoreLab]:
    """One store per backend shared by a module's rule tests (distinct MACs each)."""
    folder = Path(tempfile.mkdtemp(prefix="ab-r-"))
    try:
        with database_for(request.param, folder) as url:
            path = write_store_config(folder, url, raw=RULES_TOML,
                                      extra={"dhcp.offer_hold": 2,
                                             "dhcp.decline_quarantine": 3600})
            with StoreLab(folder, path) as lab:
                lab.backend = request.param  # type: ignore[attr-defined]
                yield lab
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ipfs_node() -> Iterator[IpfsNode]:
    """A js-ipfs daemon, offline, on free loopback ports (fails if not installed)."""
    folder = Path(tempfile.mkdtemp(prefix="ab-ipfs-"))
    try:
        with IpfsNode(folder) as node:
            yield node
    finally:
        shutil.rmtree(folder, ignore_errors=True)
