"""dnsd under load, as its clients see it: dnsd (``dnsd_proc.py``) in the
lab's server namespace, dnsmasq as the upstream in a namespace of its own,
and clients that are plain sockets made inside client namespaces
(:func:`dnslab.bound_sockets`), driven by one asyncio loop in the test.

- Many clients at once: 64 UDP sockets on four source addresses and 16
  pipelining TCP connections ask a zone of 500 hosts for A and PTR records
  (0x20 letter case), for names that do not exist, for names only the
  upstream knows, and send malformed datagrams in between. Every reply is
  matched to the query it answers; none is missing, none comes to a socket
  that did not ask, and dnsd's counters add up to what was sent. dnsmasq is
  held stopped (SIGSTOP) until every other answer is in, so the forwarded
  questions are certainly waiting together (coalesced: one upstream query
  per name) and TCP answers certainly come out of order.
- Response-rate limiting: one /24 floods an authoritative name and gets the
  burst and what the rate refills, then TC slips and silence, in the counts
  dnsd reports; the slipped questions asked again over TCP are answered;
  a client in another /24 asking the same name meanwhile gets every answer;
  forwarded answers are not limited at all.
- A TCP connection gets only the answers to its own questions, also when a
  client reconnects from the port of a connection that left a forwarded
  question behind.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from astralboot.common.cli.demo.netns import Lab, Namespace
from dnslab import DnsdProcess, Dnsmasq, bound_sockets, udp_counters

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
DOMAIN = "lab.example"
UPSTREAM = "198.18.5.53"
ORIGIN = dns.name.from_text(DOMAIN)
A, PTR = dns.rdatatype.A, dns.rdatatype.PTR
UDP, TCP = socket.SOCK_DGRAM, socket.SOCK_STREAM
NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN
FORMERR, NOTIMP = dns.rcode.FORMERR, dns.rcode.NOTIMP
PATIENCE = 20.0  # seconds before a missing reply fails the test (not a timing check: a
# run takes a few seconds, and nothing that comes late is ever waited for)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def mixed_case(rng: random.Random, text: str) -> str:
    """0x20: each letter upper or lower at random, as a resolver hardened
    against forgery asks (the answer must carry the question's letters back)."""
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


@dataclass
class Exchange:
    """One message a client sends and what must come back for it.

    ``rcode`` None: no reply at all. ``qname`` None: a header-only error
    reply (no question). ``answer``: the data of the one answer record set.
    """

    kind: str
    wire: bytes = field(repr=False)
    qname: dns.name.Name | None = None
    rdtype: int = A
    rcode: int | None = NOERROR
    answer: tuple[str, ...] = ()
    soa: dns.name.Name | None = None  # a negative answer: the SOA of this zone
    aa: bool = True
    held: bool = False  # the answer waits for the upstream
    replies: list[bytes] = field(default_factory=list, repr=False)

    @property
    def qid(self) -> int:
        return int.from_bytes(self.wire[:2], "big")

    def problems(self) -> list[str]:
        """How the replies that came differ from what should have (empty: all good)."""
        who = f"{self.kind} id {self.qid} {self.qname}"
        if self.rcode is None:
            return [f"{who}: {len(self.replies)} replies to a datagram dnsd must drop"] \
                if self.replies else []
        if len(self.replies) != 1:
            return [f"{who}: {len(self.replies)} replies"]
        try:
            msg = dns.message.from_wire(self.replies[0])
        except dns.exception.DNSException as exc:
            return [f"{who}: reply does not parse: {exc!r}"]
        got = {
            "id": msg.id, "qr": bool(msg.flags & dns.flags.QR),
            "rcode": dns.rcode.to_text(msg.rcode()), "tc": bool(msg.flags & dns.flags.TC),
            "question": [(q.name.labels, q.rdtype) for q in msg.question],  # labels keep case
            "answer": [(r.name.canonicalize(), r.rdtype, sorted(d.to_text() for d in r))
                       for r in msg.answer],
        }
        want = {
            "id": self.qid, "qr": True, "rcode": dns.rcode.to_text(self.rcode), "tc": False,
            "question": [] if self.qname is None else [(self.qname.labels, self.rdtype)],
            "answer": [(self.qname.canonicalize(), self.rdtype, sorted(self.answer))]  # type: ignore[union-attr]
            if self.answer else [],
        }
        if self.qname is not None:  # a real answer: AA for ours, RA and no AA for the upstream's
            got["aa"], want["aa"] = bool(msg.flags & dns.flags.AA), self.aa
            got["ra"], want["ra"] = bool(msg.flags & dns.flags.RA), True
            got["soa"] = [r.name for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
            want["soa"] = [self.soa] if self.soa is not None else []
        return [f"{who}: {key} is {got[key]!r}, not {want[key]!r}"
                for key in want if got[key] != want[key]]


class Countdown:
    """Set ``zero`` once ``tick`` has been called ``n`` times."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.zero = asyncio.Event()
        if n == 0:
            self.zero.set()

    def tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.zero.set()


class UdpClient:
    """One UDP socket: sends exchanges, and files every datagram that comes
    back under the exchange it sent with that id; anything else is a stray."""

    def __init__(self, sock: socket.socket, server: tuple[str, int], strays: list[str]) -> None:
        self.sock = sock
        self.server = server
        self.strays = strays
        self.sent: dict[int, Exchange] = {}
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.on_reply: Callable[[Exchange], None] = lambda ex: None

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, source = await loop.sock_recvfrom(self.sock, 65535)
            ex = self.sent.get(int.from_bytes(data[:2], "big"))
            if ex is None or source != self.server:
                self.strays.append(f"{self.sock.getsockname()} got {data[:2].hex()} from {source}")
                continue
            ex.replies.append(data)
            waiting = self.waiting.pop(ex.qid, None)
            if waiting is not None:
                waiting.set_result(None)
                self.on_reply(ex)

    async def send(self, ex: Exchange) -> asyncio.Future[None]:
        """Send ``ex``; a future for its reply (never done if none comes)."""
        loop = asyncio.get_running_loop()
        if len(ex.wire) >= 2:
            self.sent[ex.qid] = ex
        waiting = self.waiting[ex.qid] = loop.create_future()
        await loop.sock_sendto(self.sock, ex.wire, self.server)
        return waiting

    async def ask(self, ex: Exchange) -> Exchange:
        """Send ``ex`` and wait for its reply."""
        try:
            await asyncio.wait_for(await self.send(ex), PATIENCE)
        except TimeoutError:
            raise AssertionError(f"{self.sock.getsockname()}: no reply to {ex}") from None
        return ex


async def tcp_replies(reader: asyncio.StreamReader, n: int) -> AsyncIterator[bytes]:
    """``n`` messages from a TCP connection, each as it comes; failing if dnsd closes it first."""
    for i in range(n):
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            yield await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise AssertionError(f"dnsd closed a TCP connection {n - i} answers short") from None


# -- 1. many clients at once ------------------------------------------------------------

HOSTS = 500  # in 198.18.8.0/22: four /24 reverse zones
HOST_NET = "198.18.8.0/22"
CLIENT_ADDRESSES = [f"192.0.2.{50 + i}" for i in range(4)]
UDP_CLIENTS = 64  # 16 per source address
TCP_CLIENTS = 16
WINDOW = 4  # replies a UDP client waits for at once: the load fits the sockets' buffers
FORWARDED = {f"svc{i}.example.test": f"198.18.5.{100 + i}" for i in range(8)}
# (kind, how many) per client; each one also ends on an A query, which dnsd
# answers at once, so its reply proves every earlier message was handled.
UDP_MIX = {"a": 12, "ptr": 8, "nx_name": 3, "nx_ptr": 3, "forward": 3, "short": 1,
           "response": 1, "cut": 1, "junk": 1, "opcode": 1, "qdcount": 1}
TCP_MIX = {"a": 8, "ptr": 5, "nx_name": 2, "nx_ptr": 2, "forward": 2}


def host_table() -> list[tuple[str, str, str]]:
    """(MAC, name, address) of the zone's hosts; names already valid labels."""
    base = int(IPv4Address("198.18.8.1"))
    return [(f"52:54:00:00:{i >> 8:02x}:{i & 0xff:02x}", f"rack{i // 40:02d}-node{i % 40:02d}",
             str(IPv4Address(base + i))) for i in range(HOSTS)]


class Plan:
    """Every message of the load and what must come back, drawn from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.hosts = host_table()
        self.ids = iter(self.rng.sample(range(1, 65536), 8000))  # unique across the run
        self.forward_turn = 0  # forwarded names asked in turn: each by the same number

    def query(self, name: str, rdtype: int) -> tuple[bytes, dns.name.Name]:
        qname = dns.name.from_text(name)
        msg = dns.message.make_query(qname, rdtype, id=next(self.ids),
                                     use_edns=self.rng.choice([0, None]))
        return msg.to_wire(), qname

    def exchange(self, kind: str) -> Exchange:
        rng = self.rng
        if kind == "a":
            _, name, ip = rng.choice(self.hosts)
            wire, qname = self.query(mixed_case(rng, f"{name}.{DOMAIN}"), A)
            return Exchange(kind, wire, qname, A, answer=(ip,))
        if kind == "ptr":
            _, name, ip = rng.choice(self.hosts)
            wire, qname = self.query(mixed_case(rng, dns.reversename.from_address(ip).to_text()),
                                     PTR)
            return Exchange(kind, wire, qname, PTR, answer=(f"{name}.{DOMAIN}.",))
        if kind == "nx_name":
            wire, qname = self.query(mixed_case(rng, f"absent{rng.randrange(10**6)}.{DOMAIN}"), A)
            return Exchange(kind, wire, qname, A, NXDOMAIN, soa=ORIGIN)
        if kind == "nx_ptr":  # in a served subnet, no host there
            ip = f"198.18.11.{rng.randrange(1, 255)}"
            wire, qname = self.query(mixed_case(rng, dns.reversename.from_address(ip).to_text()),
                                     PTR)
            return Exchange(kind, wire, qname, PTR, NXDOMAIN,
                            soa=dns.name.from_text("11.18.198.in-addr.arpa."))
        if kind == "forward":
            name, ip = list(FORWARDED.items())[self.forward_turn % len(FORWARDED)]
            self.forward_turn += 1
            wire, qname = self.query(mixed_case(rng, name), A)
            return Exchange(kind, wire, qname, A, answer=(ip,), aa=False, held=True)
        # malformed: made from a good query
        good, _ = self.query(f"{rng.choice(self.hosts)[1]}.{DOMAIN}", A)
        if kind == "short":  # no header: nothing to answer with
            return Exchange(kind, good[:7], rcode=None)
        if kind == "response":  # QR set: never answered
            return Exchange(kind, good[:2] + bytes([good[2] | 0x80]) + good[3:], rcode=None)
        if kind == "cut":  # the name cut short
            return Exchange(kind, good[:20], rcode=FORMERR)
        if kind == "junk":
            return Exchange(kind, good + b"\x00\x01junk", rcode=FORMERR)
        if kind == "opcode":  # STATUS
            return Exchange(kind, good[:2] + bytes([good[2] & 0x87 | 2 << 3]) + good[3:],
                            rcode=NOTIMP)
        assert kind == "qdcount"
        return Exchange(kind, good[:4] + b"\x00\x02" + good[6:], rcode=FORMERR)

    def client(self, mix: dict[str, int]) -> list[Exchange]:
        body = [self.exchange(kind) for kind, n in mix.items() for _ in range(n)]
        self.rng.shuffle(body)
        return body + [self.exchange("a")]


@dataclass
class Load:
    udp: list[list[Exchange]]
    closing: list[Exchange]  # one A per UDP client, sent once all its others are answered
    tcp: list[list[Exchange]]

    def all(self) -> list[Exchange]:
        return [ex for group in (*self.udp, self.closing, *self.tcp) for ex in group]


@dataclass
class LoadLab:
    lab: Lab
    client: Namespace  # four source addresses
    upstream: Dnsmasq
    dnsd: DnsdProcess


@pytest.fixture
def load_lab(lab: Lab, short_tmp: Path) -> Iterator[LoadLab]:
    lab.add_address("198.18.5.1/24")
    client = lab.add_host("c1", f"{CLIENT_ADDRESSES[0]}/24")
    for address in CLIENT_ADDRESSES[1:]:
        client.ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
    upstream_host = lab.add_host("up", f"{UPSTREAM}/24")
    upstream_host.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    hosts = [[mac, name, ip, False] for mac, name, ip in host_table()]
    settings = {"address": SERVER, "port": 53, "domain": DOMAIN, "server_name": "bootsrv",
                "subnets": ["192.0.2.0/24", HOST_NET], "clients": ["192.0.2.0/24"],
                "hosts": hosts, "upstreams": [UPSTREAM],
                # while dnsmasq is held stopped: no second attempt upstream, and
                # TCP clients waiting are not closed as idle before a missing
                # reply is reported as such
                "server": {"forward_timeout": 30.0, "tcp_idle": 3 * PATIENCE}}
    with Dnsmasq(upstream_host.ns, UPSTREAM, list(FORWARDED.items()),
                 short_tmp / "dnsmasq.pid") as upstream, \
            DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
        yield LoadLab(lab, client.ns, upstream, dnsd)
        assert dnsd.alive(), dnsd.log()


def test_many_clients_each_reply_answers_its_own_query(load_lab: LoadLab) -> None:
    lab, client_ns, upstream, dnsd = load_lab.lab, load_lab.client, load_lab.upstream, load_lab.dnsd
    names = dnsd.stats()["names"]
    assert names == sorted(f"{name}={ip}" for _, name, ip in host_table())  # no -N labels

    plan = Plan(seed=20240917)
    load = Load(udp=[plan.client(UDP_MIX) for _ in range(UDP_CLIENTS)],
                closing=[plan.exchange("a") for _ in range(UDP_CLIENTS)],
                tcp=[plan.client(TCP_MIX) for _ in range(TCP_CLIENTS)])
    forwarded = [ex for ex in load.all() if ex.kind == "forward"]
    per_name = Counter(ex.qname.canonicalize() for ex in forwarded)  # type: ignore[union-attr]
    assert len(per_name) == len(FORWARDED)
    assert max(per_name.values()) <= 32  # the forwarder's bound on clients per question

    server = (SERVER, dnsd.port)
    udp_socks = bound_sockets(client_ns, UDP,
                              [CLIENT_ADDRESSES[i % 4] for i in range(UDP_CLIENTS)])
    idle = bound_sockets(client_ns, UDP, CLIENT_ADDRESSES)  # never ask: must hear nothing
    tcp_socks = bound_sockets(client_ns, TCP,
                              [CLIENT_ADDRESSES[i % 4] for i in range(TCP_CLIENTS)])
    strays: list[str] = []
    tcp_order: list[list[int]] = [[] for _ in load.tcp]  # reply ids as they came
    try:
        asyncio.run(_run_load(load, server, udp_socks, tcp_socks, strays, tcp_order, upstream,
                              dnsd))
        leftovers = []
        for sock in idle + udp_socks:
            try:
                leftovers.append((sock.getsockname(), sock.recv(65535)[:2].hex()))
            except BlockingIOError:
                pass
    finally:
        for sock in udp_socks + idle + tcp_socks:
            sock.close()

    everything = load.all()
    problems = [p for ex in everything for p in ex.problems()]
    assert problems == [], f"{len(problems)} wrong replies:\n" + "\n".join(problems[:30])
    assert strays == [] and leftovers == []
    # pipelined over TCP, the held forwarded answers came after later ones
    assert all(order != [ex.qid for ex in conn] for order, conn in zip(tcp_order, load.tcp))

    kinds = Counter(ex.kind for ex in everything)
    malformed = sum(kinds[k] for k in ("short", "response", "cut", "junk", "opcode", "qdcount"))
    k, f = len(FORWARDED), len(forwarded)

    stats = dnsd.stats()
    expected = {
        "queries": len(everything), "malformed": malformed,
        "drop_short": kinds["short"], "drop_response": kinds["response"],
        "rcode_formerr": kinds["cut"] + kinds["junk"] + kinds["qdcount"],
        "rcode_notimp": kinds["opcode"], "bad_opcode": kinds["opcode"],
        "bad_qdcount": kinds["qdcount"], "bad_trailingjunk": kinds["junk"],
        "authoritative": kinds["a"] + kinds["ptr"] + kinds["nx_name"] + kinds["nx_ptr"],
        "rcode_noerror": kinds["a"] + kinds["ptr"],
        "rcode_nxdomain": kinds["nx_name"] + kinds["nx_ptr"],
        "forwarded": f, "fwd_questions": f, "fwd_sent_udp": k, "fwd_answered": k,
        "fwd_coalesced": f - k,
        "tcp_accepted": TCP_CLIENTS, "tcp_open": 0, "upstream_sockets": 0, "forward_pending": 0,
    }
    assert {key: stats.get(key, 0) for key in expected} == expected
    never = ["errors", "udp_recv_errors", "udp_send_errors", "fwd_cache_hits", "fwd_retries",
             "fwd_servfail", "fwd_clients_full", "fwd_repeated", "tcp_gone", "rrl_dropped"]
    assert {key: stats.get(key, 0) for key in never} == dict.fromkeys(never, 0)
    # no datagram lost for want of buffer room, on either side
    for ns in (lab.server, client_ns):
        counters = udp_counters(ns)
        assert counters["RcvbufErrors"] == counters["InErrors"] == 0, (ns.name, counters)


async def _run_load(load: Load, server: tuple[str, int], udp_socks: list[socket.socket],
                    tcp_socks: list[socket.socket], strays: list[str],
                    tcp_order: list[list[int]], upstream: Dnsmasq,
                    dnsd: DnsdProcess) -> None:
    """Run every client at once, dnsmasq stopped until all but the forwarded
    answers are in; then every forwarded question must be waiting, one
    upstream query per name."""
    unheld = Countdown(sum(1 for group in (*load.udp, *load.tcp) for ex in group
                           if ex.rcode is not None and not ex.held))

    async def udp_client(sock: socket.socket, exchanges: list[Exchange],
                         closing: Exchange) -> None:
        client = UdpClient(sock, server, strays)
        slots = asyncio.Semaphore(WINDOW)

        def on_reply(ex: Exchange) -> None:
            if not ex.held and ex is not closing:
                slots.release()
                unheld.tick()

        client.on_reply = on_reply
        listener = asyncio.create_task(client.listen())
        try:
            replies = []
            for ex in exchanges:
                if ex.rcode is not None and not ex.held:
                    await slots.acquire()
                waiting = await client.send(ex)
                if ex.rcode is not None:
                    replies.append(waiting)
            await asyncio.gather(*replies)
            # every reply for this socket that dnsd sent came before this one's
            await client.ask(closing)
        finally:
            listener.cancel()

    async def tcp_client(sock: socket.socket, exchanges: list[Exchange],
                         order: list[int]) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, server)
        reader, writer = await asyncio.open_connection(sock=sock)
        by_id = {ex.qid: ex for ex in exchanges}
        writer.write(b"".join(frame(ex.wire) for ex in exchanges))  # all at once: pipelined
        await writer.drain()
        async for data in tcp_replies(reader, len(exchanges)):
            ex = by_id.get(int.from_bytes(data[:2], "big"))
            if ex is None:
                strays.append(f"TCP {sock.getsockname()} got {data[:2].hex()}")
                continue
            ex.replies.append(data)
            order.append(ex.qid)
            if not ex.held:
                unheld.tick()
        writer.write_eof()
        extra = await reader.read()  # dnsd closes on our EOF; nothing more may come first
        if extra:
            strays.append(f"TCP {sock.getsockname()} got {len(extra)} bytes more")
        writer.close()

    upstream.pause()
    tasks = [asyncio.create_task(udp_client(s, ex, c))
             for s, ex, c in zip(udp_socks, load.udp, load.closing)]
    tasks += [asyncio.create_task(tcp_client(s, ex, order))
              for s, ex, order in zip(tcp_socks, load.tcp, tcp_order)]

    def missing() -> str:
        left = Counter(ex.kind for ex in load.all() if ex.rcode is not None and not ex.replies)
        return f"replies never came: {dict(left)}; {len(strays)} strays: {strays[:5]}"

    try:
        await until(asyncio.create_task(unheld.zero.wait()), tasks, missing)
        held = [ex for ex in load.all() if ex.held]
        assert [ex for ex in held if ex.replies] == [], "answered while the upstream was stopped"
        during = await asyncio.to_thread(dnsd.stats)
        f, k = len(held), len(FORWARDED)
        keys = ("queries", "forwarded", "fwd_questions", "fwd_coalesced", "forward_pending",
                "fwd_sent_udp", "upstream_sockets")
        assert {key: during.get(key, 0) for key in keys} == {
            "queries": len(load.all()) - len(load.closing), "forwarded": f, "fwd_questions": f,
            "fwd_coalesced": f - k, "forward_pending": k, "fwd_sent_udp": k,
            "upstream_sockets": k}
        upstream.resume()
        await until(asyncio.gather(*tasks), tasks, missing)
    finally:
        upstream.resume()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(goal: asyncio.Future, tasks: list[asyncio.Task[None]],
                missing: Callable[[], str]) -> None:
    """Wait for ``goal``; a client that fails meanwhile raises its own error,
    and after :data:`PATIENCE` seconds the test fails saying what is missing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    watched = {goal, *tasks}
    while not goal.done():
        done, watched = await asyncio.wait(watched, timeout=max(0.0, deadline - loop.time()),
                                           return_when=asyncio.FIRST_COMPLETED)
        if not done:
            goal.cancel()
            raise AssertionError(missing())
        for task in done - {goal}:
            task.result()
    goal.result()


# -- 2. response-rate limiting under load ----------------------------------------------

RATE, BURST, SLIP = 10.0, 10, 2  # rrl_rate, rrl_burst, rrl_slip
FLOOD = 400  # one name from one /24: far over RATE a second however slow the run
FLOODERS = [f"192.0.2.{60 + i}" for i in range(4)]  # four addresses, one network
OTHER = "198.18.10.9"  # a client in the other served /24
MODEST = BURST  # its questions fit its own bucket, so no clock decides what it gets
FORWARD_FLOOD = 100
WEB1, WEB2, WWW = "192.0.2.10", "192.0.2.11", "198.18.5.5"
RRL_HOSTS = [["52:54:00:00:01:01", "web1", WEB1, False],
             ["52:54:00:00:01:02", "web2", WEB2, False],
             *[[f"52:54:00:00:02:0{i}", f"probe{i}", f"192.0.2.{20 + i}", False]
               for i in range(len(FLOODERS))]]


def verdict(ex: Exchange) -> str:
    """What a flooding client got: ``full`` (the answer), ``slip`` (TC, no
    records, no larger than the query: ask again over TCP), ``silent``, or
    ``wrong``."""
    if not ex.replies:
        return "silent"
    if not ex.problems():
        return "full"
    if len(ex.replies) == 1:
        msg = dns.message.from_wire(ex.replies[0])
        if (msg.id == ex.qid and msg.flags & dns.flags.TC and msg.flags & dns.flags.AA
                and msg.rcode() == NOERROR and not msg.answer and not msg.authority
                and [q.name.labels for q in msg.question] == [ex.qname.labels]  # type: ignore[union-attr]
                and len(ex.replies[0]) <= len(ex.wire)):
            return "slip"
    return "wrong"


def limited(group: list[Exchange], elapsed: float) -> Counter[str]:
    """What the flooding network got for ``group`` (one name, one bucket),
    checked against the token bucket: the whole burst, at most what the rate
    refilled in ``elapsed`` seconds more, then every SLIP-th one a TC reply."""
    got = Counter(verdict(ex) for ex in group)
    wrong = [p for ex in group if verdict(ex) == "wrong" for p in ex.problems()]
    assert not wrong, "\n".join(wrong[:20])
    assert BURST <= got["full"] <= BURST + RATE * elapsed, (got, elapsed)
    over = len(group) - got["full"]
    assert got["slip"] == over // SLIP and got["silent"] == over - over // SLIP, got
    assert got["slip"] > 0 and got["silent"] > 0
    return got


def delta(after: dict, before: dict, keys: Iterable[str]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in keys}


@dataclass
class RrlLab:
    lab: Lab
    flooder: Namespace  # four addresses in 192.0.2.0/24
    other: Namespace  # one address in 198.18.10.0/24
    dnsd: DnsdProcess


@pytest.fixture
def rrl_lab(lab: Lab, short_tmp: Path) -> Iterator[RrlLab]:
    lab.add_address("198.18.5.1/24")
    lab.add_address("198.18.10.1/24")
    flooder = lab.add_host("fl", f"{FLOODERS[0]}/24")
    for address in FLOODERS[1:]:
        flooder.ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
    other = lab.add_host("o2", f"{OTHER}/24")
    other.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    upstream_host = lab.add_host("up", f"{UPSTREAM}/24")
    upstream_host.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    networks = ["192.0.2.0/24", "198.18.10.0/24"]
    settings = {"address": SERVER, "port": 53, "domain": DOMAIN, "server_name": "bootsrv",
                "subnets": networks, "clients": networks, "hosts": RRL_HOSTS,
                "upstreams": [UPSTREAM],
                "server": {"rrl_rate": RATE, "rrl_burst": BURST, "rrl_slip": SLIP}}
    with Dnsmasq(upstream_host.ns, UPSTREAM, [("www.example.test", WWW)],
                 short_tmp / "dnsmasq.pid"), \
            DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
        yield RrlLab(lab, flooder.ns, other.ns, dnsd)
        assert dnsd.alive(), dnsd.log()


def test_rate_limit_under_a_flood(rrl_lab: RrlLab) -> None:
    lab, flood_ns, other_ns, dnsd = rrl_lab.lab, rrl_lab.flooder, rrl_lab.other, rrl_lab.dnsd
    server = (SERVER, dnsd.port)
    flood_socks = bound_sockets(flood_ns, UDP, FLOODERS, rcvbuf=1 << 20)
    [other_sock] = bound_sockets(other_ns, UDP, [OTHER])
    [tcp_sock] = bound_sockets(flood_ns, TCP, FLOODERS[:1])
    try:
        sent = asyncio.run(_rrl_run(server, flood_socks, other_sock, tcp_sock, dnsd))
    finally:
        for sock in [*flood_socks, other_sock, tcp_sock]:
            sock.close()
    stats = dnsd.stats()
    assert stats["queries"] == sent
    assert stats.get("errors", 0) == 0
    # silence was dnsd's choice: the kernel lost no datagram on the way
    for ns in (lab.server, flood_ns, other_ns):
        counters = udp_counters(ns)
        assert counters["RcvbufErrors"] == counters["InErrors"] == 0, (ns.name, counters)


async def _rrl_run(server: tuple[str, int], flood_socks: list[socket.socket],
                   other_sock: socket.socket, tcp_sock: socket.socket,
                   dnsd: DnsdProcess) -> int:
    """The flood, the TCP retries, the forwarded flood; how many queries were sent."""
    plan = Plan(seed=7)
    rng = plan.rng
    strays: list[str] = []
    flooders = [UdpClient(sock, server, strays) for sock in flood_socks]
    other = UdpClient(other_sock, server, strays)
    listeners = [asyncio.create_task(c.listen()) for c in (*flooders, other)]
    counted = ("rrl_slipped", "rrl_dropped", "drop_rate_limited", "authoritative",
               "rcode_noerror", "fwd_cache_hits", "fwd_sent_udp", "queries")

    async def stats() -> dict:
        return await asyncio.to_thread(dnsd.stats)

    def question(name: str, ip: str, *, aa: bool = True) -> Exchange:
        """An A query for ``name`` (0x20 case) whose full answer is ``ip``."""
        wire, qname = plan.query(mixed_case(rng, name), A)
        return Exchange("a", wire, qname, A, answer=(ip,), aa=aa)

    async def flood(group: list[Exchange], between: Callable[[], Awaitable[None]] | None = None,
                    every: int = 0) -> float:
        """Send ``group`` round the flooding sockets as fast as they go; the
        seconds from the first until each socket's last word (a name of its
        own, answered at once) is back, so every earlier reply is in."""
        start = time.monotonic()
        for i, ex in enumerate(group):
            await flooders[i % len(flooders)].send(ex)
            if between is not None and (i + 1) % every == 0:
                await between()
        probes = [c.ask(question(f"probe{i}.{DOMAIN}", f"192.0.2.{20 + i}"))
                  for i, c in enumerate(flooders)]
        assert all(not p.problems() for p in await asyncio.gather(*probes))
        return time.monotonic() - start

    sent = 0
    try:
        # 1. one /24 floods web1 while the other /24 asks for it now and then
        before = await stats()
        group = [question(f"web1.{DOMAIN}", WEB1) for _ in range(FLOOD)]
        modest: list[Exchange] = []

        async def modest_ask() -> None:
            modest.append(await other.ask(question(f"web1.{DOMAIN}", WEB1)))

        elapsed = await flood(group, modest_ask, FLOOD // MODEST)
        sent += FLOOD + len(flooders) + MODEST
        got = limited(group, elapsed)
        assert len(modest) == MODEST and all(not ex.problems() for ex in modest)
        after = await stats()
        assert delta(after, before, counted[:5]) == {
            "rrl_slipped": got["slip"], "rrl_dropped": got["silent"],
            "drop_rate_limited": got["silent"],
            "authoritative": FLOOD + MODEST + len(flooders),
            # a slip is counted as such, not as an answer
            "rcode_noerror": got["full"] + MODEST + len(flooders)}

        # 2. each slipped question asked again over TCP, one connection: all answered
        slipped = [ex for ex in group if verdict(ex) == "slip"]
        again = [Exchange("tcp", ex.wire, ex.qname, A, answer=(WEB1,)) for ex in slipped]
        loop = asyncio.get_running_loop()
        await loop.sock_connect(tcp_sock, server)
        reader, writer = await asyncio.open_connection(sock=tcp_sock)
        writer.write(b"".join(frame(ex.wire) for ex in again))
        by_id = {ex.qid: ex for ex in again}
        async with asyncio.timeout(PATIENCE):
            async for data in tcp_replies(reader, len(again)):
                ex = by_id.get(int.from_bytes(data[:2], "big"))
                if ex is None:
                    strays.append(f"TCP got {data[:2].hex()}")
                else:
                    ex.replies.append(data)
        writer.close()
        sent += len(again)
        problems = [p for ex in again for p in ex.problems()]
        assert problems == [], "\n".join(problems[:20])
        before, after = after, await stats()
        assert delta(after, before, counted[:4]) == {
            "rrl_slipped": 0, "rrl_dropped": 0, "drop_rate_limited": 0,
            "authoritative": len(again)}

        # 3. forwarded answers are not limited: the same network floods a
        # forwarded name, interleaved with an authoritative one that is
        await flooders[0].ask(primer := question("www.example.test", WWW, aa=False))
        assert not primer.problems()
        forwarded = [question("www.example.test", WWW, aa=False) for _ in range(FORWARD_FLOOD)]
        control = [question(f"web2.{DOMAIN}", WEB2) for _ in range(FORWARD_FLOOD)]
        elapsed = await flood([ex for pair in zip(forwarded, control) for ex in pair])
        sent += 1 + 2 * FORWARD_FLOOD + len(flooders)
        problems = [p for ex in forwarded for p in ex.problems()]
        assert problems == [], "\n".join(problems[:20])
        got = limited(control, elapsed)
        before, after = after, await stats()
        assert delta(after, before, counted) == {
            "rrl_slipped": got["slip"], "rrl_dropped": got["silent"],
            "drop_rate_limited": got["silent"],
            "authoritative": FORWARD_FLOOD + len(flooders),
            "rcode_noerror": got["full"] + len(flooders),
            "fwd_cache_hits": FORWARD_FLOOD, "fwd_sent_udp": 1,
            "queries": 1 + 2 * FORWARD_FLOOD + len(flooders)}
        assert strays == []
        return sent
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)


def test_a_tcp_answer_goes_only_to_the_connection_that_asked(load_lab: LoadLab) -> None:
    """A client asks a forwarded name over TCP, gives up (RST) before the
    upstream answers, and connects again from the same address and port (a
    stub with a fixed port, or a NAT reusing one). The new connection never
    asked: the late answer must not come to it (dnsd forgets the first
    connection's wait when it closes, counted as ``fwd_clients_gone``).
    """
    client_ns, upstream, dnsd = load_lab.client, load_lab.upstream, load_lab.dnsd
    server = (SERVER, dnsd.port)
    plan = Plan(seed=3)
    asked, answered_at_once = plan.exchange("forward"), plan.exchange("a")
    witness = plan.exchange("forward")  # the same name over UDP, waiting with it
    while witness.qname.canonicalize() != asked.qname.canonicalize():  # type: ignore[union-attr]
        witness = plan.exchange("forward")
    later = [plan.exchange("a"), plan.exchange("a")]

    opened: list[socket.socket] = []

    def connect(port: int) -> socket.socket:
        [sock] = bound_sockets(client_ns, TCP, CLIENT_ADDRESSES[:1], port=port, reuse=True)
        opened.append(sock)
        sock.settimeout(PATIENCE)
        sock.connect(server)
        return sock

    def read(sock: socket.socket) -> bytes:
        size = int.from_bytes(sock.recv(2, socket.MSG_WAITALL), "big")
        return sock.recv(size, socket.MSG_WAITALL)

    [udp] = bound_sockets(client_ns, UDP, CLIENT_ADDRESSES[:1])
    opened.append(udp)
    udp.settimeout(PATIENCE)
    upstream.pause()
    try:
        old = connect(0)
        port = old.getsockname()[1]
        old.sendall(frame(asked.wire) + frame(answered_at_once.wire))
        answered_at_once.replies.append(read(old))  # so the forwarded one is waiting
        old.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        old.close()  # linger 0: RST, no TIME_WAIT, the port is free at once
        new = connect(port)
        new.sendall(frame(later[0].wire))
        later[0].replies.append(read(new))  # dnsd has the new connection
        udp.sendto(witness.wire, server)
        upstream.resume()
        # the upstream's answer went to every waiter at once: the witness, and
        # whoever dnsd took for the TCP client
        witness.replies.append(udp.recv(65535))
        new.sendall(frame(later[1].wire))
        came = read(new)
    finally:
        upstream.resume()
        for sock in opened:
            sock.close()
    qid = int.from_bytes(came[:2], "big")
    assert qid == later[1].qid, (f"the new connection got a reply with id {qid}: the answer "
                                 f"to id {asked.qid}, asked on the connection before it")
    later[1].replies.append(came)
    assert [p for ex in (answered_at_once, witness, *later) for p in ex.problems()] == []
    # dnsd let go of the gone connection's wait when it closed: nothing to deliver later.
    stats = dnsd.stats()
    assert stats.get("fwd_clients_gone", 0) == 1 and stats.get("tcp_gone", 0) == 0, stats
