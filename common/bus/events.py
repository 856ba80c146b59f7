"""Boot events: what happened to which machine, published live.

Front ends report each stage to the store (``EventReport``, no reply); the
store keeps it in the database and sends it to every subscriber of its events
socket whose topic (a MAC prefix) it matches, so ``astralboot events --follow
--mac ...`` and the demo can watch one machine boot.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Iterator

import zmq

from astralboot.common.errors import BusTimeout, MalformedMessage, RemoteError
from astralboot.common.messages import BootEvent, ErrorReply, EventReport, EventSubscribe, SubscribeReply
from astralboot.common.bus.frames import REPLY_LIMITS, pack, unpack
from astralboot.common.bus.schema import Message

if TYPE_CHECKING:
    from astralboot.common.bus.security import ClientCurve

# The stages of a boot, in the order a machine goes through them.
DHCP_OFFER = "dhcp.offer"
DHCP_ACK = "dhcp.ack"
DHCP_NAK = "dhcp.nak"
DHCP_RELEASE = "dhcp.release"
DHCP_DECLINE = "dhcp.decline"
TFTP_SENT = "tftp.sent"
TFTP_FAILED = "tftp.failed"
HTTP_SCRIPT = "http.script"
HTTP_IMAGE = "http.image"
HTTP_TEMPLATE = "http.template"
HTTP_REFUSED = "http.refused"  # a self-service URL asked from another machine's address
MACHINE_CHANGED = "machine.changed"
POOL_PRESSURE = "pool.pressure"  # a pool ran out, or unbound offers hit their cap
TOKEN_CREATED = "token.created"  # admin audit: no machine, so the MAC is ""
TOKEN_REVOKED = "token.revoked"

STAGES = (DHCP_OFFER, DHCP_ACK, DHCP_NAK, DHCP_RELEASE, DHCP_DECLINE, TFTP_SENT,
          TFTP_FAILED, HTTP_SCRIPT, HTTP_IMAGE, HTTP_TEMPLATE, HTTP_REFUSED, MACHINE_CHANGED, POOL_PRESSURE, TOKEN_CREATED, TOKEN_REVOKED)

# Seconds between subscriptions sent while waiting for the store to confirm
# one: a store that restarts loses what was queued to its old process.
HANDSHAKE_RETRY = 1.0


def boot_event(service: str, stage: str, mac: str | None, ip: str | None = None,
               detail: str = "") -> EventReport:
    """The notify-only message a front end sends for one boot stage."""
    return EventReport(event=BootEvent(time=time.time(), mac=mac, ip=ip, service=service,
                                       stage=stage, detail=detail))


def publish_frame(event: BootEvent) -> bytes:
    """The frame a subscriber receives for one event."""
    return pack(EventReport(event=event))


class EventSubscriber:
    """Blocking reader of the live event stream, optionally for one MAC.

    Subscribes on the store's events socket and renews the subscription as
    the store asks (which also subscribes again at a store that restarted).
    Events come with no reply to wait for; a subscriber that falls behind
    loses the oldest, never slows the store.

    The first subscription is sent at once but confirmed asynchronously;
    :meth:`wait_subscribed` blocks until the store has it, so that an event
    published after it returns is certain to arrive.
    """

    def __init__(self, endpoint: str, mac: str | None = None,
                 context: zmq.Context | None = None, curve: "ClientCurve | None" = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.setsockopt(zmq.MAXMSGSIZE, REPLY_LIMITS.frame)
        self._sock.connect(endpoint)
        self._topics = ((mac or "").lower(),)
        self._ids = itertools.count(secrets.randbits(31) << 32)
        self._pending: deque[BootEvent] = deque()  # came while a handshake waited
        self.renew = 5.0
        self.refused: str | None = None  # why the store refused, if it did
        self._next_renew = 0.0
        self._subscribe()

    def _subscribe(self) -> int:
        rid = next(self._ids)
        msg = EventSubscribe(topics=self._topics)
        try:
            self._sock.send(pack(msg, rid), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet: the next renewal goes
        self._next_renew = time.monotonic() + self.renew
        return rid

    def wait_subscribed(self, timeout: float = 5.0) -> SubscribeReply:
        """Subscribe again and block until the store confirms it.

        Raises :class:`BusTimeout` if no confirmation came within ``timeout``
        seconds (the store is down or unreachable), :class:`RemoteError` if
        the store refused. Events arriving meanwhile are kept for
        :meth:`receive`.
        """
        start = time.monotonic()
        end = start + timeout
        first = self._subscribe()
        attempts = 1
        retry_at = start + HANDSHAKE_RETRY
        while True:
            now = time.monotonic()
            if now >= end:
                raise BusTimeout(self.endpoint, EventSubscribe.kind, timeout, attempts)
            if now >= retry_at:
                self._subscribe()
                attempts += 1
                retry_at = now + HANDSHAKE_RETRY
            wait = min(end, retry_at) - now
            if not self._sock.poll(max(int(wait * 1000), 1)):
                continue
            msg = self._read()
            if msg is None:
                continue
            self._take(msg)
            if not isinstance(msg, (SubscribeReply, ErrorReply)) or msg.request_id < first:
                continue  # an event, or the answer to an earlier subscription
            if isinstance(msg, ErrorReply):
                raise RemoteError(msg.error_code, msg.detail)
            return msg

    def _read(self) -> Message | None:
        try:
            return unpack(self._sock.recv(), REPLY_LIMITS)
        except MalformedMessage:
            return None

    def _take(self, msg: Message) -> None:
        """Apply what the store sent: queue an event, note a renewal or a refusal."""
        if isinstance(msg, EventReport):
            self._pending.append(msg.event)
        elif isinstance(msg, SubscribeReply):
            self.refused = None
            if msg.renew > 0 and msg.renew != self.renew:
                self.renew = msg.renew
                self._next_renew = time.monotonic() + self.renew
        elif isinstance(msg, ErrorReply):
            self.refused = msg.detail

    def receive(self, timeout: float | None = None) -> BootEvent | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending:
                return self._pending.popleft()
            now = time.monotonic()
            if now >= self._next_renew:
                self._subscribe()
            wait = self._next_renew - now
            if end is not None:
                if now >= end and timeout != 0:
                    return None
                wait = min(wait, end - now)
            if not self._sock.poll(max(int(wait * 1000), 0)):
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            msg = self._read()
            if msg is not None:
                self._take(msg)

    def __iter__(self) -> Iterator[BootEvent]:
        while True:
            event = self.receive()
            if event is not None:
                yield event

    def close(self) -> None:
        try:  # tell the store at once, instead of letting the subscription expire
            self._sock.send(pack(EventSubscribe(topics=()), next(self._ids)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._sock.close(linger=100)

    def __enter__(self) -> "EventSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
