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
import itertools
import logging
import os
import random
import threading
import time
from collections import Counter
from typing import TypeVar

import zmq
import zmq.asyncio

from ..errors import BusTimeout, MalformedMessage, RemoteError
from ..messages import ErrorReply
from .frames import pack, unpack
from .schema import Reply, Request

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 3.0
DEFAULT_RETRIES = 2
HWM = 100_000

R = TypeVar("R", bound=Reply)


def _request_ids() -> itertools.count[int]:
    # A random high part keeps ids from different clients (and restarts of
    # one client) apart, which the store relies on to answer a retried
    # commit with its first reply instead of committing twice.
    return itertools.count((random.getrandbits(31) << 32) + 1)


def _configure(sock: zmq.Socket, endpoint: str) -> None:
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.connect(endpoint)


def _as_reply(data: bytes) -> Reply | None:
    try:
        msg = unpack(data)
    except MalformedMessage as exc:
        log.warning("dropping malformed reply: %s", exc)
        return None
    if not isinstance(msg, Reply):
        log.warning("dropping %s: not a reply", msg.kind)
        return None
    return msg


def raise_for_error(reply: Reply) -> Reply:
    if isinstance(reply, ErrorReply):
        raise RemoteError(reply.error_code, reply.detail)
    return reply


class AsyncBusClient:
    """Many concurrent requests over one DEALER socket, from asyncio code."""

    def __init__(self, endpoint: str, *, deadline: float = DEFAULT_DEADLINE,
                 retries: int = DEFAULT_RETRIES,
                 context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self.retries = retries
        self.stats: Counter[str] = Counter()
        self._ctx = context or zmq.asyncio.Context.instance()
        self._ids = _request_ids()
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._resend: dict[int, bytes] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._generation = 0
        self._last_reply = 0.0
        self._closed = False

    # -- public API ----------------------------------------------------------

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Send ``msg`` and return its reply (possibly an ErrorReply)."""
        self._ensure_socket()
        loop = asyncio.get_running_loop()
        deadline = self.deadline if deadline is None else deadline
        rid = next(self._ids)
        payload = pack(msg, rid)
        end = loop.time() + deadline
        attempts = self.retries + 1
        try:
            for attempt in range(attempts):
                fut: asyncio.Future[Reply] = loop.create_future()
                self._pending[rid] = fut
                self._resend[rid] = payload
                generation = self._generation
                sent_at = loop.time()
                await self._send(payload)
                self.stats["sent"] += 1
                budget = (end - loop.time()) / (attempts - attempt)
                try:
                    async with asyncio.timeout(max(budget, 0.001)):
                        return await fut
                except TimeoutError:
                    self.stats["attempt_timeouts"] += 1
                    if self._last_reply < sent_at and generation == self._generation:
                        self._reset()
                    if attempt + 1 < attempts:
                        self.stats["retries"] += 1
                        log.debug("retrying %s (id %x), attempt %d", msg.kind, rid, attempt + 2)
        finally:
            self._pending.pop(rid, None)
            self._resend.pop(rid, None)
        self.stats["timeouts"] += 1
        raise BusTimeout(self.endpoint, msg.kind, deadline, attempts)

    async def call(self, msg: Request, *, deadline: float | None = None) -> Reply:
        """Like :meth:`request`, raising :class:`RemoteError` on an error reply."""
        return raise_for_error(await self.request(msg, deadline=deadline))

    def notify(self, msg: Request) -> None:
        """Send a message that has no reply, without waiting (events)."""
        self._ensure_socket()
        assert self._sock is not None
        try:
            self._sock.send_multipart([b"", pack(msg, next(self._ids))], flags=zmq.NOBLOCK)
            self.stats["notified"] += 1
        except zmq.Again:
            self.stats["notify_dropped"] += 1

    def close(self) -> None:
        self._closed = True
        self._drop_socket(linger=500)
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()

    async def __aenter__(self) -> "AsyncBusClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- socket lifecycle ----------------------------------------------------

    def _ensure_socket(self) -> None:
        if self._closed:
            raise RuntimeError("bus client is closed")
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            _configure(sock, self.endpoint)
            self._sock = sock
            self._generation += 1
            self._reader = asyncio.get_running_loop().create_task(
                self._read_replies(sock), name=f"bus-reader-{self.endpoint}")

    def _drop_socket(self, linger: int) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=linger)
            self._sock = None

    def _reset(self) -> None:
        """Reopen the socket and re-send everything still waiting."""
        self.stats["resets"] += 1
        log.info("no reply from %s; reopening the bus socket", self.endpoint)
        self._drop_socket(linger=0)
        self._ensure_socket()
        assert self._sock is not None
        for rid, payload in list(self._resend.items()):
            fut = self._pending.get(rid)
            if fut is not None and not fut.done():
                try:
                    self._sock.send_multipart([b"", payload], flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass

    async def _send(self, payload: bytes) -> None:
        assert self._sock is not None
        await self._sock.send_multipart([b"", payload])

    async def _read_replies(self, sock: zmq.asyncio.Socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frames = await sock.recv_multipart()
            self._last_reply = loop.time()
            reply = _as_reply(frames[-1])
            if reply is None:
                self.stats["malformed_replies"] += 1
                continue
            fut = self._pending.get(reply.request_id)
            if fut is None or fut.done():
                self.stats["stray_replies"] += 1  # answered after we gave up
                continue
            fut.set_result(reply)


class SyncBusClient:
    """Blocking requests; safe to share between threads and across fork."""

    def __init__(self, endpoint: str, *, deadline: float = DEFAULT_DEADLINE,
                 retries: int = DEFAULT_RETRIES) -> None:
        self.endpoint = endpoint
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
        with self._lock:
            rid = next(self._ids)
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
                elif reply.request_id == rid:
                    return reply
                else:
                    self.stats["stray_replies"] += 1
            # Lost reply: this thread's socket may be wedged on a dead peer.
            self.stats["attempt_timeouts"] += 1
            self._reset_socket()
        self.stats["timeouts"] += 1
        raise BusTimeout(self.endpoint, msg.kind, deadline, attempts)

    def call(self, msg: Request, *, deadline: float | None = None) -> Reply:
        return raise_for_error(self.request(msg, deadline=deadline))

    def notify(self, msg: Request) -> None:
        with self._lock:
            rid = next(self._ids)
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

    def _context(self) -> zmq.Context:
        pid = os.getpid()
        if self._ctx is None or pid != self._pid:
            # After a fork (gunicorn workers) the parent's context is unusable.
            self._pid = pid
            self._ctx = zmq.Context()
            self._sockets = []
            self._local = threading.local()
        return self._ctx

    def _socket(self) -> zmq.Socket:
        ctx = self._context()
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = ctx.socket(zmq.DEALER)
            _configure(sock, self.endpoint)
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
