"""Schema migrations: an upgrade keeps every lease, on both backends."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from astralboot.common.messages import (LeaseCommit, LeaseList, LeaseListReply, LeaseLookup,
                                        LeaseGrant, LeaseReply)
from astralboot.services.store.database import (SCHEMA_HEAD, create_engine, current_revision,
                                                head_revision, migrate)

from store_lab import NETWORK, StoreLab, write_store_config


def test_the_code_knows_the_newest_revision() -> None:
    assert head_revision() == SCHEMA_HEAD


def test_an_upgrade_keeps_every_lease(database: str, short_tmp: Path) -> None:
    engine = create_engine(database)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    now = time.time()
    leases = []
    for i in range(40):
        state = ("bound", "released", "declined")[i % 3]
        leases.append({"address": f"192.0.2.{10 + i}", "subnet": NETWORK,
                       "mac": f"52:54:00:00:01:{i:02x}", "client_id": None, "state": state,
                       "expires": now + 3600, "lease_time": 86400, "updated": now})
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO pools (subnet, range_start, range_end, lease_time, relayed) "
            "VALUES (:s, '192.0.2.1', '192.0.2.99', 86400, false)"), {"s": NETWORK})
        conn.execute(sa.text(
            "INSERT INTO leases (address, subnet, mac, client_id, state, expires, lease_time, "
            "updated) VALUES (:address, :subnet, :mac, :client_id, :state, :expires, "
            ":lease_time, :updated)"), leases)
        conn.execute(sa.text(
            "INSERT INTO machines (mac, name, os, class, labels, boot_once, first_seen, "
            "last_seen) VALUES ('52:54:00:00:01:00', 'old-timer', 'debian', NULL, '{}', false, "
            ":t, :t)"), {"t": now})
    engine.dispose()

    with StoreLab(short_tmp, write_store_config(short_tmp, database)) as store:
        listed = store.call(LeaseList(limit=1000))
        assert isinstance(listed, LeaseListReply)
        assert {(x.ip, x.mac, x.state) for x in listed.leases} == {
            (x["address"], x["mac"], x["state"]) for x in leases}
        first = store.call(LeaseLookup(mac="52:54:00:00:01:00"))
        assert isinstance(first, LeaseReply) and first.machine is not None
        assert (first.machine.name, first.machine.os) == ("old-timer", "debian")
        # The new column works for old rows.
        renewed = store.call(LeaseCommit(mac="52:54:00:00:01:00", subnet=NETWORK,
                                         ip="192.0.2.10", mode="renew", hostname="old-host"))
        assert isinstance(renewed, LeaseGrant) and renewed.state == "bound"
        looked = store.call(LeaseLookup(mac="52:54:00:00:01:00"))
        assert isinstance(looked, LeaseReply) and looked.lease.hostname == "old-host"

    engine = create_engine(database)
    try:
        assert current_revision(engine) == SCHEMA_HEAD
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one() == 40
    finally:
        engine.dispose()


def test_a_new_database_starts_at_the_newest_revision(database: str) -> None:
    engine = create_engine(database)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        assert current_revision(engine) == SCHEMA_HEAD
        migrate(engine)  # at head already: nothing to do
        assert set(sa.inspect(engine).get_table_names()) >= {
            "pools", "leases", "machines", "reservations", "boot_events", "alembic_version"}
    finally:
        engine.dispose()


def test_the_models_match_the_migrations(database: str) -> None:
    """What the code reads and writes is what the migrations created."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from astralboot.services.store.models import Base

    engine = create_engine(database)
    try:
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={
                "compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
