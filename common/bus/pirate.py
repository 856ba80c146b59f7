"""The Lazy Pirate's bookkeeping for one client socket, without sockets or clocks.

:class:`LazyPirate` keeps the requests in flight on one DEALER socket and
decides, from the times it is given, what the socket's owner must do. It
never reads a clock, sends, receives or sleeps: :class:`AsyncBusClient` and
:class:`SyncBusClient` (``client.py``) do the I/O around it, the way a
TFTP transfer's owner does (``now`` in, actions out, ``get_timer()`` for
the next wake).

The rules, in one place:

- A request's deadline is split over its attempts: each attempt gets an
  equal share of what is left when it starts.
- A reply is matched by request id, and taken only if it answers that
  request's kind (:func:`messages.answers`). A reply nobody waits for
  (late, duplicated) or of the wrong kind is counted and dropped; the
  request goes on waiting.
- When an attempt ends and nothing at all came back on the socket since it
  was sent, the socket is presumed wedged on a dead peer: it must be
  reopened, and every request still waiting is sent again on the new one,
  with the same ids (the store answers a retried id from memory).
- When the last attempt ends, the request fails with :class:`BusTimeout`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from astralboot.common.errors import BusTimeout, MalformedMessage
from astralboot.common.messages import answers
from astralboot.common.bus.frames import REPLY_LIMITS, unpack
from astralboot.common.bus.schema import Reply, Request

log = logging.getLogger(__name__)

MIN_ATTEMPT = 0.001  # seconds; an attempt whose share of the deadline is gone still gets this


class Call:
    """One request in flight: its bytes, its attempts, and how it ended.

    ``waiter`` belongs to the I/O side (an asyncio future); the core only
    carries it, so the owner needs no second table from ids to waiters.
    """

    __slots__ = ("rid", "request", "kind", "payload", "attempt", "attempts", "deadline",
                 "end", "sent_at", "expires", "reply", "error", "waiter")

    def __init__(self, rid: int, request: Request, payload: bytes, attempts: int,
                 deadline: float, end: float, waiter: Any) -> None:
        self.rid = rid
        self.request = request
        self.kind = request.kind
        self.payload = payload
        self.attempt = 0
        self.attempts = attempts
        self.deadline = deadline
        self.end = end
        self.sent_at = 0.0
        self.expires = 0.0
        self.reply: Reply | None = None
        self.error: BusTimeout | None = None
        self.waiter = waiter


@dataclass(frozen=True, slots=True)
class Wake:
    """What the socket's owner must do after :meth:`LazyPirate.handle_timer`, in this order.

    ``reset``: close the socket with LINGER 0 and open a new one (same
    routing identity); ``send``: payloads to write, on the new socket if
    reset; ``failed``: calls that ended with ``call.error`` set.
    """

    send: tuple[bytes, ...] = ()
    reset: bool = False
    failed: tuple[Call, ...] = ()


IDLE = Wake()


def as_reply(data: bytes) -> Reply | None:
    """The reply in a frame from the store, or None if it is not one (logged)."""
    try:
        msg = unpack(data, REPLY_LIMITS)
    except MalformedMessage as exc:
        log.warning("dropping malformed reply: %s", exc)
        return None
    if not isinstance(msg, Reply):
        log.warning("dropping %s: not a reply", msg.kind)
        return None
    return msg


class LazyPirate:
    """Requests in flight on one socket; ``now`` is any monotonic clock, in seconds."""

    def __init__(self, endpoint: str, *, retries: int,
                 stats: Counter[str] | None = None) -> None:
        self.endpoint = endpoint  # named in BusTimeout
        self.attempts = retries + 1
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.calls: dict[int, Call] = {}  # waiting, by request id
        self._expiries: list[tuple[float, int, Call]] = []  # may hold stale entries
        self._order = itertools.count()
        self._heard = float("-inf")  # when anything last came in on the socket

    # -- requests -------------------------------------------------------------

    def start(self, rid: int, request: Request, payload: bytes, deadline: float,
              now: float, waiter: Any = None) -> Call:
        """A new request: the owner sends ``call.payload`` now."""
        call = Call(rid, request, payload, self.attempts, deadline, now + deadline, waiter)
        self.calls[rid] = call
        self._arm(call, now)
        self.stats["sent"] += 1
        return call

    def forget(self, rid: int) -> None:
        """The caller stopped waiting (cancelled); a reply for it is now stray."""
        self.calls.pop(rid, None)

    def abandon(self) -> list[Call]:
        """Every waiting call, forgotten (the owner is closing)."""
        calls = list(self.calls.values())
        self.calls.clear()
        self._expiries.clear()
        return calls

    def _arm(self, call: Call, now: float) -> None:
        call.sent_at = now
        call.expires = now + max((call.end - now) / (call.attempts - call.attempt), MIN_ATTEMPT)
        heapq.heappush(self._expiries, (call.expires, next(self._order), call))

    # -- replies --------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Call | None:
        """A frame came in: the call it completes (``call.reply`` set), or None."""
        self._heard = now
        reply = as_reply(data)
        if reply is None:
            self.stats["malformed_replies"] += 1
            return None
        call = self.calls.get(reply.request_id)
        if call is None:
            self.stats["stray_replies"] += 1  # answered after we gave up, or twice
            return None
        if not answers(call.request, reply):
            self.stats["mismatched_replies"] += 1
            log.error("reply %s (id %x) does not answer %s; dropped", reply.kind, call.rid,
                      call.kind)
            return None
        del self.calls[call.rid]
        call.reply = reply
        return call

    # -- time -----------------------------------------------------------------

    @property
    def timers(self) -> int:
        """Timer entries held, stale ones included (bounded: a health figure)."""
        return len(self._expiries)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work next, or None when nothing waits."""
        expiries = self._expiries
        calls = self.calls
        while expiries:
            expires, _, call = expiries[0]
            if calls.get(call.rid) is call and call.expires == expires:
                return expires
            heapq.heappop(expiries)  # answered, forgotten, or re-armed since
        return None

    def handle_timer(self, now: float) -> Wake:
        """End the attempts due by ``now``; say what to send, reset and fail."""
        expiries = self._expiries
        calls = self.calls
        expired: list[Call] = []
        while expiries and expiries[0][0] <= now:
            _, _, call = heapq.heappop(expiries)
            if calls.get(call.rid) is not call or now < call.expires:
                continue  # answered, forgotten, or re-armed since this entry was queued
            expired.append(call)
        if not expired:
            return IDLE
        stats = self.stats
        heard = self._heard
        reset = any(heard < call.sent_at for call in expired)
        send: list[bytes] = []
        failed: list[Call] = []
        for call in expired:
            stats["attempt_timeouts"] += 1
            call.attempt += 1
            if call.attempt < call.attempts:
                stats["retries"] += 1
                log.debug("retrying %s (id %x), attempt %d", call.kind, call.rid,
                          call.attempt + 1)
                self._arm(call, now)
                if not reset:
                    send.append(call.payload)
            else:
                stats["timeouts"] += 1
                del calls[call.rid]
                call.error = BusTimeout(self.endpoint, call.kind, call.deadline, call.attempts)
                failed.append(call)
        if reset:
            # Nothing heard since an expired attempt went out: the new socket
            # carries every request still waiting, not only those due now.
            stats["resets"] += 1
            log.info("no reply from %s; reopening the bus socket", self.endpoint)
            send = [call.payload for call in calls.values()]
        stats["sent"] += len(send)
        return Wake(tuple(send), reset, tuple(failed))
