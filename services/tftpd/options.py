"""Option negotiation for a read request (RFC 2347, 2348, 2349, 7440).

Pure: the client's options and the file size in, the transfer parameters
and the OACK contents out. Only options the client asked for and the server
accepts are acknowledged; an invalid or unknown option is left out of the
OACK (the client then falls back to the RFC 1350 default), which keeps old
firmware booting where an ERROR 8 would stop it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from astralboot.services.tftpd.packets import Option

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255
MAX_WINDOWSIZE = 65535
UDP_IP_OVERHEAD = 28  # IPv4 header 20 + UDP header 8
DATA_HEADER = 4

_NUMBER = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Limits:
    """What this server accepts; ``max_blksize`` follows the interface MTU."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    timeout: float = 1.0  # retransmission interval when the client sets none

    @staticmethod
    def blksize_for_mtu(mtu: int) -> int:
        """The largest block that fits one unfragmented datagram on this link."""
        fits = mtu - UDP_IP_OVERHEAD - DATA_HEADER
        return max(DEFAULT_BLKSIZE, min(MAX_BLKSIZE, fits))


@dataclass(frozen=True, slots=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    timeout: float = 1.0
    windowsize: int = 1
    oack: tuple[Option, ...] = ()  # empty: no OACK, DATA 1 goes out at once
    refused: tuple[str, ...] = ()  # option names left out, for the log


def _number(value: str) -> int | None:
    return int(value) if _NUMBER.fullmatch(value) else None


def _blksize(value: str, limits: Limits, size: int) -> str | None:
    n = _number(value)
    if n is None or n < MIN_BLKSIZE:
        return None
    return str(min(n, MAX_BLKSIZE, limits.max_blksize))  # RFC 2348: the server may lower it


def _timeout(value: str, limits: Limits, size: int) -> str | None:
    n = _number(value)
    if n is None or not MIN_TIMEOUT <= n <= MAX_TIMEOUT:
        return None
    return str(n)  # RFC 2349: echoed unchanged or not at all


def _tsize(value: str, limits: Limits, size: int) -> str | None:
    return None if _number(value) is None else str(size)


def _windowsize(value: str, limits: Limits, size: int) -> str | None:
    n = _number(value)
    if n is None or not 1 <= n <= MAX_WINDOWSIZE:
        return None
    return str(min(n, limits.max_windowsize))  # RFC 7440: the server may lower it


_NEGOTIATORS = {
    "blksize": _blksize,
    "timeout": _timeout,
    "tsize": _tsize,
    "windowsize": _windowsize,
}


def negotiate(requested: Sequence[Option], size: int, limits: Limits) -> Negotiated:
    """Decide the transfer's parameters from the options of an RRQ.

    ``size`` is the number of bytes that will be sent (after netascii
    conversion), which is what ``tsize`` reports. A repeated option is
    decided by its first occurrence; the repeats are refused.
    """
    accepted: dict[str, str] = {}
    seen: set[str] = set()
    oack: list[Option] = []
    refused: list[str] = []
    for name, value in requested:
        key = name.lower()
        negotiator = _NEGOTIATORS.get(key)
        answer = None
        if negotiator is not None and key not in seen:
            answer = negotiator(value, limits, size)
        seen.add(key)
        if answer is None:
            refused.append(name)
            continue
        accepted[key] = answer
        oack.append((name, answer))  # the client's spelling of the name
    return Negotiated(
        blksize=int(accepted.get("blksize", DEFAULT_BLKSIZE)),
        timeout=float(accepted["timeout"]) if "timeout" in accepted else limits.timeout,
        windowsize=int(accepted.get("windowsize", 1)),
        oack=tuple(oack),
        refused=tuple(refused),
    )
