"""Fixtures shared by every test folder.

Service-specific fixtures live in each folder's own conftest.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # support/: the helpers tests and bench/ share

from astralboot.common.cli.demo.netns import Lab  # noqa: E402
from support.postgres import scratch_database  # noqa: E402


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


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    with scratch_database("astralboot_test") as url:
        yield url
