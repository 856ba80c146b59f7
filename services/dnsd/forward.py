"""The forwarder: questions from served clients, asked of the upstream
servers, without sockets or clocks (the aioquic shape: ``now`` in, actions
out, :meth:`Forwarder.get_timer` for the next wake).

One question is asked upstream once however many clients wait for it
(coalesced, up to ``max_clients`` each); at most ``max_pending`` questions
are out at a time, and a client beyond either bound gets SERVFAIL at once.
Each attempt goes to the next upstream in the list, with a fresh random id
(``attempts`` in all, so the list is tried in turn, round again if
``attempts`` exceeds it). An attempt ends with:

- a reply that matches: the id of the attempt, from the upstream it went
  to, over the transport it went by, a response to the same question.
  Anything else is counted as stray and dropped, and the attempt goes on
  waiting (a forged reply must guess id, upstream and question, and cannot
  even make us give up on the real one);
- TC set over UDP: the same upstream is asked again over TCP (same attempt);
- SERVFAIL, REFUSED or any rcode other than NOERROR/NXDOMAIN, or a
  connection the server could not make (:meth:`Forwarder.upstream_failed`):
  the next attempt at once;
- the timer (``timeout`` per attempt): the next attempt.

After the last attempt every waiting client gets SERVFAIL. An answer goes
to each client under its own id and question (its letter case kept), with
RA, without AA or AD (dnsd neither owns nor validates it), within the
client's size (truncated with TC if need be), from the cache when it holds
one. Queries upstream carry EDNS0 with a 1232-byte payload and RD.

The server picks a fresh source port per query (or a random one from a
pool) for the ``ToUpstream`` it sends: the id alone is only 16 bits.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset

from astralboot.common.errors import AstralBootError
from astralboot.services.dnsd.cache import AnswerCache, QuestionKey, Sections
from astralboot.services.dnsd.wire import (HEADER_SIZE, OUR_PAYLOAD, Transport, build_response,
                                           render)

Address = tuple[str, int]
DNS_PORT = 53


class NoUpstream(AstralBootError):
    """A forwarder needs at least one upstream server."""


@dataclass(frozen=True, slots=True)
class Question:
    name: dns.name.Name
    rdtype: int
    rdclass: int

    @property
    def key(self) -> QuestionKey:
        return (self.name.canonicalize(), self.rdtype, self.rdclass)

    def rrset(self) -> dns.rrset.RRset:
        return dns.rrset.RRset(self.name, self.rdclass, self.rdtype)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Client:
    """Who waits for an answer, and how it must be sent to them."""

    address: Address
    transport: Transport
    query_id: int
    question: Question  # as the client wrote it
    flags: int  # the query's flags (RD and CD are echoed)
    limit: int  # the most bytes the reply may have
    edns: bool


@dataclass(frozen=True, slots=True)
class ToUpstream:
    """Send ``data`` to ``upstream`` (over TCP with the 2-byte length prefix)."""

    upstream: Address
    transport: Transport
    data: bytes
    query_id: int


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send ``data`` to ``client.address`` over ``client.transport``."""

    client: Client
    data: bytes


Action = ToUpstream | ToClient


def upstream_address(text: str | tuple) -> Address:
    """``"9.9.9.9"``, ``"9.9.9.9:5353"``, ``"[2620:fe::fe]:53"`` or a socket
    address tuple, as (ip, port); ``::ffff:9.9.9.9`` (a dual-stack socket's
    form) is 9.9.9.9. ValueError if it is none of these."""
    if isinstance(text, tuple):
        host, port = str(text[0]), int(text[1])
    elif text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: not [address]:port")
        port = int(rest[1:]) if rest else DNS_PORT
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, DNS_PORT
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} out of range")
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (str(address), port)


def answer_bytes(client: Client, sections: Sections) -> bytes:
    msg = build_response(client.query_id, client.flags, sections.rcode,
                         question=client.question.rrset(), edns=client.edns, flags=dns.flags.RA,
                         answer=sections.answer, authority=sections.authority,
                         additional=sections.additional)
    return render(msg, client.limit)[0]


def failure_bytes(client: Client, rcode: dns.rcode.Rcode = dns.rcode.SERVFAIL) -> bytes:
    return answer_bytes(client, Sections(rcode))


class _Pending:
    __slots__ = ("question", "key", "clients", "attempt", "upstream", "transport", "query_id",
                 "deadline")

    def __init__(self, question: Question, client: Client) -> None:
        self.question = question
        self.key = question.key
        self.clients = [client]
        self.attempt = 0
        self.upstream: Address = ("", 0)
        self.transport: Transport = "udp"
        self.query_id = 0
        self.deadline = 0.0


class Forwarder:
    """Questions out to the upstreams, answers back to the clients."""

    def __init__(self, upstreams: Sequence[str | Address], *, timeout: float = 2.0,
                 attempts: int = 3, cache_size: int = 1024, max_pending: int = 256,
                 max_clients: int = 32, max_ttl: int | None = None,
                 max_negative_ttl: int | None = None, rng: random.Random | None = None,
                 stats: Counter[str] | None = None) -> None:
        self.upstreams = tuple(upstream_address(u) for u in upstreams)
        if not self.upstreams:
            raise NoUpstream("no upstream DNS server to forward to")
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_pending = max_pending
        self.max_clients = max_clients
        ttl_caps = {k: v for k, v in (("max_ttl", max_ttl), ("max_negative_ttl", max_negative_ttl))
                    if v is not None}
        self.cache = AnswerCache(cache_size, **ttl_caps)
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._rng = rng if rng is not None else random.SystemRandom()
        self._by_key: dict[QuestionKey, _Pending] = {}
        self._by_id: dict[int, _Pending] = {}

    # -- questions --------------------------------------------------------------

    def query(self, question: Question, client: Client, now: float) -> list[Action]:
        """A served client asks ``question``: an answer from the cache, a query
        upstream, or nothing yet (the question is already out)."""
        stats = self.stats
        stats["fwd_questions"] += 1
        cached = self.cache.get(question.key, now)
        if cached is not None:
            stats["fwd_cache_hits"] += 1
            return [ToClient(client, answer_bytes(client, cached))]
        pending = self._by_key.get(question.key)
        if pending is not None:
            if any(c.address == client.address and c.query_id == client.query_id
                   and c.transport == client.transport for c in pending.clients):
                stats["fwd_repeated"] += 1  # the client asked again; one answer will do
                return []
            if len(pending.clients) >= self.max_clients:
                stats["fwd_clients_full"] += 1
                return [ToClient(client, failure_bytes(client))]
            stats["fwd_coalesced"] += 1
            pending.clients.append(client)
            return []
        if len(self._by_key) >= self.max_pending:
            stats["fwd_pending_full"] += 1
            return [ToClient(client, failure_bytes(client))]
        pending = _Pending(question, client)
        self._by_key[pending.key] = pending
        return [self._ask(pending, now, "udp")]

    @property
    def pending(self) -> int:
        return len(self._by_key)

    def forget(self, address: Address, transport: Transport) -> int:
        """The client at ``address`` is gone (its TCP connection closed): it is
        no longer waiting, so a later connection from the same address and
        port never gets its answers. The questions stay out (their answers
        go to the cache and to whoever else waits). Returns how many waits
        ended."""
        ended = 0
        for pending in self._by_key.values():
            kept = [c for c in pending.clients
                    if not (c.address == address and c.transport == transport)]
            ended += len(pending.clients) - len(kept)
            pending.clients = kept
        self.stats["fwd_clients_gone"] += ended
        return ended

    def _ask(self, pending: _Pending, now: float, transport: Transport) -> ToUpstream:
        if pending.query_id:
            self._by_id.pop(pending.query_id, None)
        qid = self._fresh_id()
        self._by_id[qid] = pending
        pending.query_id = qid
        pending.transport = transport
        if transport == "udp":
            pending.upstream = self.upstreams[pending.attempt % len(self.upstreams)]
        pending.deadline = now + self.timeout
        q = pending.question
        msg = dns.message.make_query(pending.key[0], q.rdtype, q.rdclass, use_edns=0,
                                     payload=OUR_PAYLOAD, id=qid)
        self.stats[f"fwd_sent_{transport}"] += 1
        return ToUpstream(pending.upstream, transport, msg.to_wire(), qid)

    def _fresh_id(self) -> int:
        while True:
            qid = self._rng.getrandbits(16)
            if qid and qid not in self._by_id:
                return qid

    # -- replies ----------------------------------------------------------------

    def receive(self, data: bytes, upstream: str | Address, now: float,
                transport: Transport = "udp") -> list[Action]:
        """A message came from ``upstream``: answers for the clients, a retry, or nothing."""
        stats = self.stats
        if len(data) < HEADER_SIZE:
            stats["fwd_malformed"] += 1
            return []
        pending = self._by_id.get(int.from_bytes(data[:2], "big"))
        source = upstream_address(upstream)
        if pending is None or pending.upstream != source or pending.transport != transport:
            stats["fwd_stray"] += 1
            return []
        try:
            msg = dns.message.from_wire(data)
        except dns.exception.DNSException:
            stats["fwd_malformed"] += 1
            return []
        if (not msg.flags & dns.flags.QR or msg.opcode() != dns.opcode.QUERY
                or len(msg.question) != 1 or not self._same_question(msg, pending)):
            stats["fwd_stray"] += 1
            return []
        if msg.flags & dns.flags.TC:
            stats["fwd_truncated"] += 1
            if transport == "udp":
                return [self._ask(pending, now, "tcp")]
            return self._next(pending, now)  # truncated over TCP: broken; try another
        rcode = msg.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            stats[f"fwd_upstream_{dns.rcode.to_text(rcode).lower()}"] += 1
            return self._next(pending, now)
        stats["fwd_answered"] += 1
        self._finish(pending)
        if self.cache.put(pending.key, msg, now):
            sections = self.cache.get(pending.key, now)
            assert sections is not None
        else:
            sections = Sections.of(msg)
        return [ToClient(c, answer_bytes(c, sections)) for c in pending.clients]

    @staticmethod
    def _same_question(msg: dns.message.Message, pending: _Pending) -> bool:
        q = msg.question[0]
        return (q.name, q.rdtype, q.rdclass) == pending.key  # names compare case-blind

    def upstream_failed(self, upstream: str | Address, query_id: int, now: float) -> list[Action]:
        """The server could not reach ``upstream`` for ``query_id`` (TCP refused,
        ICMP unreachable): the next attempt at once."""
        pending = self._by_id.get(query_id)
        if pending is None or pending.upstream != upstream_address(upstream):
            return []
        self.stats["fwd_unreachable"] += 1
        return self._next(pending, now)

    # -- time -------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work next, or None with nothing out."""
        return min((p.deadline for p in self._by_key.values()), default=None)

    def handle_timer(self, now: float) -> list[Action]:
        """End the attempts due by ``now``: retries upstream, SERVFAIL after the last."""
        actions: list[Action] = []
        for pending in [p for p in self._by_key.values() if p.deadline <= now]:
            self.stats["fwd_timeouts"] += 1
            actions.extend(self._next(pending, now))
        return actions

    def _next(self, pending: _Pending, now: float) -> list[Action]:
        pending.attempt += 1
        if pending.attempt < self.attempts:
            self.stats["fwd_retries"] += 1
            return [self._ask(pending, now, "udp")]
        self.stats["fwd_servfail"] += 1
        self._finish(pending)
        return [ToClient(c, failure_bytes(c)) for c in pending.clients]

    def _finish(self, pending: _Pending) -> None:
        del self._by_key[pending.key]
        self._by_id.pop(pending.query_id, None)
