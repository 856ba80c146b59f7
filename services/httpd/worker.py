"""The gunicorn worker httpd runs: gthread, made to survive slow clients.

gunicorn's gthread worker gives a connection to a thread as soon as its
first byte arrives, and the thread then blocks until the rest of the request
head comes: a few clients trickling one header line at a time hold every
thread (slowloris) and even ``/api/health`` stops answering. This worker
reads request heads in its main loop instead, non-blocking, and hands a
connection to the thread pool only with a complete head buffered:

- a head must be complete within ``header_timeout`` of the connection (or
  of the first byte of a kept-alive request), else 408 and close;
- once a thread serves it, each read of the body and each write of the
  response waits at most ``body_timeout``;
- a client address holds at most ``per_client`` connections in this
  worker process (gunicorn's workers share one listening socket).

The main loop never waits on a client: closing a connection (half-close,
drain what the client still sends, close) happens in the loop too, where
gthread lingers up to 2 s in its main thread. httpd speaks HTTP/1.1 in
clear; the TLS and HTTP/2 paths of gthread are not used.
"""

from __future__ import annotations

import enum
import errno
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

log = logging.getLogger(__name__)

RECV_SIZE = 16384
LINGER = 2.0             # seconds a closing connection may still send before it is cut
LINGER_MAX = 64 * 1024   # bytes drained from a closing connection at most

REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                   b"Content-Length: 0\r\n\r\n")
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                  b"Content-Length: 0\r\n\r\n")


@dataclass(frozen=True, slots=True)
class ClientLimits:
    header_timeout: float  # seconds from the first byte (or accept) to a complete head
    body_timeout: float    # seconds a served client may send nothing or take nothing
    per_client: int        # connections per client address, in one worker process
    max_head: int          # bytes of request line and headers together
    admin: tuple[str, int] | None = None  # the admin face's own listener, if any
    tls: ssl.SSLContext | None = None  # ... and its TLS (handshake in the main loop too)


class HeadState(enum.Enum):
    PARTIAL = "partial"
    COMPLETE = "complete"
    TOO_LARGE = "too large"


class RequestHead:
    """The bytes of one request head, collected until its empty line. No I/O."""

    __slots__ = ("_data", "_scanned", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self._scanned = 0  # bytes known not to hold the end of the head

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> HeadState:
        """Add bytes as they arrive; whatever follows the head is kept too."""
        self._data += data
        end = self._data.find(b"\r\n\r\n", max(self._scanned - 3, 0))
        if end >= 0:
            return HeadState.COMPLETE if end + 4 <= self.limit else HeadState.TOO_LARGE
        self._scanned = len(self._data)
        return HeadState.TOO_LARGE if len(self._data) > self.limit else HeadState.PARTIAL

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        self._scanned = 0
        return data


class ClientStalled(BaseException):
    """The client sent nothing of its body for ``body_timeout`` (or, while an
    unread body is drained after the answer, for gthread's 5 s).

    A BaseException, like asyncio.CancelledError: it cancels the request,
    and the app's ``except Exception`` (falcon's catch-all, which answers 500
    and logs a traceback) must not take it for an error of its own. It never
    leaves this module: :meth:`HttpdWorker.handle` ends the connection.
    """


class _StallingUnreader(SocketUnreader):  # type: ignore[misc]
    """gunicorn's socket reader; a read timeout ends the request, for good.

    Sticky, so the app cannot wait a second ``body_timeout`` (falcon drains
    the body stream after a failed read).
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.stalled = False

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.stalled:
            raise ClientStalled()
        try:
            return bytes(super().chunk(size_hint))
        except TimeoutError:
            self.stalled = True
            raise ClientStalled() from None


class _Conn(TConn):  # type: ignore[misc]
    """A client connection, counted against its address until it is closed."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any,
                 release: Callable[[str], None]) -> None:
        super().__init__(cfg, sock, client, server)
        self.peer = peer_of(client)
        self.release = release
        self.head: RequestHead | None = None
        self.deadline = 0.0
        self.drained = 0
        self.closed = False
        self.tls = False

    def close(self, graceful: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.release(self.peer)
        super().close(graceful)


def peer_of(client: Any) -> str:
    return str(client[0]) if isinstance(client, tuple) else str(client)


class HttpdWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with request heads read in the main loop; see the module docstring."""

    limits: ClientLimits  # set on the subclass worker_class() makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Insertion-ordered sets: every entry gets "now + a constant" as its
        # deadline when it is added, so the first one expires first.
        self._heads: dict[_Conn, None] = {}      # reading a request head
        self._lingering: dict[_Conn, None] = {}  # half-closed, draining
        # Counted per worker process: gunicorn's workers accept from one
        # shared socket, so one address may hold per_client in each of them.
        self._per_client: dict[str, int] = {}
        self._capped: set[str] = set()  # addresses refused since they last had none open

    # -- accepting and counting ------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        peer = peer_of(client)
        count = self._per_client.get(peer, 0)
        if count >= self.limits.per_client:
            sock.close()
            if peer not in self._capped:
                self._capped.add(peer)
                log.warning("%s holds %d connections (http.per_client); refusing more",
                            peer, count)
            return
        self._per_client[peer] = count + 1
        self.nr_conns += 1
        server = listener.getsockname()
        conn = _Conn(self.cfg, sock, client, server, self._release)
        if self.limits.tls is not None and tuple(server[:2]) == self.limits.admin:
            self._handshake(conn)
            return
        self._read_head(conn)

    # -- TLS on the admin listener, in the main loop ---------------------------

    def _handshake(self, conn: _Conn) -> None:
        assert self.limits.tls is not None
        try:
            conn.sock = self.limits.tls.wrap_socket(conn.sock, server_side=True,
                                                    do_handshake_on_connect=False)
        except (OSError, ValueError):
            self._close(conn)
            return
        conn.tls = True
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.limits.header_timeout
        conn.head = RequestHead(self.limits.max_head)  # so the timeout sweep finds it
        self._heads[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_handshake, conn))
        self._on_handshake(conn, conn.sock)

    def _on_handshake(self, conn: _Conn, _sock: Any) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._on_handshake, conn))
            return
        except ssl.SSLWantWriteError:
            self.poller.modify(conn.sock, selectors.EVENT_WRITE, partial(self._on_handshake, conn))
            return
        except (ssl.SSLError, OSError) as exc:  # no certificate, a wrong one, or gone
            log.info("%s: TLS handshake on the admin face failed: %s", conn.peer,
                     getattr(exc, "reason", None) or exc)
            self._unwatch_head(conn)
            self._close(conn)
            return
        self._unwatch_head(conn)
        self._read_head(conn)
        if conn in self._heads:
            self._on_head_readable(conn, conn.sock)

    def _release(self, peer: str) -> None:
        count = self._per_client.pop(peer, 1) - 1
        if count > 0:
            self._per_client[peer] = count
        else:
            self._capped.discard(peer)

    def _close(self, conn: _Conn) -> None:
        self.nr_conns -= 1
        conn.close()

    # -- request heads, in the main loop --------------------------------------

    def _read_head(self, conn: _Conn, data: bytes = b"") -> None:
        """Collect a head (``data``: bytes already read), then give it a thread."""
        conn.head = RequestHead(self.limits.max_head)
        conn.deadline = time.monotonic() + self.limits.header_timeout
        state = conn.head.feed(data)
        if state is not HeadState.PARTIAL:
            self._head_done(conn, state)
            return
        conn.sock.setblocking(False)
        self._heads[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: _Conn, _sock: Any) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
            if conn.tls:  # decrypted bytes may wait in TLS's buffer, unseen by the poller
                while conn.sock.pending():
                    data += conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:  # closed or reset before the head was complete
            self._unwatch_head(conn)
            self._close(conn)
            return
        assert conn.head is not None
        state = conn.head.feed(data)
        if state is not HeadState.PARTIAL:
            self._unwatch_head(conn)
            self._head_done(conn, state)

    def _unwatch_head(self, conn: _Conn) -> None:
        del self._heads[conn]
        self.poller.unregister(conn.sock)

    def _head_done(self, conn: _Conn, state: HeadState) -> None:
        assert conn.head is not None
        if state is HeadState.TOO_LARGE:
            log.info("%s sent a request head over %d bytes; 431", conn.peer, conn.head.limit)
            self._answer(conn, HEAD_TOO_LARGE)
            return
        if conn.parser is None:
            # TConn.init() would read an HTTP/2 preface, blocking; httpd
            # speaks HTTP/1.1 only, so the parser is made here.
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.parser.unreader = _StallingUnreader(conn.sock)
            conn.initialized = True
        conn.parser.unreader.unread(conn.head.take())
        conn.head = None
        self.enqueue_req(conn)

    def on_client_socket_readable(self, conn: _Conn, client: Any) -> None:
        """A kept-alive connection starts its next request: read its head here."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_head(conn)
        if conn in self._heads:
            self._on_head_readable(conn, client)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self._heads:
            conn = next(iter(self._heads))
            if conn.deadline > now:
                break
            self._unwatch_head(conn)
            assert conn.head is not None
            if len(conn.head):
                log.debug("%s sent no complete request head in %gs; 408",
                          conn.peer, self.limits.header_timeout)
                self._answer(conn, REQUEST_TIMEOUT)
            else:
                self._close(conn)
        while self._lingering:
            conn = next(iter(self._lingering))
            if conn.deadline > now:
                break
            self._unwatch_linger(conn)
            self._close(conn)

    # -- closing, in the main loop --------------------------------------------

    def _answer(self, conn: _Conn, response: bytes) -> None:
        """Send a short error, if the socket takes it now, and close."""
        try:
            conn.sock.send(response)
        except OSError:
            pass
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close and drain, so the client reads the answer instead of a reset."""
        if conn.tls:  # a TLS shutdown is not a half-close: just end it
            self._close(conn)
            return
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.deadline = time.monotonic() + LINGER
        conn.drained = 0
        self._lingering[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_linger_readable, conn))

    def _on_linger_readable(self, conn: _Conn, _sock: Any) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if data and conn.drained < LINGER_MAX:
            return
        self._unwatch_linger(conn)
        self._close(conn)

    def _unwatch_linger(self, conn: _Conn) -> None:
        del self._lingering[conn]
        self.poller.unregister(conn.sock)

    def finish_request(self, conn: _Conn, fs: futures.Future[Any]) -> None:
        """Back from a thread (main loop): keep the connection, or close it here."""
        keep = not fs.cancelled() and fs.exception() is None and bool(fs.result())
        if not keep:
            self._linger(conn)
            return
        buffered = conn.parser.unreader.take_buffered()
        if buffered:  # pipelined, or read ahead while the body was drained
            self._read_head(conn, buffered)
            return
        super().finish_request(conn, fs)  # kept alive, idle until it sends again

    # -- serving, in a thread ---------------------------------------------------

    def handle(self, conn: _Conn) -> bool:
        """Serve the request whose head is buffered; whether to keep the connection."""
        req = None
        try:
            conn.sock.settimeout(self.limits.body_timeout)
            req = next(conn.parser)
            if not req:
                return False
            return bool(self._keepalive_after(conn, self.handle_request(req, conn)))
        except ClientStalled:
            what = f"{req.method} {req.path}" if req else "a request"
            log.info("%s from %s: the client stopped sending its body; closing", what,
                     conn.peer)
        except TimeoutError:
            log.info("%s: the response was not taken for %gs; closing", conn.peer,
                     self.limits.body_timeout)
        except (http.errors.NoMoreData, StopIteration) as exc:
            log.debug("%s: connection ends: %s", conn.peer, exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                log.exception("%s: socket error serving a request", conn.peer)
            else:
                log.debug("%s: connection lost: %s", conn.peer, exc)
        except Exception as exc:  # noqa: BLE001 (gunicorn answers 400 or 500 and logs it)
            self.handle_error(req, conn.sock, conn.client, exc)
        return False


def worker_class(limits: ClientLimits) -> type[HttpdWorker]:
    """:class:`HttpdWorker` with these limits, for gunicorn's ``worker_class``."""
    return type("HttpdWorker", (HttpdWorker,), {"limits": limits})
