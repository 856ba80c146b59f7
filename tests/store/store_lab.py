"""Helpers for the store's tests: real store processes, databases and data folders.

Stores run as real ``astralboot store`` processes (:class:`StoreLab`),
spoken to over the real bus; databases are an SQLite file or a fresh
database on the local PostgreSQL server.
"""

from __future__ import annotations

import secrets
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Iterator

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.schema import Reply, Request
from astralboot.common.config import Config, load
from support.postgres import scratch_database
from support.stack import Stack, write_config

BACKENDS = ("sqlite", "postgres")

# The lab network of the rule tests: the server is .1, the gateway .2, and
# the range deliberately covers both so the tests see them skipped.
NETWORK = "192.0.2.0/24"
SMALL = "198.51.100.0/24"  # a relayed pool of three addresses
RESERVED_MAC = "52:54:00:aa:00:01"
RESERVED_IP = "192.0.2.20"
STATIC_MAC = "52:54:00:aa:00:02"
STATIC_IP = "192.0.2.200"  # reserved outside the range

RULES_TOML = f"""
[[dhcp.subnet]]
network = "{SMALL}"
range = "198.51.100.10-198.51.100.12"
gateway = "198.51.100.1"

[[dhcp.reservation]]
mac = "{RESERVED_MAC}"
address = "{RESERVED_IP}"
name = "reserved-one"
os = "debian"

[[dhcp.reservation]]
mac = "{STATIC_MAC}"
address = "{STATIC_IP}"
"""


def postgres_database() -> ContextManager[str]:
    """A fresh PostgreSQL database for as long as the block runs."""
    return scratch_database("astralboot_store")


@contextmanager
def database_for(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'db' / 'astralboot.db'}"
    else:
        with postgres_database() as url:
            yield url


def make_data(folder: Path) -> Path:
    """A small data folder in the original layout."""
    data = folder / "data"
    (data / "boot" / "debian" / "images").mkdir(parents=True, exist_ok=True)
    (data / "boot" / "debian" / "template").mkdir(parents=True, exist_ok=True)
    (data / "tftp").mkdir(parents=True, exist_ok=True)
    (data / "bin").mkdir(parents=True, exist_ok=True)
    (data / "boot" / "debian" / "classes.toml").write_text('[classes]\nweb = "web servers"\n')
    (data / "boot" / "debian" / "template" / "start.tmpl").write_text("#!ipxe\necho {{ name }}\n")
    (data / "boot" / "debian" / "images" / "linux").write_bytes(secrets.token_bytes(3 << 20))
    (data / "tftp" / "undionly.kpxe").write_bytes(secrets.token_bytes(70_000))
    (data / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    return data


def write_store_config(folder: Path, database: str, *, extra: dict[str, Any] | None = None,
                       raw: str = "", network: str = NETWORK, address: str = "192.0.2.1",
                       range: str = "192.0.2.1-192.0.2.99", data: Path | None = None) -> Path:
    """config.toml for a store test; ``raw`` is appended (arrays of tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else make_data(folder)
    settings: dict[str, Any] = {
        "store.database": database,
        "store.cache": str(folder / "cache"),
        "gateway": "192.0.2.2" if network == NETWORK else None,
        "bus.deadline": 5.0,
    }
    settings.update(extra or {})
    path = write_config(folder, address=address, network=network, range=range, data=data,
                        extra={k: v for k, v in settings.items() if v is not None})
    if raw:
        path.write_text(path.read_text() + raw)
    return path


class StoreLab:
    """One store process with its folder, config and a bus client."""

    def __init__(self, folder: Path, config_path: Path) -> None:
        self.folder = folder
        self.config_path = config_path
        self.config: Config = load(config_path)
        self.stack = Stack(config_path, services=("store",), ready_timeout=90)
        self.bus = SyncBusClient(self.config.bus.endpoint, deadline=10.0)

    def __enter__(self) -> "StoreLab":
        self.stack.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()
        self.stack.__exit__(*exc)

    @property
    def pid(self) -> int:
        return self.stack.procs["store"].pid

    def call(self, msg: Request, deadline: float | None = None) -> Reply:
        """The reply, or the ErrorReply as a value (tests look at codes)."""
        return self.bus.request(msg, deadline=deadline)

    def kill(self) -> None:
        self.stack.kill("store", signal.SIGKILL)
        self.stack.procs.pop("store", None)

    def start(self) -> None:
        self.stack.start("store")

    def restart(self) -> None:
        self.stack.restart("store")

    def log(self) -> str:
        return self.stack.log_tail("store", 200)
