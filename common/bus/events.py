"""Boot events: what happened to which machine, published live.

Front ends report each stage to the store (``EventReport``, no reply); the
store keeps it in the database and publishes it on a PUB socket, topic = the
MAC, so ``astralboot events --follow --mac ...`` and the demo can watch one
machine boot.
"""

from __future__ import annotations

import time
from typing import Iterator

import zmq

from ..errors import MalformedMessage
from ..messages import BootEvent, EventReport
from .frames import pack, unpack

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
MACHINE_CHANGED = "machine.changed"

STAGES = (DHCP_OFFER, DHCP_ACK, DHCP_NAK, DHCP_RELEASE, DHCP_DECLINE, TFTP_SENT,
          TFTP_FAILED, HTTP_SCRIPT, HTTP_IMAGE, HTTP_TEMPLATE, MACHINE_CHANGED)


def boot_event(service: str, stage: str, mac: str, ip: str | None = None,
               detail: str = "") -> EventReport:
    """The notify-only message a front end sends for one boot stage."""
    return EventReport(event=BootEvent(time=time.time(), mac=mac, ip=ip, service=service,
                                       stage=stage, detail=detail))


def publish_frames(event: BootEvent) -> list[bytes]:
    return [event.mac.encode(), pack(EventReport(event=event))]


class EventSubscriber:
    """Blocking reader of the live event stream, optionally for one MAC."""

    def __init__(self, endpoint: str, mac: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, (mac or "").encode())
        self._sock.connect(endpoint)

    def receive(self, timeout: float | None = None) -> BootEvent | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        wait = -1 if timeout is None else int(timeout * 1000)
        while True:
            if not self._sock.poll(wait):
                return None
            frames = self._sock.recv_multipart()
            try:
                msg = unpack(frames[-1])
            except MalformedMessage:
                continue
            if isinstance(msg, EventReport):
                return msg.event

    def __iter__(self) -> Iterator[BootEvent]:
        while True:
            event = self.receive()
            if event is not None:
                yield event

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "EventSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
