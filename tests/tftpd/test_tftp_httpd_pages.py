"""Fetching a GRUB page from httpd: real TCP on loopback, an HTTP server that misbehaves on cue.

Every failure is a :class:`PageError` saying what went wrong, raised within
the deadline, and counted; the machine's address travels in the header.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Awaitable, Callable

import pytest

from astralboot.services.tftpd.rendered import (CLIENT_HEADER, Failure, HttpdPages, Origin,
                                                PageError)

class Recorder:
    """An HTTP server whose every answer is written by the test."""

    def __init__(self, answer: Callable[[bytes], Awaitable[bytes | None]]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.open = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            reply = await self.answer(head)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def header(self, index: int, name: str) -> str | None:
        for line in self.heads[index].decode().split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return None

    def target(self, index: int) -> str:
        return self.heads[index].decode().split(" ")[1]


def ok(body: bytes, kind: str = "text/plain") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (kind.encode(), len(body))) + body


def fetch(answer: Callable[[bytes], Awaitable[bytes | None]], path: str = "/grub/m", *,
          prefix: str = "", deadline: float = 5.0, size_max: int = 1 << 16,
          concurrency: int = 16, count: int = 1
          ) -> tuple[list[bytes | PageError], Recorder, Counter[str]]:
    recorder = Recorder(answer)
    stats: Counter[str] = Counter()

    async def main() -> list[bytes | PageError]:
        server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pages = HttpdPages(f"http://127.0.0.1:{port}{prefix}", deadline=deadline,
                           size_max=size_max, concurrency=concurrency, stats=stats)
        try:
            results = await asyncio.gather(
                *(pages.get(path, f"192.0.2.{100 + i}") for i in range(count)),
                return_exceptions=True)
        finally:
            server.close()
        for r in results:
            if not isinstance(r, (bytes, PageError)):
                raise r
        return results  # type: ignore[return-value]

    return asyncio.run(main()), recorder, stats


def answering(reply: bytes | None) -> Callable[[bytes], Awaitable[bytes | None]]:
    async def answer(head: bytes) -> bytes | None:
        return reply
    return answer


def test_the_page_is_fetched_for_the_machine_it_names() -> None:
    [body], rec, stats = fetch(answering(ok(b"set default=0\n")), "/grub/52:54:00:12:34:56")
    assert body == b"set default=0\n"
    assert rec.target(0) == "/grub/52:54:00:12:34:56"
    assert rec.header(0, CLIENT_HEADER) == "192.0.2.100"
    assert rec.header(0, "Host") is not None and rec.header(0, "Host").startswith("127.0.0.1:")
    assert stats == Counter({"httpd.fetched": 1, "httpd.bytes": 14})


def test_a_prefix_in_public_url_is_kept() -> None:
    [body], rec, _ = fetch(answering(ok(b"x")), "/grub/choose/debian/m", prefix="/boot/")
    assert body == b"x"
    assert rec.target(0) == "/boot/grub/choose/debian/m"


@pytest.mark.parametrize("reply,detail", [
    (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 59\r\n\r\n"
     b'{"title": "unknown machine", "description": "no such MAC"}\n',
     "httpd answered 404 Not Found (unknown machine: no such MAC)"),
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
     b"Content-Length: 30\r\n\r\n\ntemplate error at line 3\nmore",
     "httpd answered 500 Internal Server Error (template error at line 3)"),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
     "httpd answered 503 Service Unavailable"),
    (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
     "httpd answered 302 Found"),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000\r\n\r\n",
     "httpd answered 500 with body of 1000000 bytes is over 65536"),
])
def test_a_status_other_than_200_says_what_httpd_said(reply: bytes, detail: str) -> None:
    [error], _, stats = fetch(answering(reply))
    assert isinstance(error, PageError) and error.failure is Failure.STATUS
    assert error.detail == detail
    assert stats["httpd.failed.status"] == 1 and stats["httpd.fetched"] == 0


def test_a_page_over_the_size_bound_is_refused() -> None:
    [error], _, stats = fetch(answering(ok(b"#" * 70000)))
    assert isinstance(error, PageError) and error.failure is Failure.TOO_LARGE
    assert error.detail == "httpd's answer is over 65536 bytes"
    # streamed without a length: refused once the bound is passed
    streamed = b"HTTP/1.0 200 OK\r\n\r\n" + b"#" * 70000
    [error], _, stats = fetch(answering(streamed))
    assert isinstance(error, PageError) and error.failure is Failure.TOO_LARGE
    assert stats["httpd.failed.too_large"] == 1


def test_a_slow_httpd_is_given_up_on_at_the_deadline() -> None:
    async def never(head: bytes) -> bytes | None:
        await asyncio.sleep(60)
        return None
    [error], rec, stats = fetch(never, deadline=0.2)
    assert isinstance(error, PageError) and error.failure is Failure.TIMEOUT
    assert error.detail == "httpd did not answer within 0.2 s"
    assert len(rec.heads) == 1 and stats["httpd.failed.timeout"] == 1


def test_httpd_down_is_said_at_once() -> None:
    async def main() -> PageError:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens there now
        pages = HttpdPages(f"http://127.0.0.1:{port}", deadline=30)
        try:
            await pages.get("/grub/m", "192.0.2.100")
        except PageError as exc:
            return exc
        raise AssertionError("fetched from nothing")

    error = asyncio.run(main())
    assert error.failure is Failure.DOWN
    assert error.detail.startswith("httpd at 127.0.0.1:")
    assert error.detail.endswith(" is unreachable: Connection refused")


@pytest.mark.parametrize("reply,detail", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad answer from httpd: not an HTTP/1.x status line"),
    (None, "bad answer from httpd: the connection closed in the middle of the head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
     "bad answer from httpd: the connection closed in the middle of the length"),
])
def test_a_broken_answer_is_a_bad_response(reply: bytes | None, detail: str) -> None:
    [error], _, stats = fetch(answering(reply))
    assert isinstance(error, PageError) and error.failure is Failure.BAD_RESPONSE
    assert error.detail.startswith(detail)
    assert stats["httpd.failed.bad_response"] == 1


def test_fetches_at_once_are_bounded_and_each_gets_its_answer() -> None:
    async def echo(head: bytes) -> bytes:
        await asyncio.sleep(0.05)  # long enough for the others to pile up
        client = [line for line in head.decode().split("\r\n")
                  if line.startswith(CLIENT_HEADER)][0].split(": ")[1]
        return ok(f"for {client}\n".encode())

    results, rec, stats = fetch(echo, concurrency=3, count=12)
    assert results == [f"for 192.0.2.{100 + i}\n".encode() for i in range(12)]
    assert rec.most_open == 3
    assert stats["httpd.fetched"] == 12


@pytest.mark.parametrize("url,origin", [
    ("http://192.0.2.1", Origin("192.0.2.1", 80, "")),
    ("http://192.0.2.1:8080", Origin("192.0.2.1", 8080, "")),
    ("http://boot.example:8080/astral/", Origin("boot.example", 8080, "/astral")),
    ("HTTP://[2001:db8::1]:81", Origin("2001:db8::1", 81, "")),
])
def test_public_url_gives_where_httpd_is(url: str, origin: Origin) -> None:
    assert Origin.parse(url) == origin


def test_authority_is_what_the_host_header_says() -> None:
    assert Origin("192.0.2.1", 80, "").authority == "192.0.2.1"
    assert Origin("192.0.2.1", 8080, "").authority == "192.0.2.1:8080"
    assert Origin("2001:db8::1", 81, "").authority == "[2001:db8::1]:81"


@pytest.mark.parametrize("url", ["https://192.0.2.1", "ftp://x", "192.0.2.1", "http://h:99999"])
def test_a_public_url_tftpd_cannot_fetch_from_refuses_every_page(url: str) -> None:
    pages = HttpdPages(url, deadline=1)
    assert pages.origin is None and pages.problem
    with pytest.raises(PageError) as caught:
        asyncio.run(pages.get("/grub/m", "192.0.2.100"))
    assert caught.value.failure is Failure.UNSUPPORTED
    assert caught.value.detail == pages.problem
