"""The serving side of the bus: binding, decoding requests, answering.

The store binds a ROUTER for requests; dhcpd and tftpd each bind a small
control ROUTER that answers :class:`Health` for ``astralboot status``.
A frame that cannot be decoded is answered with an error reply when its
request id could be read, and otherwise dropped and counted; it never
raises out of the receive loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from astralboot.common import __version__
from astralboot.common.errors import ErrorCode, MalformedMessage, StartupError
from astralboot.common.logs import SenderLimit
from astralboot.common.messages import ErrorReply, Health, HealthReply
from astralboot.common.bus.frames import REQUEST_LIMITS, pack, unpack
from astralboot.common.bus.schema import Reply, Request

log = logging.getLogger(__name__)


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def _answers_health(endpoint: str, timeout: float = 0.3) -> bool:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(pack(Health(), 1))  # one frame, as the bus clients send
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(linger=0)


def bind(sock: zmq.Socket, endpoint: str, service: str, *, answers_health: bool = True) -> None:
    """Bind ``sock``, turning the usual failures into a clear StartupError.

    An ipc socket file left behind by a process that died is replaced; one
    whose owner still answers Health means another process serves there.
    A socket that does not answer Health (a PUB) passes ``answers_health=False``
    and must be bound only after one that does, which proves the files stale.
    """
    path = ipc_path(endpoint)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(service, f"cannot create {path.parent}: {exc.strerror} (the socket "
                                        "folder: set runtime_dir, or [bus] endpoint/events, "
                                        "to one this user may write)") from None
        if path.exists():
            if answers_health and _answers_health(endpoint):
                raise StartupError(service, f"another process already serves {endpoint}")
            path.unlink(missing_ok=True)  # left behind by a process that died
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        reason = {
            zmq.EADDRINUSE: "address already in use",
            zmq.EACCES: "permission denied",
            zmq.EADDRNOTAVAIL: "address not available on this host",
        }.get(exc.errno, exc.strerror)
        where = (" (runtime_dir, or [bus] endpoint/events)" if path is not None
                 and exc.errno == zmq.EACCES else "")
        raise StartupError(service, f"cannot bind {endpoint}: {reason}{where}") from None


def request_socket(context: zmq.Context, *, hwm: int = 1000) -> zmq.Socket:
    """A ROUTER for requests from any peer, with the bus's limits.

    A frame over the request size never reaches Python (ZeroMQ drops that
    connection), and a client that reopens its socket after a lost reply
    keeps its identity: the new connection takes it over from the old one.
    """
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, REQUEST_LIMITS.frame)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    return sock


class Incoming:
    """One decoded request and the routing envelope to answer it on."""

    __slots__ = ("envelope", "request")

    def __init__(self, envelope: list[bytes], request: Request) -> None:
        self.envelope = envelope
        self.request = request


# The peer's identity, and the empty delimiter a REQ-style sender adds. The
# bus clients send no delimiter (client.py says why); one is still accepted,
# at no cost, from raw DEALER peers that add it (test and bench drivers, the
# sync client of releases up to 0.3.0 during an upgrade), and it is echoed
# back with the reply, as ``encode`` returns the envelope it was given.
MAX_ENVELOPE = 2
_warnings = SenderLimit()


def decode(frames: list[bytes], stats: Counter[str]) -> tuple[Incoming | None, list[bytes] | None]:
    """Decode a ROUTER frame list.

    Returns ``(incoming, None)`` for a good request, ``(None, reply_frames)``
    when the sender should be told its frame was bad, ``(None, None)`` when
    it must be dropped.
    """
    if len(frames) < 2 or len(frames) > MAX_ENVELOPE + 1:
        stats["dropped_frames"] += 1
        return None, None
    envelope, body = frames[:-1], frames[-1]
    try:
        msg = unpack(body, REQUEST_LIMITS)
    except MalformedMessage as exc:
        stats["malformed"] += 1
        # One line per peer a minute: a peer sending garbage must not flood the log.
        _warnings.log(log, logging.WARNING, envelope[0], time.monotonic(),
                      "bad request %s from a bus peer: %s",
                      "(unreadable)" if exc.request_id is None else f"{exc.request_id:x}", exc)
        if exc.request_id is None:
            return None, None
        err = ErrorReply(code=ErrorCode.BAD_REQUEST.value, detail=str(exc))
        return None, envelope + [pack(err, exc.request_id)]
    if not isinstance(msg, Request):
        stats["malformed"] += 1
        err = ErrorReply(code=ErrorCode.BAD_REQUEST.value, detail=f"{msg.kind} is not a request")
        return None, envelope + [pack(err, msg.request_id)]
    stats["requests"] += 1
    return Incoming(envelope, msg), None


def encode(incoming: Incoming, reply: Reply) -> list[bytes]:
    return incoming.envelope + [pack(reply, incoming.request.request_id)]


def error(code: ErrorCode, detail: str) -> ErrorReply:
    return ErrorReply(code=code.value, detail=detail)


def health_reply(service: str, started: float, details: dict[str, str | int | float | bool],
                 status: str = "ok") -> HealthReply:
    return HealthReply(service=service, version=__version__, pid=os.getpid(),
                       host=socket.gethostname(), started=started, status=status,  # type: ignore[arg-type]
                       details=details)


class ControlEndpoint:
    """A front end's own ROUTER, answering Health with the service's counters."""

    def __init__(self, endpoint: str, service: str,
                 details: Callable[[], dict[str, str | int | float | bool]],
                 context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self.service = service
        self.details = details
        self.started = time.time()
        self.stats: Counter[str] = Counter()
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None

    def bind(self) -> None:
        self._sock = request_socket(self._ctx)
        bind(self._sock, self.endpoint, self.service)

    async def serve(self) -> None:
        assert self._sock is not None, "bind() first"
        while True:
            frames = await self._sock.recv_multipart()
            incoming, answer = decode(frames, self.stats)
            if incoming is not None:
                if isinstance(incoming.request, Health):
                    reply: Reply = health_reply(self.service, self.started, self.details())
                else:
                    reply = error(ErrorCode.BAD_REQUEST,
                                  f"{self.service} control socket only answers health")
                answer = encode(incoming, reply)
            if answer is not None:
                await self._sock.send_multipart(answer)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            path = ipc_path(self.endpoint)
            if path is not None:
                path.unlink(missing_ok=True)


async def serve_forever(endpoint: ControlEndpoint) -> None:
    """Run a control endpoint as a task; cancellation closes it."""
    try:
        await endpoint.serve()
    finally:
        endpoint.close()

