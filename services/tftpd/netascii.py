"""Netascii copies of served files: converted once per content, shared by every transfer.

A netascii transfer sends the file with RFC 764 line endings, which is a
different byte string from the file, so it needs a copy. The copy is made
once per file content (keyed by the file's digest), off the event loop,
into an anonymous memory mapping whose pages go back to the system the
moment the last reference goes. Every transfer sending it holds a view of
that one mapping.

When the shared :class:`~.memory.MemoryBudget` is short, the least
recently used copies that no transfer is sending leave the cache, and their
pages go at once; a copy being sent stays, since dropping it would free
nothing. A new copy that does not fit even then is refused with
:class:`NoRoom`. Copies are counted for as long as they exist (tracked by
weak reference), and one that exists outside the cache is found again by
the next request for it, so the accounting and the sharing hold whatever
keeps a copy alive; a transfer keeps its copy alive by its own reference,
so nothing the cache does can break it.
"""

from __future__ import annotations

import asyncio
import mmap
import sys
import weakref
from collections import OrderedDict

from astralboot.common.errors import AstralBootError

from astralboot.services.tftpd.files import Blob
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.packets import to_netascii

CHUNK = 1 << 20  # the conversion is per byte, so a file converts in pieces of any size
SIZES_KEPT = 1024  # converted sizes remembered, so a refused request costs no second scan
# References to a copy that only the cache holds, counted inside _idle: the
# cache's own and getrefcount's argument. A transfer's view adds one.
_IDLE_REFS = 2

Text = bytes | mmap.mmap


class NoRoom(AstralBootError):
    """A netascii copy of ``needed`` bytes does not fit in what is left of ``memory_max``."""

    def __init__(self, needed: int, available: int, limit: int) -> None:
        self.needed = needed
        self.available = available
        self.limit = limit
        super().__init__(f"a netascii copy needs {needed} bytes; {available} of the "
                         f"memory_max of {limit} are free")

    @property
    def for_now(self) -> bool:
        """True if the copy fits once transfers end; False if it never can."""
        return self.needed <= self.limit


def netascii_size(data: Text, chunk: int = CHUNK) -> int:
    """The length of ``to_netascii(data)``: every CR and LF gains a byte."""
    size = len(data)
    with memoryview(data) as view:
        for start in range(0, len(view), chunk):
            piece = bytes(view[start:start + chunk])
            size += piece.count(b"\r") + piece.count(b"\n")
    return size


def convert(data: Text, size: int, chunk: int = CHUNK) -> mmap.mmap:
    """``to_netascii(data)`` in a fresh anonymous mapping of ``size`` bytes."""
    text = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    pos = 0
    with memoryview(data) as view:
        for start in range(0, len(view), chunk):
            piece = to_netascii(view[start:start + chunk])
            text[pos:pos + len(piece)] = piece
            pos += len(piece)
    if pos != size:
        text.close()
        raise AstralBootError(f"netascii copy is {pos} bytes, {size} expected")
    return text


class NetasciiCache:
    """Netascii copies by file digest, least recently used dropped first."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._cached: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._live: dict[str, weakref.ref[mmap.mmap]] = {}  # cached or held by a transfer
        self._live_bytes = 0
        self._reserved = 0  # for conversions under way
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Text]] = {}
        self.conversions = 0
        budget.join(self)

    @property
    def held(self) -> int:
        return self._live_bytes + self._reserved

    @property
    def cached_bytes(self) -> int:
        return sum(len(t) for t in self._cached.values())

    def __len__(self) -> int:
        return len(self._cached)

    def __contains__(self, digest: object) -> bool:
        return digest in self._cached

    async def open(self, blob: Blob) -> Text:
        """``to_netascii(blob.data)``, shared; :class:`NoRoom` if it does not fit."""
        text = self._cached.get(blob.digest)
        if text is not None:
            self._cached.move_to_end(blob.digest)
            return text
        ref = self._live.get(blob.digest)
        text = ref() if ref is not None else None
        if text is not None:  # left the cache while a transfer kept sending it
            self._cached[blob.digest] = text
            return text
        # Many clients asking at once for a copy not made yet wait for one conversion.
        pending = self._pending.get(blob.digest)
        if pending is None:
            pending = asyncio.ensure_future(self._convert(blob))
            self._pending[blob.digest] = pending
            pending.add_done_callback(self._converted)
        return await asyncio.shield(pending)

    def shed(self, nbytes: int) -> None:
        target = self.held - nbytes
        for digest in [d for d in self._cached if self._idle(d)]:  # oldest first
            if self.held <= target:
                return
            del self._cached[digest]  # freed, and uncounted, right here

    def _idle(self, digest: str) -> bool:
        """No transfer holds this copy (CPython's reference count says so)."""
        return sys.getrefcount(self._cached[digest]) <= _IDLE_REFS

    def _converted(self, future: asyncio.Future[Text]) -> None:
        for digest, pending in list(self._pending.items()):
            if pending is future:
                del self._pending[digest]
        if not future.cancelled():
            future.exception()  # retrieved here, raised to each waiter

    async def _convert(self, blob: Blob) -> Text:
        size = self._sizes.get(blob.digest)
        if size is None:
            size = await asyncio.to_thread(netascii_size, blob.data)
            self._sizes[blob.digest] = size
            if len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)
        else:
            self._sizes.move_to_end(blob.digest)
        if size == blob.size:
            return blob.data  # no CR or LF: the copy would be the file itself
        if size > self._budget.limit or not self._budget.fit(size):
            raise NoRoom(size, self._budget.available, self._budget.limit)
        self._reserved += size
        # Handed over in a list emptied here rather than returned: the worker
        # thread would hold a result a while longer, and a copy counts as idle
        # only once nothing but the cache refers to it.
        made: list[mmap.mmap] = []
        try:
            await asyncio.to_thread(lambda: made.append(convert(blob.data, size)))
            text = made.pop()
        finally:
            self._reserved -= size
        self._track(blob.digest, text)
        self._cached[blob.digest] = text
        self.conversions += 1
        return text

    def _track(self, digest: str, text: mmap.mmap) -> None:
        size = len(text)

        def gone(ref: weakref.ref[mmap.mmap]) -> None:
            self._live_bytes -= size
            if self._live.get(digest) is ref:
                del self._live[digest]

        self._live[digest] = weakref.ref(text, gone)
        self._live_bytes += size
