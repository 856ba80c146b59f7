"""Where the bytes of a served file come from.

The store resolves a path to a digest and size (``ContentStat``); the bytes
are then in the digest-keyed cache: put there by the store itself on its
host, or streamed in once by :func:`fetch_to_cache_async` on another host.
Small hot files (the iPXE binaries) are kept in memory by digest, so a
hundred machines booting at once read the disk once; large files are
memory-mapped from the cache, whose files never change once written. The
small files count against tftpd's :class:`~.memory.MemoryBudget` as well as
their own ``memory_cache`` bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.errors import AstralBootError, BusError, ErrorCode
from astralboot.common.messages import ContentEntry, ContentStat, ContentStatReply, ErrorReply

from astralboot.services.tftpd.memory import MemoryBudget

log = logging.getLogger(__name__)

MAPPINGS_KEPT = 32  # recently used large files whose mapping is kept open


class FileError(AstralBootError):
    """A file cannot be served; ``code`` is the store's error code."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code = ErrorCode(code)
        self.detail = detail
        super().__init__(f"{self.code.value}: {detail}")


@dataclass(frozen=True, slots=True, eq=False)
class Blob:
    """The verified bytes of one file, shared by every transfer sending it."""

    digest: str
    size: int
    data: bytes | mmap.mmap


class ContentSource(Protocol):
    async def open(self, path: str) -> Blob:
        """The file at ``path`` (e.g. ``tftp/ipxe.efi``), or :class:`FileError`."""


class DigestCacheLike(Protocol):
    def lookup(self, digest: str, size: int) -> Path | None: ...


Fetch = Callable[[AsyncBusClient, DigestCacheLike, ContentEntry], Awaitable[Path]]


def _read_verified(path: Path, digest: str, size: int) -> bytes:
    data = path.read_bytes()
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise FileError(ErrorCode.UNAVAILABLE, f"cache file {path.name} failed its check")
    return data


def _map(path: Path, size: int) -> mmap.mmap:
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mapped) != size:
        mapped.close()
        raise FileError(ErrorCode.UNAVAILABLE, f"cache file {path.name} has the wrong size")
    mapped.madvise(mmap.MADV_SEQUENTIAL)
    return mapped


class StoreContent:
    """:class:`ContentSource` backed by the store over the bus."""

    def __init__(self, bus: AsyncBusClient, cache: DigestCacheLike, fetch: Fetch, *,
                 memory_limit: int, deadline: float | None = None,
                 budget: MemoryBudget | None = None) -> None:
        self._bus = bus
        self._cache = cache
        self._fetch = fetch
        self._deadline = deadline
        self.memory_limit = memory_limit
        self.file_limit = memory_limit // 4  # so a few hot files fit side by side
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._mapped: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Blob]] = {}
        self._budget = budget
        if budget is not None:
            budget.join(self)

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def held(self) -> int:
        return self._memory_bytes

    def shed(self, nbytes: int) -> None:
        """Nothing: these are the files every PXE boot reads, and ``memory_limit``
        already bounds them, so other holders of the budget do not push them out."""

    async def open(self, path: str) -> Blob:
        entry = await self._stat(path)
        assert entry.digest is not None
        digest = entry.digest
        data = self._memory.get(digest)
        if data is not None:
            self._memory.move_to_end(digest)
            return Blob(digest, entry.size, data)
        mapped = self._mapped.get(digest)
        if mapped is not None:
            self._mapped.move_to_end(digest)
            return Blob(digest, entry.size, mapped)
        # Many machines asking for the same file at once load it once.
        loading = self._loading.get(digest)
        if loading is None:
            loading = asyncio.ensure_future(self._load(entry))
            self._loading[digest] = loading
            loading.add_done_callback(self._loaded)
        return await asyncio.shield(loading)

    def _loaded(self, future: asyncio.Future[Blob]) -> None:
        for digest, pending in list(self._loading.items()):
            if pending is future:
                del self._loading[digest]
        if not future.cancelled():
            future.exception()  # retrieved here, raised to each waiter

    async def _stat(self, path: str) -> ContentEntry:
        try:
            reply = await self._bus.request(ContentStat(path=path), deadline=self._deadline)
        except BusError as exc:
            raise FileError(ErrorCode.UNAVAILABLE, f"the store did not answer: {exc}") from None
        if isinstance(reply, ErrorReply):
            raise FileError(reply.error_code, reply.detail or reply.code)
        if not isinstance(reply, ContentStatReply):
            raise FileError(ErrorCode.INTERNAL, f"the store answered {reply.kind} to a stat")
        entry = reply.entry
        if entry.is_dir:
            raise FileError(ErrorCode.NOT_FOUND, f"{path} is a folder")
        if not entry.digest:
            raise FileError(ErrorCode.INTERNAL, f"the store gave no digest for {path}")
        return entry

    async def _load(self, entry: ContentEntry) -> Blob:
        digest, size = entry.digest, entry.size
        assert digest is not None
        try:
            file = await asyncio.to_thread(self._cache.lookup, digest, size)
            if file is None:
                log.info("fetching %s (%d bytes) into the cache", entry.path, size)
                file = await self._fetch(self._bus, self._cache, entry)
            if size <= self.file_limit:
                data = await asyncio.to_thread(_read_verified, file, digest, size)
                self._remember(digest, data)
                return Blob(digest, size, data)
            mapped = await asyncio.to_thread(_map, file, size)
        except FileError:
            raise
        except (AstralBootError, OSError, ValueError) as exc:
            raise FileError(ErrorCode.UNAVAILABLE,
                               f"cannot get {entry.path} into the cache: {exc}") from None
        self._mapped[digest] = mapped
        while len(self._mapped) > MAPPINGS_KEPT:
            self._mapped.popitem(last=False)  # transfers still sending it keep their reference
        return Blob(digest, size, mapped)

    def _remember(self, digest: str, data: bytes) -> None:
        self._memory[digest] = data
        self._memory_bytes += len(data)
        # Past the budget (netascii copies that transfers still send hold the
        # rest of it), older files go, and in the end maybe this one: it is
        # served all the same, just read again next time.
        while self._memory and (self._memory_bytes > self.memory_limit or
                                (self._budget is not None and not self._budget.fit(0))):
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)
