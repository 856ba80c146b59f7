"""Writing a server's reply to a client message, and where to send it.

The hot path of the codec. Option values that do not change between
packets arrive here already encoded (tag, length, value), so a reply is a
header, a join of byte strings and padding. Which options go out, and in
what order, is the client's parameter request list (option 55).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from astralboot.common.errors import AstralBootError

from astralboot.services.dhcpd.constants import (
    BOOTREPLY,
    BROADCAST_IP,
    DHCPNAK,
    FLAG_BROADCAST,
    HTYPE_ETHERNET,
    OPT_BOOTFILE,
    OPT_BROADCAST,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_END,
    OPT_HOST_NAME,
    OPT_LEASE_TIME,
    OPT_MESSAGE_TYPE,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER,
    ZERO_IP,
)
from astralboot.services.dhcpd.addresses import ip_bytes
from astralboot.services.dhcpd.client_messages import ClientMessage
from astralboot.services.dhcpd.options import tlv
from astralboot.services.dhcpd.packet import finish, pack_header

_U32 = struct.Struct("!I")

# Sent first, whatever the client asked (RFC 2131 table 3 and 4.3.1).
HEAD = (OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_LEASE_TIME, OPT_RENEWAL_TIME, OPT_REBINDING_TIME)
HEAD_SET = frozenset(HEAD)

# What a client that sends no option 55 gets besides the head.
DEFAULT_PARAMETERS = bytes((OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOST_NAME,
                            OPT_DOMAIN_NAME, OPT_BROADCAST, OPT_TFTP_SERVER, OPT_BOOTFILE))

MESSAGE_TYPE_TLV = {t: tlv(OPT_MESSAGE_TYPE, bytes((t,))) for t in range(1, 9)}

# Asked-for options that go last when a reply must shrink: without them a
# client has no network (mask, router) or nothing to boot (server, file).
KEEP_LONGEST = frozenset((OPT_SUBNET_MASK, OPT_ROUTER, OPT_TFTP_SERVER, OPT_BOOTFILE))


class ReplyTooLarge(AstralBootError):
    """The options a reply cannot go without do not fit the client's maximum size."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a reply goes. ``hardware`` set: the client has no address yet
    and cannot answer ARP, so the sender addresses the frame to this
    hardware address itself (see sockets.LinkSender)."""

    ip: str
    port: int
    hardware: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    payload: bytes
    destination: Destination
    message_type: int


def destination(msg: ClientMessage, message_type: int, yiaddr: str, *, server_port: int,
                client_port: int) -> Destination:
    """RFC 2131 section 4.1, in the order it gives."""
    if msg.giaddr != ZERO_IP:
        return Destination(msg.giaddr, server_port)
    if message_type == DHCPNAK:
        return Destination(BROADCAST_IP, client_port)
    if msg.ciaddr != ZERO_IP:
        return Destination(msg.ciaddr, client_port)
    if msg.flags & FLAG_BROADCAST or yiaddr == ZERO_IP:
        return Destination(BROADCAST_IP, client_port)
    if msg.htype != HTYPE_ETHERNET or len(msg.chaddr) != 6:
        return Destination(BROADCAST_IP, client_port)  # not an Ethernet address to send to
    return Destination(yiaddr, client_port, msg.chaddr)


def lease_times(lease_time: int) -> bytes:
    """Options 51, 58 and 59 (T1 = 1/2, T2 = 7/8 of the lease, RFC 2131 4.4.5)."""
    return (tlv(OPT_LEASE_TIME, _U32.pack(lease_time))
            + tlv(OPT_RENEWAL_TIME, _U32.pack(lease_time // 2))
            + tlv(OPT_REBINDING_TIME, _U32.pack(lease_time * 7 // 8)))


def write(msg: ClientMessage, message_type: int, options: Mapping[int, bytes], *,
          server_id: bytes, yiaddr: str = ZERO_IP, siaddr: str = ZERO_IP,
          ciaddr: str = ZERO_IP, file: bytes = b"", lease: bytes = b"",
          tail: tuple[bytes, ...] = ()) -> bytes:
    """One reply packet.

    ``options`` maps codes to encoded options offered to the client; those it
    asks for in option 55 go out in its order. ``server_id`` and ``lease``
    (from :func:`lease_times`) are encoded options sent unconditionally
    after the message type; ``tail`` are encoded options always sent last
    (vendor class echo, PXE options, relay agent information). Options the
    client asked for are dropped from the end until the reply fits its
    maximum message size.
    """
    flags = msg.flags
    if message_type == DHCPNAK and msg.giaddr != ZERO_IP:
        flags |= FLAG_BROADCAST  # so the relay broadcasts it (RFC 2131 4.1)
    header = pack_header(BOOTREPLY, msg.htype, msg.chaddr, 0, msg.xid, 0, flags,
                         ip_bytes(ciaddr), ip_bytes(yiaddr), ip_bytes(siaddr), ip_bytes(msg.giaddr),
                         b"", file)
    fixed = MESSAGE_TYPE_TLV[message_type] + server_id + lease
    chosen = []
    params = msg.parameters if msg.parameters is not None else DEFAULT_PARAMETERS
    seen = set()
    for code in params:
        if code in seen or code in HEAD_SET:
            continue
        seen.add(code)
        value = options.get(code)
        if value is not None:
            chosen.append(value)
    tail_bytes = b"".join(tail)
    room = msg.max_size - len(header) - len(fixed) - len(tail_bytes) - 1
    if room < 0:
        raise ReplyTooLarge(f"{-room} bytes over the client's {msg.max_size}-byte maximum "
                            "before any optional option")
    size = sum(len(v) for v in chosen)
    # Over the client's maximum (option 57, or 576 without it): drop what it
    # asked for last, keeping what it cannot do without for as long as possible.
    for keep in (False, True):
        for i in range(len(chosen) - 1, -1, -1):
            if size <= room:
                break
            if keep or chosen[i][0] not in KEEP_LONGEST:
                size -= len(chosen[i])
                del chosen[i]
    return finish(b"".join((header, fixed, *chosen, tail_bytes, bytes((OPT_END,)))))
