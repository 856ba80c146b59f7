"""A bounds-checked reader over received bytes, and the codec's one error.

Modelled on dnspython's wire parser: every read checks the bytes left and
raises :class:`MalformedPacket` saying what was being read, so the decoding
code never indexes raw offsets and never raises ``IndexError`` or
``struct.error`` on hostile input.
"""

from __future__ import annotations

import struct

from astralboot.common.errors import RemoteProtocolError


class MalformedPacket(RemoteProtocolError):
    """A DHCP packet that breaks the protocol; the server counts and drops it."""


class Reader:
    """Reads forward through ``data[start:end]``."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    def _need(self, n: int, what: str) -> None:
        if self._end - self._pos < n:
            raise MalformedPacket(
                f"{what}: needs {n} bytes at offset {self._pos}, only {self._end - self._pos} left")

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        start = self._pos
        self._pos = start + n
        return self._data[start:self._pos]

    def unpack(self, layout: struct.Struct, what: str) -> tuple[object, ...]:
        self._need(layout.size, what)
        values = layout.unpack_from(self._data, self._pos)
        self._pos += layout.size
        return values

    def options(self, where: str) -> list[tuple[int, bytes]]:
        """Tag-length-value items up to and including the END tag (255).

        Pads (0) are skipped; every length is checked against what is left.
        One call per area rather than three per option: this is the hot path.
        """
        data, pos, end = self._data, self._pos, self._end
        items = []
        while True:
            if pos >= end:
                raise MalformedPacket(f"{where}: no END option")
            code = data[pos]
            if code == 255:
                self._pos = pos + 1
                return items
            if code == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                raise MalformedPacket(f"{where}: option {code} length: needs 1 byte at "
                                      f"offset {pos + 1}, none left")
            start = pos + 2
            pos = start + data[pos + 1]
            if pos > end:
                raise MalformedPacket(f"{where}: option {code} value: needs {pos - start} "
                                      f"bytes at offset {start}, only {end - start} left")
            items.append((code, data[start:pos]))

