"""dhcpd's connection to the store: the bus's Lazy Pirate, without per-request
asyncio machinery.

Same contract as :class:`astralboot.common.bus.client.AsyncBusClient`:
a deadline per request split over a bounded number of attempts, replies
matched by request id, the socket reset and everything outstanding re-sent
when an attempt times out with nothing at all heard since it was sent, and
:class:`BusTimeout` at the deadline. Built for thousands of requests a
second: a plain DEALER socket read straight from the event loop's reader
callback; sends queued and written in one burst per loop iteration, so
ZeroMQ's I/O thread wakes once for many messages; one sweep timer for every
deadline instead of a timeout context per request. Against a peer that
answers at once, on these 2-core machines, it spends about half the CPU per
request of AsyncBusClient and carries about twice the requests per second.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import Counter

import zmq
from astralboot.common.bus.frames import pack, unpack
from astralboot.common.bus.schema import Reply, Request
from astralboot.common.errors import BusTimeout, MalformedMessage

log = logging.getLogger(__name__)

SWEEP = 0.05  # seconds between deadline checks
NOTIFY_DELAY = 0.005  # how long a notification may wait for company
HWM = 100_000
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: zmq's enum flags cost an Enum call per send
DRAIN = 1000  # replies read per wake-up before yielding


class _Call:
    __slots__ = (
        "attempt",
        "attempts",
        "deadline",
        "end",
        "expires",
        "future",
        "generation",
        "kind",
        "payload",
        "rid",
        "sent_at",
    )

    def __init__(self, rid: int, kind: str, payload: bytes, future: asyncio.Future[Reply],
                 attempts: int, deadline: float, end: float) -> None:
        self.rid = rid
        self.deadline = deadline
        self.kind = kind
        self.payload = payload
        self.future = future
        self.attempt = 0
        self.attempts = attempts
        self.end = end
        self.sent_at = 0.0
        self.generation = 0
        self.expires = 0.0


class StoreLink:
    """Many concurrent requests to the store over one DEALER socket."""

    def __init__(self, endpoint: str, *, deadline: float, retries: int = 2,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.retries = retries
        self.stats: Counter[str] = Counter()
        self._ctx = context or zmq.Context.instance()
        # A random high part keeps request ids apart across restarts; the store
        # answers a retried id with its first reply instead of doing it twice.
        self._ids = itertools.count((random.getrandbits(31) << 32) + 1)
        self._calls: dict[int, _Call] = {}
        self._expiries: list[tuple[float, int, _Call]] = []
        self._order = itertools.count()
        self._sock: zmq.Socket | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._check_scheduled = False
        self._outbox: list[bytes] = []
        self._flush_soon = False
        self._flush_later: asyncio.TimerHandle | None = None
        self._generation = 0
        self._last_reply = 0.0

    # -- lifecycle -----------------------------------------------------------

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connect()
        self._sweeper = self._loop.call_later(SWEEP, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._flush()  # what is queued (boot events) still goes out
        self._disconnect(linger=500)
        for call in self._calls.values():
            if not call.future.done():
                call.future.cancel()
        self._calls.clear()
        self._expiries.clear()

    def _connect(self) -> None:
        assert self._loop is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.connect(self.endpoint)
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._generation += 1
        self._loop.add_reader(self._fd, self._readable)

    def _disconnect(self, linger: int) -> None:
        if self._sock is None:
            return
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._sock.close(linger=linger)
        self._sock = None
        self._fd = None

    # -- requests ------------------------------------------------------------

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Send ``msg`` and return its reply (possibly an ErrorReply)."""
        loop = self._loop
        assert loop is not None, "open() first"
        rid = next(self._ids)
        wait = self.deadline if deadline is None else deadline
        call = _Call(rid, msg.kind, pack(msg, rid), loop.create_future(), self.retries + 1,
                     wait, loop.time() + wait)
        self._calls[rid] = call
        self._attempt(call)
        try:
            return await call.future
        finally:
            self._calls.pop(rid, None)

    def notify(self, msg: Request) -> None:
        """Send a message that has no reply (boot events); never blocks.

        It may wait up to NOTIFY_DELAY to travel with others: nobody waits
        for it, and fewer bursts cost less.
        """
        self._send(pack(msg, next(self._ids)), urgent=False)
        self.stats["notified"] += 1

    def _attempt(self, call: _Call, send: bool = True) -> None:
        assert self._loop is not None
        now = self._loop.time()
        call.sent_at = now
        call.generation = self._generation
        call.expires = now + max((call.end - now) / (call.attempts - call.attempt), 0.001)
        heapq.heappush(self._expiries, (call.expires, next(self._order), call))
        if send:
            self._send(call.payload)
            self.stats["sent"] += 1

    def _send(self, payload: bytes, urgent: bool = True) -> None:
        # Queued and sent together once the current callback is done: a burst
        # of sends wakes ZeroMQ's I/O thread once, one send at a time wakes it
        # for each (about 40 us of CPU apiece on these machines).
        self._outbox.append(payload)
        loop = self._loop
        assert loop is not None
        if urgent:
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif not self._flush_soon and self._flush_later is None:
            self._flush_later = loop.call_later(NOTIFY_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        outbox, self._outbox = self._outbox, []
        sock = self._sock
        if sock is None:
            return
        for payload in outbox:
            try:
                # One frame: the ROUTER adds the identity, and frames[-1] is
                # the body on both sides, so no empty delimiter is needed.
                sock.send(payload, NOBLOCK)
            except zmq.Again:
                self.stats["send_full"] += 1  # requests are retried by the sweep
        self._readable()  # a send can consume the edge of replies already waiting

    def _schedule_check(self) -> None:
        # ZMQ_FD is edge-triggered and a send can consume the edge of replies
        # that arrived meanwhile: look again once the current callback is done.
        if not self._check_scheduled and self._loop is not None:
            self._check_scheduled = True
            self._loop.call_soon(self._readable)

    # -- replies -------------------------------------------------------------

    def _readable(self) -> None:
        self._check_scheduled = False
        sock = self._sock
        if sock is None:
            return
        assert self._loop is not None
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            self._last_reply = self._loop.time()
            try:
                reply = unpack(frames[-1])
            except MalformedMessage as exc:
                self.stats["malformed_replies"] += 1
                log.warning("dropping malformed reply: %s", exc)
                continue
            call = self._calls.get(reply.request_id)
            if call is None or call.future.done() or not isinstance(reply, Reply):
                self.stats["stray_replies"] += 1
                continue
            call.future.set_result(reply)
        self._schedule_check()  # more than DRAIN waiting: come back after others ran

    # -- deadlines -----------------------------------------------------------

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        expiries = self._expiries
        expired: list[_Call] = []
        while expiries and expiries[0][0] <= now:
            _, _, call = heapq.heappop(expiries)
            if call.future.done() or self._calls.get(call.rid) is not call:
                continue
            if now < call.expires:
                continue  # re-sent since this entry was queued
            expired.append(call)
        # Nothing at all heard since an expired attempt went out: the store may
        # be gone, or the socket wedged on a dead peer. Reopen it.
        reset = any(self._last_reply < c.sent_at and c.generation == self._generation
                    for c in expired)
        for call in expired:
            self.stats["attempt_timeouts"] += 1
            call.attempt += 1
            if call.attempt < call.attempts:
                self.stats["retries"] += 1
                log.debug("retrying %s (id %x), attempt %d", call.kind, call.rid,
                          call.attempt + 1)
                self._attempt(call, send=not reset)  # a reset re-sends it anyway
            else:
                self.stats["timeouts"] += 1
                self._calls.pop(call.rid, None)
                call.future.set_exception(BusTimeout(self.endpoint, call.kind, call.deadline,
                                                     call.attempts))
        if reset:
            self._reset()
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    def _reset(self) -> None:
        """Nothing heard from the store: reopen the socket, re-send what waits."""
        self.stats["resets"] += 1
        log.info("no reply from %s; reopening the bus socket", self.endpoint)
        self._disconnect(linger=0)
        self._connect()
        for call in self._calls.values():
            if not call.future.done():
                call.generation = self._generation
                self._send(call.payload)
                self.stats["sent"] += 1
