"""Lease states and the events that move a lease between them: one table.

:data:`TRANSITIONS` maps (state, event) to the state the lease ends in; a
pair that is not in it is refused (how depends on the request: a NAK, a
conflict, or nothing for a RELEASE). The key's state is the one the lease
has in memory (and in the ``leases.state`` column), ``None`` for an
address no lease was ever kept for.

Time sits beside the table, not in it: a held state (``offered``,
``bound``, ``declined``) past its ``expires`` is *shown* as ``expired``
but keeps its state until the next event, and the guards that read the
clock (whether a lease is still held, whether a quarantine is over) are
the lease book's.

Both enums are ``str`` enums: a member is equal to, hashes like, formats
as and is packed (msgpack, the database driver) exactly as its value, so
rows and bus messages carry the same plain strings as before.
"""

from __future__ import annotations

import enum


class LeaseState(enum.StrEnum):
    OFFERED = "offered"  # held for a client that sent DISCOVER, until it REQUESTs
    BOUND = "bound"  # acknowledged; the client uses the address until ``expires``
    RELEASED = "released"  # the client gave a binding back (or moved to another address)
    DECLINED = "declined"  # the client found the address in use: quarantined
    EXPIRED = "expired"  # an offer given up, released or replaced; free


class LeaseEvent(enum.StrEnum):
    OFFER = "offer"  # a DISCOVER is answered with this address
    COMMIT = "commit"  # a REQUEST (selecting, init-reboot) or an import binds it
    RENEW = "renew"  # a REQUEST renewing or rebinding the client's binding
    RELEASE = "release"  # the client's RELEASE, while the lease is held
    DECLINE = "decline"  # the client's DECLINE
    MOVE = "move"  # the client bound another address of the pool, while this is held
    RECLAIM = "reclaim"  # the oldest unbound offer goes (offer_share reached)


OFFERED, BOUND, RELEASED, DECLINED, EXPIRED = LeaseState
HELD = frozenset({OFFERED, BOUND, DECLINED})  # states that keep an address until ``expires``

TRANSITIONS: dict[tuple[LeaseState | None, LeaseEvent], LeaseState] = {
    # An address the lease book chose for the client: free, the client's own,
    # or a declined one whose quarantine is over (the book's guard).
    (None, LeaseEvent.OFFER): OFFERED,
    (OFFERED, LeaseEvent.OFFER): OFFERED,
    (BOUND, LeaseEvent.OFFER): OFFERED,  # the client's binding while held is kept, not offered
    (RELEASED, LeaseEvent.OFFER): OFFERED,
    (DECLINED, LeaseEvent.OFFER): OFFERED,
    (EXPIRED, LeaseEvent.OFFER): OFFERED,
    (None, LeaseEvent.COMMIT): BOUND,
    (OFFERED, LeaseEvent.COMMIT): BOUND,
    (BOUND, LeaseEvent.COMMIT): BOUND,
    (RELEASED, LeaseEvent.COMMIT): BOUND,
    (DECLINED, LeaseEvent.COMMIT): BOUND,
    (EXPIRED, LeaseEvent.COMMIT): BOUND,
    # Renewing needs a binding (RFC 2131 4.3.2): anything else is NAKed.
    (BOUND, LeaseEvent.RENEW): BOUND,
    # An offer never taken leaves no binding to release.
    (OFFERED, LeaseEvent.RELEASE): EXPIRED,
    (BOUND, LeaseEvent.RELEASE): RELEASED,
    # Only an address offered or bound to the client may be declined (4.3.3).
    (OFFERED, LeaseEvent.DECLINE): DECLINED,
    (BOUND, LeaseEvent.DECLINE): DECLINED,
    (OFFERED, LeaseEvent.MOVE): EXPIRED,
    (BOUND, LeaseEvent.MOVE): RELEASED,
    # A declined address stays quarantined when its decliner binds another:
    # the host that answered for it is still there.
    (OFFERED, LeaseEvent.RECLAIM): EXPIRED,
}

