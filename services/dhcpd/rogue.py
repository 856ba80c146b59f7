"""The rogue-server guard: is another DHCP server handing out addresses here?

Before serving addresses, dhcpd broadcasts a DISCOVER on its interface (the
broadcast flag set, so any server answers by broadcast) and listens. An
OFFER with an address in it means another authoritative server is on the
link, and two of them would hand out conflicting leases: authoritative mode
refuses to start. OFFERs without an address come from proxyDHCP servers,
which coexist.
"""

from __future__ import annotations

import asyncio
import logging
import os

from astralboot.common import netif

from astralboot.services.dhcpd.addresses import ip_text
from astralboot.services.dhcpd.constants import (
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_IP,
    DHCPACK,
    DHCPDISCOVER,
    DHCPOFFER,
    FLAG_BROADCAST,
    OPT_CLIENT_ARCH,
    OPT_CLIENT_ID,
    OPT_MESSAGE_TYPE,
    OPT_PARAMETER_LIST,
    OPT_SERVER_ID,
    OPT_VENDOR_CLASS,
    ZERO_IP,
)
from astralboot.services.dhcpd.packet import Packet, decode, encode
from astralboot.services.dhcpd.reader import MalformedPacket
from astralboot.services.dhcpd.sockets import open_udp

log = logging.getLogger(__name__)

# Some servers answer only network-boot clients, so the probe looks like one.
PROBE_VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"


def probe_packet(xid: int, hardware: bytes) -> bytes:
    return encode(Packet(op=BOOTREQUEST, xid=xid, chaddr=hardware, flags=FLAG_BROADCAST,
                         options={OPT_MESSAGE_TYPE: bytes((DHCPDISCOVER,)),
                                  OPT_CLIENT_ID: b"\x01" + hardware,
                                  OPT_PARAMETER_LIST: bytes((1, 3, 6, 54, 66, 67)),
                                  OPT_VENDOR_CLASS: PROBE_VENDOR_CLASS,
                                  OPT_CLIENT_ARCH: b"\x00\x00"}))


def answering_server(data: bytes, source: str, xid: int) -> tuple[str, bool] | None:
    """Who answered the probe, and whether with an address (not a proxy)."""
    try:
        packet = decode(data)
    except MalformedPacket:
        return None
    mtype = packet.options.get(OPT_MESSAGE_TYPE)
    if packet.op != BOOTREPLY or packet.xid != xid or mtype not in (bytes((DHCPOFFER,)),
                                                                       bytes((DHCPACK,))):
        return None
    server_id = packet.options.get(OPT_SERVER_ID)
    server = ip_text(server_id) if server_id else source
    return server, packet.yiaddr != ZERO_IP


def _hardware_address(interface: str) -> bytes:
    mac = netif.describe(interface).mac
    if mac and len(mac) == 17 and mac != "00:00:00:00:00:00":
        return bytes.fromhex(mac.replace(":", ""))
    return bytes((0x02,)) + os.urandom(5)  # locally administered


async def find_other_servers(interface: str, *, server_port: int, client_port: int,
                             listen: float) -> list[str]:
    """Addresses of the DHCP servers that offered an address within ``listen`` s."""
    if listen <= 0:
        return []
    loop = asyncio.get_running_loop()
    sock = open_udp(interface, client_port, reuse=True)
    xid = int.from_bytes(os.urandom(4), "big")
    probe = probe_packet(xid, _hardware_address(interface))
    found: dict[str, None] = {}
    seen: set[str] = set()
    end = loop.time() + listen
    sends = [loop.time() + listen * i / 3 for i in range(3)]  # the answer may be lost
    try:
        while (now := loop.time()) < end:
            while sends and sends[0] <= now:
                sends.pop(0)
                sock.sendto(probe, (BROADCAST_IP, server_port))
            wait = min(end, sends[0] if sends else end) - now
            try:
                async with asyncio.timeout(max(wait, 0.001)):
                    data, (source, _) = await loop.sock_recvfrom(sock, 2048)
            except TimeoutError:
                continue
            answer = answering_server(data, source, xid)
            if answer is None or answer[0] in seen:
                continue
            server, offers_address = answer
            seen.add(server)
            if offers_address:
                log.warning("DHCP server %s offered an address on %s", server, interface)
                found[server] = None
            else:
                log.info("proxyDHCP server %s answered on %s (boot information only: it can "
                         "stay)", server, interface)
    finally:
        sock.close()
    return list(found)
