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
from typing import TYPE_CHECKING, Iterator

import zmq

from ..errors import MalformedMessage
from ..messages import BootEvent, ErrorReply, EventReport, EventSubscribe, SubscribeReply
from .frames import REPLY_LIMITS, pack, unpack

if TYPE_CHECKING:
    from .security import ClientCurve

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


def boot_event(service: str, stage: str, mac: str, ip: str | None = None,
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
    """

    def __init__(self, endpoint: str, mac: str | None = None,
                 context: zmq.Context | None = None, curve: "ClientCurve | None" = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.setsockopt(zmq.MAXMSGSIZE, REPLY_LIMITS.frame)
        self._sock.connect(endpoint)
        self._topics = ((mac or "").lower(),)
        self._ids = itertools.count(secrets.randbits(31) << 32)
        self.renew = 5.0
        self.refused: str | None = None  # why the store refused, if it did
        self._next_renew = 0.0
        self._subscribe()

    def _subscribe(self) -> None:
        msg = EventSubscribe(topics=self._topics)
        try:
            self._sock.send(pack(msg, next(self._ids)), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet: the next renewal goes
        self._next_renew = time.monotonic() + self.renew

    def receive(self, timeout: float | None = None) -> BootEvent | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
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
            try:
                msg = unpack(self._sock.recv(), REPLY_LIMITS)
            except MalformedMessage:
                continue
            if isinstance(msg, EventReport):
                return msg.event
            if isinstance(msg, SubscribeReply):
                self.refused = None
                if msg.renew > 0 and msg.renew != self.renew:
                    self.renew = msg.renew
                    self._next_renew = time.monotonic() + self.renew
            elif isinstance(msg, ErrorReply):
                self.refused = msg.detail

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
