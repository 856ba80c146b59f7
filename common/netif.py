"""What the host's network interfaces look like (Linux).

Used to derive the server address and subnet from the configured interface,
to list choices in ``astralboot init``, and to check MTUs for TFTP.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SIOCGIFMTU = 0x8921


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    ipv4: ipaddress.IPv4Interface | None
    mtu: int
    mac: str | None
    up: bool
    loopback: bool


def _ioctl(name: str, request: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), request, struct.pack("256s", name.encode()[:15]))


def exists(name: str) -> bool:
    return name in {n for _, n in socket.if_nameindex()}


def ipv4_of(name: str) -> ipaddress.IPv4Interface | None:
    """The interface's primary IPv4 address with its prefix, or None."""
    try:
        addr = socket.inet_ntoa(_ioctl(name, SIOCGIFADDR)[20:24])
        mask = socket.inet_ntoa(_ioctl(name, SIOCGIFNETMASK)[20:24])
    except OSError:
        return None
    return ipaddress.IPv4Interface(f"{addr}/{mask}")


def mtu_of(name: str) -> int:
    try:
        return struct.unpack("i", _ioctl(name, SIOCGIFMTU)[16:20])[0]
    except OSError:
        return 1500


def describe(name: str) -> InterfaceInfo:
    sysfs = Path("/sys/class/net") / name
    try:
        mac = (sysfs / "address").read_text().strip() or None
        flags = int((sysfs / "flags").read_text().strip(), 16)
    except OSError:
        mac, flags = None, 0
    return InterfaceInfo(name=name, ipv4=ipv4_of(name), mtu=mtu_of(name), mac=mac,
                         up=bool(flags & 0x1), loopback=bool(flags & 0x8))


def interfaces() -> list[InterfaceInfo]:
    """Every interface of this network namespace, loopback last."""
    found = [describe(n) for _, n in socket.if_nameindex()]
    return sorted(found, key=lambda i: (i.loopback, i.name))
