"""Reliable request/reply clients for the bus (the Lazy Pirate pattern).

The rules (deadlines split over attempts, replies matched by request id and
kind, the socket reopened when nothing came back, :class:`BusTimeout` at
the deadline) live in one place, the I/O-free :class:`LazyPirate` of
``pirate.py``. The two clients here only move bytes and read the clock
for it; an error reply becomes :class:`RemoteError` through ``call``.

:class:`AsyncBusClient` serves asyncio code (dhcpd, tftpd, the store's own
tools): one DEALER socket carries any number of concurrent requests.
:class:`SyncBusClient` serves threads and gunicorn's sync workers: one
socket (and one LazyPirate) per thread, created lazily and again after a
fork.

Frame layout, both clients: one frame, the packed message, with no empty
delimiter before it. Both are DEALERs that match replies by request id, so
the delimiter (which only a REQ socket needs, to find where its lockstep
envelope ends) carries nothing here, and it would cost a frame on every
request and every reply the store sends back. The ROUTER on the other side
adds the identity frame itself and the body is always the last frame; the
store's ``decode`` still accepts a delimiter from peers that send one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, TypeVar

import zmq

from astralboot.common.errors import RemoteError
from astralboot.common.messages import ErrorReply
from astralboot.common.bus.frames import REPLY_LIMITS, pack
from astralboot.common.bus.pirate import LazyPirate
from astralboot.common.bus.schema import Reply, Request

DEFAULT_DEADLINE = 3.0
DEFAULT_RETRIES = 2
HWM = 100_000

if TYPE_CHECKING:
    from astralboot.common.bus.security import ClientCurve

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


def raise_for_error(reply: Reply) -> Reply:
    if isinstance(reply, ErrorReply):
        raise RemoteError(reply.error_code, reply.detail)
    return reply


SWEEP = 0.05  # seconds between deadline checks
NOTIFY_DELAY = 0.005  # how long a notification may wait for company
COALESCE_MAX = 64  # a full burst goes out at once, whatever the coalescing window
DRAIN = 64  # replies read per wake-up before other callbacks (the ACKs they free) run


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
        self._pirate = LazyPirate(endpoint, retries=retries, stats=self.stats)
        self._sock: zmq.Socket | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._check_scheduled = False
        self._outbox: list[bytes] = []
        self._flush_soon = False
        self._flush_later: asyncio.TimerHandle | None = None
        self._closed = False

    # -- public API ----------------------------------------------------------

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Send ``msg`` and return its reply (possibly an ErrorReply)."""
        loop = self._open()
        rid = next(self._ids)
        future: asyncio.Future[Reply] = loop.create_future()
        call = self._pirate.start(rid, msg, pack(msg, rid),
                                  self.deadline if deadline is None else deadline,
                                  loop.time(), future)
        self._send(call.payload)
        try:
            return await future
        finally:
            self._pirate.forget(rid)

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
        for call in self._pirate.abandon():
            if not call.waiter.done():
                call.waiter.cancel()

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
                sock.send(payload, zmq.NOBLOCK)  # one frame: see the module's docstring
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
        loop = self._loop
        assert loop is not None
        receive = self._pirate.receive
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            call = receive(frames[-1], loop.time())
            if call is not None and not call.waiter.done():
                call.waiter.set_result(call.reply)
        self._schedule_check()  # more than DRAIN waiting: come back after others ran

    # -- deadlines -----------------------------------------------------------

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        wake = self._pirate.handle_timer(loop.time())
        if wake.reset:
            self._disconnect(linger=0)
            self._connect()
        for payload in wake.send:
            self._send(payload)
        for call in wake.failed:
            if not call.waiter.done():
                call.waiter.set_exception(call.error)
        self._sweeper = loop.call_later(SWEEP, self._sweep)


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
        rid = self._next_id()
        sock, pirate = self._socket()
        call = pirate.start(rid, msg, pack(msg, rid),
                            self.deadline if deadline is None else deadline, time.monotonic())
        try:
            sock.send(call.payload)  # one frame: see the module's docstring
            while True:
                timer = pirate.get_timer()
                assert timer is not None, "a waiting call always has a timer"
                remaining = timer - time.monotonic()
                if remaining > 0 and sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                    if pirate.receive(sock.recv_multipart()[-1], time.monotonic()) is call:
                        assert call.reply is not None
                        return call.reply
                    continue
                wake = pirate.handle_timer(time.monotonic())
                if wake.reset:
                    self._reset_socket()
                    sock, _ = self._socket()
                for payload in wake.send:
                    sock.send(payload)
                if call.error is not None:
                    raise call.error
        finally:
            pirate.forget(rid)

    def call(self, msg: Request, *, deadline: float | None = None) -> Reply:
        return raise_for_error(self.request(msg, deadline=deadline))

    def notify(self, msg: Request) -> None:
        rid = self._next_id()
        try:
            self._socket()[0].send(pack(msg, rid), zmq.NOBLOCK)
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

    def _socket(self) -> tuple[zmq.Socket, LazyPirate]:
        """This thread's socket and the calls in flight on it."""
        ctx = self._context()
        local = self._local
        sock = getattr(local, "sock", None)
        if sock is None:
            if getattr(local, "identity", None) is None:  # one per thread, kept across resets
                local.identity = new_identity()
                local.pirate = LazyPirate(self.endpoint, retries=self.retries,
                                          stats=self.stats)
            sock = ctx.socket(zmq.DEALER)
            _configure(sock, self.endpoint, local.identity, self.curve)
            local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock, local.pirate

    def _reset_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
            with self._lock:
                if sock in self._sockets:
                    self._sockets.remove(sock)
            self._local.sock = None
