"""The store's edge: whatever a peer sends, no row is too long for its column,
no text breaks a line, and one client's bad values never cost another its ACK.

Both backends (PostgreSQL enforces column lengths, SQLite does not), real
store processes, real bus.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.events import boot_event
from astralboot.common.messages import (EventList, EventListReply, ErrorReply, EventReport,
                                        LeaseCommit, LeaseGrant, LeaseLookup, LeaseOffer,
                                        LeaseReply, MachineSet, Reservation, ReservationSet)

from store_lab import NETWORK, StoreLab

BIG = {"network": "10.20.0.0/22", "address": "10.20.0.1", "range": "10.20.0.10-10.20.3.250"}


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def test_a_300_character_host_name_costs_nobody_their_ack(store_factory: Any) -> None:
    store: StoreLab = store_factory(**BIG)
    subnet = store.config.dhcp.local.name
    macs = [new_mac() for _ in range(200)]
    long_name = "a" * 150 + "\n#!ipxe\nshell " + "b" * 150  # two option-12 pieces, joined

    async def run() -> list[Any]:
        async with AsyncBusClient(store.config.bus.endpoint, deadline=10) as bus:
            offers = await asyncio.gather(*(bus.request(LeaseOffer(mac=m, subnet=subnet))
                                            for m in macs))
            # All at once, so they share commits with the long one in the middle.
            return await asyncio.gather(*(
                bus.request(LeaseCommit(mac=m, subnet=subnet, ip=o.ip, mode="select",
                                        hostname=long_name if i == 100 else f"host{i}"))
                for i, (m, o) in enumerate(zip(macs, offers))))

    acks = asyncio.run(run())
    assert all(isinstance(a, LeaseGrant) and a.state == "bound" for a in acks), \
        [a for a in acks if not isinstance(a, LeaseGrant)][:3]
    looked = store.call(LeaseLookup(mac=macs[100]))
    assert isinstance(looked, LeaseReply)
    kept = looked.lease.hostname
    assert kept is not None and len(kept) <= 253 and "\n" not in kept and " " not in kept
    assert kept.startswith("a" * 150 + "-ipxe-shell-")
    store.restart()  # what was written is what memory held
    again = store.call(LeaseLookup(mac=macs[100]))
    assert isinstance(again, LeaseReply) and again.lease.hostname == kept
    assert len([m for m in macs if isinstance(store.call(LeaseLookup(mac=m)), LeaseReply)]) == 200


def test_event_fields_are_bounded_and_addresses_normalised(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    mac = new_mac()
    report = boot_event("httpd" * 10, "http.script" * 10, mac, "::ffff:192.0.2.9",
                        "detail\nwith a line break " + "x" * 5000)
    bogus = boot_event("httpd", "http.image", mac, "not an address")
    with AsyncBusClientOnce(store) as notify:
        notify(report)
        notify(bogus)
    deadline = time.monotonic() + 10
    while True:
        listed = store.call(EventList(mac=mac))
        assert isinstance(listed, EventListReply)
        if len(listed.events) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    first, second = listed.events
    assert first.ip == "192.0.2.9" and second.ip is None
    assert len(first.service) <= 16 and len(first.stage) <= 32
    assert "\n" not in first.detail and len(first.detail) <= 1024


def test_names_and_labels_that_would_break_a_script_are_refused(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    mac = new_mac()
    evil = "evil\n#!ipxe\nshell"
    refused = store.call(ReservationSet(reservation=Reservation(mac=mac, ip="192.0.2.60",
                                                                name=evil)))
    assert isinstance(refused, ErrorReply) and refused.code == "bad_request"
    refused = store.call(ReservationSet(reservation=Reservation(mac=mac, ip="192.0.2.60",
                                                                os="../../etc")))
    assert isinstance(refused, ErrorReply) and refused.code == "bad_request"
    too_many = {f"k{i}": "v" for i in range(100)}
    refused = store.call(MachineSet(mac=mac, labels=too_many))
    assert isinstance(refused, ErrorReply) and refused.code == "bad_request"
    refused = store.call(MachineSet(mac=mac, labels={"ok": "line\nbreak"}))
    assert isinstance(refused, ErrorReply) and refused.code == "bad_request"
    refused = store.call(LeaseOffer(mac=mac, subnet=NETWORK, client_id=b"\x01" * 300))
    assert isinstance(refused, ErrorReply) and refused.code == "bad_request"


class AsyncBusClientOnce:
    """Send notify-only messages from a short-lived asyncio client."""

    def __init__(self, store: StoreLab) -> None:
        self.endpoint = store.config.bus.endpoint
        self.pending: list[EventReport] = []

    def __enter__(self) -> Any:
        return self.pending.append

    def __exit__(self, *exc: object) -> None:
        async def send() -> None:
            async with AsyncBusClient(self.endpoint) as bus:
                for msg in self.pending:
                    bus.notify(msg)
                await asyncio.sleep(0.1)
        asyncio.run(send())
