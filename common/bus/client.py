"""Reliable request/reply clients for the bus (the Lazy Pirate pattern).

Each request has a deadline, split over a bounded number of attempts. A
reply is matched to its request by request id, so one DEALER socket carries
any number of concurrent requests. When an attempt times out and nothing at
all has come back on the socket since it was sent, the peer is presumed
gone: the socket is closed with LINGER 0 and reopened, and every request
still waiting is sent again on the new one. When the deadline passes the
caller gets :class:`BusTimeout`; an error reply becomes :class:`RemoteError`
through :meth:`call`.

:class:`AsyncBusClient` serves asyncio code (dhcpd, tftpd, the store's own
tools). :class:`SyncBusClient` serves threads and gunicorn's sync workers:
one socket per thread, created lazily and again after a fork.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import secrets
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, TypeVar

import zmq

from ..errors import BusTimeout, MalformedMessage, RemoteError
from ..messages import ErrorReply, answers
from .frames import REPLY_LIMITS, pack, unpack
from .schema import Reply, Request

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 3.0
DEFAULT_RETRIES = 2
HWM = 100_000

if TYPE_CHECKING:
    from .security import ClientCurve

R = TypeVar("R", bound=Reply)


def _request_ids() -> itertools.count[int]:
    # A random high part keeps ids from different clients (and restarts of
    # one client) apart. Made anew in each process: a counter copied into
    # forked workers would send the same ids from all of them. The store
    # keys retries by (peer, id), so ids need only be unique per client.
    return itertools.count((secrets.randbits(31) << 32) + 1)


def new_identity() -> bytes:
    """A routing identity for one client socket, kept when the socket is reopened.

    The store remembers answers by (identity, request id), so a request sent
    again on a reopened socket is recognised as the same request. Random
    and 16 bytes long, it is not another client's to guess; ZeroMQ keeps
    identities that start with a zero byte for its own.
    """
    return bytes((secrets.randbelow(255) + 1,)) + secrets.token_bytes(15)


def _configure(sock: zmq.Socket, endpoint: str, identity: bytes,
               curve: "ClientCurve | None" = None) -> None:
    if curve is not None:
        curve.apply(sock)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, REPLY_LIMITS.frame)
    sock.connect(endpoint)


def _as_reply(data: bytes) -> Reply | None:
    try:
        msg = unpack(data, REPLY_LIMITS)
    except MalformedMessage as exc:
        log.warning("dropping malformed reply: %s", exc)
        return None
    if not isinstance(msg, Reply):
        log.warning("dropping %s: not a reply", msg.kind)
        return None
    return msg


def _mismatch(stats: Counter[str], request: Request, rid: int, reply: Reply) -> None:
    stats["mismatched_replies"] += 1
    log.error("reply %s (id %x) does not answer %s; dropped", reply.kind, rid, request.kind)


def raise_for_error(reply: Reply) -> Reply:
    if isinstance(reply, ErrorReply):
        raise RemoteError(reply.error_code, reply.detail)
    return reply


SWEEP = 0.05  # seconds between deadline checks
NOTIFY_DELAY = 0.005  # how long a notification may wait for company
COALESCE_MAX = 64  # a full burst goes out at once, whatever the coalescing window
DRAIN = 64  # replies read per wake-up before other callbacks (the ACKs they free) run


class _Call:
    """One request in flight: its bytes, its future, and its attempts so far."""

    __slots__ = ("rid", "request", "kind", "payload", "future", "attempt", "attempts",
                 "deadline", "end", "sent_at", "expires", "generation")

    def __init__(self, rid: int, request: Request, payload: bytes,
                 future: asyncio.Future[Reply], attempts: int, deadline: float,
                 end: float) -> None:
        self.rid = rid
        self.request = request
        self.kind = request.kind
        self.payload = payload
        self.future = future
        self.attempt = 0
        self.attempts = attempts
        self.deadline = deadline
        self.end = end
        self.sent_at = 0.0
        self.expires = 0.0
        self.generation = 0


class AsyncBusClient:
    """Many concurrent requests over one DEALER socket, from asyncio code.

    Built for thousands of requests a second (dhcpd): the socket is read
    straight from the event loop's reader callback; sends are queued and
    written in one burst per loop pass, so ZeroMQ's I/O thread wakes once for
    many messages; and one sweep timer serves every deadline instead of a
    timeout context per request.
    """

    def __init__(self, endpoint: str, *, deadline: float = DEFAULT_DEADLINE,
                 retries: int = DEFAULT_RETRIES, context: zmq.Context | None = None,
                 coalesce: float = 0.0, curve: "ClientCurve | None" = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.deadline = deadline
        self.retries = retries
        # Seconds a request may wait for others to travel with. Waking
        # ZeroMQ's I/O thread for a lone message costs ten times what a
        # message in a burst costs, so a server whose clients wait seconds
        # anyway (dhcpd) trades a millisecond or two for far less CPU.
        self.coalesce = coalesce
        self.stats: Counter[str] = Counter()
        self._ctx = context or zmq.Context.instance()
        self._ids = _request_ids()
        self._identity = new_identity()
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
        self._closed = False

    # -- public API ----------------------------------------------------------

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Send ``msg`` and return its reply (possibly an ErrorReply)."""
        loop = self._open()
        rid = next(self._ids)
        wait = self.deadline if deadline is None else deadline
        call = _Call(rid, msg, pack(msg, rid), loop.create_future(), self.retries + 1,
                     wait, loop.time() + wait)
        self._calls[rid] = call
        self._attempt(call)
        try:
            return await call.future
        finally:
            self._calls.pop(rid, None)

    async def call(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Like :meth:`request`, raising :class:`RemoteError` on an error reply."""
        return raise_for_error(await self.request(msg, deadline=deadline))

    def notify(self, msg: Request) -> None:
        """Send a message that has no reply (boot events); never blocks.

        It may wait up to NOTIFY_DELAY to travel with others: nobody waits
        for it, and fewer bursts cost less.
        """
        self._open()
        self._send(pack(msg, next(self._ids)), urgent=False)
        self.stats["notified"] += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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

    async def __aenter__(self) -> "AsyncBusClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- socket lifecycle ----------------------------------------------------

    def _open(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("bus client is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._connect()
            self._sweeper = self._loop.call_later(SWEEP, self._sweep)
        return self._loop

    def _connect(self) -> None:
        assert self._loop is not None
        sock = self._ctx.socket(zmq.DEALER)
        _configure(sock, self.endpoint, self._identity, self.curve)
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._generation += 1
        self._loop.add_reader(self._fd, self._readable)

    def _disconnect(self, linger: int) -> None:
        if self._sock is None:
            return
        if self._loop is not None and self._fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._sock.close(linger=linger)
        self._sock = None
        self._fd = None

    # -- sending -------------------------------------------------------------

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
        # for each (about 40 us of CPU apiece on a 2-core machine).
        self._outbox.append(payload)
        loop = self._loop
        assert loop is not None
        if urgent and (not self.coalesce or len(self._outbox) >= COALESCE_MAX):
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif not self._flush_soon and self._flush_later is None:
            delay = self.coalesce if urgent else NOTIFY_DELAY
            self._flush_later = loop.call_later(delay, self._flush)

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
                # One frame: the ROUTER adds the identity, and the body is the
                # last frame on both sides, so no empty delimiter is needed.
                sock.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                self.stats["send_full"] += 1  # requests are retried by the sweep
        self._readable()  # a send can consume the edge of replies already waiting

    # -- replies -------------------------------------------------------------

    def _schedule_check(self) -> None:
        # ZMQ_FD is edge-triggered and a send can consume the edge of replies
        # that arrived meanwhile: look again once the current callback is done.
        if not self._check_scheduled and self._loop is not None:
            self._check_scheduled = True
            self._loop.call_soon(self._readable)

    def _readable(self) -> None:
        self._check_scheduled = False
        sock = self._sock
        if sock is None:
            return
        assert self._loop is not None
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_reply = self._loop.time()
            reply = _as_reply(frames[-1])
            if reply is None:
                self.stats["malformed_replies"] += 1
                continue
            call = self._calls.get(reply.request_id)
            if call is None or call.future.done():
                self.stats["stray_replies"] += 1  # answered after we gave up
                continue
            if not answers(call.request, reply):
                _mismatch(self.stats, call.request, call.rid, reply)
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
        # Nothing at all heard since an expired attempt went out: the peer may
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
        """Nothing heard from the peer: reopen the socket, re-send what waits."""
        self.stats["resets"] += 1
        log.info("no reply from %s; reopening the bus socket", self.endpoint)
        self._disconnect(linger=0)
        self._connect()
        for call in self._calls.values():
            if not call.future.done():
                call.generation = self._generation
                self._send(call.payload)
                self.stats["sent"] += 1


class SyncBusClient:
    """Blocking requests; safe to share between threads and across fork."""

    def __init__(self, endpoint: str, *, deadline: float = DEFAULT_DEADLINE,
                 retries: int = DEFAULT_RETRIES, curve: "ClientCurve | None" = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.deadline = deadline
        self.retries = retries
        self.stats: Counter[str] = Counter()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ctx: zmq.Context | None = None
        self._ids = _request_ids()
        self._sockets: list[zmq.Socket] = []

    def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        deadline = self.deadline if deadline is None else deadline
        rid = self._next_id()
        payload = pack(msg, rid)
        end = time.monotonic() + deadline
        attempts = self.retries + 1
        for attempt in range(attempts):
            sock = self._socket()
            sock.send_multipart([b"", payload])
            self.stats["sent"] += 1
            budget = (end - time.monotonic()) / (attempts - attempt)
            attempt_end = time.monotonic() + max(budget, 0.001)
            while True:
                remaining = attempt_end - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                    break
                reply = _as_reply(sock.recv_multipart()[-1])
                if reply is None:
                    self.stats["malformed_replies"] += 1
                elif reply.request_id != rid:
                    self.stats["stray_replies"] += 1
                elif answers(msg, reply):
                    return reply
                else:
                    _mismatch(self.stats, msg, rid, reply)
            # Lost reply: this thread's socket may be wedged on a dead peer.
            self.stats["attempt_timeouts"] += 1
            self._reset_socket()
        self.stats["timeouts"] += 1
        raise BusTimeout(self.endpoint, msg.kind, deadline, attempts)

    def call(self, msg: Request, *, deadline: float | None = None) -> Reply:
        return raise_for_error(self.request(msg, deadline=deadline))

    def notify(self, msg: Request) -> None:
        rid = self._next_id()
        try:
            self._socket().send_multipart([b"", pack(msg, rid)], flags=zmq.NOBLOCK)
            self.stats["notified"] += 1
        except zmq.Again:
            self.stats["notify_dropped"] += 1

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close(linger=500)
            self._sockets.clear()
            self._local = threading.local()

    def __enter__(self) -> "SyncBusClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_id(self) -> int:
        with self._lock:
            if os.getpid() != self._pid:
                self._context()  # forked since the last request: new ids first
            return next(self._ids)

    def _context(self) -> zmq.Context:
        pid = os.getpid()
        if self._ctx is None or pid != self._pid:
            # After a fork (gunicorn workers) the parent's context is unusable,
            # and the parent's id counter is every sibling's too.
            self._pid = pid
            self._ctx = zmq.Context()
            self._ids = _request_ids()
            self._sockets = []
            self._local = threading.local()
        return self._ctx

    def _socket(self) -> zmq.Socket:
        ctx = self._context()
        sock = getattr(self._local, "sock", None)
        if sock is None:
            identity = getattr(self._local, "identity", None)
            if identity is None:  # one per thread, kept across resets
                identity = self._local.identity = new_identity()
            sock = ctx.socket(zmq.DEALER)
            _configure(sock, self.endpoint, identity, self.curve)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _reset_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self.stats["resets"] += 1
            sock.close(linger=0)
            with self._lock:
                if sock in self._sockets:
                    self._sockets.remove(sock)
            self._local.sock = None
