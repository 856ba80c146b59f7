"""Durable before reply: restarts, kill -9, retried requests, group commit, outages."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import zmq

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.frames import pack, unpack
from support.postgres import admin_engine
from astralboot.common.messages import (Done, ErrorReply, Health, HealthReply, LeaseCommit,
                                        LeaseDecline, LeaseList, LeaseListReply, LeaseLookup,
                                        LeaseGrant, LeaseOffer, LeaseRelease, LeaseReply,
                                        MachineGet, MachineReply, MachineSet)

from store_lab import NETWORK, StoreLab

ALLOCATOR = Path(__file__).with_name("store_allocator.py")
BIG = {"network": "10.20.0.0/22", "address": "10.20.0.1", "range": "10.20.0.10-10.20.3.250"}


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def bind(store: StoreLab, mac: str, subnet: str = NETWORK) -> str:
    offered = store.call(LeaseOffer(mac=mac, subnet=subnet))
    assert isinstance(offered, LeaseGrant), offered
    bound = store.call(LeaseCommit(mac=mac, subnet=subnet, ip=offered.ip, mode="select"))
    assert isinstance(bound, LeaseGrant), bound
    return bound.ip


def lookup(store: StoreLab, **kw: str) -> LeaseReply | ErrorReply:
    reply = store.call(LeaseLookup(**kw))
    assert isinstance(reply, (LeaseReply, ErrorReply))
    return reply


def test_everything_survives_a_restart(store_factory: Any) -> None:
    store: StoreLab = store_factory(extra={"dhcp.decline_quarantine": 3600})
    kept, released, declined = new_mac(), new_mac(), new_mac()
    kept_ip = bind(store, kept)
    released_ip = bind(store, released)
    declined_ip = bind(store, declined)
    assert isinstance(store.call(LeaseRelease(mac=released, ip=released_ip)), Done)
    assert isinstance(store.call(LeaseDecline(mac=declined, ip=declined_ip)), Done)
    named = store.call(MachineSet(mac=kept, name="keeper", os="debian", labels={"a": "b"}))
    assert isinstance(named, MachineReply)

    store.restart()

    a = lookup(store, mac=kept)
    assert isinstance(a, LeaseReply) and (a.lease.ip, a.lease.state) == (kept_ip, "bound")
    assert a.machine is not None and (a.machine.name, a.machine.os, a.machine.labels) == (
        "keeper", "debian", {"a": "b"})
    b = lookup(store, ip=released_ip)
    assert isinstance(b, LeaseReply) and b.lease.state == "released"
    c = lookup(store, ip=declined_ip)
    assert isinstance(c, LeaseReply) and c.lease.state == "declined"
    # The quarantine outlived the restart: nobody gets the declined address.
    other = new_mac()
    offered = store.call(LeaseOffer(mac=other, subnet=NETWORK, requested_ip=declined_ip))
    assert isinstance(offered, LeaseGrant) and offered.ip != declined_ip
    refused = store.call(LeaseCommit(mac=other, subnet=NETWORK, ip=declined_ip, mode="select"))
    assert isinstance(refused, ErrorReply) and refused.code == "conflict"
    # And the bound client renews as if nothing happened.
    renewed = store.call(LeaseCommit(mac=kept, subnet=NETWORK, ip=kept_ip, mode="renew"))
    assert isinstance(renewed, LeaseGrant) and renewed.state == "bound"


def _raw_request(endpoint: str, payload: bytes, timeout: float = 10.0,
                 identity: bytes = b"\x01client-a") -> bytes:
    """One request on a fresh DEALER socket: a client that reset its socket
    (same identity), or another client (another identity)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", payload])
        assert sock.poll(int(timeout * 1000)), "no reply"
        return sock.recv_multipart()[-1]
    finally:
        sock.close()


def test_a_retried_request_is_answered_once(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    endpoint = store.config.bus.endpoint
    mac = new_mac()
    offered = store.call(LeaseOffer(mac=mac, subnet=NETWORK))
    assert isinstance(offered, LeaseGrant)
    rid = (secrets.randbits(31) << 32) + 7
    commit = pack(LeaseCommit(mac=mac, subnet=NETWORK, ip=offered.ip, mode="select"), rid)
    first = _raw_request(endpoint, commit)
    again = _raw_request(endpoint, commit)  # same id, as after a lost reply
    assert first == again
    assert isinstance(unpack(first), LeaseGrant)

    # A retried change is not applied twice, even after a later change.
    set_a = pack(MachineSet(mac=mac, name="first-name"), rid + 1)
    answer_a = unpack(_raw_request(endpoint, set_a))
    assert isinstance(answer_a, MachineReply) and answer_a.machine.name == "first-name"
    assert isinstance(store.call(MachineSet(mac=mac, name="second-name")), MachineReply)
    replayed = unpack(_raw_request(endpoint, set_a))
    assert replayed == answer_a
    now = store.call(MachineGet(mac=mac))
    assert isinstance(now, MachineReply) and now.machine.name == "second-name"
    health = store.call(Health())
    assert isinstance(health, HealthReply) and health.details["retries_answered"] >= 2


def test_another_peer_with_the_same_request_id_gets_its_own_reply(store_factory: Any) -> None:
    """A request id means something only with its peer: peer B sending peer A's
    id is a new request of B's, never a way to read A's answer."""
    store: StoreLab = store_factory()
    endpoint = store.config.bus.endpoint
    mac_a, mac_b = new_mac(), new_mac()
    assert isinstance(store.call(MachineSet(mac=mac_a, name="alpha", os="debian")), MachineReply)
    assert isinstance(store.call(MachineSet(mac=mac_b, name="bravo")), MachineReply)
    rid = (secrets.randbits(31) << 32) + 11
    a = unpack(_raw_request(endpoint, pack(MachineGet(mac=mac_a), rid), identity=b"\x01peer-a"))
    assert isinstance(a, MachineReply) and a.machine.name == "alpha"
    # Same id from another peer, for the same machine and for another one.
    b_same = unpack(_raw_request(endpoint, pack(MachineGet(mac=mac_a), rid),
                                 identity=b"\x01peer-b"))
    b_other = unpack(_raw_request(endpoint, pack(MachineGet(mac=mac_b), rid),
                                  identity=b"\x01peer-c"))
    assert isinstance(b_other, MachineReply) and b_other.machine.name == "bravo"
    assert isinstance(b_same, MachineReply) and b_same.machine.name == "alpha"
    # A write answered to A is not replayed to B: B's change is its own.
    set_rid = rid + 1
    first = unpack(_raw_request(endpoint, pack(MachineSet(mac=mac_a, name="alpha-2"), set_rid),
                                identity=b"\x01peer-a"))
    assert isinstance(first, MachineReply) and first.machine.name == "alpha-2"
    forged = unpack(_raw_request(endpoint, pack(MachineSet(mac=mac_b, name="bravo-2"), set_rid),
                                 identity=b"\x01peer-b"))
    assert isinstance(forged, MachineReply) and forged.machine.mac == mac_b
    assert forged.machine.name == "bravo-2"
    health = store.call(Health())
    assert isinstance(health, HealthReply) and health.details["retries_answered"] == 0


def test_concurrent_commits_share_transactions(store_factory: Any) -> None:
    store: StoreLab = store_factory(**BIG)
    subnet = store.config.dhcp.local.name
    before = store.call(Health())
    assert isinstance(before, HealthReply)

    async def run() -> list[Any]:
        async with AsyncBusClient(store.config.bus.endpoint, deadline=20) as bus:
            macs = [new_mac() for _ in range(60)]
            offers = await asyncio.gather(*(bus.call(LeaseOffer(mac=m, subnet=subnet))
                                            for m in macs))
            return await asyncio.gather(*(
                bus.request(LeaseCommit(mac=m, subnet=subnet, ip=o.ip, mode="select"))
                for m, o in zip(macs, offers, strict=True)))

    replies = asyncio.run(run())
    assert all(isinstance(r, LeaseGrant) and r.state == "bound" for r in replies)
    assert len({r.ip for r in replies}) == 60
    after = store.call(Health())
    assert isinstance(after, HealthReply)
    batches = after.details["commit.batches"] - before.details["commit.batches"]
    changes = after.details["commit.changes"] - before.details["commit.changes"]
    assert changes >= 60
    assert batches < 60, "60 concurrent commits should have shared transactions"
    assert after.details["commit.max_batch"] > 1


def _allocate(store: StoreLab, folder: Path, per_process: int,
              concurrency: int = 8) -> list[tuple[subprocess.Popen[bytes], Path]]:
    procs = []
    for tag in range(1, 5):
        out = folder / f"acked-{tag}.txt"
        out.touch()
        proc = subprocess.Popen([sys.executable, str(ALLOCATOR), str(store.config_path),
                                 str(tag), str(per_process), str(concurrency), str(out)])
        procs.append((proc, out))
    return procs


def _acked(outputs: list[Path]) -> list[tuple[str, str]]:
    pairs = []
    for out in outputs:
        for line in out.read_text().splitlines():
            assert not line.startswith("ERROR"), line
            mac, ip = line.split()
            pairs.append((mac, ip))
    return pairs


def _bound(store: StoreLab) -> dict[str, str]:
    listed = store.call(LeaseList(state="bound", limit=100_000))
    assert isinstance(listed, LeaseListReply)
    ips = [x.ip for x in listed.leases]
    assert len(ips) == len(set(ips)), "an address is bound twice"
    macs = [x.mac for x in listed.leases]
    assert len(macs) == len(set(macs)), "a client holds two addresses"
    return {x.mac: x.ip for x in listed.leases}


def _rows_per_address(store: StoreLab) -> int:
    engine = sa.create_engine(store.config.store.database)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT count(*) FROM (SELECT address FROM leases GROUP BY address "
                "HAVING count(*) > 1) AS d")).scalar_one()
    finally:
        engine.dispose()


def test_four_processes_allocate_500_leases_without_duplicates(store_factory: Any,
                                                               short_tmp: Path) -> None:
    store: StoreLab = store_factory(**BIG)
    procs = _allocate(store, short_tmp, per_process=125)
    for proc, _ in procs:
        assert proc.wait(timeout=300) == 0
    acked = _acked([out for _, out in procs])
    assert len(acked) == 500
    assert len({ip for _, ip in acked}) == 500, "two clients were given one address"
    bound = _bound(store)
    for mac, ip in acked:
        assert bound.get(mac) == ip
    assert _rows_per_address(store) == 0


def test_kill_9_loses_no_acknowledged_lease(store_factory: Any, short_tmp: Path) -> None:
    store: StoreLab = store_factory(**BIG)
    procs = _allocate(store, short_tmp, per_process=200)
    outputs = [out for _, out in procs]
    deadline = time.monotonic() + 120
    while sum(len(o.read_text().splitlines()) for o in outputs) < 150:
        assert time.monotonic() < deadline, "allocation did not get going"
        assert any(p.poll() is None for p, _ in procs), "allocators finished too early"
        time.sleep(0.02)
    store.kill()  # SIGKILL, mid-flight
    for proc, _ in procs:
        assert proc.wait(timeout=120) == 0
    acked = _acked(outputs)
    assert 150 <= len(acked) < 800
    assert len({ip for _, ip in acked}) == len(acked)

    store.start()
    bound = _bound(store)
    missing = [(mac, ip) for mac, ip in acked if bound.get(mac) != ip]
    assert not missing, f"acknowledged but lost: {missing[:5]}"
    # Serving goes on after the crash without handing out a taken address.
    fresh = [bind(store, new_mac(), store.config.dhcp.local.name) for _ in range(20)]
    assert not set(fresh) & {ip for _, ip in acked}
    _bound(store)
    assert _rows_per_address(store) == 0


def test_a_database_outage_is_unavailable_then_recovers(short_tmp: Path) -> None:
    """PostgreSQL goes away mid-service: typed errors, then back to serving."""
    from store_lab import postgres_database, write_store_config

    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        with StoreLab(short_tmp, write_store_config(short_tmp, url)) as store:
            before = new_mac()
            before_ip = bind(store, before)
            admin = admin_engine()
            try:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                    conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM "
                                         "pg_stat_activity WHERE datname = :n"), {"n": name})
                mac = new_mac()
                offered = store.call(LeaseOffer(mac=mac, subnet=NETWORK))
                assert isinstance(offered, LeaseGrant)
                started = time.monotonic()
                failed = store.call(LeaseCommit(mac=mac, subnet=NETWORK, ip=offered.ip,
                                                mode="select"))
                assert isinstance(failed, ErrorReply) and failed.code == "unavailable"
                assert time.monotonic() - started < store.config.bus.deadline + 2
                while_down = store.call(LeaseOffer(mac=new_mac(), subnet=NETWORK))
                assert isinstance(while_down, ErrorReply) and while_down.code == "unavailable"
                health = store.call(Health())
                assert isinstance(health, HealthReply) and health.status == "degraded"
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
                admin.dispose()
            deadline = time.monotonic() + 30
            while True:
                health = store.call(Health())
                assert isinstance(health, HealthReply)
                if health.status == "ok":
                    break
                assert time.monotonic() < deadline, "the store never recovered"
                time.sleep(0.2)
            # What failed was not kept; what was durable before still is.
            assert isinstance(lookup(store, mac=mac), ErrorReply) or \
                lookup(store, mac=mac).lease.state != "bound"  # type: ignore[union-attr]
            kept = lookup(store, mac=before)
            assert isinstance(kept, LeaseReply) and kept.lease.ip == before_ip
            assert bind(store, mac) != before_ip


def test_expired_leases_are_reclaimed(store_factory: Any) -> None:
    """A full pool whose leases have all run out hands them out again."""
    from astralboot.common.config import load
    from astralboot.services.store.database import Database, create_engine, migrate
    from astralboot.services.store.journal import Batch, LeaseWrite

    small = {"network": "10.30.0.0/24", "address": "10.30.0.1", "range": "10.30.0.10-10.30.0.12"}
    store: StoreLab = store_factory(**small)
    count = 3
    old = [new_mac() for _ in range(count)]
    ips = [bind(store, m, "10.30.0.0/24") for m in old]
    store.stack.stop_one("store")
    # Rewind the clock on those leases, as if the store had been down for days.
    config = load(store.config_path)
    engine = create_engine(config.store.database)
    migrate(engine)
    db = Database(engine)
    batch = Batch()
    for mac, ip in zip(old, ips, strict=True):
        batch.add([LeaseWrite({"address": ip, "subnet": "10.30.0.0/24", "mac": mac,
                               "client_id": None, "hostname": None, "state": "bound",
                               "expires": time.time() - 10, "lease_time": 86400,
                               "updated": time.time() - 86410}, insert=False)])
    db.apply(batch)
    db.close()
    store.start()
    for ip in ips:
        looked = lookup(store, ip=ip)
        assert isinstance(looked, LeaseReply) and looked.lease.state == "expired"
    newcomers = [bind(store, new_mac(), "10.30.0.0/24") for _ in range(count)]
    assert sorted(newcomers) == sorted(ips)
