"""Helpers for the dhcpd tests: configs, crafted client packets, and the
store's own decision layer for unit tests of the policy.

Integration tests run the whole store process instead.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from astralboot.common.bus.schema import Reply, Request
from astralboot.common.config.load import from_dict
from astralboot.common.config.model import Config
from astralboot.common.errors import BusTimeout
from astralboot.common.messages import (
    ContentEntry,
    ContentStat,
    ContentStatReply,
    ErrorReply,
    LeaseList,
    LeaseListReply,
    LeaseRecord,
    MachineRecord,
    MachineReply,
    MachineSet,
)
from astralboot.services.dhcpd import constants as c
from astralboot.services.dhcpd.client_messages import ClientMessage, read_client_message
from astralboot.services.dhcpd.packet import Packet, encode
from astralboot.services.store.service import StoreService

SERVER = "192.0.2.1"
RELAY = "198.18.0.2"
RELAYED_NET = "198.18.0.0/16"


def make_config(tmp: Path | None = None, domain: str = "lab.example", **dhcp: Any) -> Config:
    """A config for 192.0.2.0/24 served from 192.0.2.1, plus a relayed 198.18.0.0/16."""
    raw: dict[str, Any] = {
        "interface": "br0", "address": SERVER, "network": "192.0.2.0/24",
        "domain": domain,
        "dhcp": {"range": "192.0.2.100-192.0.2.199", "lease_time": 3600,
                 "subnet": [{"network": RELAYED_NET, "range": "198.18.1.0-198.18.1.255"}],
                 **dhcp},
        "http": {"public_url": "http://192.0.2.1"},
    }
    folder = tmp or Path("/nonexistent")
    return from_dict(raw, folder / "config.toml")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def client_packet(message_type: int, mac: str = "52:54:00:12:34:56", *, xid: int = 0x1d2c3b4a,
                  flags: int = 0, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0",
                  requested: str | None = None, server_id: str | None = None,
                  params: bytes | None = bytes((1, 3, 6, 12, 15, 28, 51, 54, 58, 59, 66, 67)),
                  arch: int | None = None, vendor: bytes | None = None,
                  user_class: bytes | None = None, extra: dict[int, bytes] | None = None) -> Packet:
    options: dict[int, bytes] = {c.OPT_MESSAGE_TYPE: bytes((message_type,))}
    if requested:
        options[c.OPT_REQUESTED_IP] = socket.inet_aton(requested)
    if server_id:
        options[c.OPT_SERVER_ID] = socket.inet_aton(server_id)
    if params is not None:
        options[c.OPT_PARAMETER_LIST] = params
    if arch is not None:
        options[c.OPT_CLIENT_ARCH] = struct.pack("!H", arch)
    if vendor is not None:
        options[c.OPT_VENDOR_CLASS] = vendor
    if user_class is not None:
        options[c.OPT_USER_CLASS] = user_class
    options.update(extra or {})
    return Packet(op=c.BOOTREQUEST, xid=xid, chaddr=mac_bytes(mac), flags=flags, ciaddr=ciaddr,
                  giaddr=giaddr, options=options)


def client_message(message_type: int, mac: str = "52:54:00:12:34:56",
                   **kw: Any) -> ClientMessage:
    """A crafted client packet, through the wire format, as the server sees it."""
    return read_client_message(encode(client_packet(message_type, mac, **kw)))


def message_type(packet: Packet) -> int:
    return packet.options[c.OPT_MESSAGE_TYPE][0]


def option_codes(packet_bytes: bytes) -> list[int]:
    """Option codes in wire order (main area only), to check ordering."""
    codes, i = [], c.OPTIONS_START
    while packet_bytes[i] != c.OPT_END:
        if packet_bytes[i] == c.OPT_PAD:
            i += 1
            continue
        codes.append(packet_bytes[i])
        i += 2 + packet_bytes[i + 1]
    return codes


class InProcessStore:
    """The real store's decisions in this process (no bus, no database) behind
    the bus client's ``request``, for unit tests of the policy layer.

    Lease and machine requests go to a :class:`StoreService`, the pure
    decision layer of the store process, so allocation, commits, releases
    and declines are the store's own; what the process adds around it
    (durable writes, publishing events) is left out. The one thing the
    service does not answer, content (which iPXE binaries ``tftp/`` holds),
    comes from ``binaries``. ``fail`` maps a request kind to an ErrorReply
    code or "timeout", for a store that is down or broken.
    """

    def __init__(self, config: Config, *, binaries: set[str] | None = None,
                 fail: dict[str, str] | None = None, now: float = 1000.0) -> None:
        self.service = StoreService(config)
        self.binaries = {"snponly.efi", "ipxe.efi"} if binaries is None else binaries
        self.fail = dict(fail or {})
        self.calls: list[Request] = []
        self.now = now  # the store's clock; the service never reads one itself

    def machine(self, mac: str, **fields: Any) -> MachineRecord | None:
        """Set a machine's name, OS... as an operator would (None if refused)."""
        reply = self.service.handle(MachineSet(mac=mac, **fields), self.now).reply
        return reply.machine if isinstance(reply, MachineReply) else None

    def leases(self) -> dict[str, LeaseRecord]:
        """The store's leases by address."""
        reply = self.service.handle(LeaseList(), self.now).reply
        assert isinstance(reply, LeaseListReply), reply
        return {lease.ip: lease for lease in reply.leases}

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        self.calls.append(msg)
        failure = self.fail.get(msg.kind)
        if failure == "timeout":
            raise BusTimeout("test://store", msg.kind, 0.1, 1)
        if failure:
            return ErrorReply(code=failure, detail="failure set by the test")
        if isinstance(msg, ContentStat):
            name = msg.path.rpartition("/")[2]
            if name in self.binaries:
                return ContentStatReply(entry=ContentEntry(path=msg.path, is_dir=False, size=1,
                                                           digest="00" * 32))
            return ErrorReply(code="not_found", detail=msg.path)
        result = self.service.handle(msg, self.now)
        assert result.reply is not None and result.read is None, (
            f"{msg.kind} is answered from the database, which these tests do not have")
        return result.reply
