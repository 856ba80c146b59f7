"""IPv4 addresses between the wire's four bytes and the dotted text the
server passes around (messages, the store, the subnet table).

Both directions run several times per packet, so neither builds an
``IPv4Address`` per call: text is formatted straight from the four octets,
and text to bytes goes through ``ipaddress`` (strict: a malformed address
is a ``ValueError``) once per address, then comes from a bounded cache.
The addresses a server writes repeat (0.0.0.0, its own, each client's
across OFFER, ACK and renewals), so the cache holds nearly all of them.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address

from .constants import ZERO_IP

ZERO_PACKED = bytes(4)


def ip_text(packed: bytes) -> str:
    """Four bytes as dotted text ("192.0.2.1")."""
    if packed == ZERO_PACKED:  # ciaddr and giaddr of most client messages
        return ZERO_IP
    a, b, c, d = packed
    return f"{a}.{b}.{c}.{d}"


@lru_cache(maxsize=4096)
def ip_bytes(text: str) -> bytes:
    """Dotted text as four bytes; ``ValueError`` if it is not an IPv4 address."""
    return IPv4Address(text).packed


def ip_int(text: str) -> int:
    """Dotted text as a 32-bit number, for masking."""
    return int.from_bytes(ip_bytes(text), "big")
