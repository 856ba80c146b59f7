"""The zone follows the real store: a store process (its bus on ipc sockets,
reachable from every namespace), dnsd with its feed in the lab's server
namespace, ``dig`` in a client namespace. Leases and machine names change
through the bus, as dhcpd and the CLI change them."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from astralboot.common.cli.demo.netns import Host, Lab
from astralboot.common.messages import (LeaseCommit, LeaseGrant, LeaseOffer, LeaseRelease,
                                        MachineReply, MachineSet)
from dnslab import DnsdProcess, answers, authority_types, dig, status
from support.stack import Stack, write_config

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
NETWORK = "192.0.2.0/24"


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


class Feedlab:
    """The store, a client namespace, and (once started) dnsd with its feed."""

    dnsd: DnsdProcess
    early: tuple[str, str]  # (MAC, address) bound before dnsd started, default name
    named: tuple[str, str]  # the same, named "buildbox" by the operator

    def __init__(self, stack: Stack, client: Host) -> None:
        self.stack = stack
        self.client = client
        config = load(stack.config)
        self.bus = SyncBusClient(config.bus.endpoint, deadline=10.0)

    def bind(self, mac: str, *, report: bool = True) -> str:
        offer = self.bus.call(LeaseOffer(mac=mac, subnet=NETWORK))
        assert isinstance(offer, LeaseGrant)
        grant = self.bus.call(LeaseCommit(mac=mac, subnet=NETWORK, ip=offer.ip, mode="select",
                                          report=report))
        assert isinstance(grant, LeaseGrant) and grant.state == "bound"
        return grant.ip

    def name(self, mac: str, name: str) -> None:
        assert isinstance(self.bus.call(MachineSet(mac=mac, name=name)), MachineReply)

    def release(self, mac: str, ip: str, *, report: bool = True) -> None:
        self.bus.call(LeaseRelease(mac=mac, ip=ip, report=report))

    def a(self, name: str) -> str:
        return dig(self.client.ns, SERVER, f"{name}.lab.example", port=self.dnsd.port)

    def until(self, name: str, check: Callable[[str], bool], timeout: float = 10.0) -> str:
        """dig ``name`` until ``check`` holds for its output; the last output."""
        end = time.monotonic() + timeout
        while True:
            out = self.a(name)
            if check(out) or time.monotonic() > end:
                return out
            time.sleep(0.1)


def nxdomain(out: str) -> bool:
    return "status: NXDOMAIN" in out


@pytest.fixture
def feed_lab(lab: Lab, short_tmp: Path) -> Iterator[Feedlab]:
    data = short_tmp / "data"
    (data / "tftp").mkdir(parents=True)
    (data / "boot").mkdir()
    config = write_config(short_tmp, data=data, range="192.0.2.100-192.0.2.199", extra={
        "store.database": f"sqlite:///{short_tmp / 'db' / 'astralboot.db'}",
        "store.cache": str(short_tmp / "cache"), "bus.deadline": 2.0})
    client = lab.add_host("c1", "192.0.2.50/24")
    with Stack(config, services=("store",), ready_timeout=90) as stack:
        loaded = load(config)
        lab_ = Feedlab(stack, client)
        # Known before dnsd starts: the first full sync brings these.
        early = new_mac()
        named = new_mac()
        lab_.early = (early, lab_.bind(early))
        lab_.named = (named, lab_.bind(named))
        lab_.name(named, "buildbox")
        settings = {"address": SERVER, "port": 53, "domain": "lab.example",
                    "server_name": "bootsrv", "subnets": [NETWORK], "clients": [NETWORK],
                    "bus": loaded.bus.endpoint, "events": loaded.bus.events, "deadline": 1.0,
                    "feed": {"resync": 2.0, "check": 0.5, "retry_max": 1.0}}
        with DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
            lab_.dnsd = dnsd
            try:
                yield lab_
                assert dnsd.alive(), dnsd.log()
            finally:
                lab_.bus.close()


def test_full_sync_at_start(feed_lab: Feedlab) -> None:
    early_mac, early_ip = feed_lab.early
    _, named_ip = feed_lab.named
    offset = int(early_ip.rsplit(".", 1)[1])
    out = feed_lab.a(f"node{offset}")  # the store's default name: nodeN
    assert answers(out) == [f"node{offset}.lab.example. A {early_ip}"]
    out = feed_lab.a("buildbox")  # the operator's name
    assert answers(out) == [f"buildbox.lab.example. A {named_ip}"]
    out = dig(feed_lab.client.ns, SERVER, "-x", named_ip, port=feed_lab.dnsd.port)
    assert answers(out)[0].endswith("PTR buildbox.lab.example.")


def test_commit_resolves_release_is_nxdomain(feed_lab: Feedlab) -> None:
    mac = new_mac()
    ip = feed_lab.bind(mac)
    label = f"node{ip.rsplit('.', 1)[1]}"
    out = feed_lab.until(label, lambda o: bool(answers(o)), timeout=5)
    assert answers(out) == [f"{label}.lab.example. A {ip}"], out
    feed_lab.name(mac, "renamed")  # machine.changed
    out = feed_lab.until("renamed", lambda o: bool(answers(o)), timeout=5)
    assert answers(out) == [f"renamed.lab.example. A {ip}"], out
    assert nxdomain(feed_lab.a(label))
    feed_lab.release(mac, ip)  # dhcp.release
    out = feed_lab.until("renamed", nxdomain, timeout=5)
    assert status(out) == "NXDOMAIN" and authority_types(out) == ["SOA"]
    stats = feed_lab.dnsd.stats()
    assert stats["feed_events"] >= 3 and stats.get("feed_lookup_failures", 0) == 0


def test_resync_removes_a_lease_gone_without_an_event(feed_lab: Feedlab) -> None:
    mac = new_mac()
    ip = feed_lab.bind(mac)
    label = f"node{ip.rsplit('.', 1)[1]}"
    assert answers(feed_lab.until(label, lambda o: bool(answers(o)), timeout=5))
    feed_lab.release(mac, ip, report=False)  # no event: as a lease that expires
    syncs = feed_lab.dnsd.stats()["feed_syncs"]
    out = feed_lab.until(label, nxdomain, timeout=8)  # resync every 2 s here
    assert nxdomain(out), out
    assert feed_lab.dnsd.stats()["feed_syncs"] > syncs


def test_store_down_keeps_the_zone_and_a_restart_resyncs(feed_lab: Feedlab) -> None:
    early_mac, early_ip = feed_lab.early
    label = f"node{early_ip.rsplit('.', 1)[1]}"
    feed_lab.stack.stop_one("store")
    deadline = time.monotonic() + 10
    while not feed_lab.dnsd.stats()["feed.store_down"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert feed_lab.dnsd.stats()["feed.store_down"]
    out = feed_lab.a(label)  # still served from what the zone knew
    assert answers(out) == [f"{label}.lab.example. A {early_ip}"]
    feed_lab.stack.start("store")
    mac = new_mac()
    ip = feed_lab.bind(mac)  # an event from the new store process
    new_label = f"node{ip.rsplit('.', 1)[1]}"
    out = feed_lab.until(new_label, lambda o: bool(answers(o)), timeout=15)
    assert answers(out) == [f"{new_label}.lab.example. A {ip}"], feed_lab.dnsd.log()
    deadline = time.monotonic() + 10
    while True:
        stats = feed_lab.dnsd.stats()
        if stats["feed_subscribed"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # the store's return was noticed, and its events subscribed to again
    assert stats["feed_subscribed"] >= 2, (stats, feed_lab.dnsd.log())
    assert not stats["feed.store_down"]
