"""Kept answers (services/dnsd/quick.py): the hot path must say exactly what the
full policy says, byte for byte, or step aside."""

from __future__ import annotations

import random
from collections import Counter

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.services.dnsd.policy import DnsPolicy, Reply
from astralboot.services.dnsd.quick import query_key
from astralboot.services.dnsd.ratelimit import ResponseRateLimit
from dnstest import CLIENT, DOMAIN, OUTSIDER, SUBNETS, lab_zone

NAMES = [f"web1.{DOMAIN}", f"web1-2.{DOMAIN}", f"bootsrv.{DOMAIN}", f"astralboot.{DOMAIN}",
         f"nobody.{DOMAIN}", DOMAIN, "10.2.0.192.in-addr.arpa", "2.0.192.in-addr.arpa",
         "77.2.0.192.in-addr.arpa"]
TYPES = ["A", "AAAA", "PTR", "SOA", "NS", "TXT", "ANY"]


def policy(**kw: object) -> DnsPolicy:
    return DnsPolicy(lab_zone(), clients=SUBNETS, forwarding=True, stats=Counter(), **kw)  # type: ignore[arg-type]


def query(name: str, rdtype: str, *, qid: int, edns: int = -1, rd: bool = True,
          payload: int = 1232) -> bytes:
    msg = dns.message.make_query(name, rdtype, id=qid, use_edns=edns, payload=payload)
    if not rd:
        msg.flags &= ~dns.flags.RD
    return msg.to_wire()


def mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def full_answer(data: bytes) -> bytes:
    """What the full policy (no kept answers) sends for ``data``."""
    actions = policy(quick=False).handle(data, CLIENT, 0.0)
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    return actions[0].data


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), rdtype=st.sampled_from(TYPES), seed=st.integers(0, 2**32),
       edns=st.sampled_from([-1, 0]), rd=st.booleans())
def test_a_kept_answer_is_byte_for_byte_what_the_policy_sends(name: str, rdtype: str, seed: int,
                                                              edns: int, rd: bool) -> None:
    rng = random.Random(seed)
    p = policy()
    first = query(name, rdtype, qid=rng.getrandbits(16), edns=edns, rd=rd)
    p.handle(first, CLIENT, 0.0)  # learns
    again = query(mixed_case(name, rng), rdtype, qid=rng.getrandbits(16), edns=edns, rd=rd)
    quick = p.quick(again, CLIENT[0], 1.0)
    assert quick is not None, "a plain repeated query was not answered from the kept replies"
    assert quick == full_answer(again)
    assert dns.message.from_wire(quick).question[0].name.to_text() == \
        dns.message.from_wire(again).question[0].name.to_text()  # the asker's own case


def test_what_is_not_kept_goes_to_the_policy() -> None:
    p = policy()
    a = query(f"web1.{DOMAIN}", "A", qid=1)
    assert p.quick(a, CLIENT[0], 0.0) is None  # nothing kept yet
    p.handle(a, CLIENT, 0.0)
    assert p.quick(a, CLIENT[0], 0.0) is not None
    assert p.quick(a, OUTSIDER[0], 0.0) is None  # the policy will REFUSE it
    assert p.quick(query(f"web1.{DOMAIN}", "A", qid=1, edns=0), CLIENT[0], 0.0) is None
    assert p.quick(query(f"web1.{DOMAIN}", "A", qid=1, rd=False), CLIENT[0], 0.0) is None
    assert p.quick(query("www.example.com", "A", qid=1), CLIENT[0], 0.0) is None  # forwarded
    p.zone.set_host("52:54:00:00:00:09", "web9", "192.0.2.99")  # the zone moved
    assert p.quick(a, CLIENT[0], 0.0) is None
    assert p.stats["quick"] == 1


@pytest.mark.parametrize("mangle", [
    lambda q: q[:-1],                                   # truncated
    lambda q: q + b"\x00",                              # trailing junk
    lambda q: q[:2] + b"\x81\x00" + q[4:],              # QR set: a response
    lambda q: q[:4] + b"\x00\x02" + q[6:],              # two questions
    lambda q: q[:12] + b"\xc0\x0c" + q[-4:],            # a compression pointer
    lambda q: q[:12] + b"\x40" + b"a" * 64 + q[-5:],    # a label over 63
])
def test_queries_that_are_not_plain_are_never_keyed(mangle) -> None:  # type: ignore[no-untyped-def]
    plain = query(f"web1.{DOMAIN}", "A", qid=7)
    assert query_key(plain) is not None
    assert query_key(mangle(plain)) is None


def test_rate_limiting_counts_the_same_on_both_paths() -> None:
    def flood(quick: bool) -> Counter[str]:
        p = DnsPolicy(lab_zone(), clients=SUBNETS, forwarding=True, stats=Counter(),
                      rrl=ResponseRateLimit(5, burst=5, slip=2), quick=quick)
        replies = []
        for i in range(40):
            data = query(f"web1.{DOMAIN}", "A", qid=i)
            out = p.quick(data, CLIENT[0], 0.0)
            if out is None:
                actions = p.handle(data, CLIENT, 0.0)
                out = actions[0].data if isinstance(actions[0], Reply) else b""
            replies.append(out)
        assert sum(1 for r in replies if r and not dns.message.from_wire(r).flags
                   & dns.flags.TC) == 5  # the burst, then the limit
        slipped = [dns.message.from_wire(r) for r in replies if r and dns.message.from_wire(r).flags
                   & dns.flags.TC]
        assert all(m.rcode() == dns.rcode.NOERROR and not m.answer for m in slipped)
        return Counter({k: v for k, v in p.stats.items() if k != "quick"})
    assert flood(True) == flood(False)


@settings(max_examples=200, deadline=None)
@given(first=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
       seed=st.integers(0, 2**32), rdtype=st.sampled_from(["A", "AAAA", "MX"]),
       edns=st.sampled_from([-1, 0]))
def test_one_nxdomain_answer_serves_every_missing_name_of_its_length(first: str, seed: int,
                                                                     rdtype: str,
                                                                     edns: int) -> None:
    rng = random.Random(seed)
    p = policy()
    taken = set(p.zone.labels()) | {"hostmaster"}
    if first in taken:
        return
    p.handle(query(f"{first}.{DOMAIN}", rdtype, qid=1, edns=edns), CLIENT, 0.0)
    other = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in first)
    if other in taken:
        return
    again = query(mixed_case(f"{other}.{DOMAIN}", rng), rdtype, qid=rng.getrandbits(16), edns=edns)
    quick = p.quick(again, CLIENT[0], 1.0)
    assert quick is not None and quick == full_answer(again)
    assert dns.message.from_wire(quick).rcode() == dns.rcode.NXDOMAIN


def test_names_that_exist_never_get_the_kept_nxdomain() -> None:
    p = policy()
    p.handle(query(f"zzzz.{DOMAIN}", "A", qid=1), CLIENT, 0.0)  # NXDOMAIN, length 4
    web1 = query(f"web1.{DOMAIN}", "A", qid=2)  # same length, exists
    assert p.quick(web1, CLIENT[0], 0.0) is None
    assert p.quick(query(f"hostmaster.{DOMAIN}", "A", qid=3), CLIENT[0], 0.0) is None
    p.zone.set_host("52:54:00:00:00:0a", "yyyy", "192.0.2.98")  # appears: serial moves
    assert p.quick(query(f"yyyy.{DOMAIN}", "A", qid=4), CLIENT[0], 0.0) is None
