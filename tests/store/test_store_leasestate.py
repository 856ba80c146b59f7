"""Lease states as a table: every (state, event) pair, on the table and on the lease book.

``EXPECTED`` is the rule written out once more by hand; the first test holds
the store's table to it, the second makes each pair happen to a real
:class:`LeaseBook` (sans-IO: the clock is an argument) and looks at the
address afterwards. A pair missing from the table is refused: the lease
keeps its state (and a renewal or a decline is answered ``conflict``).
"""

from __future__ import annotations

from typing import Callable

import pytest

from astralboot.common.bus.frames import pack
from astralboot.common.errors import ErrorCode
from astralboot.common.messages import LeaseGrant
from astralboot.services.store.leases import (LeaseBook, LeaseEvent, LeaseState, Refusal,
                                              ip_int)
from astralboot.services.store.leasestate import TRANSITIONS

from test_store_leasebook import HOLD, LEASE, NET, QUARANTINE, book, c

OFFERED, BOUND, RELEASED, DECLINED, EXPIRED = (LeaseState.OFFERED, LeaseState.BOUND,
                                               LeaseState.RELEASED, LeaseState.DECLINED,
                                               LeaseState.EXPIRED)
E = LeaseEvent

EXPECTED: dict[tuple[LeaseState | None, LeaseEvent], LeaseState] = {
    # (state before, event): state after; None before: no lease on the address yet
    (None, E.OFFER): OFFERED, (OFFERED, E.OFFER): OFFERED, (BOUND, E.OFFER): OFFERED,
    (RELEASED, E.OFFER): OFFERED, (DECLINED, E.OFFER): OFFERED, (EXPIRED, E.OFFER): OFFERED,
    (None, E.COMMIT): BOUND, (OFFERED, E.COMMIT): BOUND, (BOUND, E.COMMIT): BOUND,
    (RELEASED, E.COMMIT): BOUND, (DECLINED, E.COMMIT): BOUND, (EXPIRED, E.COMMIT): BOUND,
    (BOUND, E.RENEW): BOUND,
    (OFFERED, E.RELEASE): EXPIRED, (BOUND, E.RELEASE): RELEASED,
    (OFFERED, E.DECLINE): DECLINED, (BOUND, E.DECLINE): DECLINED,
    (OFFERED, E.MOVE): EXPIRED, (BOUND, E.MOVE): RELEASED,
    (OFFERED, E.RECLAIM): EXPIRED,
}

PAIRS = [(state, event) for state in (None, *LeaseState) for event in LeaseEvent]
A, B = "10.0.0.10", "10.0.0.11"  # the address under test; another one of the pool
LATER = LEASE + QUARANTINE + 10  # every hold, quarantine and lease has run out


def pair_id(pair: tuple[LeaseState | None, LeaseEvent]) -> str:
    return f"{pair[0] or 'none'}-{pair[1]}"


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_the_table_holds_the_rules(pair: tuple[LeaseState | None, LeaseEvent]) -> None:
    assert TRANSITIONS.get(pair) == EXPECTED.get(pair)


# -- the lease book ---------------------------------------------------------------

def put_in(state: LeaseState | None) -> LeaseBook:
    """A book where client 1 has ``A`` in ``state`` at time 0 (two addresses, cap one offer)."""
    b = book(last=B, offer_share=0.5)
    one = c(1)
    if state is None:
        return b
    b.offer(NET, one, A, None, 0)
    if state is BOUND or state is RELEASED:
        b.commit(NET, A, "select", one, None, 0)
    if state is RELEASED or state is EXPIRED:
        b.release(A, one, 0)
    if state is DECLINED:
        b.decline(A, one, 0)
    assert state_of(b) == state
    return b


def state_of(b: LeaseBook) -> LeaseState | None:
    lease = b.by_address(ip_int(A))
    return None if lease is None else lease.state


# How each event happens to ``A``. OFFER and COMMIT come after every hold ran
# out (a live binding or quarantine is the book's guard, tested below); the
# others while the lease is still held, as RELEASE and MOVE require.
ACTIONS: dict[LeaseEvent, Callable[[LeaseBook], object]] = {
    E.OFFER: lambda b: b.offer(NET, c(1), A, None, LATER),
    E.COMMIT: lambda b: b.commit(NET, A, "select", c(1), None, LATER),
    E.RENEW: lambda b: b.commit(NET, A, "renew", c(1), None, 1),
    E.RELEASE: lambda b: b.release(A, c(1), 1),
    E.DECLINE: lambda b: b.decline(A, c(1), 1),
    E.MOVE: lambda b: b.commit(NET, B, "select", c(1), None, 1),  # client 1 takes B instead
    E.RECLAIM: lambda b: b.offer(NET, c(2), B, None, 1),  # a new client; the cap is one offer
}
REFUSED_WITH_CONFLICT = {E.RENEW, E.DECLINE}  # the others are refused without a word
# A renewal for an address that has no lease at all: no record of the client
# (dhcpd then NAKs a RENEWING client and stays silent to a REBINDING one).
REFUSED_NOT_FOUND = {(None, E.RENEW)}


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_the_lease_book_follows_the_table(pair: tuple[LeaseState | None, LeaseEvent]) -> None:
    state, event = pair
    b = put_in(state)
    after = EXPECTED.get(pair)
    if after is None and event in REFUSED_WITH_CONFLICT:
        with pytest.raises(Refusal) as refused:
            ACTIONS[event](b)
        expected = ErrorCode.NOT_FOUND if pair in REFUSED_NOT_FOUND else ErrorCode.CONFLICT
        assert refused.value.code is expected
    else:
        ACTIONS[event](b)
    assert state_of(b) == (state if after is None else after)
    if event is E.RECLAIM:
        assert b.pools[NET].reclaimed == (1 if after is not None else 0)


def test_a_held_binding_is_shown_to_its_client_not_offered_again() -> None:
    b = put_in(BOUND)
    lease = b.offer(NET, c(1), A, None, 1)
    assert (lease.ip, lease.state) == (A, BOUND)


def test_a_quarantined_address_goes_to_nobody_not_even_its_decliner() -> None:
    b = put_in(DECLINED)
    assert b.offer(NET, c(1), None, None, 1).ip == B
    with pytest.raises(Refusal) as refused:
        b.commit(NET, A, "select", c(1), None, QUARANTINE - 1)
    assert refused.value.code is ErrorCode.CONFLICT
    assert state_of(b) == DECLINED


def test_a_quarantine_outlasts_its_decliner_binding_another_address() -> None:
    # The decliner saw another host answer for A; that host is still there
    # after the decliner moves on to B, so A stays out of the pool.
    b = put_in(DECLINED)
    b.commit(NET, B, "reboot", c(1), None, 1)  # INIT-REBOOT with an address it knew
    assert state_of(b) == DECLINED
    with pytest.raises(Refusal) as refused:
        b.commit(NET, A, "select", c(2), None, QUARANTINE - 1)
    assert refused.value.code is ErrorCode.CONFLICT
    with pytest.raises(Refusal) as refused:  # B is bound, A quarantined: nothing is free
        b.offer(NET, c(2), A, None, QUARANTINE - 1)
    assert refused.value.code is ErrorCode.POOL_EXHAUSTED


def test_a_lease_past_its_hold_is_shown_expired_and_cannot_be_released() -> None:
    b = put_in(OFFERED)
    lease = b.by_address(ip_int(A))
    assert lease is not None and lease.shown_state(HOLD + 1) == EXPIRED
    assert b.release(A, c(1), HOLD + 1) == []
    assert lease.state == OFFERED


# -- what leaves the store ----------------------------------------------------------

def test_states_are_plain_strings_on_the_wire() -> None:
    for state in LeaseState:
        as_member = LeaseGrant(ip=A, state=state, lease_time=LEASE, expires=1.0)
        as_text = LeaseGrant(ip=A, state=state.value, lease_time=LEASE, expires=1.0)  # type: ignore[arg-type]
        assert pack(as_member, 7) == pack(as_text, 7)
        assert f"{state}" == str(state) == state.value


def test_a_lease_row_and_record_carry_the_state_s_name() -> None:
    b = put_in(BOUND)
    lease = b.by_address(ip_int(A))
    assert lease is not None
    assert lease.row(1)["state"] == "bound"
    assert lease.record(LATER).state == "expired"


def test_the_bus_and_the_command_line_name_the_same_states() -> None:
    # messages.LeaseState (the bus schema's Literal) feeds `leases list --state`.
    from typing import get_args

    from astralboot.common import messages
    assert [s.value for s in LeaseState] == list(get_args(messages.LeaseState))
