"""The HTTP/1.1 codec tftpd fetches GRUB pages with: byte fixtures, fed whole and in pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astralboot.services.tftpd.http11 import (HEAD_MAX, BadResponse, Response, ResponseReader,
                                              get_request)

BODY = b"set timeout=5\nmenuentry 'Debian' {\n  linux /image/debian/linux\n}\n"

# Content-Length framing, as gunicorn sends a falcon text response.
LENGTH = (b"HTTP/1.1 200 OK\r\n"
          b"Server: gunicorn\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n"
          b"Content-Length: %d\r\n"
          b"\r\n" % len(BODY)) + BODY
# Chunked, with a chunk extension and a trailer.
CHUNKED = (b"HTTP/1.1 200 OK\r\n"
           b"Transfer-Encoding: chunked\r\n"
           b"\r\n"
           b"e;name=value\r\n" + BODY[:14] + b"\r\n"
           b"%x\r\n" % (len(BODY) - 14) + BODY[14:] + b"\r\n"
           b"0\r\n"
           b"X-Trailer: yes\r\n"
           b"\r\n")
# HTTP/1.0 style: the body ends when the connection does.
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY
# falcon's error: a JSON title and description.
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\n"
             b"Content-Type: application/json\r\n"
             b"Content-Length: 58\r\n"
             b"\r\n"
             b'{"title": "unknown machine", "description": "no lease..."}')


def feed_whole(data: bytes, body_max: int = 1 << 20) -> Response:
    reader = ResponseReader(body_max)
    return reader.feed(data) or reader.feed_eof()


def feed_bytewise(data: bytes, body_max: int = 1 << 20) -> Response:
    reader = ResponseReader(body_max)
    for i in range(len(data)):
        response = reader.feed(data[i:i + 1])
        if response is not None:
            return response
    return reader.feed_eof()


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
@pytest.mark.parametrize("wire", [LENGTH, CHUNKED, UNTIL_CLOSE])
def test_a_200_body_arrives_whole(feed: object, wire: bytes) -> None:
    response = feed(wire)  # type: ignore[operator]
    assert response.status == 200 and response.reason == "OK"
    assert response.body == BODY


@pytest.mark.parametrize("wire", [LENGTH, CHUNKED])
def test_bytes_after_a_framed_body_are_ignored(wire: bytes) -> None:
    reader = ResponseReader(1 << 20)
    first = reader.feed(wire + b"HTTP/1.1 200 OK\r\n junk")
    assert first is not None and first.body == BODY
    assert reader.feed(b"more junk") == first
    assert reader.feed_eof() == first


def test_headers_are_kept_in_lower_case() -> None:
    response = feed_whole(LENGTH)
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.header("server") == "gunicorn"
    assert response.header("x-missing") is None


def test_an_error_status_keeps_its_body() -> None:
    response = feed_bytewise(NOT_FOUND)
    assert (response.status, response.reason) == (404, "Not Found")
    assert response.body.startswith(b'{"title": "unknown machine"')


def test_no_body_for_204_and_an_empty_content_length() -> None:
    assert feed_whole(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    reader = ResponseReader(10)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == Response(
        200, "OK", (("content-length", "0"),), b"")


def test_a_status_line_without_a_reason() -> None:
    assert feed_whole(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok").reason == ""


# --- bounds ------------------------------------------------------------------------


def test_a_content_length_over_the_bound_is_refused_before_any_body() -> None:
    reader = ResponseReader(len(BODY) - 1)
    with pytest.raises(BadResponse) as caught:
        reader.feed(LENGTH[:LENGTH.index(b"\r\n\r\n") + 4])
    assert caught.value.too_large and caught.value.status == 200


@pytest.mark.parametrize("wire", [CHUNKED, UNTIL_CLOSE])
def test_a_streamed_body_over_the_bound_is_refused(wire: bytes) -> None:
    with pytest.raises(BadResponse) as caught:
        feed_bytewise(wire, body_max=len(BODY) - 1)
    assert caught.value.too_large and caught.value.status == 200


def test_a_chunk_announced_over_the_bound_is_refused_at_its_size_line() -> None:
    reader = ResponseReader(100)
    with pytest.raises(BadResponse) as caught:
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n")
    assert caught.value.too_large


def test_a_body_exactly_at_the_bound_is_taken() -> None:
    assert feed_bytewise(CHUNKED, body_max=len(BODY)).body == BODY


def test_an_endless_head_is_refused() -> None:
    reader = ResponseReader(100)
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(BadResponse, match="head longer"):
        for _ in range(HEAD_MAX // 16 + 2):
            reader.feed(b"X-Pad: 123456\r\n\r"[:16])


# --- faults of the peer ----------------------------------------------------------------


@pytest.mark.parametrize("wire,why", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
    (b"HTTP/2 200\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n", "CRLF"),
])
def test_a_broken_answer_is_a_bad_response(wire: bytes, why: str) -> None:
    with pytest.raises(BadResponse, match=why):
        feed_whole(wire)


@pytest.mark.parametrize("cut", [5, len(LENGTH) - 1, len(CHUNKED) - 3])
def test_a_connection_closed_early_is_a_bad_response(cut: int) -> None:
    wire = LENGTH if cut != len(CHUNKED) - 3 else CHUNKED
    reader = ResponseReader(1 << 20)
    assert reader.feed(wire[:cut]) is None
    with pytest.raises(BadResponse, match="closed in the middle"):
        reader.feed_eof()


@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_raise_nothing_but_bad_response(data: bytes, step: int) -> None:
    reader = ResponseReader(512)
    try:
        for i in range(0, len(data), step):
            if reader.feed(data[i:i + step]) is not None:
                return
        reader.feed_eof()
    except BadResponse:
        pass


@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=300))
def test_chunked_bodies_of_any_shape_arrive_whole(body: bytes, size: int) -> None:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert feed_bytewise(wire, body_max=4096).body == body


# --- the request ---------------------------------------------------------------------------


def test_the_request_names_the_host_the_client_and_closes() -> None:
    wire = get_request("192.0.2.1:8080", "/grub/52:54:00:12:34:56",
                       {"X-AstralBoot-Client": "192.0.2.150"})
    assert wire == (b"GET /grub/52:54:00:12:34:56 HTTP/1.1\r\n"
                    b"Host: 192.0.2.1:8080\r\n"
                    b"Connection: close\r\n"
                    b"Accept: text/plain, */*\r\n"
                    b"X-AstralBoot-Client: 192.0.2.150\r\n"
                    b"\r\n")


@pytest.mark.parametrize("path,headers", [
    ("grub/x", {}),
    ("/grub/x y", {}),
    ("/grub/x\r\nEvil: 1", {}),
    ("/grub/x", {"X-AstralBoot-Client": "1\r\nEvil: 1"}),
    ("/grub/x", {"Bad Name": "1"}),
])
def test_nothing_can_be_smuggled_into_the_request(path: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        get_request("h", path, headers)
