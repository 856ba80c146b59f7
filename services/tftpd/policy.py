"""What the server does with a request; decisions only, no sockets.

:class:`ReadService` turns an RRQ into a :class:`Transfer`, the ERROR
that refuses it, or :class:`NoMemory` (not now). Where the bytes come from
is decided by :func:`~.paths.route`: a stored file from an injected
:class:`ContentSource` (and, for netascii, the shared
:class:`NetasciiCache`), or a page httpd renders for GRUB from injected
:class:`Pages`, for the machine that injected :class:`Leases` say holds
the client's address when the name does not say which.
:class:`SessionTable` decides who may start a transfer: a cap on sessions,
a cap per client address (so one noisy machine cannot starve a rack that
boots at once), and what a second RRQ from the same address and port means.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Iterator, Protocol, TypeVar

from astralboot.common.errors import ErrorCode

from astralboot.services.tftpd.files import FileError, ContentSource
from astralboot.services.tftpd.netascii import NetasciiCache, NoRoom, Text
from astralboot.services.tftpd.options import Limits, negotiate
from astralboot.services.tftpd.packets import (Ack, Data, Error, TftpCode, Mode, OptionAck, Packet, ReadRequest,
                      WriteRequest, encode_error, to_netascii)
from astralboot.services.tftpd.paths import GrubPage, MachineGrubConfig, Route, StoreFile, route
from astralboot.services.tftpd.rendered import Failure, PageError
from astralboot.services.tftpd.transfer import Address, Transfer

READ_ONLY = encode_error(TftpCode.ACCESS_VIOLATION, "this server is read-only")
UNKNOWN_TID = encode_error(TftpCode.UNKNOWN_TID, "unknown transfer ID")

# What the listening port answers to packets that start no transfer.
_STRAY_ANSWERS: dict[type, bytes | None] = {
    WriteRequest: READ_ONLY,
    Data: UNKNOWN_TID,
    Ack: UNKNOWN_TID,
    OptionAck: UNKNOWN_TID,
    Error: None,  # never answer an error
}

_FROM_STORE = {
    ErrorCode.NOT_FOUND: TftpCode.FILE_NOT_FOUND,
    ErrorCode.BAD_REQUEST: TftpCode.ACCESS_VIOLATION,
}


def stray_answer(packet: Packet) -> bytes | None:
    """The ERROR for a packet that is not an RRQ, or None to stay silent."""
    return _STRAY_ANSWERS.get(type(packet))


def refusal_for(exc: FileError) -> Error:
    code = _FROM_STORE.get(exc.code, TftpCode.NOT_DEFINED)
    if code is TftpCode.FILE_NOT_FOUND:
        return Error(code, "file not found")
    if code is TftpCode.ACCESS_VIOLATION:
        return Error(code, f"access violation: {exc.detail}"[:200])
    return Error(code, f"content unavailable: {exc.detail}"[:200])


@dataclass(frozen=True, slots=True)
class NoMemory:
    """Not now: the netascii copy does not fit in what is left of ``memory_max``.

    Answered with silence, like a full session table. A PXE client, and
    tftp-hpa, sends its RRQ again after its timeout (several times, backing
    off), by when transfers may have ended and freed their copies; an ERROR
    would end its boot attempt at once for what is only a passing shortage.
    A copy larger than the whole budget can never fit: that one gets an
    ERROR saying so, since asking again cannot help.
    """

    needed: int
    available: int


class Pages(Protocol):
    async def get(self, path: str, client_ip: str) -> bytes:
        """httpd's page at ``path`` for the machine at ``client_ip``, or :class:`PageError`."""


class Leases(Protocol):
    async def mac_of(self, ip: str) -> str:
        """The MAC that holds ``ip``, or :class:`FileError`."""


# The TFTP code for a refusal by httpd's status; any other failure is code 0
# (not defined), which GRUB shows with the message and tftpd reports.
_FROM_HTTP_STATUS = {
    400: TftpCode.ACCESS_VIOLATION,
    403: TftpCode.ACCESS_VIOLATION,
    404: TftpCode.FILE_NOT_FOUND,
}


def page_refusal(exc: PageError, what: str) -> Error:
    code = TftpCode.NOT_DEFINED
    if exc.failure is Failure.STATUS and exc.status is not None:
        code = _FROM_HTTP_STATUS.get(exc.status, TftpCode.NOT_DEFINED)
    return Error(code, f"{what}: {exc.detail}"[:200])


def lease_refusal(exc: FileError, ip: str) -> Error:
    code = _FROM_STORE.get(exc.code, TftpCode.NOT_DEFINED)
    if code is TftpCode.FILE_NOT_FOUND:
        return Error(code, (f"no GRUB config: no machine holds {ip} ({exc.detail}); "
                            "ask for grub.cfg-01-<mac>")[:200])
    return Error(code, f"no GRUB config: {exc.detail}"[:200])


Content = Text | Error | NoMemory
Opener = Callable[["ReadService", Route, ReadRequest, Address], Awaitable[Content]]


class ReadService:
    """RRQ in, transfer or refusal out."""

    def __init__(self, content: ContentSource, limits: Limits, *, retries: int,
                 netascii: NetasciiCache, pages: Pages | None = None,
                 leases: Leases | None = None) -> None:
        self.content = content
        self.limits = limits
        self.retries = retries
        self.netascii = netascii
        self.pages = pages
        self.leases = leases

    async def open(self, request: ReadRequest, peer: Address) -> Transfer | Error | NoMemory:
        if request.mode is Mode.MAIL:
            return Error(TftpCode.ILLEGAL_OPERATION, "mail mode is not supported")
        where = route(request.filename)
        if isinstance(where, Error):
            return where
        data = await _OPENERS[type(where)](self, where, request, peer)
        if isinstance(data, (Error, NoMemory)):
            return data
        negotiated = negotiate(request.options, len(data), self.limits)
        return Transfer(peer, memoryview(data), negotiated, retries=self.retries)

    async def _stored(self, where: Route, request: ReadRequest, peer: Address) -> Content:
        assert isinstance(where, StoreFile)
        try:
            blob = await self.content.open(where.path)
        except FileError as exc:
            return refusal_for(exc)
        if request.mode is not Mode.NETASCII:
            return blob.data
        try:
            return await self.netascii.open(blob)
        except NoRoom as exc:
            if exc.for_now:
                return NoMemory(exc.needed, exc.available)
            return Error(TftpCode.NOT_DEFINED,
                         f"file too large for netascii ({exc.needed} bytes, over tftpd's "
                         f"memory_max); use octet")

    async def _machine_config(self, where: Route, request: ReadRequest,
                              peer: Address) -> Content:
        assert isinstance(where, MachineGrubConfig)
        mac = where.mac
        if mac is None:
            if self.leases is None:
                return Error(TftpCode.FILE_NOT_FOUND, "no GRUB config: no lease lookup here")
            try:
                mac = await self.leases.mac_of(peer[0])
            except FileError as exc:
                return lease_refusal(exc, peer[0])
        return await self._page(GrubPage.config_of(mac), request, peer,
                                f"no GRUB config for {mac}")

    async def _page(self, where: Route, request: ReadRequest, peer: Address,
                    what: str = "") -> Content:
        assert isinstance(where, GrubPage)
        if self.pages is None:
            return Error(TftpCode.FILE_NOT_FOUND, f"{where.path}: no httpd to render it")
        try:
            body = await self.pages.get(where.path, peer[0])
        except PageError as exc:
            return page_refusal(exc, what or f"no {where.path}")
        # This machine's own, for this transfer only: never shared or cached.
        return to_netascii(body) if request.mode is Mode.NETASCII else body


_OPENERS: dict[type, Opener] = {
    StoreFile: ReadService._stored,
    MachineGrubConfig: ReadService._machine_config,
    GrubPage: ReadService._page,
}


class Verdict(enum.Enum):
    ADMIT = "admit"
    DUPLICATE = "duplicate"  # the client sent its RRQ again: the session answers it
    REPLACE = "replace"  # a new request from the same port: end the old session
    BUSY = "busy"  # too many sessions overall
    CLIENT_BUSY = "client_busy"  # too many sessions for this client address


class SessionLike(Protocol):
    @property
    def request(self) -> ReadRequest: ...

    @property
    def started(self) -> bool: ...


S = TypeVar("S", bound=SessionLike)


class SessionTable(Generic[S]):
    """The live sessions, by client address and port."""

    def __init__(self, max_sessions: int, per_client: int) -> None:
        self.max_sessions = max_sessions
        self.per_client = per_client
        self._sessions: dict[Address, S] = {}
        self._per_ip: Counter[str] = Counter()

    def consider(self, peer: Address, request: ReadRequest) -> tuple[Verdict, S | None]:
        """May ``peer`` start a transfer? Returns the verdict and any existing session.

        A busy verdict is answered with silence: the client sends its RRQ
        again after its own timeout, by when a session may have ended.
        """
        existing = self._sessions.get(peer)
        if existing is not None:
            # Same request, nothing acknowledged yet: a retransmitted RRQ.
            # Anything else (a UEFI client's real RRQ overtaking its ERROR 8,
            # a restarted client) supersedes the old session.
            if existing.request == request and not existing.started:
                return Verdict.DUPLICATE, existing
            return Verdict.REPLACE, existing
        if len(self._sessions) >= self.max_sessions:
            return Verdict.BUSY, None
        if self._per_ip[peer[0]] >= self.per_client:
            return Verdict.CLIENT_BUSY, None
        return Verdict.ADMIT, None

    def add(self, peer: Address, session: S) -> None:
        if peer in self._sessions:
            raise KeyError(f"{peer} already has a session")
        self._sessions[peer] = session
        self._per_ip[peer[0]] += 1

    def remove(self, peer: Address, session: S) -> bool:
        """Forget ``session`` if it is still the one for ``peer``."""
        if self._sessions.get(peer) is not session:
            return False
        del self._sessions[peer]
        self._per_ip[peer[0]] -= 1
        if not self._per_ip[peer[0]]:
            del self._per_ip[peer[0]]
        return True

    def get(self, peer: Address) -> S | None:
        return self._sessions.get(peer)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._sessions.values()))

    def clients(self) -> int:
        return len(self._per_ip)
