"""The forwarder over time: no sockets, no sleeping, the clock is a number.

Each case plays the upstream servers by hand (answers made with dnspython
from the query the forwarder sent) and checks what it tells the server to
send, to whom, and when."""

from __future__ import annotations

import random
from collections import Counter

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.services.dnsd.cache import AnswerCache
from astralboot.services.dnsd.forward import (Client, Forwarder, NoUpstream, Question, ToClient,
                                              ToUpstream, upstream_address)
from dnstest import CLIENT

UP = [("198.18.0.53", 53), ("198.18.1.53", 53), ("198.18.2.53", 53)]


def question(name: str = "www.example.com", rdtype: str = "A") -> Question:
    return Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), 1)


def client(q: Question, *, qid: int = 100, address: tuple[str, int] = CLIENT,
           limit: int = 1232, edns: bool = True, transport: str = "udp") -> Client:
    return Client(address, transport, qid, q, int(dns.flags.RD), limit, edns)  # type: ignore[arg-type]


def forwarder(**kw: object) -> Forwarder:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("attempts", 3)
    return Forwarder(UP, rng=random.Random(7), stats=Counter(), **kw)  # type: ignore[arg-type]


def answer_to(sent: ToUpstream, *records: str, rcode: int = dns.rcode.NOERROR,
              authority: tuple[str, ...] = (), tc: bool = False, qid: int | None = None,
              flags: int = 0) -> bytes:
    """The upstream's reply to what the forwarder sent: ``records`` as
    ``"name ttl TYPE rdata"``."""
    query = dns.message.from_wire(sent.data)
    msg = dns.message.make_response(query, recursion_available=True)
    msg.answer = [_rrset(r) for r in records]
    msg.authority = [_rrset(r) for r in authority]
    msg.set_rcode(rcode)
    msg.flags |= flags
    if tc:
        msg.flags |= dns.flags.TC
    if qid is not None:
        msg.id = qid
    return msg.to_wire(max_size=65535)


def _rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdtype, *rdata = text.split()
    return dns.rrset.from_text(name, int(ttl), "IN", rdtype, *([" ".join(rdata)] if rdtype in
                               ("SOA", "TXT") else rdata))


SOA = "example.com. 3600 SOA ns.example.com. host.example.com. 1 3600 600 86400 120"


def one_send(actions: list) -> ToUpstream:
    assert len(actions) == 1 and isinstance(actions[0], ToUpstream), actions
    return actions[0]


def parsed(action: ToClient) -> dns.message.Message:
    assert isinstance(action, ToClient)
    return dns.message.from_wire(action.data)


# -- timelines ---------------------------------------------------------------------


def test_reply_in_time() -> None:
    fwd = forwarder()
    q = question("WWW.Example.com")
    sent = one_send(fwd.query(q, client(q, qid=4321), 0.0))
    assert sent.upstream == UP[0] and sent.transport == "udp"
    out = dns.message.from_wire(sent.data)
    assert out.id == sent.query_id != 4321  # our own random id, never the client's
    assert out.flags & dns.flags.RD and out.edns == 0 and out.payload == 1232
    assert fwd.get_timer() == 2.0
    [done] = fwd.receive(answer_to(sent, "www.example.com. 300 A 192.0.2.80", flags=dns.flags.AA),
                         UP[0], 0.5)
    msg = parsed(done)
    assert done.client.query_id == 4321 and msg.id == 4321
    assert msg.question[0].name.to_text() == "WWW.Example.com."  # the client's own letters
    assert msg.flags & dns.flags.RA and msg.flags & dns.flags.RD and msg.flags & dns.flags.QR
    assert not msg.flags & dns.flags.AA  # not our data
    assert [rd.to_text() for rd in msg.answer[0]] == ["192.0.2.80"]
    assert msg.edns == 0
    assert fwd.get_timer() is None and fwd.pending == 0
    assert fwd.stats["fwd_answered"] == 1


def test_timeout_moves_to_the_next_upstream_with_a_new_id() -> None:
    fwd = forwarder()
    q = question()
    first = one_send(fwd.query(q, client(q), 0.0))
    assert fwd.handle_timer(1.9) == []
    second = one_send(fwd.handle_timer(2.0))
    assert second.upstream == UP[1] and second.query_id != first.query_id
    assert fwd.get_timer() == 4.0
    # the first upstream answers late: that attempt is over
    assert fwd.receive(answer_to(first, "www.example.com. 300 A 192.0.2.80"), UP[0], 2.1) == []
    assert fwd.stats["fwd_stray"] == 1
    [done] = fwd.receive(answer_to(second, "www.example.com. 300 A 192.0.2.81"), UP[1], 2.2)
    assert [rd.to_text() for rd in parsed(done).answer[0]] == ["192.0.2.81"]


def test_all_upstreams_fail_servfail() -> None:
    fwd = forwarder(attempts=4)
    q = question()
    sends = [one_send(fwd.query(q, client(q, qid=9), 0.0))]
    for t in (2.0, 4.0, 6.0):
        sends.append(one_send(fwd.handle_timer(t)))
    assert [s.upstream for s in sends] == [UP[0], UP[1], UP[2], UP[0]]  # round the list again
    [fail] = fwd.handle_timer(8.0)
    msg = parsed(fail)
    assert dns.rcode.to_text(msg.rcode()) == "SERVFAIL" and msg.id == 9
    assert msg.flags & dns.flags.RA and msg.question
    assert fwd.get_timer() is None and fwd.pending == 0
    assert fwd.stats["fwd_servfail"] == 1 and fwd.stats["fwd_timeouts"] == 4


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP,
                                   dns.rcode.FORMERR])
def test_an_upstream_failure_tries_the_next_at_once(rcode: int) -> None:
    fwd = forwarder()
    q = question()
    first = one_send(fwd.query(q, client(q), 0.0))
    second = one_send(fwd.receive(answer_to(first, rcode=rcode), UP[0], 0.1))
    assert second.upstream == UP[1] and fwd.get_timer() == pytest.approx(2.1)


def test_unreachable_upstream_tries_the_next() -> None:
    fwd = forwarder()
    q = question()
    first = one_send(fwd.query(q, client(q), 0.0))
    assert fwd.upstream_failed(UP[1], first.query_id, 0.1) == []  # not the one we asked
    second = one_send(fwd.upstream_failed(UP[0], first.query_id, 0.1))
    assert second.upstream == UP[1]


def test_stray_and_spoofed_replies_are_dropped() -> None:
    fwd = forwarder()
    q = question()
    sent = one_send(fwd.query(q, client(q), 0.0))
    good = answer_to(sent, "www.example.com. 300 A 192.0.2.80")
    other_q = dns.message.make_query("evil.example.com", "A", id=sent.query_id)
    forged_question = dns.message.make_response(other_q).to_wire()
    not_a_response = dns.message.make_query("www.example.com", "A", id=sent.query_id).to_wire()
    for data, source, why in [
        (answer_to(sent, "www.example.com. 300 A 6.6.6.6", qid=(sent.query_id + 1) % 65536),
         UP[0], "wrong id"),
        (answer_to(sent, "www.example.com. 300 A 6.6.6.6"), UP[1], "wrong upstream"),
        (answer_to(sent, "www.example.com. 300 A 6.6.6.6"), ("198.18.0.53", 5353), "wrong port"),
        (forged_question, UP[0], "another question"),
        (not_a_response, UP[0], "QR clear"),
        (good[:2] + b"\x81", UP[0], "cut short"),
        (good + b"junk", UP[0], "trailing junk"),
    ]:
        assert fwd.receive(data, source, 0.1) == [], why
    assert fwd.stats["fwd_stray"] == 5 and fwd.stats["fwd_malformed"] == 2
    assert fwd.pending == 1  # still waiting for the real one
    [done] = fwd.receive(good, UP[0], 0.2)
    assert [rd.to_text() for rd in parsed(done).answer[0]] == ["192.0.2.80"]


def test_truncated_reply_retries_over_tcp() -> None:
    fwd = forwarder()
    q = question("big.example.com", "TXT")
    udp = one_send(fwd.query(q, client(q, limit=512, edns=False), 0.0))
    tcp = one_send(fwd.receive(answer_to(udp, tc=True), UP[0], 0.1))
    assert tcp.transport == "tcp" and tcp.upstream == UP[0]
    assert fwd.get_timer() == pytest.approx(2.1)
    big = [f'big.example.com. 300 TXT "{i:02d}{"x" * 60}"' for i in range(20)]
    reply = answer_to(tcp, *big)
    # the same bytes by UDP are not what was asked for
    assert fwd.receive(reply, UP[0], 0.2) == [] and fwd.stats["fwd_stray"] == 1
    [done] = fwd.receive(reply, UP[0], 0.2, transport="tcp")
    msg = parsed(done)
    assert len(done.data) <= 512 and msg.flags & dns.flags.TC and msg.answer == []
    assert fwd.stats["fwd_truncated"] == 1
    # the client asks again over TCP: the cache has it whole
    [again] = fwd.query(q, client(q, limit=65535, transport="tcp"), 1.0)
    assert len(parsed(again).answer[0]) == 20


def test_truncated_over_tcp_is_a_failure() -> None:
    fwd = forwarder()
    q = question()
    udp = one_send(fwd.query(q, client(q), 0.0))
    tcp = one_send(fwd.receive(answer_to(udp, tc=True), UP[0], 0.1))
    nxt = one_send(fwd.receive(answer_to(tcp, tc=True), UP[0], 0.2, transport="tcp"))
    assert nxt.upstream == UP[1] and nxt.transport == "udp"


# -- coalescing and bounds ---------------------------------------------------------


def test_identical_questions_are_coalesced() -> None:
    fwd = forwarder()
    q = question()
    a, b = client(q, qid=1), client(question("WWW.EXAMPLE.COM"), qid=2, address=("192.0.2.60", 5))
    sent = one_send(fwd.query(q, a, 0.0))
    assert fwd.query(b.question, b, 0.1) == []
    assert fwd.query(q, a, 0.2) == []  # a asks again: still one waiter
    assert fwd.stats["fwd_coalesced"] == 1 and fwd.stats["fwd_repeated"] == 1
    done = fwd.receive(answer_to(sent, "www.example.com. 300 A 192.0.2.80"), UP[0], 0.3)
    assert [(d.client.query_id, parsed(d).id) for d in done] == [(1, 1), (2, 2)]
    assert parsed(done[1]).question[0].name.to_text() == "WWW.EXAMPLE.COM."


def test_bound_on_outstanding_questions() -> None:
    fwd = forwarder(max_pending=2)
    for i in range(2):
        q = question(f"n{i}.example.com")
        one_send(fwd.query(q, client(q), 0.0))
    q = question("n2.example.com")
    [fail] = fwd.query(q, client(q, qid=55), 0.0)
    assert isinstance(fail, ToClient) and dns.rcode.to_text(parsed(fail).rcode()) == "SERVFAIL"
    assert fwd.pending == 2 and fwd.stats["fwd_pending_full"] == 1


def test_bound_on_clients_per_question() -> None:
    fwd = forwarder(max_clients=2)
    q = question()
    one_send(fwd.query(q, client(q, qid=1), 0.0))
    assert fwd.query(q, client(q, qid=2), 0.0) == []
    [fail] = fwd.query(q, client(q, qid=3), 0.0)
    assert parsed(fail).id == 3 and dns.rcode.to_text(parsed(fail).rcode()) == "SERVFAIL"


# -- the cache ---------------------------------------------------------------------


def _answered(fwd: Forwarder, q: Question, now: float, *records: str, **kw: object) -> ToClient:
    sent = one_send(fwd.query(q, client(q), now))
    [done] = fwd.receive(answer_to(sent, *records, **kw), sent.upstream, now)  # type: ignore[arg-type]
    return done


def test_cache_hit_lowers_the_ttl_then_expires() -> None:
    fwd = forwarder()
    q = question()
    _answered(fwd, q, 0.0, "www.example.com. 300 A 192.0.2.80")
    [hit] = fwd.query(q, client(q, qid=8), 100.4)
    msg = parsed(hit)
    assert msg.id == 8 and msg.answer[0].ttl == 199 and fwd.stats["fwd_cache_hits"] == 1
    [hit] = fwd.query(question("WWW.EXAMPLE.COM."), client(q), 299.5)  # case-blind key
    assert parsed(hit).answer[0].ttl == 0
    one_send(fwd.query(q, client(q), 300.0))  # expired: asked again


def test_cache_lives_as_long_as_the_smallest_ttl() -> None:
    fwd = forwarder()
    q = question()
    _answered(fwd, q, 0.0, "www.example.com. 300 CNAME web.example.com.",
              "web.example.com. 60 A 192.0.2.80")
    [hit] = fwd.query(q, client(q), 59.0)
    assert [r.ttl for r in parsed(hit).answer] == [241, 1]
    one_send(fwd.query(q, client(q), 60.0))


def test_ttls_are_capped() -> None:
    fwd = forwarder(max_ttl=86400)
    q = question()
    first = _answered(fwd, q, 0.0, "www.example.com. 604800 A 192.0.2.80")
    assert parsed(first).answer[0].ttl == 86400
    [hit] = fwd.query(q, client(q), 10.0)
    assert parsed(hit).answer[0].ttl == 86390
    one_send(fwd.query(q, client(q), 86400.0))


@pytest.mark.parametrize("rcode, records", [(dns.rcode.NXDOMAIN, ()), (dns.rcode.NOERROR, ())])
def test_negative_answers_cached_by_soa_minimum(rcode: int, records: tuple) -> None:
    fwd = forwarder()
    q = question("nope.example.com")
    _answered(fwd, q, 0.0, *records, rcode=rcode, authority=(SOA,))
    [hit] = fwd.query(q, client(q), 100.0)
    msg = parsed(hit)
    assert msg.rcode() == rcode and msg.answer == []
    assert msg.authority[0].rdtype == dns.rdatatype.SOA
    one_send(fwd.query(q, client(q), 120.0))  # min(3600, MINIMUM 120)


def test_no_negative_caching_without_soa() -> None:
    fwd = forwarder()
    q = question("nope.example.com")
    _answered(fwd, q, 0.0, rcode=dns.rcode.NXDOMAIN)
    one_send(fwd.query(q, client(q), 1.0))


def test_ttl_zero_is_not_cached() -> None:
    fwd = forwarder()
    q = question()
    _answered(fwd, q, 0.0, "www.example.com. 0 A 192.0.2.80")
    one_send(fwd.query(q, client(q), 0.0))


def test_cache_is_bounded_lru() -> None:
    fwd = forwarder(cache_size=2)
    qs = [question(f"n{i}.example.com") for i in range(3)]
    _answered(fwd, qs[0], 0.0, "n0.example.com. 300 A 192.0.2.1")
    _answered(fwd, qs[1], 0.0, "n1.example.com. 300 A 192.0.2.2")
    assert isinstance(fwd.query(qs[0], client(qs[0]), 1.0)[0], ToClient)  # n0 used last
    _answered(fwd, qs[2], 2.0, "n2.example.com. 300 A 192.0.2.3")
    assert len(fwd.cache) == 2
    assert isinstance(fwd.query(qs[0], client(qs[0]), 3.0)[0], ToClient)
    one_send(fwd.query(qs[1], client(qs[1]), 3.0))  # n1 was the one to go


def test_cache_keeps_nothing_truncated_or_failed() -> None:
    cache = AnswerCache(8)
    q = dns.message.make_query("a.example.", "A")
    ok = dns.message.make_response(q)
    ok.answer = [dns.rrset.from_text("a.example.", 60, "IN", "A", "192.0.2.1")]
    key = (dns.name.from_text("a.example."), 1, 1)
    ok.flags |= dns.flags.TC
    assert not cache.put(key, ok, 0.0)
    ok.flags &= ~dns.flags.TC
    ok.set_rcode(dns.rcode.SERVFAIL)
    assert not cache.put(key, ok, 0.0)
    ok.set_rcode(dns.rcode.NOERROR)
    assert cache.put(key, ok, 0.0) and key in cache


def test_the_answer_is_truncated_to_the_clients_size() -> None:
    fwd = forwarder()
    q = question("many.example.com")
    many = [f"many.example.com. 300 A 192.0.2.{i}" for i in range(1, 61)]  # ~1000 bytes
    small = client(q, limit=512, edns=False)
    udp = one_send(fwd.query(q, small, 0.0))
    [done] = fwd.receive(answer_to(udp, *many), UP[0], 0.1)
    assert len(done.data) <= 512 and parsed(done).flags & dns.flags.TC
    [big] = fwd.query(q, client(q, limit=1232), 1.0)
    assert len(parsed(big).answer[0]) == 60 and not parsed(big).flags & dns.flags.TC


# -- setup -------------------------------------------------------------------------


@pytest.mark.parametrize("text, address", [
    ("9.9.9.9", ("9.9.9.9", 53)),
    ("9.9.9.9:5353", ("9.9.9.9", 5353)),
    ("2620:fe::fe", ("2620:fe::fe", 53)),
    ("[2620:fe::fe]:5353", ("2620:fe::fe", 5353)),
    (("9.9.9.9", 53), ("9.9.9.9", 53)),
    (("::ffff:9.9.9.9", 53, 0, 0), ("9.9.9.9", 53)),  # from a dual-stack socket
    ("::ffff:9.9.9.9", ("9.9.9.9", 53)),
])
def test_upstream_addresses(text: str, address: tuple[str, int]) -> None:
    assert upstream_address(text) == address


@pytest.mark.parametrize("text", ["dns.google", "9.9.9.9:x", "[::1", "[::1]x", "300.1.1.1", "9.9.9.9:0"])
def test_bad_upstream_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        upstream_address(text)


def test_needs_an_upstream() -> None:
    with pytest.raises(NoUpstream):
        Forwarder([])


def test_reply_from_a_dual_stack_socket_matches() -> None:
    fwd = forwarder()
    q = question()
    sent = one_send(fwd.query(q, client(q), 0.0))
    [done] = fwd.receive(answer_to(sent, "www.example.com. 300 A 192.0.2.80"),
                         ("::ffff:198.18.0.53", 53, 0, 0), 0.1)
    assert isinstance(done, ToClient)


# -- every client gets one answer, whatever happens ---------------------------------


_STEP = st.one_of(
    st.tuples(st.just("ask"), st.integers(0, 2), st.integers(0, 3)),  # name, client
    st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
    st.tuples(st.just("answer"), st.sampled_from(["ok", "tc", "servfail", "spoof"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=40))
def test_every_client_gets_exactly_one_answer(steps: list) -> None:
    fwd = forwarder(max_pending=2, max_clients=2, cache_size=1)
    now = 0.0
    asked: Counter[tuple[str, int]] = Counter()  # (address, query id) per ask that counts
    answered: Counter[tuple[str, int]] = Counter()
    outstanding: list[ToUpstream] = []

    def take(actions: list) -> None:
        for a in actions:
            if isinstance(a, ToClient):
                answered[(a.client.address[0], a.client.query_id)] += 1
                assert dns.message.from_wire(a.data).id == a.client.query_id
            else:
                outstanding.append(a)

    for step in steps:
        if step[0] == "ask":
            q = question(f"n{step[1]}.example.com")
            c = client(q, qid=step[1] * 10 + step[2], address=(f"192.0.2.{step[2]}", 5))
            key = (c.address[0], c.query_id)
            if asked[key] > answered[key]:
                continue  # still waiting: asking again is a repeat, tested elsewhere
            asked[key] += 1
            take(fwd.query(q, c, now))
        elif step[0] == "wait":
            now += step[1]
            take(fwd.handle_timer(now))
        elif outstanding:
            sent = outstanding.pop()
            kind = step[1]
            if kind == "ok":
                data = answer_to(sent, f"{dns.message.from_wire(sent.data).question[0].name} "
                                       "300 A 192.0.2.80")
            elif kind == "tc":
                data = answer_to(sent, tc=True)
            elif kind == "servfail":
                data = answer_to(sent, rcode=dns.rcode.SERVFAIL)
            else:
                data = answer_to(sent, "x. 300 A 6.6.6.6", qid=(sent.query_id + 1) % 65536)
            take(fwd.receive(data, sent.upstream, now, sent.transport))
        assert fwd.pending <= 2
    while fwd.get_timer() is not None:
        now = max(now, fwd.get_timer())  # type: ignore[type-var]
        take(fwd.handle_timer(now))
    assert answered == asked


def test_a_forgotten_client_gets_nothing_and_the_others_still_do() -> None:
    fwd = forwarder()
    q = question()
    gone = client(q, qid=1, address=("192.0.2.60", 5353), transport="tcp")
    stays = client(q, qid=2, address=("192.0.2.60", 5353))  # same address, over UDP
    sent = one_send(fwd.query(q, gone, 0.0))
    assert fwd.query(q, stays, 0.0) == []
    assert fwd.forget(("192.0.2.60", 5353), "tcp") == 1
    assert fwd.forget(("192.0.2.60", 5353), "tcp") == 0
    out = fwd.receive(answer_to(sent, "www.example.com. 60 A 198.18.0.1"), sent.upstream, 0.1)
    assert [a.client for a in out] == [stays]  # the answer is still cached and delivered
    assert fwd.pending == 0 and fwd.stats["fwd_clients_gone"] == 1
