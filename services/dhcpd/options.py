"""The DHCP options area: reading it, checking it, writing it.

Options are kept as ``{code: value}`` in the order first seen. A code that
appears several times is one long option split by the sender, and its
values are joined (RFC 3396); writing splits any value over 255 bytes the
same way. Option 52 (overload) never appears in a decoded map: the packet
codec follows it into ``file``/``sname`` and writes it when it needs to.
"""

from __future__ import annotations

import struct

from astralboot.services.dhcpd.constants import (
    OPT_CLIENT_ARCH,
    OPT_CLIENT_ID,
    OPT_END,
    OPT_HOST_NAME,
    OPT_LEASE_TIME,
    OPT_MAX_MESSAGE_SIZE,
    OPT_MESSAGE_TYPE,
    OPT_OVERLOAD,
    OPT_PARAMETER_LIST,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_RELAY_AGENT,
    OPT_REQUESTED_IP,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
)
from astralboot.services.dhcpd.reader import MalformedPacket, Reader

Options = dict[int, bytes]

# Value lengths (after joining) that RFC 2132 allows for the options we read.
# A client identifier is type + id, and a 255-byte one cannot be told apart
# from a truncated long option, so 1..254 (what ISC dhcpd accepts too).
LENGTHS: dict[int, tuple[int, int]] = {
    OPT_SUBNET_MASK: (4, 4),
    OPT_HOST_NAME: (1, 1 << 16),
    OPT_REQUESTED_IP: (4, 4),
    OPT_LEASE_TIME: (4, 4),
    OPT_MESSAGE_TYPE: (1, 1),
    OPT_SERVER_ID: (4, 4),
    OPT_PARAMETER_LIST: (1, 1 << 16),
    OPT_MAX_MESSAGE_SIZE: (2, 2),
    OPT_RENEWAL_TIME: (4, 4),
    OPT_REBINDING_TIME: (4, 4),
    OPT_CLIENT_ID: (1, 254),
    OPT_CLIENT_ARCH: (2, 1 << 16),
    # A relay writes one option 82 (RFC 3046: sub-options in at most 255
    # bytes); anything longer cannot be echoed into a reply that fits.
    OPT_RELAY_AGENT: (2, 255),
}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def read_area(reader: Reader, into: Options, where: str) -> int | None:
    """Read options up to END into ``into``; return option 52's value if seen.

    Bytes after END are padding (or junk) and are ignored.
    """
    overload: int | None = None
    for code, value in reader.options(where):
        if code == OPT_OVERLOAD:
            if len(value) != 1 or value[0] not in (1, 2, 3):
                raise MalformedPacket(f"{where}: option 52 (overload) is not 1, 2 or 3")
            overload = value[0]
            continue
        seen = into.get(code)
        into[code] = value if seen is None else seen + value
    return overload


def check(options: Options) -> None:
    """Reject known options whose (joined) length RFC 2132 does not allow."""
    for code, value in options.items():
        rule = LENGTHS.get(code)
        if rule is not None and not rule[0] <= len(value) <= rule[1]:
            allowed = f"{rule[0]}..{rule[1]}" if rule[1] < 1 << 16 else f"{rule[0]} or more"
            raise MalformedPacket(f"option {code} has length {len(value)}, allowed {allowed}")
    arch = options.get(OPT_CLIENT_ARCH)
    if arch is not None and len(arch) % 2:
        raise MalformedPacket(f"option 93 (client arch) has odd length {len(arch)}")


# --- writing -----------------------------------------------------------------

def tlv(code: int, value: bytes) -> bytes:
    """One option as bytes; values over 255 bytes become several instances."""
    n = len(value)
    if n <= 255:
        return bytes((code, n)) + value
    return b"".join(bytes((code, len(chunk))) + chunk
                    for chunk in (value[i:i + 255] for i in range(0, n, 255)))


def fill(items: list[tuple[int, bytes]], room: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Write as many options as fit in ``room`` bytes (END included).

    An option that does not fit whole is split (RFC 3396): the part that
    fits goes here and the rest stays in the returned list for the next
    area. Returns the area's bytes (ending in END) and what is left over.
    """
    out = bytearray()
    left = list(items)
    budget = room - 1  # END
    while left:
        code, value = left[0]
        need = len(tlv(code, value))
        if need <= budget - len(out):
            out += tlv(code, value)
            left.pop(0)
            continue
        space = min(budget - len(out) - 2, 255)
        if space < 1 or not value:
            break
        out += bytes((code, space)) + value[:space]
        left[0] = (code, value[space:])
    out.append(OPT_END)
    return bytes(out), left


# --- typed values ------------------------------------------------------------

def u16(value: bytes) -> int:
    return _U16.unpack(value)[0]


def user_classes(value: bytes) -> tuple[bytes, ...]:
    """Option 77 as a list of classes.

    RFC 3004 wants length-prefixed instances, but iPXE and most firmware
    send one bare string ("iPXE"): when the RFC form does not parse exactly,
    the whole value is one bare class.
    """
    classes: list[bytes] = []
    i = 0
    while i < len(value):
        n = value[i]
        if n == 0 or i + 1 + n > len(value):
            return (value,)
        classes.append(value[i + 1:i + 1 + n])
        i += 1 + n
    return tuple(classes)
