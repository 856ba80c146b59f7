"""Fuzz targets: what the network can send to dhcpd, tftpd, dnsd and the bus.

Each target takes the bytes of one datagram or frame. The codec's own
error (MalformedPacket, TftpProtocolError, MalformedMessage) is the
expected answer to garbage; a broken invariant that a user would notice
raises AssertionError; any other exception that escapes is a bug.

dnsd has two inputs from the network: a client's query (``dns_query``:
through the policy, over UDP and TCP) and an upstream's reply to the
forwarder (``dns_upstream_reply``: the bytes after the query id, which the
target sets to the one the forwarder sent, so the fuzzer reaches past the
stray check).

The seed corpus is real traffic (the captured DISCOVERs of the codec
tests, crafted packets of the other exchanges, packed bus messages),
written by :func:`write_seeds` rather than kept as binary files.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rrset

from astralboot.common.bus import server as bus_server
from astralboot.common.bus.frames import REPLY_LIMITS, REQUEST_LIMITS, Limits, pack, unpack
from astralboot.common.bus.schema import Message
from astralboot.common.bus.schema import Request as BusRequest
from astralboot.common.errors import MalformedMessage
from astralboot.common.messages import (
    BootEvent,
    ContentDataReply,
    ContentRead,
    ErrorReply,
    EventListReply,
    EventReport,
    EventSubscribe,
    Health,
    HealthReply,
    ImportedLease,
    LeaseCommit,
    LeaseGrant,
    LeaseImport,
    LeaseLookup,
    LeaseOffer,
    LeaseRecord,
    LeaseReply,
    MachineRecord,
    MachineSet,
)
from astralboot.services.dhcpd import constants as c
from astralboot.services.dhcpd.bootchain import BinaryCatalogue, BootChain
from astralboot.services.dhcpd.client_messages import ClientMessage, Discover, read_client_message
from astralboot.services.dhcpd.packet import decode as decode_dhcp
from astralboot.services.dhcpd.packet import encode as encode_dhcp
from astralboot.services.dhcpd.policy import BROADCAST, Arrival, DhcpPolicy
from astralboot.services.dhcpd.proxy import ProxyPolicy
from astralboot.services.dhcpd.reader import MalformedPacket
from astralboot.services.dhcpd.reply import Outgoing
from astralboot.services.tftpd import packets as tftp
from astralboot.services.dnsd.forward import Client as DnsClient
from astralboot.services.dnsd.forward import Forwarder, Question, ToClient, ToUpstream
from astralboot.services.dnsd.policy import DnsPolicy, Drop, Forward, Reply
from astralboot.services.dnsd.wire import OUR_PAYLOAD
from astralboot.services.dnsd.zone import Zone

# The dhcpd tests' helpers (store stand-in, config, captures) live in their folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dhcpd"))
from dhcp_captures import (
    DHCLIENT_DISCOVER,
    EDK2_DISCOVER,
    IPXE_DISCOVER,
    UDHCPC_DISCOVER,
)
from dhcptest import (
    RELAY,
    RELAYED_NET,
    SERVER,
    InProcessStore,
    client_packet,
    make_config,
)

Target = Callable[[bytes], None]

POOL = "192.0.2.100-192.0.2.103"
RELAYED_POOL = "198.18.1.0-198.18.1.3"
CLIENT_IP = "192.0.2.100"  # the first address of the local pool
UNICAST = Arrival(broadcast=False, source=(CLIENT_IP, c.CLIENT_PORT))
PXE = Arrival(port=c.PXE_PORT, broadcast=False, source=(CLIENT_IP, c.PXE_PORT))


# --- DHCP: the server's decoder, then both policies --------------------------

class DhcpPolicies:
    """The authoritative and the proxy policy, each over the store's own decisions.

    Every input is answered twice from a fresh store: once by a server that
    has never seen the client, and once by one that knows the machine (with
    an OS, so iPXE gets its boot script) and has just answered the client's
    DISCOVER, so that REQUEST, DECLINE and RELEASE reach their lease paths.
    One event loop serves every input (a new one per input costs more than
    the policies).
    """

    def __init__(self) -> None:
        # A small pool: every input starts from an empty store.
        self.config = make_config(range=POOL, subnet=[{"network": RELAYED_NET,
                                                       "range": RELAYED_POOL}])
        self.proxy_config = make_config(proxy=True)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def exchange(self, msg: ClientMessage) -> tuple[list[tuple[ClientMessage, Outgoing]],
                                                    list[BusRequest]]:
        """Every reply either policy sends to ``msg``, and every store request made."""
        return self.loop.run_until_complete(self._exchange(msg))

    async def _exchange(self, msg: ClientMessage) -> tuple[
            list[tuple[ClientMessage, Outgoing]], list[BusRequest]]:
        replies: list[tuple[ClientMessage, Outgoing | None]] = []
        calls: list[BusRequest] = []
        for known in (False, True):
            store = InProcessStore(self.config)
            dhcp = DhcpPolicy(config=self.config, store=store,
                              boot=BootChain(self.config.http.public_url,
                                             BinaryCatalogue(present={"snponly.efi": True})),
                              report=_no_report, stats=Counter())
            proxy = ProxyPolicy(config=self.proxy_config, store=store,
                                boot=BootChain(self.proxy_config.http.public_url,
                                               BinaryCatalogue(present={"ipxe.efi": False})),
                                report=_no_report, stats=Counter())
            if known:
                store.machine(msg.mac, os="debian")
                discover = Discover(**{f.name: getattr(msg, f.name)
                                       for f in dataclasses.fields(msg)})
                replies.append((discover, await dhcp.handle(discover)))
            for arrival in (BROADCAST, UNICAST):
                replies.append((msg, await dhcp.handle(msg, arrival)))
            for arrival in (BROADCAST, PXE):
                replies.append((msg, await proxy.handle(msg, arrival)))
            calls.extend(store.calls)
        return [(m, out) for m, out in replies if out is not None], calls


def _no_report(stage: str, mac: str, ip: str | None, detail: str) -> None:
    return None


@functools.cache
def dhcp_policies() -> DhcpPolicies:
    policies = DhcpPolicies()
    atexit.register(policies.close)
    return policies


def check_reply(msg: ClientMessage, out: Outgoing) -> None:
    """What a client (or its relay) checks of a reply before it takes it."""
    try:
        reply = decode_dhcp(out.payload)
    except MalformedPacket as exc:
        raise AssertionError(f"reply to {msg.name} does not decode: {exc}") from exc
    assert len(out.payload) <= msg.max_size, (
        f"{len(out.payload)}-byte reply to {msg.name}, client takes {msg.max_size}")
    assert reply.op == c.BOOTREPLY, f"reply op {reply.op}"
    assert reply.options.get(c.OPT_MESSAGE_TYPE) == bytes((out.message_type,)), (
        f"reply type {reply.options.get(c.OPT_MESSAGE_TYPE)!r}, sent as {out.message_type}")
    assert reply.xid == msg.xid, f"reply xid {reply.xid:08x}, request {msg.xid:08x}"
    assert reply.chaddr == msg.chaddr, (
        f"reply chaddr {reply.chaddr.hex()}, request {msg.chaddr.hex()}")
    # Option 82 goes back to the relay that added it, unchanged; a client's
    # own (giaddr 0) is never echoed (RFC 3046 2.2).
    echoed = reply.options.get(c.OPT_RELAY_AGENT)
    expected = msg.relay_info if msg.relayed else None
    assert echoed == expected, (
        f"option 82 {echoed!r} in a reply to giaddr {msg.giaddr} with option 82 "
        f"{msg.relay_info!r}")


def check_store_request(request: BusRequest) -> None:
    """What the policy asked the store can cross the bus to the real one."""
    try:
        again = unpack(pack(request), REQUEST_LIMITS)
    except MalformedMessage as exc:
        raise AssertionError(f"{request!r} is refused by the store's decoder: {exc}") from exc
    assert again == request, f"{request!r} arrives as {again!r}"


def dhcp_server(data: bytes) -> None:
    """A datagram on port 67 or 4011, through the decoder and both policies."""
    try:
        msg = read_client_message(data)
    except MalformedPacket:
        return
    replies, calls = dhcp_policies().exchange(msg)
    for request, out in replies:
        check_reply(request, out)
    for call in calls:
        check_store_request(call)


# --- TFTP --------------------------------------------------------------------

def tftp_packet(data: bytes) -> None:
    """A datagram to tftpd: decodes or raises TftpProtocolError, and round-trips."""
    try:
        packet = tftp.decode(data)
    except tftp.TftpProtocolError:
        assert tftp.ack_block(data) is None, f"ack_block reads {data[:4].hex()} as an ACK"
        return
    block = tftp.ack_block(data)
    assert block is None or packet == tftp.Ack(block), (
        f"ack_block reads block {block}, decode reads {packet!r}")
    wire = tftp.encode(packet)
    again = tftp.decode(wire)
    assert again == packet, f"{packet!r} re-encodes as {wire.hex()}, read back as {again!r}"


# --- DNS ---------------------------------------------------------------------

DNS_DOMAIN = "lab.example"
DNS_CLIENT = ("192.0.2.50", 40000)
DNS_UPSTREAM = ("198.18.0.53", 53)
TCP_MAX = 65535


@functools.cache
def dns_policy() -> DnsPolicy:
    zone = Zone(DNS_DOMAIN, "bootsrv", "192.0.2.1", ["192.0.2.0/24", "198.18.0.0/15"])
    for i, name in enumerate(("web1", "Web1", "db_Primary.other.org", "x" * 80)):
        zone.set_host(f"52:54:00:00:00:{i:02x}", name, f"192.0.2.{10 + i}")
    return DnsPolicy(zone, clients=["192.0.2.0/24"], forwarding=True, stats=Counter())


def dns_query(data: bytes) -> None:
    """A datagram (or TCP message) to dnsd from a served client, through the policy."""
    policy = dns_policy()
    for transport in ("udp", "tcp"):
        actions = policy.handle(data, DNS_CLIENT, 0.0, transport)  # type: ignore[arg-type]
        assert len(actions) == 1, actions
        action = actions[0]
        if isinstance(action, Drop):
            continue
        if isinstance(action, Forward):
            name = action.question.name
            assert not name.is_subdomain(policy.zone.origin), f"{name} is ours, yet forwarded"
            assert action.client.limit <= (OUR_PAYLOAD if transport == "udp" else TCP_MAX)
            continue
        assert isinstance(action, Reply), action
        limit = OUR_PAYLOAD if transport == "udp" else TCP_MAX
        assert 12 <= len(action.data) <= limit, f"{len(action.data)}-byte {transport} reply"
        assert action.data[:2] == data[:2], "the reply does not carry the query's id"
        reply = dns.message.from_wire(action.data)  # what we send must parse
        assert reply.flags & dns.flags.QR, "a reply without QR"


def dns_upstream_reply(data: bytes) -> None:
    """What an upstream sends back to the forwarder, for one question it asked."""
    forwarder = Forwarder([DNS_UPSTREAM], timeout=2.0, attempts=2, stats=Counter())
    question = Question(dns.name.from_text("www.example.test"), 1, 1)
    client = DnsClient(DNS_CLIENT, "udp", 0x4242, question, int(dns.flags.RD), 512, False)
    sent = forwarder.query(question, client, 0.0)
    assert len(sent) == 1 and isinstance(sent[0], ToUpstream)
    ask = sent[0]
    if len(data) >= 2:
        data = ask.query_id.to_bytes(2, "big") + data[2:]
    for action in forwarder.receive(data, DNS_UPSTREAM, 1.0, "udp"):
        if isinstance(action, ToUpstream):  # TCP after TC, or the next attempt after an error
            assert action.upstream == DNS_UPSTREAM, action
            assert action.transport == "tcp" or action.query_id != ask.query_id, action
            continue
        assert isinstance(action, ToClient) and action.client == client, action
        assert len(action.data) <= client.limit, f"{len(action.data)} bytes for a 512 limit"
        answer = dns.message.from_wire(action.data)
        assert answer.id == client.query_id and answer.flags & dns.flags.QR
        assert [(q.name, q.rdtype) for q in answer.question] == [(question.name, 1)]


# --- bus ---------------------------------------------------------------------

def _same(a: Message, b: Message) -> bool:
    # NaN is a valid float on the wire and never equal to itself.
    return a == b or repr(a) == repr(b)


def _bus_frame(data: bytes, limits: Limits) -> None:
    try:
        msg = unpack(data, limits)
    except MalformedMessage:
        msg = None
    if msg is not None:
        packed = pack(msg)
        try:
            again = unpack(packed, limits)
        except MalformedMessage as exc:
            raise AssertionError(f"{msg!r} packs to a frame its side refuses: {exc}") from exc
        assert _same(again, msg), f"{msg!r} packs and unpacks as {again!r}"
    # The store's receive loop: a bad frame is answered or dropped, never raised.
    incoming, answer = bus_server.decode([b"peer", data], Counter())
    assert incoming is None or answer is None
    if answer is not None:
        assert answer[:-1] == [b"peer"], f"answer routed to {answer[:-1]!r}"
        error = unpack(answer[-1], REPLY_LIMITS)
        assert isinstance(error, ErrorReply), f"bad frame answered with {error!r}"


def bus_request(data: bytes) -> None:
    """A frame from any bus peer to the store (request limits)."""
    _bus_frame(data, REQUEST_LIMITS)


def bus_reply(data: bytes) -> None:
    """A frame from the store to a front end (reply limits)."""
    _bus_frame(data, REPLY_LIMITS)


TARGETS: dict[str, Target] = {
    "dhcp_server": dhcp_server,
    "tftp_packet": tftp_packet,
    "bus_request": bus_request,
    "bus_reply": bus_reply,
    "dns_query": dns_query,
    "dns_upstream_reply": dns_upstream_reply,
}


# --- seed corpus -------------------------------------------------------------

RELAY_INFO = bytes.fromhex("0106657468302f31")  # circuit id "eth0/1"
PXE_X64 = b"PXEClient:Arch:00007:UNDI:003000"


def _packet(message_type: int, **kw: object) -> bytes:
    return encode_dhcp(client_packet(message_type, **kw))  # type: ignore[arg-type]


def dhcp_seeds() -> dict[str, bytes]:
    return {
        "udhcpc-discover": UDHCPC_DISCOVER,
        "dhclient-discover": DHCLIENT_DISCOVER,
        "ipxe-discover": IPXE_DISCOVER,
        "edk2-discover": EDK2_DISCOVER,
        "selecting-request": _packet(c.DHCPREQUEST, server_id=SERVER, requested=CLIENT_IP),
        "init-reboot-request": _packet(c.DHCPREQUEST, requested=CLIENT_IP),
        "renewing-request": _packet(c.DHCPREQUEST, ciaddr=CLIENT_IP),
        "relayed-discover": _packet(c.DHCPDISCOVER, giaddr=RELAY, arch=7, vendor=PXE_X64,
                                    extra={c.OPT_RELAY_AGENT: RELAY_INFO}),
        # Option 82 from a client itself (giaddr 0): never echoed.
        "client-option-82": _packet(c.DHCPDISCOVER, extra={c.OPT_RELAY_AGENT: RELAY_INFO}),
        "relayed-request": _packet(c.DHCPREQUEST, giaddr=RELAY, server_id=SERVER,
                                   requested="198.18.1.0",
                                   extra={c.OPT_RELAY_AGENT: RELAY_INFO}),
        "pxe-request": _packet(c.DHCPREQUEST, ciaddr=CLIENT_IP, arch=7, vendor=PXE_X64,
                               extra={c.OPT_CLIENT_UUID: bytes(17)}),
        "http-boot-discover": _packet(c.DHCPDISCOVER, arch=16,
                                      vendor=b"HTTPClient:Arch:00016:UNDI:003001"),
        "ipxe-request": _packet(c.DHCPREQUEST, server_id=SERVER, requested=CLIENT_IP,
                                user_class=b"iPXE", extra={c.OPT_IPXE: b"\xb1\x05\x01\x80\x86"
                                                           b"\x10\x0e"}),
        "decline": _packet(c.DHCPDECLINE, server_id=SERVER, requested=CLIENT_IP),
        "release": _packet(c.DHCPRELEASE, server_id=SERVER, ciaddr=CLIENT_IP),
        "inform": _packet(c.DHCPINFORM, ciaddr=CLIENT_IP),
        # Near the size limits: a relay's longest option 82 leaves too little
        # room for every option asked for, so the reply drops some; a UUID too
        # long to echo leaves the proxy no reply that fits.
        "relayed-discover-long-82": _packet(c.DHCPDISCOVER, giaddr=RELAY, arch=16,
                                            vendor=b"HTTPClient:Arch:00016:UNDI:003001",
                                            extra={c.OPT_RELAY_AGENT: b"\x01\xfd" + b"r" * 253}),
        "pxe-discover-long-uuid": _packet(c.DHCPDISCOVER, arch=7, vendor=PXE_X64,
                                          extra={c.OPT_CLIENT_UUID: b"\x00" + b"u" * 399}),
        "max-size-1500": _packet(c.DHCPDISCOVER, params=bytes(range(1, 100)),
                                 extra={c.OPT_MAX_MESSAGE_SIZE: struct.pack("!H", 1500)}),
        # Too long for the options area of 576 bytes: overloaded into file and sname.
        "overloaded-discover": encode_dhcp(
            client_packet(c.DHCPDISCOVER, extra={c.OPT_HOST_NAME: b"n" * 300,
                                                 c.OPT_CLIENT_ID: b"\x01" + b"c" * 40}),
            max_size=c.DEFAULT_MAX_MESSAGE - c.IP_UDP_OVERHEAD),
    }


def _rrq(name: bytes, mode: bytes, *options: bytes) -> bytes:
    return b"\x00\x01" + b"".join(p + b"\0" for p in (name, mode, *options))


def tftp_seeds() -> dict[str, bytes]:
    return {
        "rrq-bios": _rrq(b"undionly.kpxe", b"octet"),
        "rrq-uefi-options": _rrq(b"snponly.efi", b"octet", b"tsize", b"0", b"blksize", b"1468"),
        "rrq-windowsize": _rrq(b"ipxe.efi", b"octet", b"blksize", b"1468", b"windowsize", b"16",
                               b"timeout", b"1"),
        "rrq-netascii-padded": _rrq(b"pxelinux.cfg/default", b"NETASCII", b"tsize", b"0")
        + bytes(8),
        "wrq": b"\x00\x02x\0octet\0",
        "data": b"\x00\x03\x00\x01hello",
        "ack": b"\x00\x04\x01\x02",
        "error": b"\x00\x05\x00\x08option refused\0",
        "oack": b"\x00\x06blksize\x001468\0tsize\x00123\0",
    }


def bus_seeds() -> dict[str, bytes]:
    mac = "52:54:00:12:34:56"
    lease = LeaseRecord(ip=CLIENT_IP, mac=mac, subnet="192.0.2.0/24", state="bound",
                        expires=1.7e9, lease_time=3600, client_id=b"\x01RT\x00\x124V",
                        hostname="node1")
    machine = MachineRecord(mac=mac, name="node1", os="debian", labels={"rack": "a1"})
    event = BootEvent(time=1.7e9, mac=mac, service="dhcpd", stage="dhcp.ack", ip=CLIENT_IP,
                      detail="select snponly.efi", id=42)
    messages: dict[str, Message] = {
        "lease-offer": LeaseOffer(mac=mac, subnet="192.0.2.0/24", client_id=b"\x01abc",
                                  requested_ip=CLIENT_IP, hostname="node1", report=True,
                                  detail="snponly.efi", request_id=7),
        "lease-commit": LeaseCommit(mac=mac, subnet="192.0.2.0/24", ip=CLIENT_IP, mode="select",
                                    report=True, request_id=8),
        "lease-lookup": LeaseLookup(ip=CLIENT_IP, request_id=9),
        "lease-import": LeaseImport(entries=(ImportedLease(ip=CLIENT_IP, mac=mac, active=True,
                                                           os="debian", created=1.5e9),),
                                    request_id=10),
        "machine-set": MachineSet(mac=mac, os="debian", labels={"rack": "a1"}, boot_once=True,
                                  clear=("machine_class",), request_id=11),
        "event-report": EventReport(event=event, request_id=12),
        "event-subscribe": EventSubscribe(topics=("52:54:00", ""), request_id=13),
        "content-read": ContentRead(digest="ab" * 32, offset=4096, length=65536, request_id=14),
        "health": Health(request_id=15),
        "lease-grant": LeaseGrant(ip=CLIENT_IP, state="offered", lease_time=3600, expires=1.7e9,
                                  name="node1", os="debian", mac=mac, request_id=7),
        "lease-reply": LeaseReply(lease=lease, machine=machine, request_id=9),
        "error": ErrorReply(code="not_found", detail="no lease", request_id=9),
        "health-reply": HealthReply(service="dhcpd", version="0.2.0", pid=4242, host="boot",
                                    started=1.7e9, details={"offers": 12, "up": True,
                                                            "load": 0.5, "mode": "proxy"},
                                    request_id=15),
        "content-data": ContentDataReply(digest="ab" * 32, offset=0, size=3, data=b"abc",
                                         request_id=14),
        "events": EventListReply(events=(event, event), request_id=16),
    }
    return {name: pack(msg) for name, msg in messages.items()}


def dns_query_seeds() -> dict[str, bytes]:
    def q(name: str, rdtype: str = "A", **kw: object) -> bytes:
        return dns.message.make_query(name, rdtype, id=0x1234, **kw).to_wire()  # type: ignore[arg-type]
    return {
        "a": q("web1.lab.example"),
        "a_edns": q("WEB1-2.Lab.Example", use_edns=0, payload=4096),
        "ptr": q("10.2.0.192.in-addr.arpa", "PTR"),
        "soa": q("lab.example", "SOA", use_edns=0),
        "any": q("bootsrv.lab.example", "ANY"),
        "nxdomain": q("nobody.lab.example", "AAAA"),
        "forwarded": q("www.example.test", "MX", use_edns=0, want_dnssec=True),
        "axfr": q("lab.example", "AXFR"),
        "chaos": q("version.bind", "TXT", rdclass="CH"),
    }


def dns_reply_seeds() -> dict[str, bytes]:
    query = dns.message.make_query("www.example.test", "A", id=1, use_edns=0)
    answer = dns.message.make_response(query, recursion_available=True)
    answer.answer = [dns.rrset.from_text("www.example.test.", 300, "IN", "A", "198.18.5.5",
                                         "198.18.5.6")]
    nx = dns.message.make_response(query)
    nx.set_rcode(3)
    nx.authority = [dns.rrset.from_text("example.test.", 60, "IN", "SOA",
                                        "ns.example.test. h.example.test. 1 2 3 4 5")]
    truncated = dns.message.make_response(query)
    truncated.flags |= dns.flags.TC
    cname = dns.message.make_response(query)
    cname.answer = [dns.rrset.from_text("www.example.test.", 300, "IN", "CNAME", "b.example.test."),
                    dns.rrset.from_text("b.example.test.", 300, "IN", "A", "198.18.5.7")]
    return {"answer": answer.to_wire(), "nxdomain": nx.to_wire(), "truncated": truncated.to_wire(),
            "cname": cname.to_wire()}


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "dns_query": dns_query_seeds,
    "dns_upstream_reply": dns_reply_seeds,
    "dhcp_server": dhcp_seeds,
    "tftp_packet": tftp_seeds,
    "bus_request": bus_seeds,
    "bus_reply": bus_seeds,
}


def write_seeds(target: str, folder: Path) -> int:
    """Write ``target``'s seed corpus into ``folder``, one file per packet."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data)
    return len(seeds)
