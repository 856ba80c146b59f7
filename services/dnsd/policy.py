"""What dnsd does with one query: bytes, the client's address, the transport
and ``now`` in; a reply, a question for the forwarder, or a counted drop out.

The decisions, in the order they are made:

1. Not a query at all (:mod:`wire`): dropped (no header, a response, too
   large) or answered with its error (FORMERR, NOTIMP, NOTAUTH, BADVERS).
2. A client outside the allowed networks: REFUSED, whatever it asks.
   dnsd is nobody's open resolver, and the boot network's names are not
   the world's business.
3. What is asked: a class other than IN is REFUSED (no CHAOS ``version.bind``);
   a meta type in a question (OPT, TSIG, TKEY) is FORMERR; AXFR and IXFR are
   REFUSED (no zone transfers); MAILA and MAILB are NOTIMP.
4. A name in one of our zones: the zone's answer, with AA. NXDOMAIN and
   NODATA carry the zone's SOA (RFC 2308); ANY gets one record set (RFC 8482).
5. Any other name, RD set and a forwarder configured: :class:`Forward`.
   Without RD, or without upstreams: REFUSED, since a stub that is told
   REFUSED asks its next server at once, where SERVFAIL reads as a passing
   failure (dnsmasq answers the same with no servers).

Every UDP reply that dnsd writes itself (answers and errors alike) goes
through the response-rate limit, keyed so that a reflection flood shares a
bucket while a rack of machines asking for their own names does not: an
answer by (name, type), NXDOMAIN by zone (random names under it share one),
NODATA by name, an error by its rcode. Over the limit an answer is dropped
or slipped as a TC reply (see :mod:`ratelimit`); an error is only dropped.

``stats`` counts every outcome: ``queries``; ``malformed`` (every query
that :mod:`wire` refused), with ``drop_<reason>`` for those dropped and
``bad_<reason>`` for those answered with an error (the reason is dnspython's
error, lower-cased, e.g. ``bad_badpointer``, ``bad_trailingjunk``, or ours:
``bad_qdcount``, ``bad_opcode``, ``bad_transfer``...); ``rcode_<name>`` per full
reply sent; ``refused_outside``, ``refused_class``, ``refused_recursion``,
``authoritative``, ``forwarded``, ``truncated``, ``rrl_dropped``,
``rrl_slipped`` (a slip is counted there, not as an ``rcode_``).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from astralboot.services.dnsd.forward import Address, Client, Question
from astralboot.services.dnsd.quick import QuickAnswers, in_networks
from astralboot.services.dnsd.ratelimit import ResponseRateLimit, Verdict
from astralboot.services.dnsd.wire import (UDP_PLAIN, QueryError, Transport, Unanswerable,
                                           build_response, error_reply, parse_query,
                                           question_of, render, reply_limit)
from astralboot.services.dnsd.zone import Zone

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` back to the client, by the transport the query came on
    (over TCP the server puts the 2-byte length in front)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """Hand the question to the forwarder (:meth:`forward.Forwarder.query`)."""

    question: Question
    client: Client


@dataclass(frozen=True, slots=True)
class Drop:
    """Say nothing; ``reason`` is also counted as ``drop_<reason>``."""

    reason: str


Action = Reply | Forward | Drop

# What a question's type alone decides, before any name is looked at.
_BY_TYPE: dict[int, tuple[dns.rcode.Rcode, str]] = {
    dns.rdatatype.OPT: (dns.rcode.FORMERR, "meta_type"),
    dns.rdatatype.TSIG: (dns.rcode.FORMERR, "meta_type"),
    dns.rdatatype.TKEY: (dns.rcode.FORMERR, "meta_type"),
    dns.rdatatype.AXFR: (dns.rcode.REFUSED, "transfer"),
    dns.rdatatype.IXFR: (dns.rcode.REFUSED, "transfer"),
    dns.rdatatype.MAILA: (dns.rcode.NOTIMP, "mail_type"),
    dns.rdatatype.MAILB: (dns.rcode.NOTIMP, "mail_type"),
}


class DnsPolicy:
    """One query in, one action out (in a list, for the server's loop)."""

    def __init__(self, zone: Zone, *, clients: Iterable[Network | str], forwarding: bool,
                 rrl: ResponseRateLimit | None = None,
                 stats: Counter[str] | None = None, quick: bool = True) -> None:
        self.zone = zone
        self.clients = tuple(ipaddress.ip_network(c, strict=False) for c in clients)
        self.forwarding = forwarding
        self.rrl = rrl
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.kept = QuickAnswers(zone, self.clients, rrl, self.stats) if quick else None

    def quick(self, data: bytes, client_ip: str, now: float) -> bytes | None:
        """A UDP query answered from the kept replies (:mod:`quick`): the bytes to
        send (b"": none, rate-limited), or None when :meth:`handle` must decide."""
        if self.kept is None:
            return None
        return self.kept.answer(data, client_ip, now, self.zone.serial)

    def handle(self, data: bytes, client: Address, now: float,
               transport: Transport = "udp") -> list[Action]:
        stats = self.stats
        stats["queries"] += 1
        try:
            query = parse_query(data, transport)
        except Unanswerable as exc:
            stats["malformed"] += 1
            return [self._drop(exc.reason)]
        except QueryError as exc:
            stats["malformed"] += 1
            stats[f"bad_{exc.reason}"] += 1
            return self._limited(exc.rcode, error_reply(exc), None, client, transport, now,
                                 ("error", int(exc.rcode)))
        if not self._allowed(client[0]):
            stats["refused_outside"] += 1
            return self._error(query, dns.rcode.REFUSED, client, transport, now, ra=False)
        q = query.question[0]
        if q.rdclass != dns.rdataclass.IN:
            stats["refused_class"] += 1
            return self._error(query, dns.rcode.REFUSED, client, transport, now)
        by_type = _BY_TYPE.get(q.rdtype)
        if by_type is not None:
            stats[f"bad_{by_type[1]}"] += 1
            return self._error(query, by_type[0], client, transport, now)
        lookup = self.zone.resolve(q.name, q.rdtype)
        if lookup is not None:
            stats["authoritative"] += 1
            msg = build_response(query.id, query.flags, lookup.rcode, question=question_of(query),
                                 edns=query.edns >= 0, flags=self._ra | dns.flags.AA,
                                 answer=lookup.answer, authority=lookup.authority,
                                 additional=lookup.additional)
            if lookup.rcode == dns.rcode.NXDOMAIN:
                key: Hashable = ("nxdomain", lookup.zone)
            else:
                key = ("nodata" if lookup.nodata else "answer", q.name.canonicalize(), q.rdtype)
            actions, full = self._answer(msg, query, client, transport, now, key)
            if full is not None and transport == "udp" and self.kept is not None:
                self.kept.learn(data, full, key, f"rcode_{dns.rcode.to_text(lookup.rcode).lower()}",
                                self.zone.serial)
            return actions
        if query.flags & dns.flags.RD and self.forwarding:
            stats["forwarded"] += 1
            question = Question(q.name, q.rdtype, q.rdclass)
            return [Forward(question, Client(client, transport, query.id, question,
                                             int(query.flags), reply_limit(query, transport),
                                             query.edns >= 0))]
        stats["refused_recursion"] += 1
        return self._error(query, dns.rcode.REFUSED, client, transport, now)

    @property
    def _ra(self) -> int:
        return dns.flags.RA if self.forwarding else 0

    def _allowed(self, ip: str) -> bool:
        return in_networks(ip, self.clients)

    def _drop(self, reason: str) -> Drop:
        self.stats[f"drop_{reason}"] += 1
        return Drop(reason)

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode, client: Address,
               transport: Transport, now: float, *, ra: bool = True) -> list[Action]:
        msg = build_response(query.id, query.flags, rcode, question=question_of(query),
                             edns=query.edns >= 0, flags=self._ra if ra else 0)
        data, _ = render(msg, reply_limit(query, transport))
        return self._limited(rcode, data, None, client, transport, now, ("error", int(rcode)))

    def _answer(self, msg: dns.message.Message, query: dns.message.Message, client: Address,
                transport: Transport, now: float,
                key: Hashable) -> tuple[list[Action], bytes | None]:
        """The actions, and the whole answer when it is what was sent (not
        truncated, not rate-limited): the one worth keeping."""
        data, truncated = render(msg, reply_limit(query, transport))
        if truncated:
            self.stats["truncated"] += 1

        def slip() -> bytes:  # no records, TC: "ask me again over TCP"
            return render(build_response(query.id, query.flags, dns.rcode.NOERROR,
                                         question=question_of(query), edns=query.edns >= 0,
                                         flags=self._ra | dns.flags.AA | dns.flags.TC),
                          UDP_PLAIN)[0]

        actions = self._limited(msg.rcode(), data, slip, client, transport, now, key)
        sent = len(actions) == 1 and isinstance(actions[0], Reply) and actions[0].data is data
        return actions, data if sent and not truncated else None

    def _limited(self, rcode: dns.rcode.Rcode, data: bytes, slip: Callable[[], bytes] | None,
                 client: Address, transport: Transport, now: float,
                 key: Hashable) -> list[Action]:
        """``data`` to the client, unless the rate limit says otherwise."""
        if self.rrl is not None and transport == "udp":
            verdict = self.rrl.check(client[0], key, now)
            if verdict is Verdict.SLIP and slip is not None:
                self.stats["rrl_slipped"] += 1
                return [Reply(slip())]
            if verdict is not Verdict.SEND:
                self.stats["rrl_dropped"] += 1
                return [self._drop("rate_limited")]
        self.stats[f"rcode_{dns.rcode.to_text(rcode).lower()}"] += 1
        return [Reply(data)]
