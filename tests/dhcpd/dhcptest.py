"""Helpers for the dhcpd tests: configs, crafted client packets, a fake store.

The fake store is for unit tests of the policy layer only; integration
tests run the real store.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
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
    Done,
    ErrorReply,
    LeaseCommit,
    LeaseDecline,
    LeaseOffer,
    LeaseRecord,
    LeaseRelease,
    LeaseGrant,
    MachineGet,
    MachineRecord,
    MachineReply,
)
from astralboot.services.dhcpd import constants as c
from astralboot.services.dhcpd.client_messages import ClientMessage, read_client_message
from astralboot.services.dhcpd.packet import Packet, encode

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


@dataclass
class FakeStore:
    """An in-memory stand-in for the store's lease contract (policy tests only).

    ``fail`` maps a request kind to an ErrorReply code or "timeout".
    """

    config: Config
    machines: dict[str, MachineRecord] = field(default_factory=dict)
    leases: dict[tuple[str, str], LeaseRecord] = field(default_factory=dict)  # (subnet, mac)
    binaries: set[str] = field(default_factory=lambda: {"snponly.efi", "ipxe.efi"})
    fail: dict[str, str] = field(default_factory=dict)
    calls: list[Request] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    _names: Any = field(default_factory=lambda: itertools.count(1))

    def machine(self, mac: str, **kw: Any) -> MachineRecord:
        if mac not in self.machines:
            self.machines[mac] = MachineRecord(mac=mac, name=f"node{next(self._names)}", **kw)
        return self.machines[mac]

    def _pool(self, subnet: str) -> list[str]:
        for s in self.config.dhcp.subnets:
            if s.name == subnet:
                start, end = int(s.range_start), int(s.range_end)
                return [str(ipaddress.IPv4Address(n)) for n in range(start, end + 1)]
        raise KeyError(subnet)

    def _taken(self, subnet: str) -> set[str]:
        return {lease.ip for (s, _), lease in self.leases.items() if s == subnet}

    async def request(self, msg: Request, *, deadline: float | None = None) -> Reply:
        self.calls.append(msg)
        failure = self.fail.get(msg.kind)
        if failure == "timeout":
            raise BusTimeout("fake://store", msg.kind, 0.1, 1)
        if failure:
            return ErrorReply(code=failure, detail="fake failure")
        if isinstance(msg, LeaseOffer):
            return self._offer(msg)
        if isinstance(msg, LeaseCommit):
            return self._commit(msg)
        if isinstance(msg, (LeaseRelease, LeaseDecline)):
            for key, lease in list(self.leases.items()):
                if lease.mac == msg.mac and lease.ip == msg.ip:
                    state = "released" if isinstance(msg, LeaseRelease) else "declined"
                    self.leases[key] = _with(lease, state=state)
            return Done()
        if isinstance(msg, MachineGet):
            machine = self.machines.get(msg.mac)
            if machine is None:
                return ErrorReply(code="not_found", detail=msg.mac)
            return MachineReply(machine=machine)
        if isinstance(msg, ContentStat):
            name = msg.path.rpartition("/")[2]
            if name in self.binaries:
                return ContentStatReply(entry=ContentEntry(path=msg.path, is_dir=False, size=1,
                                                           digest="00" * 32))
            return ErrorReply(code="not_found", detail=msg.path)
        return ErrorReply(code="bad_request", detail=msg.kind)

    def _offer(self, msg: LeaseOffer) -> Reply:
        try:
            pool = self._pool(msg.subnet)
        except KeyError:
            return ErrorReply(code="not_found", detail=msg.subnet)
        key = (msg.subnet, msg.mac)
        if key in self.leases and self.leases[key].state in ("offered", "bound"):
            ip = self.leases[key].ip
        else:
            taken = self._taken(msg.subnet)
            free = [ip for ip in pool if ip not in taken]
            if msg.requested_ip in free:
                ip = msg.requested_ip
            elif free:
                ip = free[0]
            else:
                return ErrorReply(code="pool_exhausted", detail=msg.subnet)
        lease = LeaseRecord(ip=ip, mac=msg.mac, subnet=msg.subnet, state="offered",
                            expires=0.0, lease_time=self.config.dhcp.lease_time,
                            client_id=msg.client_id, hostname=msg.hostname)
        self.leases[key] = lease
        return _grant(lease, self.machine(msg.mac))

    def _commit(self, msg: LeaseCommit) -> Reply:
        key = (msg.subnet, msg.mac)
        lease = self.leases.get(key)
        if lease is None:
            if msg.mode in ("reboot", "rebind", "renew"):
                return ErrorReply(code="not_found", detail=msg.mac)
            return ErrorReply(code="conflict", detail=f"{msg.ip} was not offered to {msg.mac}")
        if lease.ip != msg.ip:
            return ErrorReply(code="conflict", detail=f"{msg.ip} is not {msg.mac}'s address")
        bound = _with(lease, state="bound")
        self.leases[key] = bound
        return _grant(bound, self.machine(msg.mac))


def _with(lease: LeaseRecord, **changes: Any) -> LeaseRecord:
    fields = {f: getattr(lease, f) for f in LeaseRecord.__dataclass_fields__}
    fields.update(changes)
    return LeaseRecord(**fields)


def _grant(lease: LeaseRecord, machine: MachineRecord) -> LeaseGrant:
    """What the real store answers LeaseOffer and LeaseCommit with."""
    return LeaseGrant(ip=lease.ip, state=lease.state, lease_time=lease.lease_time,
                      expires=lease.expires, name=machine.name, os=machine.os, mac=lease.mac)
