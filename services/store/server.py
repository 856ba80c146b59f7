"""The store process's entry point: open the database, build the server, serve.

``astralboot store`` runs :func:`run`. :func:`build` connects and migrates
the database, loads every lease and machine into memory and prepares the
content cache; :func:`_main` binds the sockets, drops privileges, and
serves until SIGINT or SIGTERM. How a request is then handled is
:mod:`.router`'s (sockets), :mod:`.commits`'s (group commit),
:mod:`.dispatcher`'s (content) and :mod:`.retries`'s (retried requests).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from astralboot.common.config import Config
from astralboot.common.content import DigestCache
from astralboot.common.errors import StartupError
from astralboot.common.frontend import settle_heap
from astralboot.common.privileges import database_files, drop, ipc_files

from astralboot.services.store.content import ContentStore
from astralboot.services.store.database import Database, create_engine, describe, migrate
from astralboot.services.store.router import SERVICE, StoreServer
from astralboot.services.store.service import StoreService
from astralboot.services.store.sources import IpfsFolder, LocalFolder, Source

__all__ = ["StoreServer", "add_token", "build", "content_source", "open_database", "run"]

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits


def content_source(config: Config) -> Source:
    if config.ipfs.enabled:
        return IpfsFolder(config.ipfs.api, config.ipfs.root, config.ipfs.timeout)
    return LocalFolder(config.data)


def open_database(config: Config) -> Database:
    """Connect, migrate to the newest schema, record the pools; or StartupError."""
    url = config.store.database
    try:
        engine = create_engine(url)
        migrate(engine)
        database = Database(engine)
        database.sync_pools(config.dhcp.subnets)
    except Exception as exc:  # any driver error at start-up is the operator's to see
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise StartupError(SERVICE, f"database {describe(url)} ([store] database): "
                                    f"{reason}") from exc
    return database


def add_token(database: Database, name: str, scope: str, digest: str) -> bool:
    """Record an admin token straight in the database (``init``, before any store runs).

    False if a token of that name exists already.
    """
    from sqlalchemy import insert, select

    from astralboot.services.store.models import tokens
    with database.engine.begin() as conn:
        if conn.execute(select(tokens.c.name).where(tokens.c.name == name)).first():
            return False
        conn.execute(insert(tokens).values(name=name, scope=scope, digest=digest,
                                           created=time.time()))
    return True


def build(config: Config) -> StoreServer:
    database = open_database(config)
    service = StoreService(config)
    try:
        service.load(database.load())
    except Exception as exc:
        database.close()
        raise StartupError(SERVICE, f"cannot load state from {describe(config.store.database)}: "
                                    f"{exc}") from exc
    cache = DigestCache(config.store.cache, config.store.cache_max)
    try:
        config.store.cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        database.close()
        raise StartupError(SERVICE, f"cannot create cache folder {config.store.cache} ([store] "
                                    "cache): "
                                    f"{exc.strerror}") from None
    cache.remove_stale_temporaries()
    return StoreServer(config, database, service, ContentStore(content_source(config), cache))


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, StartupError if it cannot start."""
    return asyncio.run(_main(config))


async def _main(config: Config) -> int:
    server = build(config)
    settle_heap()  # every lease and machine is in memory now: keep the collector off them
    # The database thread needs the GIL back after each statement; with the
    # event loop busy, the default 5 ms turn makes commits (and their ACKs) wait.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        server.bind()
        drop(config, SERVICE, [config.runtime_dir, config.store.cache,
                               *database_files(config.store.database),
                               *ipc_files(config.bus.endpoint, config.bus.events)])
    except StartupError:
        server.close()
        server.db.close()
        raise
    loop = asyncio.get_running_loop()
    serving = loop.create_task(server.serve(), name="store")

    def stop(signame: str) -> None:
        log.info("store: %s received, stopping", signame)
        serving.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    log.info("store serving %s (events %s), database %s, content from %s",
             config.bus.endpoint, config.bus.events, describe(config.store.database),
             server.content.source.description)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.close()
        server.db.close()
    log.info("store stopped")
    return 0
