"""What a client asks a server: typed messages read from a received packet.

:func:`read_client_message` is the server side's decoder: bytes arriving on
port 67 (or 4011) become one of :class:`Discover`, :class:`Request`,
:class:`Decline`, :class:`Release`, :class:`Inform`, with the options the
server acts on already read and checked. Anything else raises
:class:`MalformedPacket` (or its :class:`UnsupportedMessage` kind for a
well-formed message type this server does not serve).
"""

from __future__ import annotations

from dataclasses import dataclass

from astralboot.services.dhcpd.constants import (
    BOOTREQUEST,
    DEFAULT_MAX_MESSAGE,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPRELEASE,
    DHCPREQUEST,
    FLAG_BROADCAST,
    IP_UDP_OVERHEAD,
    MAX_MESSAGE,
    MESSAGE_TYPE_NAMES,
    OPT_CLIENT_ARCH,
    OPT_CLIENT_ID,
    OPT_CLIENT_UUID,
    OPT_HOST_NAME,
    OPT_IPXE,
    OPT_MAX_MESSAGE_SIZE,
    OPT_MESSAGE_TYPE,
    OPT_PARAMETER_LIST,
    OPT_RELAY_AGENT,
    OPT_REQUESTED_IP,
    OPT_SERVER_ID,
    OPT_USER_CLASS,
    OPT_VENDOR_CLASS,
    ZERO_IP,
)
from astralboot.common.names import clean_hostname

from astralboot.services.dhcpd.addresses import ip_text
from astralboot.services.dhcpd.options import u16, user_classes
from astralboot.services.dhcpd.packet import parse
from astralboot.services.dhcpd.reader import MalformedPacket


class UnsupportedMessage(MalformedPacket):
    """A well-formed DHCP message of a type this server does not answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientMessage:
    """Fields common to every client message.

    ``parameters`` is option 55 as received (codes in the client's order);
    ``max_size`` is the largest reply payload the client takes, UDP and IP
    headers already subtracted.
    """

    xid: int
    mac: str
    chaddr: bytes
    htype: int
    flags: int
    hops: int
    ciaddr: str
    giaddr: str
    client_id: bytes | None = None
    hostname: str | None = None
    parameters: bytes | None = None
    max_size: int = DEFAULT_MAX_MESSAGE - IP_UDP_OVERHEAD
    arch: int | None = None
    vendor_class: bytes = b""
    user_classes: tuple[bytes, ...] = ()
    ipxe_options: bool = False  # option 175 present: the client is iPXE
    uuid: bytes | None = None
    relay_info: bytes | None = None  # option 82, echoed back to the relay
    requested_ip: str | None = None
    server_id: str | None = None

    @property
    def broadcast_flag(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    @property
    def relayed(self) -> bool:
        return self.giaddr != ZERO_IP

    @property
    def name(self) -> str:
        return MESSAGE_TYPE_NAMES[self.message_type]

    message_type = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Discover(ClientMessage):
    message_type = DHCPDISCOVER


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(ClientMessage):
    message_type = DHCPREQUEST


@dataclass(frozen=True, slots=True, kw_only=True)
class Decline(ClientMessage):
    message_type = DHCPDECLINE


@dataclass(frozen=True, slots=True, kw_only=True)
class Release(ClientMessage):
    message_type = DHCPRELEASE


@dataclass(frozen=True, slots=True, kw_only=True)
class Inform(ClientMessage):
    message_type = DHCPINFORM


_CLASSES: dict[int, type[ClientMessage]] = {
    DHCPDISCOVER: Discover, DHCPREQUEST: Request, DHCPDECLINE: Decline,
    DHCPRELEASE: Release, DHCPINFORM: Inform,
}


def _hostname(value: bytes) -> str | None:
    """Option 12 as a safe host name: any bytes in, letters, digits, dots and
    hyphens out, at most 253 (the store's column is 255)."""
    return clean_hostname(value[:1024].rstrip(b"\0").decode("ascii", "replace"))


def read_client_message(data: bytes) -> ClientMessage:
    """Bytes received on the server port to a typed client message.

    The same :func:`~.packet.parse` as :func:`~.packet.decode`, then the
    header and options straight into the message, without building the
    intermediate :class:`~.packet.Packet`: this is the server's hot path.
    """
    header, opts, _ = parse(data)
    if header.op != BOOTREQUEST:
        raise MalformedPacket("BOOTREPLY sent to the server port")
    get = opts.get
    mtype = get(OPT_MESSAGE_TYPE)
    if mtype is None:
        raise MalformedPacket("no DHCP message type (plain BOOTP is not served)")
    cls = _CLASSES.get(mtype[0])
    if cls is None:
        name = MESSAGE_TYPE_NAMES.get(mtype[0])
        if name is not None:
            raise MalformedPacket(f"DHCP{name} sent to the server port")
        raise UnsupportedMessage(f"DHCP message type {mtype[0]} is not served")
    chaddr = header.hardware_address
    if not chaddr:
        raise MalformedPacket("no hardware address (hlen 0)")
    requested = get(OPT_REQUESTED_IP)
    server_id = get(OPT_SERVER_ID)
    max_size = get(OPT_MAX_MESSAGE_SIZE)
    arch = get(OPT_CLIENT_ARCH)
    user_class = get(OPT_USER_CLASS)
    hostname = get(OPT_HOST_NAME)
    msg = cls(
        xid=header.xid, mac=chaddr.hex(":"), chaddr=chaddr, htype=header.htype,
        flags=header.flags, hops=header.hops, ciaddr=ip_text(header.ciaddr),
        giaddr=ip_text(header.giaddr),
        client_id=get(OPT_CLIENT_ID),
        hostname=_hostname(hostname) if hostname is not None else None,
        parameters=get(OPT_PARAMETER_LIST),
        max_size=(min(max(u16(max_size), DEFAULT_MAX_MESSAGE), MAX_MESSAGE + IP_UDP_OVERHEAD)
                  - IP_UDP_OVERHEAD) if max_size is not None
        else DEFAULT_MAX_MESSAGE - IP_UDP_OVERHEAD,
        arch=u16(arch[:2]) if arch is not None else None,
        vendor_class=get(OPT_VENDOR_CLASS, b""),
        user_classes=user_classes(user_class) if user_class is not None else (),
        ipxe_options=OPT_IPXE in opts,
        uuid=get(OPT_CLIENT_UUID),
        relay_info=get(OPT_RELAY_AGENT),
        requested_ip=ip_text(requested) if requested is not None else None,
        server_id=ip_text(server_id) if server_id is not None else None,
    )
    if cls is Decline and (msg.requested_ip is None or msg.server_id is None):
        raise MalformedPacket("DHCPDECLINE without requested address or server identifier")
    if cls is Release and msg.ciaddr == ZERO_IP:
        raise MalformedPacket("DHCPRELEASE without ciaddr")
    if cls is Request and msg.server_id is not None and msg.requested_ip is None:
        raise MalformedPacket("DHCPREQUEST (SELECTING) without requested address")
    return msg
