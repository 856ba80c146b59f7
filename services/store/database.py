"""The lease database: engine set-up, migrations, loading, group commits.

SQLite is the embedded default (WAL, ``synchronous=FULL``, a busy
timeout); PostgreSQL is reached through a ``postgresql+psycopg://`` URL.
Every method here blocks: the server calls them from its one database
thread, never from its event loop.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy import bindparam, delete, event, insert, select, update
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql.expression import UpdateBase

from astralboot.common.config import SubnetConfig
from astralboot.common.errors import AstralBootError
from astralboot.common.messages import BootEvent

from astralboot.services.store.journal import (Batch, BatchOutcome, Change, EventPruning, EventWrite, LeaseWrite,
                      MachineWrite, ReservationDeletion, ReservationWrite, TokenDeletion,
                      TokenWrite)
from astralboot.services.store.models import boot_events, leases, machines, pools, reservations, tokens

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0004"  # the newest revision in migrations/versions (a test checks)
BUSY_TIMEOUT_MS = 30_000
WAL_SIZE_LIMIT = 64 << 20  # bytes a checkpointed SQLite WAL file is cut back to
CHECKPOINT_INTERVAL = 1.0  # seconds between SQLite WAL checkpoints


ROW_ERRORS = (IntegrityError, DataError)  # what one bad row causes, not a broken database


class DatabaseUnavailable(AstralBootError):
    """The database could not be reached or refused a transaction."""


def create_engine(url: str) -> Engine:
    """An engine with the store's durability settings for ``url``."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000,
                                                     "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_settings(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions
            # begin, so SAVEPOINTs work (the row-by-row fallback needs them).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            # Checkpoints run beside the writer (Database.checkpoint), not
            # inside whichever commit happens to cross the WAL threshold.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    # An ACK must mean the lease is on disk: whatever the server's or the
    # database's default, the store's sessions commit synchronously.
    return sa.create_engine(url, pool_pre_ping=True,
                            connect_args={"connect_timeout": 5,
                                          "options": "-c synchronous_commit=on"})


def describe(url: str) -> str:
    """The URL without a password, for logs and errors."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _alembic_config(conn: Connection | None) -> Any:
    from alembic.config import Config as AlembicConfig  # slow to import; only when needed
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database (None when it is empty)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (normally the newest), keeping every row.

    A database already at the newest revision is left alone without loading
    alembic, which keeps a restart (after a crash, say) quick.
    """
    if revision == "head" and current_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def head_revision() -> str:
    """The newest revision among the migration scripts."""
    from alembic.script import ScriptDirectory
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the in-memory books are rebuilt from."""

    leases: Sequence[dict[str, Any]]
    machines: Sequence[dict[str, Any]]
    reservations: Sequence[dict[str, Any]]
    last_event_id: int
    event_count: int
    tokens: Sequence[dict[str, Any]] = ()


Read = Callable[[Connection], Any]

LEASE_KEYS = ("address", "subnet", "mac", "client_id", "hostname", "state", "expires",
              "lease_time", "updated")
MACHINE_KEYS = ("mac", "name", "os", "class", "labels", "boot_once", "first_seen", "last_seen",
                "loader")
EVENT_KEYS = ("id", "time", "mac", "ip", "service", "stage", "detail")


class Prepared:
    """A Core statement compiled once, then executed for many rows at a time.

    ``Connection.execute(stmt, rows)`` looks the statement up and processes
    every parameter dictionary in Python again on each call; at thousands
    of rows a second that is the database thread holding the GIL the event
    loop needs. Here the dialect's SQL and the column types' own bind
    processors are worked out once, and rows go to the driver ready-made.
    """

    def __init__(self, dialect: Dialect, stmt: UpdateBase, table: sa.Table,
                 keys: Sequence[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        self.sql = str(compiled)
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for key in keys:
            proc = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.processors[key] = proc
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []
        if compiled.positional:  # SQLite: tuples in the statement's order
            order = list(compiled.positiontup or ())
            self._values = (operator.itemgetter(*order) if len(order) > 1
                            else lambda row, key=order[0]: (row[key],))
            self._convert = [(i, self.processors[k]) for i, k in enumerate(order)
                             if k in self.processors]

    def execute(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if self._values is not None:
            values, convert = self._values, self._convert
            params: list[Any] = []
            for row in rows:
                v = values(row)
                if convert:
                    fixed = list(v)
                    for i, proc in convert:
                        fixed[i] = proc(fixed[i])
                    v = tuple(fixed)
                params.append(v)
        else:
            params = rows
            if self.processors:
                params = [dict(r) for r in rows]
                for r in params:
                    for key, proc in self.processors.items():
                        r[key] = proc(r[key])
        conn.exec_driver_sql(self.sql, params)


class SqliteRows:
    """Many rows in one SQLite statement (``INSERT ... VALUES (...), (...)``).

    ``executemany`` runs one ``sqlite3_step`` per row, and the driver lets
    go of the GIL and takes it back around each: with the event loop busy,
    every take-back waits its turn, and a batch of a thousand rows held its
    ACKs for a tenth of a second. One statement per chunk is one step.
    ``conflict`` turns the insert into an upsert on that key, which is how
    existing rows are updated (they always exist; the key is unique).
    """

    CHUNK = 256  # rows per statement; 256 x 9 columns is far below SQLite's variable limit

    def __init__(self, dialect: Dialect, table: sa.Table, keys: Sequence[str],
                 conflict: str | None = None) -> None:
        q = dialect.identifier_preparer.quote
        self.head = f"INSERT INTO {q(table.name)} ({', '.join(q(k) for k in keys)}) VALUES "
        self.one = "(" + ", ".join(["?"] * len(keys)) + ")"
        self.tail = "" if conflict is None else (
            f" ON CONFLICT ({q(conflict)}) DO UPDATE SET "
            + ", ".join(f"{q(k)} = excluded.{q(k)}" for k in keys if k != conflict))
        self.values = operator.itemgetter(*keys)
        self.convert = [(i, proc) for i, k in enumerate(keys)
                        if (proc := table.c[k].type.dialect_impl(dialect)
                            .bind_processor(dialect)) is not None]
        self._sql: dict[int, str] = {}

    def execute(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), self.CHUNK):
            chunk = rows[start:start + self.CHUNK]
            params: list[Any] = []
            for row in chunk:
                v = self.values(row)
                if self.convert:
                    v = list(v)
                    for i, proc in self.convert:
                        v[i] = proc(v[i])
                params.extend(v)
            sql = self._sql.get(len(chunk))
            if sql is None:
                sql = self._sql[len(chunk)] = self.head + ", ".join([self.one] * len(chunk)) \
                    + self.tail
            conn.exec_driver_sql(sql, tuple(params))


class Database:
    """Blocking access to the store's tables; one instance per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None  # the writer's own, kept between batches
        self._checkpointer: tuple[threading.Event, threading.Thread] | None = None
        self._next_catch_up = 0.0
        d = engine.dialect
        lease_set = [k for k in LEASE_KEYS if k != "address"]
        machine_set = [k for k in MACHINE_KEYS if k != "mac"]
        self._lease_insert: Prepared | SqliteRows
        self._lease_update: Prepared | SqliteRows
        self._machine_insert: Prepared | SqliteRows
        self._machine_update: Prepared | SqliteRows
        self._event_insert: Prepared | SqliteRows
        if d.name == "sqlite":
            self._lease_insert = SqliteRows(d, leases, LEASE_KEYS)
            self._lease_update = SqliteRows(d, leases, LEASE_KEYS, conflict="address")
            self._machine_insert = SqliteRows(d, machines, MACHINE_KEYS)
            self._machine_update = SqliteRows(d, machines, MACHINE_KEYS, conflict="mac")
            self._event_insert = SqliteRows(d, boot_events, EVENT_KEYS)
        else:  # PostgreSQL: psycopg pipelines executemany itself
            self._lease_insert = Prepared(d, insert(leases), leases, LEASE_KEYS)
            self._lease_update = Prepared(
                d, update(leases).where(leases.c.address == bindparam("key_address")),
                leases, lease_set)
            self._machine_insert = Prepared(d, insert(machines), machines, MACHINE_KEYS)
            self._machine_update = Prepared(
                d, update(machines).where(machines.c.mac == bindparam("key_mac")),
                machines, machine_set)
            self._event_insert = Prepared(d, insert(boot_events), boot_events, EVENT_KEYS)

    def close(self) -> None:
        self.stop_checkpoints()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()

    # -- SQLite WAL checkpoints ---------------------------------------------------

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def checkpointing(self) -> bool:
        """Whether WAL checkpoints run in the background (SQLite, once started; never else)."""
        return self._checkpointer is not None

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking the writer."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _catch_up(self, conn: Connection) -> None:
        # The background checkpoints never quite finish while this thread keeps
        # appending; one from the writer itself, between two of its commits,
        # does (it has little left to copy), so the next commit can start the
        # WAL file over instead of growing it.
        self._next_catch_up = time.perf_counter() + CHECKPOINT_INTERVAL
        try:
            with conn.begin():
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except SQLAlchemyError as exc:  # not fatal: the WAL just grows a while longer
            log.warning("WAL checkpoint failed: %s", _reason(exc))

    def start_checkpoints(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Checkpoint an SQLite WAL every ``interval`` seconds on a thread of its own."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.checkpoint()
                except SQLAlchemyError as exc:  # the next one will catch up
                    log.warning("WAL checkpoint failed: %s", _reason(exc))
        self._checkpointer = (stop, threading.Thread(target=loop, name="store-checkpoint",
                                                     daemon=True))
        self._checkpointer[1].start()

    def stop_checkpoints(self) -> None:
        if self._checkpointer is not None:
            stop, thread = self._checkpointer
            stop.set()
            thread.join(10)
            self._checkpointer = None
            if self.is_sqlite:
                try:
                    self.checkpoint()  # leave a short WAL behind
                except SQLAlchemyError:
                    pass

    def _connection(self) -> Connection:
        # Checking a connection out of the pool for every batch (and the
        # pool's rollback when it goes back) costs more than a small batch.
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except SQLAlchemyError:
                pass  # already broken; a new one is made next time
            self._conn = None

    # -- start-up --------------------------------------------------------------

    def sync_pools(self, subnets: Sequence[SubnetConfig]) -> None:
        """Record the configured pools (leases refer to them)."""
        with self.engine.begin() as conn:
            existing = set(conn.scalars(select(pools.c.subnet)))
            for s in subnets:
                row = {"range_start": str(s.range_start), "range_end": str(s.range_end),
                       "lease_time": s.lease_time, "relayed": s.relayed}
                if s.name in existing:
                    conn.execute(update(pools).where(pools.c.subnet == s.name).values(**row))
                else:
                    conn.execute(insert(pools).values(subnet=s.name, **row))

    def load(self) -> Snapshot:
        with self.engine.connect() as conn:
            lease_rows = [dict(r) for r in conn.execute(select(leases)).mappings()]
            machine_rows = [dict(r) for r in conn.execute(select(machines)).mappings()]
            reservation_rows = [dict(r) for r in conn.execute(select(reservations)).mappings()]
            token_rows = [dict(r) for r in conn.execute(select(tokens)).mappings()]
            last, count = conn.execute(
                select(sa.func.max(boot_events.c.id), sa.func.count())).one()
        for row in machine_rows:
            row["machine_class"] = row.pop("class")
        return Snapshot(lease_rows, machine_rows, reservation_rows, int(last or 0), int(count),
                        token_rows)

    # -- group commit ----------------------------------------------------------

    def apply(self, batch: Batch) -> BatchOutcome:
        """Write every change of ``batch`` in one transaction, then run its reads.

        A row the database refuses (a constraint: the unique address is the
        final guard against handing one address to two clients; or a value it
        will not store, which the store's edge checks should have caught) makes
        the batch go again row by row, so only the offending changes fail. Anything else raises
        :class:`DatabaseUnavailable` and nothing of the batch is kept.
        """
        started = time.perf_counter()
        failed: frozenset[int] = frozenset()
        try:
            conn = self._connection()
            if batch.changes:
                try:
                    with conn.begin():
                        self._write(conn, batch.changes)
                except ROW_ERRORS as exc:
                    log.warning("batch of %d refused (%s); retrying one by one",
                                len(batch.changes), exc.orig)
                    failed = self._write_one_by_one(conn, batch.changes)
        except SQLAlchemyError as exc:
            self._drop_connection()
            raise DatabaseUnavailable(f"database write failed: {_reason(exc)}") from exc
        if self._checkpointer is not None and started >= self._next_catch_up:
            self._catch_up(conn)
        reads: list[Any] = []
        if batch.reads:  # the writes are durable whatever happens to these
            try:
                reads = self._run_reads(self._connection(), batch.reads)
            except SQLAlchemyError as exc:
                self._drop_connection()
                reads = [DatabaseUnavailable(f"database read failed: {_reason(exc)}")] * \
                    len(batch.reads)
        return BatchOutcome(failed=failed, reads=reads, seconds=time.perf_counter() - started)

    def _write_one_by_one(self, conn: Connection, changes: list[Change]) -> frozenset[int]:
        failed = set()
        with conn.begin():
            for i, change in enumerate(changes):
                try:
                    with conn.begin_nested():
                        self._write(conn, [change])
                except ROW_ERRORS as exc:
                    log.warning("write refused by the database: %s", exc.orig)
                    failed.add(i)
        return frozenset(failed)

    def _write(self, conn: Connection, changes: list[Change]) -> None:
        lease_new: list[dict[str, Any]] = []
        lease_old: list[dict[str, Any]] = []
        machine_new: list[dict[str, Any]] = []
        machine_old: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        ordered: list[Any] = []
        for change in changes:
            for w in change.writes:
                if isinstance(w, LeaseWrite):
                    if w.insert:
                        lease_new.append(w.row)
                    else:
                        lease_old.append({**w.row, "key_address": w.row["address"]})
                elif isinstance(w, MachineWrite):
                    row = _machine_columns(w.row)
                    if w.insert:
                        machine_new.append(row)
                    else:
                        machine_old.append({**row, "key_mac": row["mac"]})
                elif isinstance(w, EventWrite):
                    events.append(w.row)
                else:
                    ordered.append(w)
        # Inserts before updates: a row inserted in this batch may be updated
        # by a later request of the same batch, never the other way round.
        if lease_new:
            self._lease_insert.execute(conn, lease_new)
        if lease_old:
            self._lease_update.execute(conn, lease_old)
        if machine_new:
            self._machine_insert.execute(conn, machine_new)
        if machine_old:
            self._machine_update.execute(conn, machine_old)
        if events:
            self._event_insert.execute(conn, events)
        for w in ordered:
            if isinstance(w, ReservationWrite):
                conn.execute(delete(reservations).where(reservations.c.mac == w.row["mac"]))
                conn.execute(insert(reservations).values(**w.row))
            elif isinstance(w, TokenWrite):
                conn.execute(insert(tokens).values(**w.row))
            elif isinstance(w, TokenDeletion):
                conn.execute(delete(tokens).where(tokens.c.name == w.name))
            elif isinstance(w, ReservationDeletion):
                conn.execute(delete(reservations).where(reservations.c.mac == w.mac))
            elif isinstance(w, EventPruning):
                conn.execute(delete(boot_events).where(boot_events.c.id <= w.upto))
            else:  # pragma: no cover - a new Write type without a case here
                raise TypeError(f"unknown write {w!r}")

    def _run_reads(self, conn: Connection, reads: list[Read]) -> list[Any]:
        results: list[Any] = []
        with conn.begin():
            for read in reads:
                results.append(read(conn))
        return results


def _reason(exc: SQLAlchemyError) -> str:
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _machine_columns(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["class"] = out.pop("machine_class")
    return out


def query_events(conn: Connection, mac: str | None, after_id: int,
                 limit: int) -> list[BootEvent]:
    """Events after ``after_id``, oldest first (a read for :class:`Batch`)."""
    q = select(boot_events).where(boot_events.c.id > after_id)
    if mac is not None:
        q = q.where(boot_events.c.mac == mac)
    q = q.order_by(boot_events.c.id).limit(max(0, min(limit, 100_000)))
    return [BootEvent(id=r.id, time=r.time, mac=r.mac, ip=r.ip, service=r.service,
                      stage=r.stage, detail=r.detail) for r in conn.execute(q)]
