"""Kernels, initrds and firmware files: ranges, ETags, sendfile.

The pure part (:func:`parse_range`, :func:`etag`, :func:`matches`) decides
status and byte span from headers; :class:`FileResource` does the I/O. Bytes
go out through ``wsgi.file_wrapper``, which gunicorn turns into
``sendfile(2)`` from the file's current offset for Content-Length bytes, so
a range is a seek and a length. The ETag is the content's SHA-256: strong,
identical on every httpd instance serving the same bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable

import falcon

from astralboot.common.bus.events import HTTP_IMAGE
from astralboot.services.httpd.catalog import Catalog
from astralboot.services.httpd.errors import NoLocalCopy
from astralboot.services.httpd.inputs import check_os, check_subpath
from astralboot.services.httpd.reporting import Reporter

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".efi": "application/efi", ".kpxe": "application/octet-stream",
    ".iso": "application/x-iso9660-image", ".json": "application/json",
    ".txt": "text/plain; charset=utf-8", ".ipxe": "text/plain; charset=utf-8",
}


# --- pure: headers to decisions ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Span:
    """What to send: ``status`` 200, 206 or 416, and the inclusive byte span."""

    status: int
    start: int = 0
    end: int = -1  # inclusive; -1 with size 0

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> Span:
    """One ``bytes=`` range against a file of ``size`` bytes (RFC 9110 §14).

    No header, another unit, several ranges or a malformed one: the whole
    file (a server may ignore Range). A well-formed range that lies past the
    end: 416.
    """
    whole = Span(200, 0, size - 1)
    if not header:
        return whole
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return whole
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return whole
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return whole
    if first == "":
        if last == "":
            return whole
        n = int(last)
        if n == 0 or size == 0:
            return Span(416)
        return Span(206, max(0, size - n), size - 1)
    start = int(first)
    if start >= size:
        return Span(416)
    end = int(last) if last else size - 1
    if end < start:
        return whole
    return Span(206, start, min(end, size - 1))


def etag(digest: str) -> str:
    return f'"{digest}"'


def matches(header: str | None, tag: str) -> bool:
    """If-None-Match / If-Range comparison (weak comparison for If-None-Match)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        c = candidate.strip()
        if c.startswith("W/"):
            c = c[2:]
        if c == tag:
            return True
    return False


def content_type(path: str) -> str:
    _, ext = os.path.splitext(path)
    return CONTENT_TYPES.get(ext.lower(), "application/octet-stream")


class Segment:
    """A file seen from its current offset for ``length`` bytes.

    ``fileno()`` lets gunicorn sendfile it (from the offset, Content-Length
    bytes); ``read()`` stops at the end of the range for servers that copy.
    """

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


# --- I/O: one resource per URL family --------------------------------------------------

class FileResource:
    """GET/HEAD a file under a content folder: ``prefix(params) + path``."""

    def __init__(self, catalog: Catalog, reporter: Reporter,
                 folder: Callable[[dict[str, str]], str], stage: str = HTTP_IMAGE) -> None:
        self.catalog = catalog
        self.reporter = reporter
        self.folder = folder
        self.stage = stage

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        self._serve(req, resp, params, body=True)

    def on_head(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        self._serve(req, resp, params, body=False)

    def _serve(self, req: falcon.Request, resp: falcon.Response, params: dict[str, str],
               body: bool) -> None:
        path = self.folder(params) + check_subpath(params["path"])
        entry, local = self.catalog.file(path)
        assert entry.digest is not None
        tag = etag(entry.digest)
        resp.set_header("ETag", tag)
        resp.set_header("Accept-Ranges", "bytes")
        if matches(req.get_header("If-None-Match"), tag):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = content_type(path)
        if_range = req.get_header("If-Range")
        span = parse_range(None if if_range and if_range.strip() != tag
                           else req.get_header("Range"), entry.size)
        if span.status == 416:
            resp.status = falcon.HTTP_416
            resp.set_header("Content-Range", f"bytes */{entry.size}")
            resp.content_length = 0
            return
        if span.status == 206:
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {span.start}-{span.end}/{entry.size}")
        resp.content_length = max(span.length, 0)
        if not body:
            return
        try:
            stream = open(local, "rb")
        except FileNotFoundError:  # evicted from the cache since the check
            raise NoLocalCopy(f"{path}: cached copy vanished") from None
        if span.status == 206:
            stream.seek(span.start)
            resp.stream = Segment(stream, span.length)
        else:
            resp.stream = stream
        req.context.bytes_out = max(span.length, 0)
        if span.start == 0:  # one event per download, not per resumed piece
            self.reporter.report(self.stage, None, req.remote_addr, path)


def image_folder(params: dict[str, str]) -> str:
    return f"boot/{check_os(params['os'])}/images/"
