"""DNS messages on the wire, by dnspython, under dnsd's rules.

:func:`parse_query` turns a datagram (or a TCP message, length prefix
removed) into a :class:`dns.message.Message` that is a well-formed query,
or raises one of two errors that say what the server does about it:

- :class:`Unanswerable`: drop, say nothing. Fewer than 12 bytes (no header,
  so no id to answer with), the QR bit set (a response, never answered, so
  two servers cannot loop), or more bytes than the transport allows (a UDP
  query over our 1232-byte payload, a TCP one over 65535).
- :class:`QueryError`: answer with its rcode and nothing else. FORMERR for
  anything dnspython cannot parse (a name cut short, a compression pointer
  that does not point backwards, a label over 63 or of a reserved type, a
  name over 255, a record cut short, bytes after the last record, two OPT
  records, an OPT outside the additional section), for a QDCOUNT other than
  1 (RFC 9619), for records in the answer or authority section of a query,
  and for a UDP query over 512 bytes without EDNS; NOTIMP for an opcode other
  than QUERY; NOTAUTH for a TSIG-signed query (dnsd holds no keys;
  RFC 8945 5.2 asks for a BADKEY TSIG record too, which only a key could
  sign); BADVERS for an EDNS version over 0 (RFC 6891 6.1.3).

An error reply is the header only (no question) except BADVERS, which has
the question and OPT. It is never larger than the query, so a forged source
address gains an attacker nothing by it.

:func:`render` writes a response within the client's size: first whole,
then without the additional section (RFC 2181 9: no TC for that), then with
the question alone and TC set, so the client asks again over TCP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset

from astralboot.common.errors import RemoteProtocolError

Transport = Literal["udp", "tcp"]

HEADER_SIZE = 12
UDP_PLAIN = 512  # RFC 1035 4.2.1: a UDP message without EDNS
OUR_PAYLOAD = 1232  # the EDNS payload we advertise and the most we send over UDP
TCP_MAX = 65535
_INPUT_MAX: dict[str, int] = {"udp": OUR_PAYLOAD, "tcp": TCP_MAX}
_ECHOED = dns.flags.RD | dns.flags.CD  # the query flags a response carries back


class DnsProtocolError(RemoteProtocolError):
    """A client sent bytes that are not an acceptable DNS query."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Unanswerable(DnsProtocolError):
    """Drop it: no reply at all."""


class QueryError(DnsProtocolError):
    """Answer with ``rcode`` (see :func:`error_reply`)."""

    def __init__(self, reason: str, rcode: dns.rcode.Rcode, header: Header,
                 query: dns.message.Message | None = None) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.header = header
        self.query = query


@dataclass(frozen=True, slots=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def opcode(self) -> dns.opcode.Opcode:
        return dns.opcode.from_flags(self.flags)


def read_header(data: bytes) -> Header:
    """The 12-byte header; :class:`Unanswerable` if there are fewer."""
    if len(data) < HEADER_SIZE:
        raise Unanswerable("short")
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, HEADER_SIZE, 2)]
    return Header(*words)


def parse_query(data: bytes, transport: Transport) -> dns.message.Message:
    """A well-formed query with exactly one question, or a :class:`DnsProtocolError`."""
    if len(data) > _INPUT_MAX[transport]:
        raise Unanswerable("oversize")
    header = read_header(data)
    if header.flags & dns.flags.QR:
        raise Unanswerable("response")
    if header.opcode != dns.opcode.QUERY:
        raise QueryError("opcode", dns.rcode.NOTIMP, header)
    if header.qdcount != 1:
        raise QueryError("qdcount", dns.rcode.FORMERR, header)
    if header.ancount or header.nscount:
        raise QueryError("records", dns.rcode.FORMERR, header)
    try:
        query = dns.message.from_wire(data)
    except dns.message.UnknownTSIGKey:
        raise QueryError("tsig", dns.rcode.NOTAUTH, header) from None
    except dns.exception.DNSException as exc:
        raise QueryError(type(exc).__name__.lower(), dns.rcode.FORMERR, header) from None
    if query.edns > 0:
        raise QueryError("edns_version", dns.rcode.BADVERS, header, query)
    if query.edns < 0 and transport == "udp" and len(data) > UDP_PLAIN:
        raise QueryError("oversize_plain", dns.rcode.FORMERR, header)
    return query


def reply_limit(query: dns.message.Message, transport: Transport) -> int:
    """The most bytes a reply to ``query`` may have."""
    if transport == "tcp":
        return TCP_MAX
    if query.edns >= 0:
        return max(UDP_PLAIN, min(int(query.payload), OUR_PAYLOAD))
    return UDP_PLAIN


def build_response(query_id: int, query_flags: int, rcode: dns.rcode.Rcode, *,
                   question: dns.rrset.RRset | None, edns: bool, flags: int = 0,
                   answer: Iterable[dns.rrset.RRset] = (),
                   authority: Iterable[dns.rrset.RRset] = (),
                   additional: Iterable[dns.rrset.RRset] = ()) -> dns.message.Message:
    """A response: QR, the query's RD and CD, ``flags`` (AA, RA), the sections."""
    msg = dns.message.Message(id=query_id)
    msg.flags = dns.flags.Flag(dns.flags.QR | (query_flags & _ECHOED) | flags)
    if question is not None:
        msg.question = [question]
    msg.answer = list(answer)
    msg.authority = list(authority)
    msg.additional = list(additional)
    if edns:
        msg.use_edns(0, 0, OUR_PAYLOAD)
    msg.set_rcode(rcode)
    return msg


def question_of(query: dns.message.Message) -> dns.rrset.RRset:
    """The query's question as an empty record set (the response echoes it)."""
    q = query.question[0]
    return dns.rrset.RRset(q.name, q.rdclass, q.rdtype)


def error_reply(error: QueryError) -> bytes:
    """The reply to a query that :func:`parse_query` refused."""
    header = error.header
    query = error.query
    msg = build_response(header.id, header.flags, error.rcode,
                         question=question_of(query) if query is not None else None,
                         edns=query is not None and query.edns >= 0)
    msg.set_opcode(header.opcode)
    return render(msg, UDP_PLAIN)[0]


def render(msg: dns.message.Message, limit: int) -> tuple[bytes, bool]:
    """``msg`` in at most ``limit`` bytes, and whether it had to be truncated (TC)."""
    try:
        return msg.to_wire(max_size=limit), False
    except dns.exception.TooBig:
        pass
    if msg.additional:
        msg.additional = []
        try:
            return msg.to_wire(max_size=limit), False
        except dns.exception.TooBig:
            pass
    msg.answer = []
    msg.authority = []
    msg.flags |= dns.flags.TC
    return msg.to_wire(max_size=limit), True
