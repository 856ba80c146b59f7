"""IPv4 addresses between the wire's four bytes and the dotted text the
server passes around (messages, the store, the subnet table).

Both directions run several times per packet, so neither builds an
``IPv4Address`` per call: text is joined from the four octets' ready-made
decimal strings, and text in the form :func:`ip_text` writes is read back
by splitting it; any other text is left to ``ipaddress`` to accept or
refuse (``ValueError``). Addresses written repeat (0.0.0.0, the server's
own, each client's across OFFER, ACK and renewals), so a bounded cache
answers most of them.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address

from astralboot.services.dhcpd.constants import ZERO_IP

ZERO_PACKED = bytes(4)
_OCTETS = tuple(str(n) for n in range(256))


def ip_text(packed: bytes) -> str:
    """Four bytes as dotted text ("192.0.2.1")."""
    if packed == ZERO_PACKED:  # ciaddr and giaddr of most client messages
        return ZERO_IP
    a, b, c, d = packed
    octets = _OCTETS
    return f"{octets[a]}.{octets[b]}.{octets[c]}.{octets[d]}"


@lru_cache(maxsize=4096)
def ip_bytes(text: str) -> bytes:
    """Dotted text as four bytes; ``ValueError`` if it is not an IPv4 address."""
    try:
        packed = bytes(map(int, text.split(".")))
    except ValueError:
        packed = b""
    if len(packed) == 4 and ip_text(packed) == text:
        return packed
    return IPv4Address(text).packed


def ip_int(text: str) -> int:
    """Dotted text as a 32-bit number, for masking."""
    return int.from_bytes(ip_bytes(text), "big")
