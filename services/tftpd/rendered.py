"""What httpd renders for GRUB, fetched for a TFTP client, and which machine asks.

Debian's signed GRUB reads its config and menu choices over TFTP only (it
has no http), so tftpd asks httpd for them: :class:`HttpdPages` GETs the
page from ``[http] public_url`` with ``X-AstralBoot-Client`` naming the
machine's own address, within a deadline and a size bound, a bounded
number at a time (httpd limits connections per client address, and all of
these come from tftpd's). The answer is held for that one transfer only:
every machine's config differs, and a boot-once choice changes it.

:class:`LeaseDirectory` tells which MAC holds a client's address, for a
config asked for by a name that does not carry one (``grub.cfg``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import re
from collections import Counter
from dataclasses import dataclass

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.errors import AstralBootError, BusError, ErrorCode
from astralboot.common.messages import ErrorReply, LeaseLookup, LeaseReply

from astralboot.services.tftpd.files import FileError
from astralboot.services.tftpd.http11 import BadResponse, Response, ResponseReader, get_request

SIZE_MAX = 256 << 10  # GRUB configs are a few KiB
CONCURRENCY = 16  # fetches at once; the rest wait their turn within their deadline
CLIENT_HEADER = "X-AstralBoot-Client"
READ_SIZE = 64 << 10
USABLE_LEASES = ("bound", "offered")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[^\]/]+\]|[^\s/:]+)"
                  r"(?::(?P<port>\d{1,5}))?(?P<prefix>/[^\s]*)?")


class Failure(enum.Enum):
    STATUS = "status"  # httpd answered, with a status other than 200
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    DOWN = "down"  # no connection to httpd
    BAD_RESPONSE = "bad_response"
    UNSUPPORTED = "unsupported"  # public_url is not an http:// URL tftpd can reach


class PageError(AstralBootError):
    """httpd gave no page; ``detail`` says why, for the operator at the machine's console."""

    def __init__(self, failure: Failure, detail: str, status: int | None = None) -> None:
        self.failure = failure
        self.detail = detail
        self.status = status
        super().__init__(f"{failure.value}: {detail}")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where httpd is: ``http://host[:port][/prefix]``."""

    host: str
    port: int
    prefix: str  # "" or "/prefix", no trailing slash

    @classmethod
    def parse(cls, url: str) -> "Origin":
        match = _URL.fullmatch(url.strip())
        if match is None:
            raise ValueError(f"{url!r} is not a URL")
        if match["scheme"].lower() != "http":
            raise ValueError(f"tftpd fetches GRUB pages over http:// only, and public_url is "
                             f"{url!r}")
        port = int(match["port"] or 80)
        if not 0 < port < 65536:
            raise ValueError(f"{url!r}: bad port")
        return cls(match["host"].strip("[]"), port, (match["prefix"] or "").rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def _oserror(exc: OSError) -> str:
    """``Connection refused``, not asyncio's ``Connect call failed ('192.0.2.1', 80)``."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _why(response: Response) -> str:
    """httpd's own words for a refusal: falcon's JSON title and description, or a text line."""
    kind = (response.header("content-type") or "").split(";")[0].strip().lower()
    body = response.body[:4096]
    if kind == "application/json":
        try:
            doc = json.loads(body)
        except ValueError:
            return ""
        if isinstance(doc, dict):
            return ": ".join(str(doc[k]) for k in ("title", "description") if doc.get(k))
        return ""
    if kind.startswith("text/"):
        for line in body.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip()
    return ""


class HttpdPages:
    """GET a page of httpd on behalf of a TFTP client."""

    def __init__(self, public_url: str, *, deadline: float, size_max: int = SIZE_MAX,
                 concurrency: int = CONCURRENCY, stats: Counter[str] | None = None) -> None:
        self.deadline = deadline
        self.size_max = size_max
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._slots = asyncio.Semaphore(concurrency)
        try:
            self.origin: Origin | None = Origin.parse(public_url)
            self.problem = ""
        except ValueError as exc:
            self.origin, self.problem = None, str(exc)

    async def get(self, path: str, client_ip: str) -> bytes:
        """The body of a 200 answer for ``path``, or :class:`PageError`."""
        try:
            body = await self._get(path, client_ip)
        except PageError as exc:
            self.stats[f"httpd.failed.{exc.failure.value}"] += 1
            raise
        self.stats["httpd.fetched"] += 1
        self.stats["httpd.bytes"] += len(body)
        return body

    async def _get(self, path: str, client_ip: str) -> bytes:
        origin = self.origin
        if origin is None:
            raise PageError(Failure.UNSUPPORTED, self.problem)
        request = get_request(origin.authority, origin.prefix + path,
                              {CLIENT_HEADER: client_ip})
        try:
            async with asyncio.timeout(self.deadline):
                async with self._slots:
                    response = await self._exchange(origin, request)
        except TimeoutError:
            raise PageError(Failure.TIMEOUT, f"httpd did not answer within "
                                             f"{self.deadline:g} s") from None
        if response.status != 200:
            why = _why(response)
            raise PageError(Failure.STATUS, f"httpd answered {response.status} "
                                            f"{response.reason}" + (f" ({why})" if why else ""),
                            response.status)
        return response.body

    async def _exchange(self, origin: Origin, request: bytes) -> Response:
        try:
            stream, writer = await asyncio.open_connection(origin.host, origin.port)
        except OSError as exc:
            raise PageError(Failure.DOWN, f"httpd at {origin.authority} is unreachable: "
                                          f"{_oserror(exc)}") from None
        reader = ResponseReader(self.size_max)
        try:
            writer.write(request)
            while True:
                data = await stream.read(READ_SIZE)
                response = reader.feed(data) if data else reader.feed_eof()
                if response is not None:
                    return response
        except BadResponse as exc:
            if exc.too_large:
                detail = (f"httpd's answer is over {self.size_max} bytes" if exc.status == 200
                          else f"httpd answered {exc.status} with {exc.reason}")
                raise PageError(Failure.TOO_LARGE if exc.status == 200 else Failure.STATUS,
                                detail, exc.status) from None
            raise PageError(Failure.BAD_RESPONSE, f"bad answer from httpd: {exc.reason}",
                            exc.status) from None
        except OSError as exc:
            raise PageError(Failure.BAD_RESPONSE, f"connection to httpd lost: "
                                                  f"{_oserror(exc)}") from None
        finally:
            writer.close()


class LeaseDirectory:
    """The MAC that holds an address, from the store's leases."""

    def __init__(self, bus: AsyncBusClient, *, deadline: float | None = None,
                 stats: Counter[str] | None = None) -> None:
        self._bus = bus
        self._deadline = deadline
        self.stats: Counter[str] = stats if stats is not None else Counter()

    async def mac_of(self, ip: str) -> str:
        """The MAC leased ``ip``, or :class:`FileError` (not_found when there is none)."""
        try:
            reply = await self._bus.request(LeaseLookup(ip=ip), deadline=self._deadline)
        except BusError as exc:
            self.stats["lease.unavailable"] += 1
            raise FileError(ErrorCode.UNAVAILABLE, f"the store did not answer: {exc}") from None
        if isinstance(reply, ErrorReply):
            self.stats["lease.not_found" if reply.error_code is ErrorCode.NOT_FOUND
                       else "lease.unavailable"] += 1
            raise FileError(reply.error_code, reply.detail or reply.code)
        if not isinstance(reply, LeaseReply):
            raise FileError(ErrorCode.INTERNAL, f"the store answered {reply.kind} to a lookup")
        lease = reply.lease
        if lease.state not in USABLE_LEASES:
            self.stats["lease.not_found"] += 1
            raise FileError(ErrorCode.NOT_FOUND, f"the lease of {ip} is {lease.state}")
        return lease.mac
