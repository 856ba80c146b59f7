"""proxyDHCP: boot information only, beside another DHCP server.

Another server on the network hands out addresses; this one answers only
network-boot clients, with an OFFER that has no address (yiaddr 0) and
carries option 60 "PXEClient" (or "HTTPClient"), the boot file and PXE
option 43 telling the client to use that file without boot server
discovery. Clients that then ask on port 4011 (EDK2 for a "BINL" offer,
iPXE's ProxyDHCP request, some PXE ROMs) get an ACK with the same file,
sent back to where they asked from. Addresses are never handed out, so
this mode is safe on an office network, and the rogue guard allows it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from astralboot.common.bus import events as stages
from astralboot.common.config.model import Config
from astralboot.common.errors import BusTimeout, ErrorCode
from astralboot.common.logs import SenderLimit
from astralboot.common.messages import (
    ErrorReply,
    MachineGet,
    MachineRecord,
    MachineReply,
)

from astralboot.services.dhcpd.addresses import ip_bytes
from astralboot.services.dhcpd.bootchain import BootChain, is_boot_client
from astralboot.services.dhcpd.constants import (
    DHCPACK,
    DHCPOFFER,
    OPT_CLIENT_UUID,
    OPT_SERVER_ID,
    OPT_TFTP_SERVER,
    OPT_VENDOR_CLASS,
    OPT_VENDOR_SPECIFIC,
    PXE_PORT,
    VENDOR_PXE,
    ZERO_IP,
)
from astralboot.services.dhcpd.client_messages import ClientMessage, Discover, Request
from astralboot.services.dhcpd.options import tlv
from astralboot.services.dhcpd.policy import BROADCAST, Arrival, Report, Store, boot_fields, relay_tail
from astralboot.services.dhcpd.reply import Destination, Outgoing, ReplyTooLarge, destination, write

log = logging.getLogger(__name__)

# PXE vendor options (PXE 2.1 spec, table 2-1): discovery control (tag 6)
# bit 3 = "boot file in this offer: download it, no discovery or menu".
PXE_OPTIONS = tlv(OPT_VENDOR_SPECIFIC, b"\x06\x01\x08\xff")
PXE_VENDOR_CLASS = tlv(OPT_VENDOR_CLASS, VENDOR_PXE)


class ProxyPolicy:
    def __init__(self, *, config: Config, store: Store, boot: BootChain, report: Report,
                 stats: Counter[str]) -> None:
        self.store = store
        self.boot = boot
        self.report = report
        self.stats = stats
        self.server_ip = str(config.address)
        self.server_id = tlv(OPT_SERVER_ID, ip_bytes(self.server_ip))
        self.tftp_server = tlv(OPT_TFTP_SERVER, self.server_ip.encode())
        self.server_port = config.dhcp.port
        self.client_port = config.dhcp.client_port
        self.warnings = SenderLimit()

    async def handle(self, msg: ClientMessage, arrival: Arrival = BROADCAST) -> Outgoing | None:
        try:
            if arrival.port == PXE_PORT:
                if isinstance(msg, Request):
                    return await self._answer(msg, DHCPACK, arrival)
            elif isinstance(msg, Discover):
                return await self._answer(msg, DHCPOFFER, arrival)
            elif isinstance(msg, Request) and msg.server_id == self.server_ip:
                return await self._answer(msg, DHCPACK, arrival)
        except ReplyTooLarge as exc:
            self.stats["reply_too_large"] += 1
            self.warnings.log(log, logging.WARNING, msg.mac, time.monotonic(),
                              "%s from %s: no reply fits: %s", msg.name, msg.mac, exc)
            return None
        except BusTimeout as exc:
            self.stats["store_timeouts"] += 1
            self.warnings.log(log, logging.WARNING, "store", time.monotonic(),
                              "%s from %s (xid %08x): store did not answer: %s",
                              msg.name, msg.mac, msg.xid, exc)
            return None
        self._ignore("not_for_proxy", msg)
        return None

    def _ignore(self, why: str, msg: ClientMessage) -> None:
        self.stats[f"ignored.{why}"] += 1
        log.debug("%s from %s (xid %08x) ignored: %s", msg.name, msg.mac, msg.xid, why)

    async def _machine(self, msg: ClientMessage) -> MachineRecord | None:
        reply = await self.store.request(MachineGet(mac=msg.mac))
        if isinstance(reply, MachineReply):
            return reply.machine
        if not (isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND.value):
            self.stats["store.errors"] += 1
            self.warnings.log(log, logging.WARNING, msg.mac, time.monotonic(),
                              "machine %s: store answered %s", msg.mac, reply)
        return None

    async def _answer(self, msg: ClientMessage, message_type: int,
                      arrival: Arrival) -> Outgoing | None:
        if not is_boot_client(msg):
            self._ignore("not_a_boot_client", msg)
            return None
        machine = await self._machine(msg)
        choice = self.boot.choose(msg, machine)
        if choice is None:
            self._ignore("no_boot_file", msg)
            return None
        boot = boot_fields(choice, self.server_ip, self.tftp_server)
        tail = boot.tail or (PXE_VENDOR_CLASS, PXE_OPTIONS)
        if msg.uuid is not None:
            tail += (tlv(OPT_CLIENT_UUID, msg.uuid),)  # PXE clients check it matches
        payload = write(msg, message_type, boot.options, server_id=self.server_id,
                        siaddr=boot.siaddr, file=boot.file,
                        ciaddr=msg.ciaddr if message_type == DHCPACK else ZERO_IP,
                        tail=tail + relay_tail(msg))
        if arrival.port == PXE_PORT:
            dest = Destination(*arrival.source)
        else:
            dest = destination(msg, message_type, ZERO_IP, server_port=self.server_port,
                               client_port=self.client_port)
        if message_type == DHCPOFFER:
            self.stats["proxy_offers"] += 1
            self.report(stages.DHCP_OFFER, msg.mac, None, f"proxy {choice.filename}")
        else:
            self.stats["proxy_acks"] += 1
            self.report(stages.DHCP_ACK, msg.mac, msg.ciaddr if msg.ciaddr != ZERO_IP else None,
                        f"proxy {choice.filename}")
        return Outgoing(payload, dest, message_type)
