"""UDP sockets on one interface, and unicast to a client that has no address yet.

Start-up failures become :class:`StartupError` naming the interface, port
and the missing privilege, which ``astralboot serve``, supervisord and
systemd show the operator.
"""

from __future__ import annotations

import array
import errno
import socket
import struct

from astralboot.common import netif
from astralboot.common.errors import StartupError

SERVICE = "dhcpd"
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 8 << 20  # a burst of thousands of DISCOVERs must not overflow it

PKTINFO = struct.Struct("@i4s4s")  # ifindex, spec_dst, addr (the header's destination)
ANCILLARY_SIZE = socket.CMSG_SPACE(PKTINFO.size)


def check_interface(interface: str) -> None:
    if not interface:
        raise StartupError(SERVICE, "no interface is configured (set `interface` in config.toml)")
    if not netif.exists(interface):
        raise StartupError(SERVICE, f"no interface {interface!r} on this host")


def open_udp(interface: str, port: int, *, reuse: bool = False) -> socket.socket:
    """A non-blocking UDP socket on 0.0.0.0:``port`` that sees only ``interface``."""
    check_interface(interface)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        except PermissionError:
            raise StartupError(SERVICE, f"binding to interface {interface} (SO_BINDTODEVICE) "
                               "needs root or CAP_NET_RAW") from None
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.bind(("0.0.0.0", port))
        except PermissionError:
            raise StartupError(SERVICE, f"binding UDP port {port} needs root or "
                               "CAP_NET_BIND_SERVICE") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(SERVICE, f"UDP port {port} on {interface} is already in use "
                                   "(is another DHCP server running on this host?)") from None
            raise StartupError(SERVICE, f"cannot bind UDP port {port} on {interface}: "
                               f"{exc.strerror}") from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def destination_of(ancillary: list[tuple[int, int, bytes]]) -> bytes | None:
    """The IP header's destination address from IP_PKTINFO, as 4 bytes."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= PKTINFO.size:
            return PKTINFO.unpack_from(data)[2]
    return None


class LinkSender:
    """Unicasts to a client that has no address yet (RFC 2131 4.1).

    The kernel cannot send such a packet itself: it would ARP for the new
    address and the client cannot answer. So the IP and UDP headers are
    written here and the datagram goes out through a packet socket straight
    to the client's hardware address, leaving no ARP entry behind (what ISC
    dhcpd does with its raw sockets). Needs CAP_NET_RAW, like
    SO_BINDTODEVICE; :meth:`open` returns None without it.
    """

    def __init__(self, sock: socket.socket, interface: str, source: str, port: int) -> None:
        self.sock = sock
        self.interface = interface
        self.source = socket.inet_aton(source)
        self.port = port
        self._ids = 0

    @classmethod
    def open(cls, interface: str, source: str, port: int) -> LinkSender | None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        except OSError:  # no CAP_NET_RAW, or the family is not allowed (systemd sandbox)
            return None
        sock.setblocking(False)
        return cls(sock, interface, source, port)

    def send(self, payload: bytes, ip: str, port: int, hardware: bytes) -> None:
        self._ids = (self._ids + 1) & 0xFFFF
        packet = ip_udp(payload, self.source, socket.inet_aton(ip), self.port, port, self._ids)
        self.sock.sendto(packet, (self.interface, ETH_P_IP, 0, 0, hardware))

    def close(self) -> None:
        self.sock.close()


ETH_P_IP = 0x0800
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_PSEUDO = struct.Struct("!4s4sBBH")


def _checksum(data: bytes) -> bytes:
    """The Internet checksum (RFC 1071) of ``data``, as it goes on the wire.

    Summed in native byte order and packed back the same way, which RFC 1071
    section 2(B) shows gives the right bytes on either endianness.
    """
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("=H", ~total & 0xFFFF)


def ip_udp(payload: bytes, source: bytes, destination: bytes, sport: int, dport: int,
           ident: int) -> bytes:
    """An IPv4 datagram (no options, TTL 64) holding one UDP datagram."""
    udp_length = 8 + len(payload)
    pseudo = _PSEUDO.pack(source, destination, 0, socket.IPPROTO_UDP, udp_length)
    udp = _UDP.pack(sport, dport, udp_length, 0)
    udp_sum = _checksum(pseudo + udp + payload)
    if udp_sum == b"\0\0":
        udp_sum = b"\xff\xff"  # zero means "no checksum" (RFC 768)
    header = _IP.pack(0x45, 0, 20 + udp_length, ident, 0, 64, socket.IPPROTO_UDP, 0, source,
                      destination)
    header = header[:10] + _checksum(header) + header[12:]
    return header + udp[:6] + udp_sum + payload
