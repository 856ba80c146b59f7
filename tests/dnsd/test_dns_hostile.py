"""Whatever arrives, :meth:`DnsPolicy.handle` and :meth:`Forwarder.receive`
raise nothing: random bytes and mutated good queries end as a counted drop
or an error reply (or, for a mutation that is still a good query, an answer
or a question for the forwarder)."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astralboot.services.dnsd.forward import Forwarder, ToClient, ToUpstream
from astralboot.services.dnsd.policy import Drop, Forward, Reply
from dnstest import CLIENT, lab_policy, query

SEEDS = [
    query("web1.lab.example"),
    query("10.2.0.192.in-addr.arpa", "PTR", edns=-1),
    query("www.example.com", "AAAA", payload=4096),
    query("lab.example", "ANY"),
]
POLICY = lab_policy()


def _check(actions: list, data: bytes) -> None:
    assert len(actions) == 1
    [action] = actions
    if isinstance(action, Drop):
        return
    if isinstance(action, Forward):
        assert action.client.limit >= 512
        return
    assert isinstance(action, Reply)
    msg = dns.message.from_wire(action.data)  # what we send always parses
    assert msg.flags & dns.flags.QR
    assert msg.id == int.from_bytes(data[:2], "big")
    assert len(action.data) <= 1232


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(["udp", "tcp"]))
def test_random_bytes(data: bytes, transport: str) -> None:
    policy = lab_policy()
    actions = policy.handle(data, CLIENT, 0.0, transport)  # type: ignore[arg-type]
    _check(actions, data)
    [action] = actions
    stats = policy.stats
    if isinstance(action, Drop):
        assert stats["malformed"] == 1 and stats[f"drop_{action.reason}"] == 1
    elif _rcode(action) in _MALFORMED:
        # counted as malformed, unless the type alone decided (a valid query)
        assert stats["malformed"] + stats["bad_meta_type"] + stats["bad_mail_type"] == 1
        assert stats[f"rcode_{_rcode(action).lower()}"] == 1
    else:
        assert stats["malformed"] == 0  # bytes that happen to make a good query


def _rcode(action: object) -> str:
    assert isinstance(action, Reply)
    return dns.rcode.to_text(dns.message.from_wire(action.data).rcode())


_MALFORMED = {"FORMERR", "NOTIMP", "NOTAUTH", "BADVERS"}


def mutate(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes changed, inserted, deleted, or typical traps spliced in."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, len(data)))
        if op == 0 and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            data.insert(i, draw(st.integers(0, 255)))
        elif op == 2:
            del data[i:i + draw(st.integers(1, 4))]
        else:
            data[i:i] = draw(st.sampled_from([b"\xc0\x0c", b"\x3f", b"\x00\x29\x10\x00",
                                              b"\x00\x00\xfa\x00\xff"]))
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(st.sampled_from(SEEDS)))


@settings(max_examples=1500, deadline=None)
@given(mutated(), st.sampled_from(["udp", "tcp"]))
def test_mutated_queries(data: bytes, transport: str) -> None:
    _check(POLICY.handle(data, CLIENT, 1.0, transport), data)  # type: ignore[arg-type]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=3), st.data())
def test_forwarder_takes_any_bytes_from_upstream(junk: list[bytes], data: st.DataObject) -> None:
    fwd = Forwarder(["198.18.0.53"], rng=random.Random(1))
    [action] = POLICY.handle(query("www.example.com"), CLIENT, 0.0)
    assert isinstance(action, Forward)
    [sent] = fwd.query(action.question, action.client, 0.0)
    assert isinstance(sent, ToUpstream)
    reply = dns.message.make_response(dns.message.from_wire(sent.data))
    reply.answer = [dns.rrset.from_text("www.example.com.", 60, "IN", "A", "192.0.2.80")]
    reply.authority = [dns.rrset.from_text("example.com.", 60, "IN", "SOA",
                                           "ns.example.com. h.example.com. 1 2 3 4 5")]
    forged = mutate(data.draw, reply.to_wire())
    for wire in junk + [sent.data[:2] + forged[2:]]:
        for out in fwd.receive(wire, "198.18.0.53", 0.1):
            if isinstance(out, ToClient):
                msg = dns.message.from_wire(out.data)
                assert msg.id == action.client.query_id and msg.flags & dns.flags.QR
            else:
                assert out.upstream == sent.upstream
    assert fwd.pending <= 1
