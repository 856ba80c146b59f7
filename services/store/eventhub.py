"""The store's events socket: subscriptions in, live boot events out.

A ROUTER, not a PUB: with a PUB the store cannot tell which peer asked for
what, so it could bound neither the topics of one peer nor the peers of one
host. Here a subscriber (``EventSubscriber``) sends ``EventSubscribe`` with
its MAC prefixes and renews it every ``RENEW`` seconds; the store answers
``SubscribeReply`` (or an error saying which bound was hit) and sends each
matching event to that peer alone. A subscriber that stops renewing (it
died, or its network did) is forgotten after ``LIFETIME``; a store that
restarts learns every live subscription again within one renew period.

An event nobody watches is never encoded. A subscriber that reads too
slowly loses events (its queue is bounded), never slows the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import zmq

from astralboot.common.bus.events import publish_frame
from astralboot.common.bus.frames import SUBSCRIBER_LIMITS, pack, unpack
from astralboot.common.bus.security import make_server
from astralboot.common.bus.server import bind
from astralboot.common.errors import ErrorCode, MalformedMessage
from astralboot.common.logs import SenderLimit
from astralboot.common.messages import BootEvent, ErrorReply, EventSubscribe, SubscribeReply

from astralboot.services.store.leases import Refusal
from astralboot.services.store.rawsocket import EVENTS as _EVENTS, MORE as _MORE, NOBLOCK as _NOBLOCK, POLLIN as _POLLIN
from astralboot.services.store.rawsocket import get as _get, send as _send
from astralboot.services.store.subscriptions import SubscriptionTable

log = logging.getLogger(__name__)

RENEW = 5.0  # seconds between a subscriber's renewals
LIFETIME = 3 * RENEW + 1  # a subscription outlives two lost renewals
EVENTS_HWM = 10_000  # events queued for one subscriber before its next ones are dropped
DRAIN = 256  # subscription frames read per wake-up


class EventHub:
    def __init__(self, endpoint: str, context: zmq.Context, *, service: str = "store") -> None:
        self.endpoint = endpoint
        self.service = service
        self.stats: Counter[str] = Counter()
        self.table = SubscriptionTable(lifetime=LIFETIME)
        self._ctx = context
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._warnings = SenderLimit()

    def bind(self, curve_secret: bytes | None = None) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        if curve_secret is not None:
            make_server(sock, curve_secret)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, EVENTS_HWM)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIBER_LIMITS.frame)
        self._sock = sock
        # Bound after the request socket, which proves no other store runs
        # here; so an ipc file at this endpoint is stale.
        bind(sock, self.endpoint, self.service, answers_health=False)

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Begin reading subscriptions on ``loop``; returns the FD to stop reading."""
        assert self._sock is not None, "bind() first"
        self._loop = loop
        fd = int(self._sock.get(zmq.FD))
        loop.add_reader(fd, self.readable)
        self._sweeper = loop.call_later(RENEW, self._sweep)
        self.readable()
        return fd

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def details(self) -> dict[str, int]:
        return {"events.subscribers": len(self.table), "events.topics": self.table.topics,
                "events.refused": self.stats["refused"], "events.malformed": self.stats["malformed"],
                "events.dropped": self.stats["dropped"]}

    # -- subscriptions -------------------------------------------------------

    def readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(DRAIN):
            if not int(_get(sock, _EVENTS)) & _POLLIN:
                return
            frames = sock.recv_multipart(copy=False)
            self._on_frames(frames)
        if self._loop is not None:  # more waiting: after others had a turn
            self._loop.call_soon(self.readable)

    def _on_frames(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            self.stats["malformed"] += 1
            return
        envelope = [f.bytes for f in frames[:-1]]
        body = frames[-1]
        try:
            address = body.get("Peer-Address")
        except zmq.ZMQError:
            address = ""  # ipc: a process on this host
        try:
            msg = unpack(body.bytes, SUBSCRIBER_LIMITS)
        except MalformedMessage as exc:
            self._refuse(envelope, address, exc.request_id, ErrorCode.BAD_REQUEST, str(exc),
                         "malformed")
            return
        if not isinstance(msg, EventSubscribe):
            self._refuse(envelope, address, msg.request_id, ErrorCode.BAD_REQUEST,
                         f"the events socket only takes {EventSubscribe.kind}", "malformed")
            return
        try:
            self.table.subscribe(envelope[0], address, msg.topics, time.monotonic())
        except Refusal as refusal:
            self._refuse(envelope, address, msg.request_id, refusal.code, refusal.detail,
                         "refused")
            return
        self.stats["subscribed"] += 1
        self._reply(envelope, pack(SubscribeReply(topics=msg.topics, renew=RENEW),
                                   msg.request_id))

    def _refuse(self, envelope: list[bytes], address: str, rid: int | None, code: ErrorCode,
                detail: str, counter: str) -> None:
        self.stats[counter] += 1
        self._warnings.log(log, logging.WARNING, address, time.monotonic(),
                           "event subscription from %s refused: %s", address or "a local peer",
                           detail)
        if rid is not None:
            self._reply(envelope, pack(ErrorReply(code=code.value, detail=detail), rid))

    def _reply(self, envelope: list[bytes], body: bytes) -> None:
        sock = self._sock
        assert sock is not None
        try:
            for frame in envelope:
                _send(sock, frame, _MORE)
            _send(sock, body, _NOBLOCK)
        except zmq.Again:
            self.stats["dropped"] += 1

    def _sweep(self) -> None:
        self.stats["expired"] += self.table.expire(time.monotonic())
        if self._loop is not None and self._sock is not None:
            self._sweeper = self._loop.call_later(RENEW, self._sweep)

    # -- events --------------------------------------------------------------

    def watched(self, mac: str) -> bool:
        return bool(self.table.match(mac)) if self.table.topics else False

    def publish(self, event: BootEvent) -> None:
        """Send ``event`` to every subscriber watching its MAC; never blocks."""
        peers = self.table.match(event.mac)
        if not peers:
            self.stats["unwatched"] += 1
            return
        sock = self._sock
        if sock is None:
            return
        body = publish_frame(event)
        for peer in peers:
            try:
                _send(sock, peer, _MORE)
                _send(sock, body, _NOBLOCK)
            except zmq.Again:  # a ROUTER drops for a full peer rather than block
                self.stats["dropped"] += 1
        self.stats["published"] += 1
