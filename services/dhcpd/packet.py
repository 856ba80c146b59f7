"""BOOTP/DHCP packets: bytes to :class:`Packet` and back (RFC 2131, 3396).

Sans-IO: no sockets, no logging, no clock. :func:`decode` accepts a packet
in either direction and raises :class:`MalformedPacket` for anything a
correct peer would not send; :func:`encode` writes a packet that a strict
peer accepts: options in ``file``/``sname`` only when they do not fit
(option 52), values over 255 bytes split (RFC 3396), at least 300 bytes.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from .constants import (
    BOOTREPLY,
    BOOTREQUEST,
    FILE_SIZE,
    HEADER_SIZE,
    HTYPE_ETHERNET,
    MAGIC_COOKIE,
    MAX_HLEN,
    MAX_MESSAGE,
    MIN_PACKET,
    OPT_END,
    OPT_OVERLOAD,
    OPT_PAD,
    OPTIONS_START,
    OVERLOAD_FILE,
    OVERLOAD_SNAME,
    SNAME_SIZE,
    ZERO_IP,
)
from .options import Options, check, fill, read_area
from .reader import MalformedPacket, Reader

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
assert HEADER.size == HEADER_SIZE

_ntoa = socket.inet_ntoa
_aton = socket.inet_aton


@dataclass(frozen=True, slots=True)
class Packet:
    """One BOOTP/DHCP packet.

    ``chaddr`` holds exactly ``hlen`` bytes; ``sname`` and ``file`` hold
    their text up to the first NUL (empty when they carried options);
    addresses are dotted strings. Treat ``options`` as read-only.
    """

    op: int
    xid: int
    chaddr: bytes
    htype: int = HTYPE_ETHERNET
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = ZERO_IP
    yiaddr: str = ZERO_IP
    siaddr: str = ZERO_IP
    giaddr: str = ZERO_IP
    sname: bytes = b""
    file: bytes = b""
    options: Options = field(default_factory=dict)


def _text(field_bytes: bytes) -> bytes:
    end = field_bytes.find(0)
    return field_bytes if end < 0 else field_bytes[:end]


Header = tuple[int, int, int, int, int, int, int, bytes, bytes, bytes, bytes, bytes, bytes,
               bytes]


def parse(data: bytes) -> tuple[Header, Options, int]:
    """The raw header fields, the options (from file and sname too when
    overloaded) and option 52's value (0 if absent); the checks every packet
    must pass. Raises :class:`MalformedPacket`."""
    reader = Reader(data)
    header: Header = reader.unpack(HEADER, "BOOTP header")  # type: ignore[assignment]
    op, hlen = header[0], header[2]
    if op != BOOTREQUEST and op != BOOTREPLY:
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > MAX_HLEN:
        raise MalformedPacket(f"hlen {hlen} is over {MAX_HLEN}")
    if reader.take(4, "magic cookie") != MAGIC_COOKIE:
        raise MalformedPacket("bad magic cookie (plain BOOTP is not served)")
    options: Options = {}
    overload = read_area(reader, options, "options") or 0
    if overload:
        # RFC 2131 4.1 / RFC 3396 section 7: options, then file, then sname.
        if overload & OVERLOAD_FILE:
            read_area(Reader(header[13]), options, "options in file")
        if overload & OVERLOAD_SNAME:
            read_area(Reader(header[12]), options, "options in sname")
    check(options)
    return header, options, overload


def decode(data: bytes) -> Packet:
    """Parse one packet; raise :class:`MalformedPacket` if it is not valid."""
    header, options, overload = parse(data)
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     sname, file) = header
    return Packet(op=op, htype=htype, hops=hops, xid=xid, secs=secs, flags=flags,
                  chaddr=chaddr[:hlen], ciaddr=_ntoa(ciaddr), yiaddr=_ntoa(yiaddr),
                  siaddr=_ntoa(siaddr), giaddr=_ntoa(giaddr),
                  sname=b"" if overload & OVERLOAD_SNAME else _text(sname),
                  file=b"" if overload & OVERLOAD_FILE else _text(file), options=options)


def pack_header(op: int, htype: int, chaddr: bytes, hops: int, xid: int, secs: int, flags: int,
                ciaddr: bytes, yiaddr: bytes, siaddr: bytes, giaddr: bytes,
                sname: bytes, file: bytes) -> bytes:
    """The fixed header and the magic cookie (240 bytes); addresses as 4 bytes."""
    return HEADER.pack(op, htype, len(chaddr), hops, xid, secs, flags, ciaddr, yiaddr,
                       siaddr, giaddr, chaddr, sname, file) + MAGIC_COOKIE


def finish(header_and_options: bytes) -> bytes:
    """Pad a whole packet to the 300-byte BOOTP minimum."""
    n = len(header_and_options)
    return header_and_options if n >= MIN_PACKET else header_and_options + bytes(MIN_PACKET - n)


def encode(packet: Packet, max_size: int = MAX_MESSAGE) -> bytes:
    """Write ``packet``; overload into ``file``/``sname`` only if needed and free.

    Raises ``ValueError`` (our bug, not the peer's) if the options cannot fit
    in ``max_size`` bytes, or a field is out of range.
    """
    if len(packet.chaddr) > MAX_HLEN:
        raise ValueError(f"chaddr of {len(packet.chaddr)} bytes is over {MAX_HLEN}")
    if len(packet.sname) > SNAME_SIZE or len(packet.file) > FILE_SIZE:
        raise ValueError("sname or file is too long for its field")
    if 0 in packet.sname or 0 in packet.file:
        raise ValueError("sname and file are text: no NUL inside")
    if OPT_PAD in packet.options or OPT_END in packet.options:
        raise ValueError("options 0 (pad) and 255 (end) carry no value")
    items = [(c, v) for c, v in packet.options.items() if c != OPT_OVERLOAD]
    room = max_size - OPTIONS_START
    area, left = fill(items, room)
    sname, file = packet.sname, packet.file
    if left:
        # Reserve three bytes for option 52 itself and fill again.
        area, left = fill(items, room - 3)
        overload = 0
        if left and not file:
            file, left = fill(left, FILE_SIZE)
            overload |= OVERLOAD_FILE
        if left and not sname:
            sname, left = fill(left, SNAME_SIZE)
            overload |= OVERLOAD_SNAME
        if left:
            raise ValueError(f"options do not fit in {max_size} bytes")
        area = bytes((OPT_OVERLOAD, 1, overload)) + area
    header = pack_header(packet.op, packet.htype, packet.chaddr, packet.hops, packet.xid,
                         packet.secs, packet.flags, _aton(packet.ciaddr), _aton(packet.yiaddr),
                         _aton(packet.siaddr), _aton(packet.giaddr), sname, file)
    return finish(header + area)
