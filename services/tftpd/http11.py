"""Just enough HTTP/1.1 for tftpd to GET a page from httpd: bytes in, a response out.

Sans-IO, like the TFTP codec: :func:`get_request` writes a request;
:class:`ResponseReader` is fed what the connection delivers and returns the
:class:`Response` once it is whole. The body is framed by Content-Length,
by chunked transfer coding, or by the end of the connection, and bounded:
a head over ``HEAD_MAX`` or a body over ``body_max`` is refused as soon as
that is known, so a broken or hostile peer costs a bounded amount of
memory. Every fault of the peer raises :class:`BadResponse`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from astralboot.common.errors import RemoteProtocolError

HEAD_MAX = 16 << 10  # status line and headers
CHUNK_LINE_MAX = 1024  # a chunk-size line, extensions included
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


class BadResponse(RemoteProtocolError):
    """The peer's answer breaks HTTP/1.1, or is over a bound."""

    def __init__(self, reason: str, *, status: int | None = None,
                 too_large: bool = False) -> None:
        self.reason = reason
        self.status = status  # when the status line was read before the fault
        self.too_large = too_large
        super().__init__(reason)


def get_request(host: str, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A GET of ``path`` on ``host`` (``name[:port]``), closing the connection after it."""
    if not path.startswith("/") or any(c in path for c in " \r\n\0"):
        raise ValueError(f"{path!r} is not a request target")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             "Accept: text/plain, */*"]
    for name, value in (headers or {}).items():
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # names in lower case, in order
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class _State(enum.Enum):
    HEAD = "head"
    LENGTH = "length"  # Content-Length bytes of body
    CHUNK_SIZE = "chunk_size"
    CHUNK_DATA = "chunk_data"
    CHUNK_END = "chunk_end"  # the CRLF after a chunk's data
    TRAILER = "trailer"
    UNTIL_CLOSE = "until_close"
    DONE = "done"


class ResponseReader:
    """One response to a GET, fed in pieces of any size."""

    def __init__(self, body_max: int) -> None:
        self.body_max = body_max
        self._state = _State.HEAD
        self._buffer = bytearray()
        self._body = bytearray()
        self._left = 0  # bytes of the current Content-Length body or chunk
        self._status = 0
        self._reason = ""
        self._headers: tuple[tuple[str, str], ...] = ()
        self._steps: dict[_State, Callable[[], bool]] = {
            _State.HEAD: self._head,
            _State.LENGTH: self._length,
            _State.CHUNK_SIZE: self._chunk_size,
            _State.CHUNK_DATA: self._chunk_data,
            _State.CHUNK_END: self._chunk_end,
            _State.TRAILER: self._trailer,
            _State.UNTIL_CLOSE: self._until_close,
        }

    @property
    def status(self) -> int | None:
        """The status, once the head is read."""
        return self._status or None

    def feed(self, data: bytes) -> Response | None:
        """Take more bytes; the response once it is complete, else None."""
        if self._state is _State.DONE:
            return self._response()  # a closing connection's extra bytes are ignored
        self._buffer += data
        while self._state is not _State.DONE and self._steps[self._state]():
            pass
        return self._response() if self._state is _State.DONE else None

    def feed_eof(self) -> Response:
        """The peer closed: the response, if that ends it, else :class:`BadResponse`."""
        if self._state is _State.UNTIL_CLOSE:
            self._state = _State.DONE
        if self._state is not _State.DONE:
            raise self._error(f"the connection closed in the middle of the {self._state.value}")
        return self._response()

    # -- steps: each returns True when it moved on and may be run again -------

    def _error(self, reason: str, too_large: bool = False) -> BadResponse:
        return BadResponse(reason, status=self.status, too_large=too_large)

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > limit:
                raise self._error(f"{what} longer than {limit} bytes")
            return None
        if end > limit:
            raise self._error(f"{what} longer than {limit} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        return line

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end > HEAD_MAX or (end < 0 and len(self._buffer) > HEAD_MAX + 3):
            raise self._error(f"response head longer than {HEAD_MAX} bytes")
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[:end + 4]
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise self._error(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        headers = []
        for raw in lines[1:]:
            name, colon, value = raw.partition(b":")
            text = name.decode("latin-1")
            if not colon or not _TOKEN.fullmatch(text):
                raise self._error(f"bad header line {raw[:60]!r}")
            headers.append((text.lower(), value.strip(b" \t").decode("latin-1")))
        self._status = int(match.group(1))
        self._reason = (match.group(2) or b"").decode("latin-1").strip()
        self._headers = tuple(headers)
        self._state = self._framing()
        return True

    def _framing(self) -> _State:
        if self._status in (204, 304) or 100 <= self._status < 200:
            return _State.DONE
        coding = [v.strip().lower() for k, v in self._headers if k == "transfer-encoding"]
        if coding:
            if coding != ["chunked"]:
                raise self._error(f"transfer coding {', '.join(coding)!r} is not supported")
            return _State.CHUNK_SIZE
        lengths = {v for k, v in self._headers if k == "content-length"}
        if not lengths:
            return _State.UNTIL_CLOSE
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise self._error(f"bad Content-Length {sorted(lengths)!r}")
        self._left = int(next(iter(lengths)))
        if self._left > self.body_max:
            raise self._error(f"body of {self._left} bytes is over {self.body_max}", True)
        return _State.LENGTH if self._left else _State.DONE

    def _take_body(self, limit: int) -> int:
        piece = self._buffer[:limit]
        del self._buffer[:len(piece)]
        self._body += piece
        if len(self._body) > self.body_max:
            raise self._error(f"body over {self.body_max} bytes", True)
        return len(piece)

    def _length(self) -> bool:
        self._left -= self._take_body(self._left)
        if self._left:
            return False
        self._state = _State.DONE
        return True

    def _chunk_size(self) -> bool:
        line = self._line(CHUNK_LINE_MAX, "chunk-size line")
        if line is None:
            return False
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise self._error(f"bad chunk-size line {line[:40]!r}")
        self._left = int(match.group(1), 16)
        if len(self._body) + self._left > self.body_max:
            raise self._error(f"body over {self.body_max} bytes", True)
        self._state = _State.CHUNK_DATA if self._left else _State.TRAILER
        return True

    def _chunk_data(self) -> bool:
        self._left -= self._take_body(self._left)
        if self._left:
            return False
        self._state = _State.CHUNK_END
        return True

    def _chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            raise self._error("chunk data not followed by CRLF")
        del self._buffer[:2]
        self._state = _State.CHUNK_SIZE
        return True

    def _trailer(self) -> bool:
        line = self._line(HEAD_MAX, "trailer")
        if line is None:
            return False
        if not line:
            self._state = _State.DONE
        return True

    def _until_close(self) -> bool:
        self._take_body(len(self._buffer))
        return False

    def _response(self) -> Response:
        return Response(self._status, self._reason, self._headers, bytes(self._body))
