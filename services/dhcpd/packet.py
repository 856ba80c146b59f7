"""BOOTP/DHCP packets: bytes to :class:`Packet` and back (RFC 2131, 3396).

Sans-IO: no sockets, no logging, no clock. :func:`decode` accepts a packet
in either direction and raises :class:`MalformedPacket` for anything a
correct peer would not send; :func:`encode` writes a packet that a strict
peer accepts: options in ``file``/``sname`` only when they do not fit
(option 52), values over 255 bytes split (RFC 3396), at least 300 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from astralboot.services.dhcpd.constants import (
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
from astralboot.services.dhcpd.addresses import ip_bytes, ip_text
from astralboot.services.dhcpd.options import Options, check, fill, read_area
from astralboot.services.dhcpd.reader import MalformedPacket, Reader

HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
assert HEADER.size == HEADER_SIZE


class Header(NamedTuple):
    """The fixed BOOTP header as received, field by field (RFC 2131 figure 1).

    Addresses are their four bytes; ``chaddr``, ``sname`` and ``file`` are
    whole fields, padding included. Built by ``_make`` straight from the
    struct's tuple, so naming the fields costs nothing on the hot path.
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes
    sname: bytes
    file: bytes

    @property
    def hardware_address(self) -> bytes:
        """``chaddr`` cut to ``hlen`` bytes (the field is padded to 16)."""
        return self.chaddr[:self.hlen]


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


def parse(data: bytes) -> tuple[Header, Options, int]:
    """The header, the options (from ``file`` and ``sname`` too when
    overloaded) and option 52's value (0 if absent) of a packet that passed
    the checks every packet must pass; raises :class:`MalformedPacket`.

    The one decoding path: :func:`decode` builds a :class:`Packet` from it,
    and the server's reader a client message.
    """
    reader = Reader(data)
    header = Header._make(reader.unpack(HEADER, "BOOTP header"))
    op, hlen = header.op, header.hlen
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
            read_area(Reader(header.file), options, "options in file")
        if overload & OVERLOAD_SNAME:
            read_area(Reader(header.sname), options, "options in sname")
    check(options)
    return header, options, overload


def decode(data: bytes) -> Packet:
    """Parse one packet; raise :class:`MalformedPacket` if it is not valid."""
    h, options, overload = parse(data)
    return Packet(op=h.op, htype=h.htype, hops=h.hops, xid=h.xid, secs=h.secs, flags=h.flags,
                  chaddr=h.hardware_address, ciaddr=ip_text(h.ciaddr),
                  yiaddr=ip_text(h.yiaddr), siaddr=ip_text(h.siaddr), giaddr=ip_text(h.giaddr),
                  sname=b"" if overload & OVERLOAD_SNAME else _text(h.sname),
                  file=b"" if overload & OVERLOAD_FILE else _text(h.file),
                  options=options)


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
                         packet.secs, packet.flags, ip_bytes(packet.ciaddr),
                         ip_bytes(packet.yiaddr), ip_bytes(packet.siaddr),
                         ip_bytes(packet.giaddr), sname, file)
    return finish(header + area)
