"""Floods from made-up MACs against the real dhcpd and store: a real client
(busybox udhcpc) still gets an address, and nothing is held for the flood."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from astralboot.common.cli.demo.netns import Lab
from astralboot.common.messages import EventList, EventListReply, Health, HealthReply
from astralboot.services.dhcpd import constants as c
from dhcp_lab import read_env, serving, udhcpc_script
from dhcptest import client_packet

pytestmark = pytest.mark.netns

POOL = [f"192.0.2.{n}" for n in range(100, 110)]  # ten addresses
SMALL = {"dhcp.range": f"{POOL[0]}-{POOL[-1]}", "log_level": "info"}


def made_up_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def udhcpc_address(lab: Lab, folder: Path) -> str:
    host = lab.add_host("real")
    script = udhcpc_script(folder)
    host.ns.run(["udhcpc", "-i", host.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                 "-s", str(script)], timeout=60)
    return read_env(folder / "udhcpc.bound.env")["ip"]


def test_a_decline_flood_from_made_up_macs_quarantines_nothing(lab: Lab,
                                                               short_tmp: Path) -> None:
    with serving(lab, short_tmp, SMALL) as dl:
        flooder = lab.add_host("flood")
        declines = [client_packet(c.DHCPDECLINE, made_up_mac(), xid=n, server_id="192.0.2.1",
                                  requested=POOL[n % len(POOL)]) for n in range(127)]
        dl.probe(flooder, declines, count=0, wait=1)
        dl.wait_for("127 declines", lambda: dl.stats().get("declines_refused", 0) == 127)
        assert udhcpc_address(lab, short_tmp) in POOL
        stats = dl.stats()
        assert stats.get("declines", 0) == 0
        assert not [x for x in dl.leases() if x.state == "declined"]
        log = dl.stack.log_tail("dhcpd", 1000)
        # The flood is counted, not logged line by line: each made-up MAC is a
        # new sender, so all senders together are held to 100 lines a minute.
        assert 0 < log.count("DECLINE of") <= 100 < 127
        assert stats["log_held_back"] == 127 - log.count("DECLINE of")


def test_a_discover_flood_leaves_room_for_a_real_client(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp, SMALL) as dl:
        flooder = lab.add_host("flood")
        discovers = [client_packet(c.DHCPDISCOVER, made_up_mac(), xid=n, flags=c.FLAG_BROADCAST)
                     for n in range(127)]
        offers = dl.probe(flooder, discovers, count=127, wait=5)
        assert len(offers) == 127  # every DISCOVER answered, none left waiting
        health = dl.bus.call(Health())
        assert isinstance(health, HealthReply)
        details = health.details
        # At most half the pool is held for clients that never come back.
        assert details["pool.192.0.2.0/24.offered"] <= 5
        assert details["pool.192.0.2.0/24.offers_reclaimed"] >= 127 - 5
        assert details["pool.192.0.2.0/24.pressure"] >= 1
        assert udhcpc_address(lab, short_tmp) in POOL
        listed = dl.bus.call(EventList(limit=10_000))
        assert isinstance(listed, EventListReply)
        pressure = [e for e in listed.events if e.stage == "pool.pressure"]
        assert pressure and "cap 5" in pressure[0].detail
