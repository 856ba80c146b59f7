"""One bound, in bytes, on the file content tftpd keeps in memory.

``[tftp] memory_max`` covers every holder of file bytes in the process: the
small-file cache (:class:`~.files.StoreContent`) and the netascii copies
(:class:`~.netascii.NetasciiCache`). A holder that wants more asks
:meth:`MemoryBudget.fit`, which lets the holders drop what no transfer uses,
least recently used first, before it says no. Large files sent in octet mode
are memory-mapped from the disk cache: page cache, shared and reclaimable by
the kernel, so they are not counted here.
"""

from __future__ import annotations

from typing import Protocol


class Holder(Protocol):
    @property
    def held(self) -> int:
        """Bytes of file content it keeps in memory now."""

    def shed(self, nbytes: int) -> None:
        """Drop entries no transfer uses, least recently used first, until
        ``nbytes`` are freed or no such entry is left."""


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._holders: list[Holder] = []

    def join(self, holder: Holder) -> None:
        """Count ``holder``'s bytes; holders are asked to shed in the order they joined."""
        self._holders.append(holder)

    @property
    def used(self) -> int:
        return sum(h.held for h in self._holders)

    @property
    def available(self) -> int:
        return max(0, self.limit - self.used)

    def fit(self, size: int) -> bool:
        """Whether ``size`` more bytes fit, once holders have shed what they can."""
        over = self.used + size - self.limit
        for holder in self._holders:
            if over <= 0:
                break
            holder.shed(over)
            over = self.used + size - self.limit
        return over <= 0
