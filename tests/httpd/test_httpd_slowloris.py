"""httpd against slow clients: real gunicorn, the real store, raw sockets.

Slowloris clients send a request head one line at a time and never finish
it; others stall a request body or stop reading a response. Clients are
told apart by source address (loopback takes any 127/8 address), so in the
main test the per-address cap is not what saves the server. Timing is
asserted only as "answered while the slow clients still held their
connections".
"""

from __future__ import annotations

import http.client
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest
from astralboot.common.config import load
from support.stack import Stack, write_config
from astralboot.services.httpd.worker import HeadState, RequestHead
from httpd_support import BUNDLED, admin_token
from support.ports import free_port

HEALTH = "127.0.0.1"                                  # the client that must be answered
SLOW = [f"127.0.0.{n}" for n in range(2, 10)]          # 8 addresses x 25 slow clients
HEAD_START = b"GET /api/health HTTP/1.1\r\nHost: astralboot\r\n"


# -- the head reader, fed bytes (no sockets) --------------------------------------

HEADS = [
    # a whole head; what follows it (a body, the next request) is kept
    (b"GET /choose HTTP/1.1\r\nHost: a\r\n\r\n", HeadState.COMPLETE),
    (b"PUT /api/machines/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", HeadState.COMPLETE),
    (b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n", HeadState.COMPLETE),
    # RFC 9112 2.2: one empty line before the request line is tolerated
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HeadState.COMPLETE),
    # headers still coming, one line at a time (slowloris)
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-a: b\r\n", HeadState.PARTIAL),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", HeadState.PARTIAL),
    (b"", HeadState.PARTIAL),
    # over the 64-byte limit used here, with or without its end
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 60 + b"\r\n", HeadState.TOO_LARGE),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 60 + b"\r\n\r\n", HeadState.TOO_LARGE),
]


@pytest.mark.parametrize("data, state", HEADS)
def test_a_head_is_complete_at_its_empty_line_fed_whole_or_byte_by_byte(
        data: bytes, state: HeadState) -> None:
    whole = RequestHead(limit=64)
    assert whole.feed(data) is state
    single = RequestHead(limit=64)
    seen = [single.feed(data[i:i + 1]) for i in range(len(data))] or [single.feed(b"")]
    assert seen[-1] is state or (state is HeadState.COMPLETE and HeadState.COMPLETE in seen)
    if state is HeadState.COMPLETE:
        assert whole.take() == data  # handed to gunicorn's parser as it came


def test_a_head_ending_exactly_at_the_limit_is_complete() -> None:
    data = b"GET / HTTP/1.1\r\nHost: " + b"h" * 38 + b"\r\n\r\n"
    assert len(data) == 64
    assert RequestHead(limit=64).feed(data) is HeadState.COMPLETE
    assert RequestHead(limit=63).feed(data) is HeadState.TOO_LARGE


# -- a real httpd -----------------------------------------------------------------


@dataclass
class Site:
    port: int
    stack: Stack
    image_size: int
    token: str  # an admin token the store knows

    def log(self) -> str:
        return self.stack.log_path("httpd").read_text(errors="replace")


@contextmanager
def httpd(image_size: int = 4096, **extra: object) -> Iterator[Site]:
    """Store and httpd (1 worker x 2 threads unless told) on 127.0.0.1."""
    folder = Path(tempfile.mkdtemp(prefix="ab-sl-"))
    try:
        data = folder / "data"
        shutil.copytree(BUNDLED, data)
        (data / "boot/debian/images/linux").write_bytes(b"\x90" * 4096)
        (data / "boot/debian/images/initrd.gz").write_bytes(b"\x1f" * image_size)
        port = free_port()
        settings = {"bus.deadline": 1.0, "http.workers": 1, "http.threads": 2,
                    **{f"http.{k}": v for k, v in extra.items()}}
        config = write_config(folder, interface="lo", address="127.0.0.1",
                              network="127.0.0.0/8", range="127.0.0.100-127.0.0.199",
                              data=data, http_port=port, extra=settings)
        with Stack(config, services=("store", "httpd")) as stack:
            yield Site(port, stack, image_size, admin_token(load(config).bus.endpoint))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def connect(port: int, source: str, timeout: float = 20.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def get(port: int, path: str, source: str, timeout: float = 20.0) -> tuple[int, float]:
    """Status and seconds taken, on a new connection from ``source``."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


def is_open(sock: socket.socket) -> bool:
    """The server has neither closed this connection nor answered on it."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return not poll.poll(0)  # readable: an answer, an end of file or a reset


class Tricklers:
    """Slowloris: each client sends a request line, then a header line every ``every`` s."""

    def __init__(self, port: int, sources: list[str], per_source: int, every: float) -> None:
        self.port = port
        self.sources = sources
        self.per_source = per_source
        self.every = every
        self.socks: list[socket.socket] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        for _ in range(self.per_source):
            for source in self.sources:
                sock = connect(self.port, source)
                sock.sendall(HEAD_START)
                self.socks.append(sock)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        line = 0
        while not self._stop.wait(self.every):
            line += 1
            for sock in self.socks:
                try:
                    sock.sendall(b"X-Slow-%d: still here\r\n" % line)
                except OSError:
                    pass  # closed by the server: is_open() tells

    def open_count(self) -> int:
        return sum(is_open(s) for s in self.socks)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def slowloris_round(port: int, header_timeout: float, count: int = 200) -> list[float]:
    """Health latencies while ``count`` tricklers hold connections; asserts they still do."""
    per_source = count // len(SLOW)
    with Tricklers(port, SLOW, per_source, every=2.0) as slow:
        assert slow.open_count() == count
        answers = [get(port, "/api/health", HEALTH, timeout=header_timeout / 2)
                   for _ in range(5)]
        held = time.monotonic() - slow.started
        assert [status for status, _ in answers] == [200] * 5
        # Answered before the header timeout could have freed a single thread:
        assert held < header_timeout
        assert slow.open_count() == count
    return [latency for _, latency in answers]


# -- tests ------------------------------------------------------------------------

def test_health_answers_while_200_slowloris_connections_hold_on() -> None:
    with httpd(header_timeout=30) as site:
        latencies = slowloris_round(site.port, header_timeout=30)
    print(f"\n/api/health under 200 slowloris connections (1 worker x 2 threads): "
          f"{', '.join(f'{x * 1000:.1f}' for x in latencies)} ms")


def test_a_head_not_complete_in_time_is_answered_408_and_closed() -> None:
    with httpd(header_timeout=2) as site:
        slow = connect(site.port, SLOW[0])
        slow.sendall(HEAD_START)
        silent = connect(site.port, SLOW[1])
        # The trickler keeps sending; the server cuts it off anyway.
        answer = b""
        deadline = time.monotonic() + 30
        while not answer and time.monotonic() < deadline:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            slow.settimeout(0.5)
            try:
                answer = slow.recv(65536)
            except TimeoutError:
                continue
        slow.settimeout(20)
        answer += read_all(slow)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert read_all(silent) == b""  # sent nothing: closed without an answer
        # A kept-alive connection: the next request gets the same deadline.
        kept = http.client.HTTPConnection("127.0.0.1", site.port, timeout=20,
                                          source_address=(SLOW[2], 0))
        kept.request("GET", "/api/health")
        first = kept.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        assert kept.sock is not None
        kept.sock.sendall(HEAD_START)
        assert read_all(kept.sock).startswith(b"HTTP/1.1 408 ")
        kept.close()
        assert get(site.port, "/api/health", HEALTH)[0] == 200


def test_one_address_gets_per_client_connections_and_others_are_still_served() -> None:
    with httpd(per_client=4, header_timeout=30) as site:
        held = [connect(site.port, SLOW[0]) for _ in range(4)]
        for sock in held:
            sock.sendall(HEAD_START)
        refused = connect(site.port, SLOW[0])
        refused.sendall(HEAD_START + b"\r\n")
        assert read_all(refused) == b""  # closed at once, no answer
        assert get(site.port, "/api/health", SLOW[1])[0] == 200
        assert all(is_open(sock) for sock in held)
        # The cap counts open connections: one closed, one more is let in.
        held.pop().close()
        statuses = []
        for _ in range(20):
            try:
                statuses.append(get(site.port, "/api/health", SLOW[0])[0])
            except (ConnectionError, http.client.RemoteDisconnected):
                time.sleep(0.1)  # the server has not seen the close yet
                continue
            break
        assert statuses == [200]
        for sock in held:
            sock.close()


def test_a_stalled_body_is_dropped_and_the_worker_serves_others() -> None:
    with httpd(body_timeout=2, threads=2) as site:
        stalled = []
        for source in SLOW[:2]:  # one per thread
            sock = connect(site.port, source)
            sock.sendall(b"PUT /api/machines/52:54:00:aa:bb:07 HTTP/1.1\r\nHost: a\r\n"
                         b"Authorization: Bearer " + site.token.encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                         b'{"name": "' + b"x" * 40)  # half the body, then nothing
            stalled.append(sock)
        assert get(site.port, "/api/health", HEALTH)[0] == 200
        for sock in stalled:
            assert read_all(sock) == b""  # dropped, no answer
        log = site.log()
        assert log.count("the client stopped sending its body; closing") == 2
        assert "Traceback" not in log


def test_a_client_that_stops_reading_is_dropped_and_the_worker_serves_others() -> None:
    size = 48 << 20  # more than loopback's socket buffers hold
    with httpd(image_size=size, body_timeout=2, threads=1) as site:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((SLOW[0], 0))
        sock.settimeout(20)
        sock.connect(("127.0.0.1", site.port))
        sock.sendall(b"GET /image/debian/initrd.gz HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.5)  # the only thread is now writing, and the client reads nothing
        assert get(site.port, "/api/health", HEALTH)[0] == 200
        received = read_all(sock)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert len(received) < size  # cut off, not sent whole
        log = site.log()
        assert "the response was not taken for 2s; closing" in log
        assert "Traceback" not in log
