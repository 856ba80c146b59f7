"""The Lazy Pirate core over time: no sockets, no sleeping, the clock is a number.

Every case drives :class:`LazyPirate` with explicit times, the way the
clients do, and checks what it tells its owner to do.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.common.bus.frames import pack
from astralboot.common.bus.pirate import IDLE, MIN_ATTEMPT, Call, LazyPirate
from astralboot.common.errors import BusTimeout, ErrorCode
from astralboot.common.messages import (ErrorReply, HealthReply, MachineGet, MachineRecord,
                                        MachineReply)

ENDPOINT = "ipc:///run/astralboot/bus.sock"


def machine(mac: str) -> MachineGet:
    return MachineGet(mac=mac)


def good(call: Call) -> bytes:
    """The right answer to a MachineGet call, as the store would frame it."""
    assert isinstance(call.request, MachineGet)
    return pack(MachineReply(machine=MachineRecord(mac=call.request.mac, name="n")), call.rid)


def start(pirate: LazyPirate, rid: int, now: float, deadline: float = 3.0) -> Call:
    msg = machine(f"52:54:00:00:{rid >> 8 & 0xff:02x}:{rid & 0xff:02x}")
    return pirate.start(rid, msg, pack(msg, rid), deadline, now)


def new(retries: int = 2) -> LazyPirate:
    return LazyPirate(ENDPOINT, retries=retries, stats=Counter())


# -- a reply in time ---------------------------------------------------------------


def test_a_reply_in_time_completes_the_call_and_ends_its_timer() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    assert pirate.get_timer() == pytest.approx(1.0)  # 3 s over 3 attempts
    assert pirate.receive(good(call), now=0.4) is call
    assert isinstance(call.reply, MachineReply) and call.error is None
    assert pirate.get_timer() is None and pirate.calls == {}
    assert pirate.handle_timer(10.0) is IDLE
    assert pirate.stats == Counter(sent=1)


def test_an_error_reply_answers_any_request() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    err = pack(ErrorReply(code=ErrorCode.NOT_FOUND.value, detail="no such machine"), 1)
    assert pirate.receive(err, now=0.1) is call and isinstance(call.reply, ErrorReply)


def test_replies_complete_concurrent_calls_in_any_order() -> None:
    pirate = new()
    calls = [start(pirate, rid, now=rid / 100) for rid in range(1, 6)]
    for call in reversed(calls):
        assert pirate.receive(good(call), now=0.5) is call
    assert pirate.calls == {} and pirate.stats["sent"] == 5


# -- silence: retry, reset, time out ---------------------------------------------------


def test_silence_past_an_attempt_resets_the_socket_and_resends_every_waiting_call() -> None:
    pirate = new()
    first = start(pirate, 1, now=0.0)  # attempt ends at 1.0
    second = start(pirate, 2, now=0.5)  # attempt ends at 1.5, not due yet
    wake = pirate.handle_timer(1.0)
    assert wake.reset is True
    assert wake.send == (first.payload, second.payload)  # same ids, on the new socket
    assert wake.failed == ()
    assert first.attempt == 1 and second.attempt == 0
    assert pirate.stats == Counter(sent=4, attempt_timeouts=1, retries=1, resets=1)


def test_an_attempt_that_ends_while_the_socket_talks_is_resent_without_a_reset() -> None:
    pirate = new()
    first = start(pirate, 1, now=0.0)
    second = start(pirate, 2, now=0.1)
    assert pirate.receive(good(second), now=0.5) is second  # the peer is alive
    wake = pirate.handle_timer(1.0)
    assert wake.reset is False
    assert wake.send == (first.payload,)
    assert pirate.stats["resets"] == 0 and pirate.stats["retries"] == 1


def test_something_heard_before_the_attempt_went_out_does_not_count() -> None:
    pirate = new()
    early = start(pirate, 1, now=0.0)
    pirate.receive(good(early), now=0.1)
    late = start(pirate, 2, now=0.2)  # nothing heard after this
    assert pirate.handle_timer(1.25).reset is True
    assert late.attempt == 1


# Each row: retries, deadline, the times the owner wakes, and what each wake holds:
# (resends, reset, failed). The deadline is split over the attempts that are left;
# nothing is ever heard, so every attempt that ends (the last one too) reopens the
# socket. Times are exact in binary so that the rows say what they mean.
TIMELINES = [
    ("three attempts, on time", 2, 3.0, [0.5, 1.0, 2.0, 3.0],
     [(0, False, False), (1, True, False), (1, True, False), (0, True, True)]),
    ("no retries", 0, 0.5, [0.25, 0.5],
     [(0, False, False), (0, True, True)]),
    ("a late wake shortens the next attempts", 2, 3.0, [1.5, 2.25, 3.0],
     [(1, True, False), (1, True, False), (0, True, True)]),
    ("wakes past the deadline still end one attempt each", 2, 3.0, [5.0, 6.0, 7.0],
     [(1, True, False), (1, True, False), (0, True, True)]),
]


@pytest.mark.parametrize("name, retries, deadline, wakes, expected", TIMELINES,
                         ids=[row[0] for row in TIMELINES])
def test_timeline_of_one_unanswered_call(name: str, retries: int, deadline: float,
                                         wakes: list[float],
                                         expected: list[tuple[int, bool, bool]]) -> None:
    pirate = new(retries)
    start(pirate, 7, now=0.0, deadline=deadline)
    for now, (resends, reset, failed) in zip(wakes, expected):
        wake = pirate.handle_timer(now)
        assert (len(wake.send), wake.reset, bool(wake.failed)) == (resends, reset, failed), now


def test_past_the_deadline_the_call_fails_with_bus_timeout() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    for now in (1.0, 2.0):
        assert pirate.handle_timer(now).failed == ()
    wake = pirate.handle_timer(3.0)
    assert wake.failed == (call,) and wake.send == ()
    assert isinstance(call.error, BusTimeout)
    assert (call.error.endpoint, call.error.kind, call.error.deadline,
            call.error.attempts) == (ENDPOINT, "machine.get", 3.0, 3)
    assert pirate.calls == {} and pirate.get_timer() is None
    assert pirate.stats == Counter(sent=3, attempt_timeouts=3, retries=2, resets=3, timeouts=1)


def test_the_last_attempt_never_ends_before_the_deadline() -> None:
    pirate = new()
    start(pirate, 1, now=0.0)
    pirate.handle_timer(1.0)
    pirate.handle_timer(2.0)
    assert pirate.handle_timer(2.999).failed == ()
    assert len(pirate.handle_timer(3.0).failed) == 1


def test_a_reset_resends_the_calls_still_waiting_but_not_the_failed_ones() -> None:
    pirate = new()
    short = start(pirate, 1, now=0.0, deadline=0.75)
    pirate.handle_timer(0.25)
    pirate.handle_timer(0.5)
    long = start(pirate, 2, now=0.5, deadline=3.0)
    wake = pirate.handle_timer(0.75)  # short's last attempt ends, long's first is not due
    assert wake.failed == (short,) and wake.reset is True
    assert wake.send == (long.payload,) and long.attempt == 0


# -- replies nobody waits for ----------------------------------------------------------


def test_a_reply_for_an_unknown_id_is_counted_and_dropped() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    stranger = pack(MachineReply(machine=MachineRecord(mac=call.request.mac, name="n")), 99)
    assert pirate.receive(stranger, now=0.1) is None
    assert pirate.stats["stray_replies"] == 1 and 1 in pirate.calls


def test_a_reply_of_the_wrong_kind_is_counted_dropped_and_the_call_waits_on() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    wrong = [
        pack(HealthReply(service="store", version="0", pid=1, host="h", started=0.0), 1),
        pack(MachineReply(machine=MachineRecord(mac="02:00:00:00:00:99", name="x")), 1),
    ]
    for data in wrong:
        assert pirate.receive(data, now=0.1) is None
    assert pirate.stats["mismatched_replies"] == 2 and call.reply is None
    assert pirate.receive(good(call), now=0.2) is call


def test_a_frame_that_is_not_a_reply_is_counted_and_dropped() -> None:
    pirate = new()
    start(pirate, 1, now=0.0)
    assert pirate.receive(b"\xc1garbage", now=0.1) is None
    assert pirate.receive(pack(machine("aa"), 1), now=0.1) is None  # a request, not a reply
    assert pirate.stats["malformed_replies"] == 2 and 1 in pirate.calls


def test_a_frame_that_is_not_a_reply_still_proves_the_socket_alive() -> None:
    pirate = new()
    start(pirate, 1, now=0.0)
    pirate.receive(b"\xc1garbage", now=0.5)
    assert pirate.handle_timer(1.0).reset is False


def test_late_replies_after_completion_or_timeout_are_ignored() -> None:
    pirate = new()
    done = start(pirate, 1, now=0.0)
    gone = start(pirate, 2, now=0.0, deadline=0.3)
    assert pirate.receive(good(done), now=0.1) is done
    for now in (0.1, 0.2, 0.3):
        pirate.handle_timer(now)
    assert gone.error is not None
    first_reply = done.reply
    assert pirate.receive(good(done), now=0.4) is None  # a duplicate (a retry answered twice)
    assert pirate.receive(good(gone), now=0.4) is None  # after we gave up
    assert done.reply is first_reply and gone.reply is None
    assert pirate.stats["stray_replies"] == 2


def test_a_forgotten_call_is_never_resent_or_failed() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    pirate.forget(1)
    assert pirate.get_timer() is None
    assert pirate.handle_timer(5.0) is IDLE
    assert pirate.receive(good(call), now=5.0) is None


def test_abandon_returns_every_waiting_call() -> None:
    pirate = new()
    calls = [start(pirate, rid, now=0.0) for rid in (1, 2, 3)]
    pirate.receive(good(calls[1]), now=0.1)
    assert pirate.abandon() == [calls[0], calls[2]]
    assert pirate.calls == {} and pirate.get_timer() is None


def test_completed_calls_leave_no_timers_behind() -> None:
    # A sync client's thread asks one thing at a time and may never see a
    # timeout: the timers of its answered calls must not pile up.
    pirate = new()
    for rid in range(1, 1001):
        call = start(pirate, rid, now=rid * 0.001)
        assert pirate.get_timer() == pytest.approx(call.expires)
        pirate.receive(good(call), now=rid * 0.001)
    assert pirate.get_timer() is None
    assert pirate.timers == 0


# -- properties over time ---------------------------------------------------------------

# One step: start a call, answer a waiting call (rightly or wrongly), or let time pass.
STEPS = st.lists(st.one_of(
    st.tuples(st.just("start"), st.sampled_from([0.3, 1.0, 3.0])),
    st.tuples(st.just("answer"), st.integers(0, 50)),
    st.tuples(st.just("wrong"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.floats(0.0, 1.5)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.integers(0, 3))
def test_every_call_ends_exactly_once_and_never_before_its_deadline(
        steps: list[tuple[str, float]], retries: int) -> None:
    pirate = new(retries)
    now = 0.0
    started: list[Call] = []
    completed: set[int] = set()
    failed: set[int] = set()
    sends = 0

    def wake() -> None:
        nonlocal sends
        result = pirate.handle_timer(now)
        sends += len(result.send)
        ended = completed | failed
        for payload in result.send:
            assert not any(c.payload == payload and c.rid in ended for c in started)
        if result.reset:  # everything still waiting goes out again
            assert len(result.send) == len(pirate.calls)
        for call in result.failed:
            assert call.rid not in ended and now >= call.end - 1e-9
            assert isinstance(call.error, BusTimeout)
            failed.add(call.rid)

    for step, value in steps:
        if step == "start":
            started.append(start(pirate, len(started) + 1, now, deadline=float(value)))
        elif step in ("answer", "wrong") and started:
            call = started[int(value) % len(started)]
            data = good(call) if step == "answer" else pack(
                MachineReply(machine=MachineRecord(mac="02:00:00:00:00:99", name="x")), call.rid)
            done = pirate.receive(data, now)
            waiting = call.rid not in completed | failed
            assert (done is call) == (step == "answer" and waiting)
            if done is not None:
                completed.add(done.rid)
        elif step == "tick":
            now += value
            wake()
        timer = pirate.get_timer()
        assert (timer is None) == (not pirate.calls)
    # Let time run out: everything left fails by its deadline, nothing else happens.
    while (timer := pirate.get_timer()) is not None:
        now = max(now, timer)
        wake()
    assert completed | failed == {c.rid for c in started}
    assert not completed & failed
    assert pirate.stats["sent"] == len(started) + sends
    assert pirate.stats["timeouts"] == len(failed)


def test_an_attempt_past_the_deadline_still_gets_min_attempt() -> None:
    pirate = new()
    call = start(pirate, 1, now=0.0)
    pirate.handle_timer(5.0)
    assert call.expires == 5.0 + MIN_ATTEMPT
