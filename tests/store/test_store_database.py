"""The database layer alone, on both backends: group commits and their final guard."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network
from typing import Iterator

import pytest
import sqlalchemy as sa

from astralboot.common.config import SubnetConfig
from astralboot.services.store.database import Database, create_engine, migrate, query_events
from astralboot.services.store.journal import (Batch, EventPruning, EventWrite, LeaseWrite,
                                               MachineWrite, ReservationDeletion,
                                               ReservationWrite)
from astralboot.services.store.leases import Client, LeaseBook, LeaseState

from store_lab import postgres_database

NET = "10.9.0.0/24"


@pytest.fixture
def db(database: str) -> Iterator[Database]:
    engine = create_engine(database)
    migrate(engine)
    d = Database(engine)
    d.sync_pools([SubnetConfig(network=IPv4Network(NET), range_start=IPv4Address("10.9.0.10"),
                               range_end=IPv4Address("10.9.0.200"), gateway=None, dns=(),
                               lease_time=3600, relayed=False)])
    yield d
    d.close()


def lease(ip: str, mac: str, state: str = "bound") -> dict[str, object]:
    return {"address": ip, "subnet": NET, "mac": mac, "client_id": None, "hostname": None,
            "state": state, "expires": time.time() + 3600, "lease_time": 3600,
            "updated": time.time()}


def machine(mac: str, name: str) -> dict[str, object]:
    return {"mac": mac, "name": name, "os": None, "machine_class": None, "labels": {"k": "v"},
            "boot_once": True, "first_seen": 1.0, "last_seen": 2.0, "loader": "shim"}


def test_one_batch_holds_every_kind_of_write(db: Database) -> None:
    batch = Batch()
    batch.add([LeaseWrite(lease("10.9.0.10", "02:00:00:00:00:01"), insert=True),
               MachineWrite(machine("02:00:00:00:00:01", "node10"), insert=True)])
    batch.add([LeaseWrite(lease("10.9.0.10", "02:00:00:00:00:01", "released"), insert=False)])
    batch.add([ReservationWrite({"mac": "02:00:00:00:00:02", "address": "10.9.0.50",
                                 "name": "res", "os": None})])
    batch.add([EventWrite({"id": i, "time": 1.0, "mac": "02:00:00:00:00:01", "ip": None,
                           "service": "dhcpd", "stage": "dhcp.ack", "detail": ""})
               for i in range(1, 6)])
    batch.add_read(lambda conn: query_events(conn, "02:00:00:00:00:01", 2, 10), token=None)
    outcome = db.apply(batch)
    assert outcome.failed == frozenset()
    assert [e.id for e in outcome.reads[0]] == [3, 4, 5]  # the read saw the batch
    snapshot = db.load()
    assert [(r["address"], r["state"]) for r in snapshot.leases] == [("10.9.0.10", "released")]
    assert snapshot.machines[0]["labels"] == {"k": "v"}
    assert snapshot.machines[0]["boot_once"] is True
    assert snapshot.machines[0]["loader"] == "shim"
    assert snapshot.reservations[0]["address"] == "10.9.0.50"
    assert (snapshot.last_event_id, snapshot.event_count) == (5, 5)

    later = Batch()
    later.add([EventPruning(upto=3), ReservationDeletion("02:00:00:00:00:02")])
    db.apply(later)
    snapshot = db.load()
    assert (snapshot.last_event_id, snapshot.event_count, snapshot.reservations) == (5, 2, [])


def test_the_unique_address_is_the_final_guard(db: Database) -> None:
    """A write the constraint refuses fails alone; the rest of its batch is kept."""
    first = Batch()
    first.add([LeaseWrite(lease("10.9.0.20", "02:00:00:00:00:0a"), insert=True)])
    assert db.apply(first).failed == frozenset()

    batch = Batch()
    batch.add([LeaseWrite(lease("10.9.0.21", "02:00:00:00:00:0b"), insert=True)])
    batch.add([LeaseWrite(lease("10.9.0.20", "02:00:00:00:00:0c"), insert=True),  # taken
               MachineWrite(machine("02:00:00:00:00:0c", "node-c"), insert=True)])
    batch.add([LeaseWrite(lease("10.9.0.22", "02:00:00:00:00:0d"), insert=True)])
    outcome = db.apply(batch)
    assert outcome.failed == frozenset({1})
    rows = {r["address"]: r["mac"] for r in db.load().leases}
    assert rows == {"10.9.0.20": "02:00:00:00:00:0a", "10.9.0.21": "02:00:00:00:00:0b",
                    "10.9.0.22": "02:00:00:00:00:0d"}
    # The refused request's other writes went with it.
    assert db.load().machines == []


def test_a_value_the_database_will_not_store_fails_alone(db: Database, backend: str) -> None:
    """PostgreSQL enforces column lengths (SQLite does not): a row that slipped
    past the store's edge checks fails that one change, not its whole batch."""
    batch = Batch()
    batch.add([LeaseWrite(lease("10.9.0.30", "02:00:00:00:00:1a"), insert=True)])
    too_long = {**lease("10.9.0.31", "02:00:00:00:00:1b"), "hostname": "h" * 300}
    batch.add([LeaseWrite(too_long, insert=True)])
    event = {"id": 1, "time": time.time(), "mac": "02:00:00:00:00:1c",
             "ip": "::ffff:10.9.0.32", "service": "httpd", "stage": "http.script", "detail": ""}
    batch.add([EventWrite(event)])
    batch.add([LeaseWrite(lease("10.9.0.33", "02:00:00:00:00:1d"), insert=True)])
    outcome = db.apply(batch)
    rows = {r["address"] for r in db.load().leases}
    if backend == "postgres":
        assert outcome.failed == frozenset({1, 2})
        assert rows == {"10.9.0.30", "10.9.0.33"}
    else:
        assert outcome.failed == frozenset()
        assert rows == {"10.9.0.30", "10.9.0.31", "10.9.0.33"}


@pytest.mark.postgres
def test_postgresql_sessions_commit_synchronously() -> None:
    """Whatever the database's default, the store's own sessions wait for the
    commit to reach disk before an ACK goes out."""
    with postgres_database() as database:
        _check_synchronous_commit(database)


def _check_synchronous_commit(database: str) -> None:
    admin = sa.create_engine(database, isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(database).database
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    admin.dispose()
    plain = sa.create_engine(database)
    with plain.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    plain.dispose()
    engine = create_engine(database)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    engine.dispose()


def test_lease_states_are_stored_as_their_plain_names(db: Database) -> None:
    """The column holds what it held before states were an enum; loading gives members."""
    subnet = SubnetConfig(network=IPv4Network(NET), range_start=IPv4Address("10.9.0.10"),
                          range_end=IPv4Address("10.9.0.200"), gateway=None, dns=(),
                          lease_time=3600, relayed=False)
    book = LeaseBook([subnet], IPv4Address("10.9.0.1"), offer_hold=30, quarantine=600)
    now = time.time()
    batch = Batch()
    for n, mac in enumerate(("02:00:00:00:00:31", "02:00:00:00:00:32")):
        client = Client(mac)
        offered = book.offer(NET, client, None, None, now)
        lease, writes = book.commit(NET, offered.ip, "select", client, None, now)
        batch.add([*writes])
        if n:
            batch.add([*book.release(lease.ip, client, now)])
    assert db.apply(batch).failed == frozenset()
    with db.engine.connect() as conn:
        stored = sorted(conn.execute(sa.text("SELECT state FROM leases")).scalars())
    assert stored == ["bound", "released"] and all(type(x) is str for x in stored)
    again = LeaseBook([subnet], IPv4Address("10.9.0.1"), offer_hold=30, quarantine=600)
    again.load(db.load().leases)
    assert sorted(x.state for x in again.all()) == [LeaseState.BOUND, LeaseState.RELEASED]


def test_sqlite_runs_its_checkpoints_beside_the_writer(db: Database) -> None:
    if not db.is_sqlite:
        db.start_checkpoints()  # a no-op elsewhere
        assert not db.checkpointing
        return
    db.start_checkpoints(interval=0.05)
    assert db.checkpointing
    try:
        for n in range(40):
            batch = Batch()
            batch.add([EventWrite({"id": n + 1, "time": 1.0, "mac": "02:00:00:00:00:01",
                                   "ip": None, "service": "x", "stage": "y", "detail": "z" * 500})])
            db.apply(batch)
            time.sleep(0.01)
        time.sleep(0.3)  # a few checkpoint intervals with nothing new written
        for _ in range(50):  # busy while the background checkpoint runs: ask again
            with db.engine.connect() as conn:
                busy, log_frames, done = conn.exec_driver_sql(
                    "PRAGMA wal_checkpoint(PASSIVE)").one()
            if not busy:
                break
            time.sleep(0.02)
        assert busy == 0 and log_frames == done  # everything written reached the database
    finally:
        db.stop_checkpoints()
    assert not db.checkpointing
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM boot_events")).scalar_one() == 40
