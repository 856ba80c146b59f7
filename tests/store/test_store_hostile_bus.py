"""A hostile peer on the bus cannot hurt the store or the other peers.

Real store processes, raw ZeroMQ sockets doing what a well-behaved client
never would: frames far over the request limit, frames that decode into
millions of objects, a flood of event subscriptions.
"""

from __future__ import annotations

import secrets
import statistics
import time
from pathlib import Path
from typing import Iterator

import msgpack
import psutil
import pytest
import zmq

from astralboot.common.bus.events import EventSubscriber
from astralboot.common.bus.frames import REQUEST_LIMITS, pack, unpack
from astralboot.common.messages import (EventSubscribe, Health, HealthReply, LeaseGrant,
                                        LeaseOffer, MachineReply, MachineSet, SubscribeReply)

from store_lab import NETWORK, StoreLab, write_store_config

MiB = 1 << 20


@pytest.fixture
def store(short_tmp: Path) -> Iterator[StoreLab]:
    folder = short_tmp / "store"
    path = write_store_config(folder, f"sqlite:///{folder / 'db' / 'astralboot.db'}",
                              range="192.0.2.10-192.0.2.250")
    with StoreLab(folder, path) as lab:
        yield lab


def rss(store: StoreLab) -> int:
    return psutil.Process(store.pid).memory_info().rss


def health(store: StoreLab) -> HealthReply:
    reply = store.call(Health(), deadline=5)
    assert isinstance(reply, HealthReply), reply
    return reply


def raw_socket(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"\x01" + secrets.token_bytes(15))
    sock.connect(endpoint)
    return sock


def test_huge_and_object_heavy_frames_cost_no_memory_and_no_service(store: StoreLab) -> None:
    health(store)
    baseline = rss(store)
    # 16 MiB of empty arrays: 16 million Python lists if it were decoded.
    # ZeroMQ drops the connection that sends it.
    bomber = raw_socket(store.config.bus.endpoint)
    bomber.send(b"\xdd" + (16 * MiB).to_bytes(4, "big") + b"\x90" * (16 * MiB))
    sock = raw_socket(store.config.bus.endpoint)
    try:
        # Frames just under the limit, built to decode into as many objects
        # as possible: [1, "health", id, {"x": [[],[],...], ...}].
        inner = b"\xdc" + (4000).to_bytes(2, "big") + b"\x90" * 4000
        body = b"\xde" + (64).to_bytes(2, "big") + b"".join(
            msgpack.packb(f"k{i}") + inner for i in range(64))
        heavy = b"\x94\x01\xa6health" + msgpack.packb(99) + body
        assert REQUEST_LIMITS.frame - 16 * 1024 < len(heavy) < REQUEST_LIMITS.frame
        for _ in range(50):
            sock.send(heavy)
        # Too many items in one array for a request: refused by msgpack itself.
        sock.send(msgpack.packb([1, "health", 100, {"x": [[]] * 5000}]))
        replies = 0
        while sock.poll(3000):  # the 50 decodable frames are answered
            sock.recv()
            replies += 1
    finally:
        sock.close()
        bomber.close()
    # The store goes on answering others, and gave back what it took.
    answers = [health(store) for _ in range(20)]
    grown = rss(store) - baseline
    print(f"store RSS {baseline / MiB:.0f} MiB before, +{grown / MiB:.1f} MiB after "
          f"a 16 MiB frame and 50 heavy {len(heavy) // 1024} KiB frames")
    assert grown < 100 * MiB
    assert answers[-1].details["ready"] is True
    # The heavy frames decode (they are within every limit) into a health
    # request with an unknown field, which is answered; the 16 MiB frame and
    # the oversized array never become a request.
    assert answers[-1].details["requests"] >= 50
    assert replies == 50  # the long array is unreadable: dropped, counted, not answered
    assert answers[-1].details["malformed"] >= 1


def test_a_subscription_flood_neither_grows_the_table_nor_slows_leases(store: StoreLab) -> None:
    def offer_latency() -> float:
        times = []
        for i in range(400):  # 200 clients, each asking twice
            mac = f"02:00:00:00:00:{i % 200:02x}"
            started = time.perf_counter()
            reply = store.call(LeaseOffer(mac=mac, subnet=NETWORK))
            times.append(time.perf_counter() - started)
            assert isinstance(reply, LeaseGrant)
        return statistics.median(times)

    before = offer_latency()
    events = store.config.bus.events
    # One subscriber watching everything, as `astralboot events -f` does.
    with EventSubscriber(events) as watcher:
        # 200,000 topics: in one message (over the events socket's frame
        # limit, so ZeroMQ drops it), then 400 peers of this host asking
        # for 16 topics and for 100 each.
        socks = []
        try:
            big = raw_socket(events)
            socks.append(big)
            topics = tuple(f"{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
                           for i in range(200_000))
            big.send(pack(EventSubscribe(topics=topics), 1))
            refused = accepted = 0
            for n in range(400):
                sock = raw_socket(events)
                socks.append(sock)
                chunk = topics[n * 500:(n + 1) * 500]
                sock.send(pack(EventSubscribe(topics=chunk[:16]), 2))
                sock.send(pack(EventSubscribe(topics=chunk[:100]), 3))
            for sock in socks[1:]:
                for _ in range(2):
                    assert sock.poll(5000), "the events socket did not answer"
                    reply = unpack(sock.recv())
                    if isinstance(reply, SubscribeReply):
                        accepted += 1
                    else:
                        refused += 1
            details = health(store).details
            print(f"subscriptions: {accepted} taken, {refused} refused; store holds "
                  f"{details['events.subscribers']} subscribers, {details['events.topics']} "
                  "topics")
            assert details["events.subscribers"] <= 32  # this host's share
            assert details["events.topics"] <= 32 * 16
            assert refused >= 400 + 400 - 32
            after = offer_latency()
        finally:
            for sock in socks:
                sock.close()
        # The legitimate subscriber still gets its events.
        mac = "02:00:00:00:ff:01"
        assert isinstance(store.call(MachineSet(mac=mac, name="watched")), MachineReply)
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            seen = watcher.receive(timeout=1)
            if seen is not None and seen.mac == mac:
                break
        assert seen is not None and seen.mac == mac and seen.stage == "machine.changed"
    print(f"median LeaseOffer round trip {before * 1e3:.2f} ms before the flood, "
          f"{after * 1e3:.2f} ms after")
    assert after < 2 * before + 0.001
