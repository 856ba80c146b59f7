"""The policy layer against the store's own decisions (no bus, no database):
every protocol behaviour as a table row (RFC 2131 section 4.3 and 4.1), then
the options of a reply."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from astralboot.common.messages import (
    LeaseCommit,
    LeaseOffer,
)
from astralboot.services.dhcpd import constants as c
from astralboot.services.dhcpd.bootchain import BinaryCatalogue, BootChain
from astralboot.services.dhcpd.packet import decode
from astralboot.services.dhcpd.policy import (
    BROADCAST,
    Arrival,
    DhcpPolicy,
)
from astralboot.services.dhcpd.reply import Outgoing
from dhcptest import (
    RELAY,
    SERVER,
    InProcessStore,
    client_message,
    make_config,
    message_type,
    option_codes,
)

MAC = "52:54:00:12:34:56"
OTHER = "52:54:00:00:00:99"
EVERYONE = "255.255.255.255"
UNICAST = Arrival(broadcast=False, source=("192.0.2.100", 68))


class Harness:
    """A policy wired to the store's decisions, an event list and counters."""

    def __init__(self, domain: str = "lab.example", **dhcp: Any) -> None:
        self.config = make_config(domain=domain, **dhcp)
        self.store = InProcessStore(self.config)
        self.events: list[tuple[str, str, str | None, str]] = []
        self.stats: Counter[str] = Counter()
        catalogue = BinaryCatalogue(present={name: True for name in self.store.binaries})
        self.policy = DhcpPolicy(config=self.config, store=self.store,
                                 boot=BootChain(self.config.http.public_url, catalogue),
                                 report=lambda *e: self.events.append(e), stats=self.stats)

    def send(self, mtype: int, arrival: Arrival = BROADCAST, **kw: Any) -> Outgoing | None:
        kw.setdefault("mac", MAC)
        msg = client_message(mtype, **kw)
        return asyncio.run(self.policy.handle(msg, arrival))

    def offered(self, **kw: Any) -> str:
        out = self.send(c.DHCPDISCOVER, **kw)
        assert out is not None
        return decode(out.payload).yiaddr

    def bound(self, **kw: Any) -> str:
        ip = self.offered(**kw)
        out = self.send(c.DHCPREQUEST, server_id=SERVER, requested=ip, **kw)
        assert out is not None and out.message_type == c.DHCPACK
        return ip


@dataclass
class Case:
    """Set up (returns the client's address, if any), send one message, check."""

    setup: Callable[[Harness], str | None]
    message: Callable[[str | None], tuple[int, dict[str, Any]]]
    arrival: Arrival = BROADCAST
    reply: int | None = None  # message type, or None for silence
    to: tuple[str, int] | None = None  # destination ("yiaddr" means the offered address)
    hardware: bool = False  # an ARP entry is needed (client has no address yet)
    store: str | None = None  # the last store request: kind, or "lease.commit:<mode>"
    counter: str | None = None
    fail: dict[str, str] = field(default_factory=dict)


def fresh(h: Harness) -> None:
    return None


def offered(h: Harness) -> str:
    return h.offered()


def bound(h: Harness) -> str:
    return h.bound()


def relayed_bound(h: Harness) -> str:
    return h.bound(giaddr=RELAY)


def offered_other_bound(h: Harness) -> str:
    """The client holds an offer; another client's bound address is returned."""
    h.offered()
    return h.bound(mac=OTHER)


def bound_other_bound(h: Harness) -> str:
    h.bound()
    return h.bound(mac=OTHER)


def relayed_other_bound(h: Harness) -> str:
    return h.bound(mac=OTHER, giaddr=RELAY)


def pool_taken(h: Harness) -> None:
    """Other clients hold every address of the local pool (192.0.2.100-199)."""
    for n in range(100):
        h.bound(mac=f"52:54:00:00:01:{n:02x}")


CASES = {
    "discover: offer unicast to the offered address (ARP entry)": Case(
        fresh, lambda ip: (c.DHCPDISCOVER, {}), reply=c.DHCPOFFER, to=("yiaddr", 68),
        hardware=True, store="lease.offer"),
    "discover with broadcast flag: offer broadcast": Case(
        fresh, lambda ip: (c.DHCPDISCOVER, {"flags": c.FLAG_BROADCAST}), reply=c.DHCPOFFER,
        to=(EVERYONE, 68), store="lease.offer"),
    "discover via relay: offer to the relay on port 67": Case(
        fresh, lambda ip: (c.DHCPDISCOVER, {"giaddr": RELAY}), reply=c.DHCPOFFER,
        to=(RELAY, 67), store="lease.offer"),
    "discover via a relay with no configured subnet: silence": Case(
        fresh, lambda ip: (c.DHCPDISCOVER, {"giaddr": "203.0.113.1"}),
        counter="ignored.unknown_relay"),
    "discover, pool exhausted: silence": Case(
        pool_taken, lambda ip: (c.DHCPDISCOVER, {}), store="lease.offer",
        counter="pool_exhausted"),
    "discover, store unreachable: silence": Case(
        fresh, lambda ip: (c.DHCPDISCOVER, {}), store="lease.offer", counter="store_timeouts",
        fail={"lease.offer": "timeout"}),
    "selecting this server: ACK": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": ip}),
        reply=c.DHCPACK, to=("yiaddr", 68), hardware=True, store="lease.commit:select"),
    "selecting this server, broadcast flag: ACK broadcast": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": ip,
                                             "flags": c.FLAG_BROADCAST}),
        reply=c.DHCPACK, to=(EVERYONE, 68), store="lease.commit:select"),
    "selecting another server: silence": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": "192.0.2.9", "requested": ip}),
        store="lease.offer", counter="ignored.other_server"),
    "selecting this server for a free address it did not offer: ACK (the store binds it)": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": "192.0.2.150"}),
        reply=c.DHCPACK, to=("yiaddr", 68), hardware=True, store="lease.commit:select"),
    "selecting this server for another client's address: NAK broadcast": Case(
        offered_other_bound, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": ip}),
        reply=c.DHCPNAK, to=(EVERYONE, 68), store="lease.commit:select", counter="naks"),
    "selecting an address outside the pool: NAK broadcast": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": "192.0.2.50"}),
        reply=c.DHCPNAK, to=(EVERYONE, 68), store="lease.commit:select", counter="naks"),
    "selecting via relay, conflict: NAK to the relay": Case(
        relayed_other_bound, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": ip,
                                                         "giaddr": RELAY}),
        reply=c.DHCPNAK, to=(RELAY, 67), store="lease.commit:select"),
    "init-reboot, right address: ACK": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"requested": ip}), reply=c.DHCPACK,
        to=("yiaddr", 68), hardware=True, store="lease.commit:reboot"),
    "init-reboot, another client's address: NAK": Case(
        bound_other_bound, lambda ip: (c.DHCPREQUEST, {"requested": ip}), reply=c.DHCPNAK,
        to=(EVERYONE, 68), store="lease.commit:reboot"),
    "init-reboot, a free address: ACK (the store moves the client)": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"requested": "192.0.2.150"}), reply=c.DHCPACK,
        to=("yiaddr", 68), hardware=True, store="lease.commit:reboot"),
    "init-reboot, wrong network: NAK without asking the store": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"requested": "10.0.0.5"}), reply=c.DHCPNAK,
        to=(EVERYONE, 68), store="lease.commit:select"),
    "init-reboot, unknown client: silence": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {"requested": "192.0.2.120"}),
        store="lease.commit:reboot", counter="ignored.unknown_client_reboot"),
    "init-reboot via relay, unknown client: silence": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {"requested": "198.18.1.7", "giaddr": RELAY}),
        store="lease.commit:reboot"),
    "renewing (unicast): ACK unicast to ciaddr": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"ciaddr": ip}), arrival=UNICAST, reply=c.DHCPACK,
        to=("yiaddr", 68), store="lease.commit:renew"),
    "rebinding (broadcast): ACK unicast to ciaddr": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"ciaddr": ip}), reply=c.DHCPACK, to=("yiaddr", 68),
        store="lease.commit:rebind"),
    "rebinding via relay: ACK to the relay": Case(
        relayed_bound, lambda ip: (c.DHCPREQUEST, {"ciaddr": ip, "giaddr": RELAY}),
        reply=c.DHCPACK, to=(RELAY, 67), store="lease.commit:rebind"),
    "rebinding via relay, arriving unicast from the relay: still REBINDING": Case(
        relayed_bound, lambda ip: (c.DHCPREQUEST, {"ciaddr": ip, "giaddr": RELAY}),
        arrival=Arrival(broadcast=False, source=(RELAY, 67)), reply=c.DHCPACK, to=(RELAY, 67),
        store="lease.commit:rebind"),
    "renewing an address the store does not know: NAK": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {"ciaddr": "192.0.2.130"}), arrival=UNICAST,
        reply=c.DHCPNAK, to=(EVERYONE, 68), store="lease.commit:renew"),
    # RFC 2131 4.3.2: a REBINDING client with no record here may be another
    # server's; the store says "not_found" and dhcpd stays silent.
    "rebinding an address the store does not know: silence": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {"ciaddr": "192.0.2.130"}),
        store="lease.commit:rebind", counter="ignored.unknown_client_rebind"),
    "renewing someone else's address: NAK": Case(
        bound, lambda ip: (c.DHCPREQUEST, {"ciaddr": ip, "mac": OTHER}),
        arrival=UNICAST, reply=c.DHCPNAK, to=(EVERYONE, 68), store="lease.commit:renew"),
    "renewing from a network this server does not serve: NAK": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {"ciaddr": "10.1.2.3"}), arrival=UNICAST,
        reply=c.DHCPNAK, to=(EVERYONE, 68)),
    "request with no address at all: silence": Case(
        fresh, lambda ip: (c.DHCPREQUEST, {}), counter="ignored.request_without_address"),
    "request, store unreachable: silence": Case(
        offered, lambda ip: (c.DHCPREQUEST, {"server_id": SERVER, "requested": ip}),
        store="lease.commit:select", counter="store_timeouts",
        fail={"lease.commit": "timeout"}),
    "release: store told, no reply": Case(
        bound, lambda ip: (c.DHCPRELEASE, {"ciaddr": ip, "server_id": SERVER}),
        store="lease.release", counter="releases"),
    "release for another server: ignored": Case(
        bound, lambda ip: (c.DHCPRELEASE, {"ciaddr": ip, "server_id": "192.0.2.9"}),
        store="lease.commit:select", counter="ignored.other_server"),
    "decline: address quarantined by the store, no reply": Case(
        bound, lambda ip: (c.DHCPDECLINE, {"requested": ip, "server_id": SERVER}),
        store="lease.decline", counter="declines"),
    "inform: ACK without a lease, unicast to ciaddr": Case(
        fresh, lambda ip: (c.DHCPINFORM, {"ciaddr": "192.0.2.50"}), arrival=UNICAST,
        reply=c.DHCPACK, to=("192.0.2.50", 68), counter="informs"),
    "inform via relay: ACK to the relay": Case(
        fresh, lambda ip: (c.DHCPINFORM, {"ciaddr": "198.18.3.3", "giaddr": RELAY}),
        reply=c.DHCPACK, to=(RELAY, 67)),
}


def _store_label(msg: object) -> str:
    if isinstance(msg, LeaseCommit):
        return f"lease.commit:{msg.mode}"
    return msg.kind  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_protocol_behaviour(case: Case) -> None:
    h = Harness()
    ip = case.setup(h)
    h.store.fail.update(case.fail)
    mtype, kw = case.message(ip)
    out = h.send(mtype, case.arrival, **kw)
    if case.reply is None:
        assert out is None
    else:
        assert out is not None
        packet = decode(out.payload)
        assert message_type(packet) == case.reply
        assert out.message_type == case.reply
        assert len(out.payload) >= c.MIN_PACKET
        expected_ip = packet.yiaddr if case.to and case.to[0] == "yiaddr" else case.to[0]
        assert (out.destination.ip, out.destination.port) == (expected_ip, case.to[1])
        assert (out.destination.hardware is not None) == case.hardware
        assert packet.xid == 0x1d2c3b4a
        assert packet.chaddr.hex(":") == kw.get("mac", MAC)
    last = _store_label(h.store.calls[-1]) if h.store.calls else None
    assert last == case.store
    if case.counter:
        assert h.stats[case.counter] == 1


# --- what the replies carry ------------------------------------------------------

def test_offer_carries_lease_times_server_id_and_requested_options() -> None:
    h = Harness()
    out = h.send(c.DHCPDISCOVER)
    assert out is not None
    p = decode(out.payload)
    assert p.op == c.BOOTREPLY and p.yiaddr == "192.0.2.100" and p.ciaddr == "0.0.0.0"
    o = p.options
    assert o[c.OPT_SERVER_ID] == socket.inet_aton(SERVER)
    assert struct.unpack("!I", o[c.OPT_LEASE_TIME])[0] == 3600
    assert struct.unpack("!I", o[c.OPT_RENEWAL_TIME])[0] == 1800
    assert struct.unpack("!I", o[c.OPT_REBINDING_TIME])[0] == 3150
    assert o[c.OPT_SUBNET_MASK] == socket.inet_aton("255.255.255.0")
    assert o[c.OPT_ROUTER] == socket.inet_aton(SERVER)  # gateway defaults to the server
    assert o[c.OPT_DNS] == socket.inet_aton(SERVER)
    assert o[c.OPT_DOMAIN_NAME] == b"lab.example"
    assert o[c.OPT_BROADCAST] == socket.inet_aton("192.0.2.255")
    assert c.OPT_HOST_NAME not in o  # no machine yet: the store makes one on the first ACK
    assert c.OPT_BOOTFILE not in o and p.file == b""  # not a network-boot client


def test_the_machine_s_name_from_the_store_becomes_the_host_name() -> None:
    # The store names a machine after its first address: 192.0.2.100 is node100.
    h = Harness()
    ip = h.offered()
    ack = h.send(c.DHCPREQUEST, server_id=SERVER, requested=ip)
    assert ack is not None and decode(ack.payload).options[c.OPT_HOST_NAME] == b"node100"
    again = h.send(c.DHCPDISCOVER)
    assert again is not None and decode(again.payload).options[c.OPT_HOST_NAME] == b"node100"


def test_options_follow_the_parameter_request_list_order() -> None:
    h = Harness()
    h.bound()  # a machine the store has named, so option 12 has a value
    out = h.send(c.DHCPDISCOVER, params=bytes((15, 6, 3, 1, 12)))
    assert out is not None
    assert option_codes(out.payload) == [53, 54, 51, 58, 59, 15, 6, 3, 1, 12]


def test_unrequested_options_are_left_out() -> None:
    h = Harness()
    out = h.send(c.DHCPDISCOVER, params=bytes((1,)))
    assert out is not None
    assert option_codes(out.payload) == [53, 54, 51, 58, 59, 1]


def test_no_parameter_list_gets_the_usual_set() -> None:
    h = Harness()
    h.bound()  # a machine the store has named, so option 12 has a value
    out = h.send(c.DHCPDISCOVER, params=None)
    assert out is not None
    assert option_codes(out.payload) == [53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 28]


def test_reservation_name_becomes_host_name() -> None:
    h = Harness()
    h.store.machine(MAC, name="web01", os="debian")
    out = h.send(c.DHCPDISCOVER)
    assert out is not None
    assert decode(out.payload).options[c.OPT_HOST_NAME] == b"web01"


def test_relayed_subnet_gets_relay_as_router_and_its_own_mask() -> None:
    h = Harness()
    out = h.send(c.DHCPDISCOVER, giaddr=RELAY)
    assert out is not None
    p = decode(out.payload)
    assert p.yiaddr.startswith("198.18.1.") and p.giaddr == RELAY
    assert p.options[c.OPT_ROUTER] == socket.inet_aton(RELAY)
    assert p.options[c.OPT_SUBNET_MASK] == socket.inet_aton("255.255.0.0")
    offer = h.store.calls[-1]
    assert isinstance(offer, LeaseOffer) and offer.subnet == "198.18.0.0/16"


def test_relay_agent_information_is_echoed_last() -> None:
    h = Harness()
    info = bytes.fromhex("0106657468302f31")  # circuit id "eth0/1"
    out = h.send(c.DHCPDISCOVER, giaddr=RELAY, extra={c.OPT_RELAY_AGENT: info})
    assert out is not None
    assert option_codes(out.payload)[-1] == c.OPT_RELAY_AGENT
    assert decode(out.payload).options[c.OPT_RELAY_AGENT] == info


def test_relayed_nak_sets_the_broadcast_bit() -> None:
    h = Harness()
    taken = relayed_other_bound(h)
    out = h.send(c.DHCPREQUEST, server_id=SERVER, requested=taken, giaddr=RELAY)
    assert out is not None
    p = decode(out.payload)
    assert p.flags & c.FLAG_BROADCAST
    assert p.yiaddr == "0.0.0.0" and c.OPT_LEASE_TIME not in p.options
    assert c.OPT_MESSAGE in p.options


def test_ack_echoes_ciaddr_when_renewing() -> None:
    h = Harness()
    ip = h.bound()
    out = h.send(c.DHCPREQUEST, UNICAST, ciaddr=ip)
    assert out is not None
    p = decode(out.payload)
    assert p.ciaddr == ip and p.yiaddr == ip


def test_inform_ack_has_no_lease() -> None:
    h = Harness()
    out = h.send(c.DHCPINFORM, UNICAST, ciaddr="192.0.2.50")
    assert out is not None
    p = decode(out.payload)
    assert p.yiaddr == "0.0.0.0"
    assert not {c.OPT_LEASE_TIME, c.OPT_RENEWAL_TIME, c.OPT_REBINDING_TIME} & set(p.options)
    assert p.options[c.OPT_SUBNET_MASK] == socket.inet_aton("255.255.255.0")


def test_request_passes_client_id_and_hostname_to_the_store() -> None:
    h = Harness()
    ip = h.offered()
    h.send(c.DHCPREQUEST, server_id=SERVER, requested=ip,
           extra={c.OPT_CLIENT_ID: b"\x01abcdef", c.OPT_HOST_NAME: b"laptop"})
    commit = h.store.calls[-1]
    assert isinstance(commit, LeaseCommit)
    assert commit.client_id == b"\x01abcdef" and commit.hostname == "laptop"
    assert commit.subnet == "192.0.2.0/24" and commit.ip == ip


def test_discover_passes_requested_address_to_the_store() -> None:
    h = Harness()
    out = h.send(c.DHCPDISCOVER, requested="192.0.2.150")
    assert out is not None and decode(out.payload).yiaddr == "192.0.2.150"


def test_reply_larger_than_the_client_accepts_drops_requested_options() -> None:
    # A client that takes 576 bytes (option 57 below the minimum counts as 576),
    # a long domain and a long host name: not everything it asks for fits.
    h = Harness(domain="d" * 60 + "." + "e" * 60 + "." + "f" * 60 + ".example")
    h.store.machine(MAC, name="n" * 63)
    out = h.send(c.DHCPDISCOVER, arch=0, params=bytes((1, 3, 6, 15, 12, 66, 67)),
                 extra={c.OPT_MAX_MESSAGE_SIZE: struct.pack("!H", 400)})
    assert out is not None
    assert len(out.payload) <= 576 - 28
    codes = option_codes(out.payload)
    assert codes[:5] == [53, 54, 51, 58, 59]
    assert codes[5:8] == [1, 3, 6]  # the head of the list survives
    # Dropped from the end of the list, but the boot server and file go last
    # of all: the host name (12), asked for after the domain, went instead.
    assert 12 not in codes and 66 in codes and 67 in codes
    assert decode(out.payload).file == b"undionly.kpxe"  # the file field names it too


def test_lease_events_travel_with_the_lease_requests() -> None:
    # The store records offer/ack/release/decline itself (report=True): one bus
    # message per packet. Only a NAK, which writes no lease, is reported apart.
    h = Harness()
    ip = h.bound(arch=0)  # a BIOS PXE ROM: its events name the boot file
    h.send(c.DHCPREQUEST, requested="192.0.2.50")  # INIT-REBOOT, outside the pool: NAK
    h.send(c.DHCPRELEASE, ciaddr=ip, server_id=SERVER)
    h.send(c.DHCPDECLINE, requested=ip, server_id=SERVER)
    asked = [m for m in h.store.calls if m.kind != "content.stat"]
    assert [m.kind for m in asked] == ["lease.offer", "lease.commit", "lease.commit",
                                       "lease.release", "lease.decline"]
    assert all(m.report for m in asked)  # type: ignore[attr-defined]
    details = [m.detail for m in asked[:2]]  # type: ignore[attr-defined]
    assert details == ["undionly.kpxe", "select undionly.kpxe"]
    assert [(e[0], e[2]) for e in h.events] == [("dhcp.nak", "192.0.2.50")]
    assert h.stats["acks.select"] == 1


def test_a_declined_address_is_quarantined_and_the_client_offered_another() -> None:
    h = Harness()
    ip = h.bound()
    assert h.send(c.DHCPDECLINE, requested=ip, server_id=SERVER) is None
    assert h.store.leases()[ip].state == "declined"
    out = h.send(c.DHCPDISCOVER)
    assert out is not None and decode(out.payload).yiaddr not in (ip, "0.0.0.0")


@pytest.mark.parametrize("kw", [{"arch": 0}, {"user_class": b"iPXE"}, {}],
                         ids=["firmware", "ipxe", "an os's client"])
def test_each_lease_reply_asks_the_boot_chain_once(kw: dict[str, Any]) -> None:
    h = Harness()
    choose, asked = h.policy.boot.choose, []

    def counted(msg: Any, machine: Any) -> Any:
        asked.append(machine)
        return choose(msg, machine)

    h.policy.boot.choose = counted  # type: ignore[method-assign]
    h.bound(**kw)  # an OFFER, then an ACK
    assert len(asked) == 2
    # iPXE's script depends on the machine, so it is chosen with the store's grant.
    assert all((m is not None) == ("user_class" in kw) for m in asked)


def test_an_ipxe_client_s_events_say_ipxe() -> None:
    h = Harness()
    h.bound(user_class=b"iPXE")
    offer = next(m for m in h.store.calls if m.kind == "lease.offer")
    assert offer.detail == "iPXE"  # type: ignore[attr-defined]


# --- hostile and broken clients ------------------------------------------------


def test_option_82_from_a_client_is_never_echoed() -> None:
    """Only a relay adds option 82 (RFC 3046): one in a packet with giaddr 0 was
    made up by the client and must not come back to it."""
    h = Harness()
    forged = b"\x01\x0bcircuit-one\x02\x05agent"
    out = h.send(c.DHCPDISCOVER, extra={c.OPT_RELAY_AGENT: forged})
    assert out is not None and out.message_type == c.DHCPOFFER
    assert c.OPT_RELAY_AGENT not in decode(out.payload).options
    ack = h.send(c.DHCPREQUEST, server_id=SERVER, requested=decode(out.payload).yiaddr,
                 extra={c.OPT_RELAY_AGENT: forged})
    assert ack is not None and c.OPT_RELAY_AGENT not in decode(ack.payload).options


@pytest.mark.parametrize("giaddr", ["0.0.0.0", RELAY])
@pytest.mark.parametrize("max_size", [None, 576, 1000])
def test_every_reply_fits_the_clients_maximum(giaddr: str, max_size: int | None) -> None:
    """A PXE client asking for everything, with a long domain and name, a
    255-byte option 82 from its relay: the reply still fits option 57 (or
    576 bytes without it), and keeps the message type, server, lease and
    boot file."""
    h = Harness(domain=("d" * 62 + ".") * 3 + "example")
    h.store.machine(MAC, name="n" * 63)
    extra = {c.OPT_RELAY_AGENT: b"\x01\xfd" + b"c" * 253}
    if max_size is not None:
        extra[c.OPT_MAX_MESSAGE_SIZE] = struct.pack("!H", max_size)
    params = bytes(range(1, 255))  # every option there is
    for mtype in (c.DHCPDISCOVER, c.DHCPREQUEST):
        kw: dict[str, Any] = {"giaddr": giaddr, "arch": 0, "params": params,
                              "vendor": b"PXEClient:Arch:00000:UNDI:002001", "extra": extra}
        if mtype == c.DHCPREQUEST:
            kw.update(server_id=SERVER, requested=h.offered(**kw))
        out = h.send(mtype, **kw)
        assert out is not None
        assert len(out.payload) <= (max_size or 576) - 28
        options = decode(out.payload).options
        for code in (c.OPT_MESSAGE_TYPE, c.OPT_SERVER_ID, c.OPT_LEASE_TIME):
            assert code in options
        assert decode(out.payload).file == b"undionly.kpxe"
        assert (c.OPT_RELAY_AGENT in options) == (giaddr == RELAY)


def test_an_option_82_too_long_to_echo_is_refused_as_malformed() -> None:
    from astralboot.services.dhcpd.client_messages import read_client_message
    from astralboot.services.dhcpd.packet import encode
    from astralboot.services.dhcpd.reader import MalformedPacket
    from dhcptest import client_packet
    packet = client_packet(c.DHCPDISCOVER, giaddr=RELAY,
                           extra={c.OPT_RELAY_AGENT: b"\x01\xff" + b"x" * 400})
    with pytest.raises(MalformedPacket, match="option 82"):
        read_client_message(encode(packet))


def test_host_names_are_clamped_and_cleaned_before_the_store_sees_them() -> None:
    h = Harness()
    # 300 characters in two option-12 pieces, with bytes no host name has.
    name = "a" * 200 + "\n#!ipxe shell\x00" + "b" * 90
    h.send(c.DHCPDISCOVER, extra={c.OPT_HOST_NAME: name.encode()})
    offer = [x for x in h.store.calls if isinstance(x, LeaseOffer)][-1]
    assert offer.hostname is not None and len(offer.hostname) <= 253
    assert offer.hostname.startswith("a" * 200 + "-ipxe-shell")
    assert all(ch.isalnum() or ch in ".-" for ch in offer.hostname)


def test_a_decline_the_store_refuses_is_counted_and_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()  # 192.0.2.150 was never offered to the client: not its to decline
    with caplog.at_level("INFO"):
        for _ in range(50):
            h.send(c.DHCPDECLINE, server_id=SERVER, requested="192.0.2.150")
    assert h.stats["declines_refused"] == 50 and h.stats["declines"] == 0
    lines = [r for r in caplog.records if "DECLINE of 192.0.2.150" in r.getMessage()]
    assert len(lines) == 1
    assert h.stats["log_held_back"] == 49
