"""The policy's answers as a table (RFC 1035 4.1, RFC 2308, RFC 6891,
RFC 8482, RFC 9619), then the malformed queries byte by byte, the clients
it refuses, sizes and truncation, and the response-rate limit."""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype
import dns.rrset
import dns.tsigkeyring
import pytest

from astralboot.services.dnsd.policy import Drop, Forward, Reply
from astralboot.services.dnsd.ratelimit import ResponseRateLimit, Verdict, client_network
from astralboot.services.dnsd.wire import render
from dnstest import CLIENT, OUTSIDER, lab_policy, query, rcode_text, records, reply_of

SOA = "lab.example. SOA bootsrv.lab.example. hostmaster.lab.example."


@dataclass(frozen=True)
class Case:
    name: str
    rdtype: str
    rcode: str
    answer: list[str] = field(default_factory=list)
    authority: str | None = None  # the authority's one record set, its type
    additional: list[str] = field(default_factory=list)


CASES = {
    "A of a lease": Case("web1.lab.example", "A", "NOERROR", ["web1.lab.example. A 192.0.2.10"]),
    "A of the duplicate": Case("web1-2.lab.example", "A", "NOERROR",
                               ["web1-2.lab.example. A 192.0.2.11"]),
    "A, name cleaned": Case("db-primary.lab.example", "A", "NOERROR",
                            ["db-primary.lab.example. A 198.51.100.20"]),
    "A, any letter case": Case("WeB1.LaB.ExAmPlE", "A", "NOERROR",
                               ["web1.lab.example. A 192.0.2.10"]),
    "A, host outside the subnets": Case("far.lab.example", "A", "NOERROR",
                                        ["far.lab.example. A 10.9.9.9"]),
    "astralboot": Case("astralboot.lab.example", "A", "NOERROR",
                       ["astralboot.lab.example. A 192.0.2.1"]),
    "the server's own name": Case("bootsrv.lab.example", "A", "NOERROR",
                                  ["bootsrv.lab.example. A 192.0.2.1"]),
    "PTR of a lease": Case("10.2.0.192.in-addr.arpa", "PTR", "NOERROR",
                           ["10.2.0.192.in-addr.arpa. PTR web1.lab.example."]),
    "PTR, second subnet": Case("20.100.51.198.in-addr.arpa", "PTR", "NOERROR",
                               ["20.100.51.198.in-addr.arpa. PTR db-primary.lab.example."]),
    "PTR of the server": Case("1.2.0.192.in-addr.arpa", "PTR", "NOERROR",
                              ["1.2.0.192.in-addr.arpa. PTR bootsrv.lab.example."]),
    "PTR, no lease": Case("77.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", authority="SOA"),
    "PTR, outside the /25": Case("200.100.51.198.in-addr.arpa", "PTR", "NXDOMAIN",
                                 authority="SOA"),
    "PTR, not a number": Case("x.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", authority="SOA"),
    "PTR, leading zero": Case("010.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", authority="SOA"),
    "PTR, five labels": Case("1.10.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", authority="SOA"),
    "SOA of the domain": Case("lab.example", "SOA", "NOERROR", [SOA + " 5 3600 600 86400 30"]),
    "NS of the domain": Case("lab.example", "NS", "NOERROR",
                             ["lab.example. NS bootsrv.lab.example."],
                             additional=["bootsrv.lab.example. A 192.0.2.1"]),
    "SOA of a reverse zone": Case("2.0.192.in-addr.arpa", "SOA", "NOERROR",
                                  ["2.0.192.in-addr.arpa. SOA bootsrv.lab.example. "
                                   "hostmaster.lab.example. 5 3600 600 86400 30"]),
    "NS of a reverse zone": Case("100.51.198.in-addr.arpa", "NS", "NOERROR",
                                 ["100.51.198.in-addr.arpa. NS bootsrv.lab.example."],
                                 additional=["bootsrv.lab.example. A 192.0.2.1"]),
    "NXDOMAIN, SOA in authority": Case("nobody.lab.example", "A", "NXDOMAIN", authority="SOA"),
    "NXDOMAIN below a host": Case("x.web1.lab.example", "A", "NXDOMAIN", authority="SOA"),
    "NODATA: AAAA of a host": Case("web1.lab.example", "AAAA", "NOERROR", authority="SOA"),
    "NODATA: MX of a host": Case("web1.lab.example", "MX", "NOERROR", authority="SOA"),
    "NODATA: A of the apex": Case("lab.example", "A", "NOERROR", authority="SOA"),
    "NODATA: A of a reverse name": Case("10.2.0.192.in-addr.arpa", "A", "NOERROR",
                                        authority="SOA"),
    "ANY: one record set": Case("web1.lab.example", "ANY", "NOERROR",
                                ["web1.lab.example. A 192.0.2.10"]),
    "ANY at the apex": Case("lab.example", "ANY", "NOERROR", [SOA + " 5 3600 600 86400 30"]),
    "ANY, no such name": Case("nobody.lab.example", "ANY", "NXDOMAIN", authority="SOA"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_authoritative_answers(case: Case) -> None:
    policy = lab_policy()
    msg = reply_of(policy.handle(query(case.name, case.rdtype), CLIENT, 0.0))
    assert rcode_text(msg) == case.rcode
    assert msg.flags & dns.flags.AA and msg.flags & dns.flags.QR and msg.flags & dns.flags.RA
    assert msg.id == 0x1234
    assert msg.question[0].name.to_text() == case.name + "."  # the question's case is kept
    assert [r.split(" ", 1)[1] for r in records(msg)] == [r.split(" ", 1)[1] for r in case.answer]
    assert [r.split(" ", 1)[0] for r in records(msg)] == [
        r.split(" ", 1)[0].lower() for r in case.answer]
    if case.authority is None:
        assert msg.authority == []
    else:
        [soa] = msg.authority
        assert soa.rdtype == dns.rdatatype.SOA
        assert soa.ttl == 30  # min(SOA TTL, MINIMUM): how long to keep the negative answer
        assert soa.name in (dns.name.from_text("lab.example."),
                            dns.name.from_text("2.0.192.in-addr.arpa."),
                            dns.name.from_text("100.51.198.in-addr.arpa."))
    assert records(msg, "additional") == case.additional
    assert msg.edns == 0 and msg.payload == 1232


def test_answers_follow_lease_changes_at_once() -> None:
    policy = lab_policy()
    zone = policy.zone
    zone.set_host("52:54:00:00:00:20", "fresh", "192.0.2.20")
    msg = reply_of(policy.handle(query("fresh.lab.example"), CLIENT, 0.0))
    assert records(msg) == ["fresh.lab.example. A 192.0.2.20"]
    soa_before = reply_of(policy.handle(query("lab.example", "SOA"), CLIENT, 0.0)).answer[0][0]
    zone.remove_host("52:54:00:00:00:20")
    msg = reply_of(policy.handle(query("fresh.lab.example"), CLIENT, 0.0))
    assert rcode_text(msg) == "NXDOMAIN"
    assert msg.authority[0][0].serial == soa_before.serial + 1
    msg = reply_of(policy.handle(query("20.2.0.192.in-addr.arpa", "PTR"), CLIENT, 0.0))
    assert rcode_text(msg) == "NXDOMAIN"


# -- forwarding and refusal --------------------------------------------------------


def test_other_names_go_to_the_forwarder() -> None:
    policy = lab_policy()
    [action] = policy.handle(query("WWW.Example.COM", "AAAA", payload=4096, qid=77), CLIENT, 1.0)
    assert isinstance(action, Forward)
    assert action.question.name.to_text() == "WWW.Example.COM."
    assert action.question.rdtype == dns.rdatatype.AAAA
    client = action.client
    assert (client.address, client.transport, client.query_id) == (CLIENT, "udp", 77)
    assert client.limit == 1232 and client.edns  # the client's 4096, bounded by ours
    [action] = policy.handle(query("www.example.com", edns=-1), CLIENT, 1.0)
    assert action.client.limit == 512 and not action.client.edns
    [action] = policy.handle(query("www.example.com"), CLIENT, 1.0, transport="tcp")
    assert action.client.limit == 65535 and action.client.transport == "tcp"
    assert policy.stats["forwarded"] == 3


@pytest.mark.parametrize("what, client, kw, forwarding, ra, counter", [
    ("outsider asks our name", OUTSIDER, dict(name="web1.lab.example"), True, False,
     "refused_outside"),
    ("outsider asks the world", OUTSIDER, dict(name="www.example.com"), True, False,
     "refused_outside"),
    ("no RD", CLIENT, dict(name="www.example.com", rd=False), True, True, "refused_recursion"),
    ("no upstream", CLIENT, dict(name="www.example.com"), False, False, "refused_recursion"),
    ("CHAOS class", CLIENT, dict(name="version.bind", rdtype="TXT", rdclass="CH"), True, True,
     "refused_class"),
    ("zone transfer", CLIENT, dict(name="lab.example", rdtype="AXFR"), True, True,
     "bad_transfer"),
    ("incremental transfer", CLIENT, dict(name="lab.example", rdtype="IXFR"), True, True,
     "bad_transfer"),
])
def test_refused(what: str, client: tuple[str, int], kw: dict, forwarding: bool, ra: bool,
                 counter: str) -> None:
    policy = lab_policy(forwarding=forwarding)
    msg = reply_of(policy.handle(query(**kw), client, 0.0))
    assert rcode_text(msg) == "REFUSED"
    assert not msg.flags & dns.flags.AA
    assert bool(msg.flags & dns.flags.RA) is ra
    assert msg.answer == [] and msg.authority == []
    assert policy.stats[counter] == 1 and policy.stats["rcode_refused"] == 1


def test_ipv4_mapped_client_is_served() -> None:
    policy = lab_policy()
    msg = reply_of(policy.handle(query("web1.lab.example"), ("::ffff:192.0.2.50", 1), 0.0))
    assert rcode_text(msg) == "NOERROR"
    msg = reply_of(policy.handle(query("web1.lab.example"), ("2001:db8::1", 1), 0.0))
    assert rcode_text(msg) == "REFUSED"


# -- malformed queries, byte by byte ---------------------------------------------------

GOOD = query("web1.lab.example", edns=-1)  # 12-byte header, question, no OPT
HEADER_ONLY = bytes.fromhex("1234 0100 0000 0000 0000 0000".replace(" ", ""))


def _with(data: bytes, **fields: int) -> bytes:
    """``data`` with header words replaced: flags, qd, an, ns, ar."""
    words = {"flags": 1, "qd": 2, "an": 3, "ns": 4, "ar": 5}
    out = bytearray(data)
    for name, value in fields.items():
        i = words[name] * 2
        out[i:i + 2] = value.to_bytes(2, "big")
    return bytes(out)


DROPPED = {
    "empty": (b"", "short"),
    "11 bytes": (GOOD[:11], "short"),
    "QR set (a response)": (_with(GOOD, flags=0x8100), "response"),
    "a response with an error": (_with(GOOD, flags=0x8182), "response"),
    "1233 bytes over UDP": (GOOD + b"\0" * (1233 - len(GOOD)), "oversize"),
}


@pytest.mark.parametrize("data, reason", DROPPED.values(), ids=DROPPED.keys())
def test_dropped(data: bytes, reason: str) -> None:
    policy = lab_policy()
    assert policy.handle(data, CLIENT, 0.0) == [Drop(reason)]
    assert policy.stats[f"drop_{reason}"] == 1 and policy.stats["malformed"] == 1


def _tsig_signed() -> bytes:
    msg = dns.message.make_query("web1.lab.example", "A", id=0x1234)
    msg.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), keyname="k.")
    return msg.to_wire()


def _edns_version(version: int) -> bytes:
    return dns.message.make_query("web1.lab.example", "A", use_edns=version, id=0x1234).to_wire()


REJECTED = {
    # header + question cut inside the name
    "name cut short": (GOOD[:20], "FORMERR"),
    # question cut before QCLASS
    "question cut short": (GOOD[:-2], "FORMERR"),
    "trailing garbage": (GOOD + b"\x00\x01", "FORMERR"),
    "qdcount 0": (_with(HEADER_ONLY, qd=0), "FORMERR"),
    "qdcount 2": (_with(GOOD, qd=2) + GOOD[12:], "FORMERR"),
    "answer in a query": (_with(GOOD, an=1), "FORMERR"),
    # the name is a pointer to itself (offset 12): a compression loop
    "compression loop": (HEADER_ONLY + bytes.fromhex("c00c 0001 0001"), "FORMERR"),
    # a pointer forward, past the end
    "pointer forward": (HEADER_ONLY + bytes.fromhex("c0ff 0001 0001"), "FORMERR"),
    # a length byte of 64: label type 01, reserved (no label is over 63)
    "label of 64": (HEADER_ONLY + b"\x40" + b"a" * 64 + bytes.fromhex("00 0001 0001"), "FORMERR"),
    # five labels of 63: a name over 255 bytes
    "name over 255": (HEADER_ONLY + (b"\x3f" + b"a" * 63) * 5 + bytes.fromhex("00 0001 0001"),
                      "FORMERR"),
    "additional record cut short": (_with(GOOD, ar=1) + b"\x00\x00\x29", "FORMERR"),
    "two OPT records": (_with(GOOD, ar=2) + bytes.fromhex("00 0029 04d0 00000000 0000") * 2,
                        "FORMERR"),
    "OPT with a name": (_with(GOOD, ar=1) + bytes.fromhex("01 61 00 0029 04d0 00000000 0000"),
                        "FORMERR"),
    "513 bytes without EDNS": (GOOD + b"\0" * (513 - len(GOOD)), "FORMERR"),
    "qtype OPT": (query("web1.lab.example", dns.rdatatype.OPT), "FORMERR"),
    "qtype TSIG": (query("web1.lab.example", dns.rdatatype.TSIG), "FORMERR"),
    "opcode NOTIFY": (_with(GOOD, flags=0x2000), "NOTIMP"),
    "opcode UPDATE": (_with(GOOD, flags=0x2800), "NOTIMP"),
    "opcode IQUERY": (_with(GOOD, flags=0x0800), "NOTIMP"),
    "opcode STATUS": (_with(GOOD, flags=0x1000), "NOTIMP"),
    "MAILB": (query("web1.lab.example", dns.rdatatype.MAILB), "NOTIMP"),
    "TSIG-signed": (_tsig_signed(), "NOTAUTH"),
    "EDNS version 1": (_edns_version(1), "BADVERS"),
}


@pytest.mark.parametrize("data, rcode", REJECTED.values(), ids=REJECTED.keys())
def test_rejected(data: bytes, rcode: str) -> None:
    policy = lab_policy()
    [action] = policy.handle(data, CLIENT, 0.0)
    assert isinstance(action, Reply)
    msg = dns.message.from_wire(action.data)
    assert rcode_text(msg) == rcode
    assert msg.id == int.from_bytes(data[:2], "big") and msg.flags & dns.flags.QR
    assert msg.opcode() == dns.opcode.from_flags(int.from_bytes(data[2:4], "big"))
    assert msg.answer == [] and msg.authority == []
    assert len(action.data) <= max(len(data), 12 + 4 + 11 + 255)  # never an amplifier
    if rcode == "BADVERS":
        assert msg.edns == 0 and msg.question  # RFC 6891 6.1.3: an OPT of version 0


def test_rejected_byte_by_byte_prefixes_never_raise() -> None:
    """Every prefix of a good query (as a datagram cut short): a drop or FORMERR."""
    policy = lab_policy()
    data = query("web1.lab.example", edns=0)
    for n in range(len(data)):
        [action] = policy.handle(data[:n], CLIENT, 0.0)
        if n < 12:
            assert action == Drop("short")
        else:
            assert rcode_text(dns.message.from_wire(action.data)) == "FORMERR"
    assert policy.stats["malformed"] == len(data)


def test_big_query_over_tcp_is_fine() -> None:
    policy = lab_policy()
    msg = dns.message.make_query("web1.lab.example", "A", id=1)
    msg.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(65001, b"x" * 2000)])
    data = msg.to_wire(max_size=65535)
    assert policy.handle(data, CLIENT, 0.0) == [Drop("oversize")]
    assert rcode_text(reply_of(policy.handle(data, CLIENT, 0.0, transport="tcp"))) == "NOERROR"


# -- sizes ------------------------------------------------------------------------


def _big(limit: int) -> tuple[bytes, bool]:
    msg = dns.message.make_response(dns.message.make_query("big.lab.example", "TXT", id=5))
    msg.answer = [dns.rrset.from_text("big.lab.example.", 60, "IN", "TXT",
                                      *[f'"{i:03d}{"x" * 100}"' for i in range(12)])]
    msg.additional = [dns.rrset.from_text("x.lab.example.", 60, "IN", "A", "192.0.2.9")]
    return render(msg, limit)


@pytest.mark.parametrize("limit, truncated", [(512, True), (1232, True), (65535, False)])
def test_render_truncates_with_tc(limit: int, truncated: bool) -> None:
    data, tc = _big(limit)
    msg = dns.message.from_wire(data)
    assert len(data) <= limit and tc is truncated
    assert bool(msg.flags & dns.flags.TC) is truncated
    assert (msg.answer == []) is truncated
    assert msg.question[0].name.to_text() == "big.lab.example."


def test_render_drops_the_additional_section_before_truncating() -> None:
    msg = dns.message.make_response(dns.message.make_query("big.lab.example", "TXT", id=5))
    msg.answer = [dns.rrset.from_text("big.lab.example.", 60, "IN", "TXT",
                                      '"' + "x" * 200 + '"', '"' + "y" * 200 + '"')]
    msg.additional = [dns.rrset.from_text("x.lab.example.", 60, "IN", "TXT", '"' + "z" * 200 + '"')]
    data, tc = render(msg, 512)
    out = dns.message.from_wire(data)
    assert not tc and not out.flags & dns.flags.TC
    assert len(out.answer) == 1 and out.additional == []


def test_long_names_answer_within_512() -> None:
    policy = lab_policy()
    policy.zone.set_host("52:54:00:00:00:30", "h" * 63, "192.0.2.30")
    name = "h" * 63 + ".lab.example"
    msg = reply_of(policy.handle(query(name, edns=-1), CLIENT, 0.0))
    assert records(msg) == [f"{name}. A 192.0.2.30"]


# -- response-rate limiting ------------------------------------------------------


def test_rrl_timeline() -> None:
    """rate 2/s, burst 2, slip 2: two answers, then drop, slip, drop, slip...;
    a second later two tokens more."""
    policy = lab_policy(rrl=ResponseRateLimit(2, slip=2))
    verdicts = []
    for _ in range(8):
        [a] = policy.handle(query("web1.lab.example"), CLIENT, 10.0)
        if isinstance(a, Drop):
            verdicts.append("drop")
        else:
            msg = dns.message.from_wire(a.data)
            verdicts.append("tc" if msg.flags & dns.flags.TC else "answer")
            if msg.flags & dns.flags.TC:
                assert msg.answer == [] and rcode_text(msg) == "NOERROR"
    assert verdicts == ["answer", "answer", "drop", "tc", "drop", "tc", "drop", "tc"]
    assert policy.stats["rrl_dropped"] == 3 and policy.stats["rrl_slipped"] == 3
    [a] = policy.handle(query("web1.lab.example"), CLIENT, 11.0)
    [b] = policy.handle(query("web1.lab.example"), CLIENT, 11.0)
    [c] = policy.handle(query("web1.lab.example"), CLIENT, 11.0)
    assert isinstance(a, Reply) and isinstance(b, Reply) and isinstance(c, Drop)


def test_rrl_buckets() -> None:
    policy = lab_policy(rrl=ResponseRateLimit(1, slip=0))
    now = 5.0
    assert isinstance(policy.handle(query("web1.lab.example"), CLIENT, now)[0], Reply)
    # the same name from the same /24, another port or address: one bucket
    assert isinstance(policy.handle(query("web1.lab.example"), ("192.0.2.51", 9), now)[0], Drop)
    # another name: another bucket (a rack asking its own names is not limited)
    assert isinstance(policy.handle(query("web1-2.lab.example"), CLIENT, now)[0], Reply)
    # another /24: another bucket
    assert isinstance(policy.handle(query("web1.lab.example"), ("198.51.100.9", 9), now)[0], Reply)
    # TCP: never limited
    for _ in range(3):
        assert isinstance(policy.handle(query("web1.lab.example"), CLIENT, now, "tcp")[0], Reply)
    # random names under the zone share the zone's NXDOMAIN bucket
    assert isinstance(policy.handle(query("r1.lab.example"), CLIENT, now)[0], Reply)
    assert isinstance(policy.handle(query("r2.lab.example"), CLIENT, now)[0], Drop)
    # errors: limited, never slipped
    errs = [policy.handle(query("web1.lab.example"), OUTSIDER, now)[0] for _ in range(4)]
    assert isinstance(errs[0], Reply) and all(isinstance(e, Drop) for e in errs[1:])
    # forwarded questions are the forwarder's business
    assert all(isinstance(policy.handle(query("example.com"), CLIENT, now)[0], Forward)
               for _ in range(3))


def test_rrl_slip_always_and_bounded_buckets() -> None:
    rrl = ResponseRateLimit(1, burst=1, slip=1, max_buckets=3)
    assert rrl.check("192.0.2.1", "k", 0.0) is Verdict.SEND
    assert rrl.check("192.0.2.1", "k", 0.0) is Verdict.SLIP
    for i in range(10):
        rrl.check(f"10.0.{i}.1", "k", 0.0)
    assert len(rrl) == 3
    assert rrl.check("192.0.2.1", "k", 0.0) is Verdict.SEND  # forgotten: a full bucket again


@pytest.mark.parametrize("ip, network", [
    ("192.0.2.77", (4, 0xC00002)),
    ("::ffff:192.0.2.77", (4, 0xC00002)),
    ("2001:db8:1:2ff::1", (6, 0x20010DB8000102)),
    ("fe80::1%eth0", (6, 0xFE800000000000)),
])
def test_rrl_client_networks(ip: str, network: tuple[int, int]) -> None:
    assert client_network(ip) == network
