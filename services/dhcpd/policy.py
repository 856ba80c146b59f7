"""What the server answers to each client message (RFC 2131 section 4.3).

Pure decisions: a :class:`DhcpPolicy` is given a decoded message, how it
arrived, and collaborators (the store, reachable by ``request()``; a boot
event sink; counters), and returns the reply to send, or None for silence.
Every lease decision is the store's; this module maps its answers to
OFFER, ACK, NAK or silence and fills in the options.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from astralboot.common.bus import events as stages
from astralboot.common.bus.schema import Reply
from astralboot.common.bus.schema import Request as BusRequest
from astralboot.common.config.model import Config
from astralboot.common.errors import BusTimeout, ErrorCode
from astralboot.common.logs import SenderLimit
from astralboot.common.messages import (
    CommitMode,
    ErrorReply,
    LeaseCommit,
    LeaseDecline,
    LeaseOffer,
    LeaseRelease,
    LeaseGrant,
)

from astralboot.services.dhcpd.addresses import ip_bytes
from astralboot.services.dhcpd.bootchain import (Assignment, BootChain, BootChoice, client_arch,
                                                 is_ipxe, needs_machine)
from astralboot.services.dhcpd.constants import (
    CLIENT_PORT,
    DHCPACK,
    DHCPNAK,
    DHCPOFFER,
    FILE_SIZE,
    OPT_BOOTFILE,
    OPT_HOST_NAME,
    OPT_MESSAGE,
    OPT_RELAY_AGENT,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_TFTP_SERVER,
    OPT_VENDOR_CLASS,
    SERVER_PORT,
    ZERO_IP,
)
from astralboot.services.dhcpd.client_messages import ClientMessage, Decline, Discover, Inform, Release, Request
from astralboot.services.dhcpd.options import tlv
from astralboot.services.dhcpd.reply import Outgoing, ReplyTooLarge, destination, lease_times, write
from astralboot.services.dhcpd.subnets import SubnetProfile, SubnetTable

log = logging.getLogger(__name__)


class Store(Protocol):
    """What the policy needs of the store: the bus client's ``request``."""

    async def request(self, msg: BusRequest, *, deadline: float | None = None) -> Reply: ...


Report = Callable[[str, str, "str | None", str], None]


@dataclass(frozen=True, slots=True)
class Arrival:
    """How a message reached the server (not visible in its bytes)."""

    port: int = SERVER_PORT
    broadcast: bool = True  # sent to a broadcast address: REBINDING, not RENEWING
    source: tuple[str, int] = (ZERO_IP, CLIENT_PORT)


BROADCAST = Arrival()  # the usual case: a broadcast to port 67


@dataclass(frozen=True, slots=True)
class BootFields:
    """A boot choice as reply fields: options offered, ``file``, ``siaddr``, tail."""

    options: dict[int, bytes]
    file: bytes
    siaddr: str
    tail: tuple[bytes, ...]


def boot_fields(choice: BootChoice | None, server: str, tftp_server_tlv: bytes) -> BootFields:
    """next-server, option 66, option 67 and ``file``, so that BIOS PXE ROMs
    (``file``/``siaddr``), EDK2 and iPXE (options 66/67) all find it."""
    if choice is None:
        return BootFields({}, b"", ZERO_IP, ())
    name = choice.filename.encode()
    options = {OPT_TFTP_SERVER: tftp_server_tlv, OPT_BOOTFILE: tlv(OPT_BOOTFILE, name)}
    tail = (tlv(OPT_VENDOR_CLASS, choice.vendor_class),) if choice.vendor_class else ()
    # A URL too long for the 128-byte field travels in option 67 only.
    return BootFields(options, name if len(name) <= FILE_SIZE else b"", server, tail)


def relay_tail(msg: ClientMessage) -> tuple[bytes, ...]:
    """Option 82 goes back to the relay unchanged (RFC 3046 2.2).

    Only a relay adds it: one in a packet that came straight from a client
    (giaddr 0) is the client's own invention and is never echoed.
    """
    if msg.relay_info is None or not msg.relayed:
        return ()
    return (tlv(OPT_RELAY_AGENT, msg.relay_info),)


def request_state(msg: ClientMessage, arrival: Arrival) -> CommitMode | None:
    """Which client state a DHCPREQUEST comes from (RFC 2131 4.3.2)."""
    if msg.server_id is not None:
        return "select"
    if msg.ciaddr != ZERO_IP:
        # RENEWING is unicast straight to us; REBINDING is broadcast, and
        # reaches us through a relay as a unicast with giaddr set.
        return "rebind" if arrival.broadcast or msg.relayed else "renew"
    if msg.requested_ip is not None:
        return "reboot"
    return None


@dataclass(frozen=True, slots=True)
class BootPlan:
    """A lease reply's boot choice as far as it is known before the store
    answers (``known``), and the boot event's ``detail``."""

    known: bool
    choice: BootChoice | None
    detail: str


IPXE_PLAN = BootPlan(False, None, "iPXE")


NAK, SILENCE = "nak", "silence"

# What the store's refusal of a commit means to the client, per state. A
# conflict is always a NAK. No record of the client: INIT-REBOOT and
# REBINDING stay silent so that servers which share no state can coexist
# (RFC 2131 4.3.2); a client that selected us, or renews with us, is told to
# start over.
COMMIT_ERRORS: dict[tuple[str, str], str] = {
    ("select", ErrorCode.CONFLICT.value): NAK,
    ("reboot", ErrorCode.CONFLICT.value): NAK,
    ("renew", ErrorCode.CONFLICT.value): NAK,
    ("rebind", ErrorCode.CONFLICT.value): NAK,
    ("select", ErrorCode.NOT_FOUND.value): NAK,
    ("reboot", ErrorCode.NOT_FOUND.value): SILENCE,
    ("renew", ErrorCode.NOT_FOUND.value): NAK,
    ("rebind", ErrorCode.NOT_FOUND.value): SILENCE,
}


class DhcpPolicy:
    """The authoritative server: addresses from the store, boot files from the chain."""

    def __init__(self, *, config: Config, store: Store, boot: BootChain, report: Report,
                 stats: Counter[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.warnings = SenderLimit()  # lines a client can cause: one a minute per MAC
        self.boot = boot
        self.report = report  # for a NAK; lease requests carry their own event
        self.stats = stats
        self.subnets = SubnetTable(config)
        self.server_ip = str(config.address)
        self.server_id = tlv(OPT_SERVER_ID, ip_bytes(self.server_ip))
        self.tftp_server = tlv(OPT_TFTP_SERVER, self.server_ip.encode())
        self.server_port = config.dhcp.port
        self.client_port = config.dhcp.client_port
        self._lease_times: dict[int, bytes] = {}
        self._handlers: dict[type, Callable[[ClientMessage, Arrival],
                                            Awaitable[Outgoing | None]]] = {
            Discover: self._discover, Request: self._request, Decline: self._decline,
            Release: self._release, Inform: self._inform,
        }

    async def handle(self, msg: ClientMessage, arrival: Arrival = BROADCAST) -> Outgoing | None:
        try:
            return await self._handlers[type(msg)](msg, arrival)  # type: ignore[arg-type]
        except ReplyTooLarge as exc:
            self.stats["reply_too_large"] += 1
            self._warn(msg.mac, "%s from %s (xid %08x): no reply fits: %s", msg.name, msg.mac,
                       msg.xid, exc)
            return None
        except BusTimeout as exc:
            # The client retransmits; by then the store may be back.
            self.stats["store_timeouts"] += 1
            self._warn("store", "%s from %s (xid %08x): store did not answer: %s",
                       msg.name, msg.mac, msg.xid, exc)
            return None

    def _warn(self, sender: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        if not self.warnings.log(log, level, sender, self.clock(), msg, *args):
            self.stats["log_held_back"] += 1

    # -- helpers -------------------------------------------------------------

    def _ignore(self, why: str, msg: ClientMessage) -> None:
        self.stats[f"ignored.{why}"] += 1
        log.debug("%s from %s (xid %08x) ignored: %s", msg.name, msg.mac, msg.xid, why)

    def _store_error(self, msg: ClientMessage, reply: Reply) -> None:
        code = reply.code if isinstance(reply, ErrorReply) else type(reply).__name__
        self.stats[f"store.{code}"] += 1
        self._warn(msg.mac, "%s from %s (xid %08x): store answered %s: %s", msg.name, msg.mac,
                   msg.xid, code, getattr(reply, "detail", ""))

    def _subnet(self, msg: ClientMessage) -> SubnetProfile | None:
        subnet = self.subnets.for_message(msg.giaddr)
        if subnet is None:
            self._ignore("unknown_relay", msg)
        return subnet

    def _lease_tlvs(self, lease_time: int) -> bytes:
        cached = self._lease_times.get(lease_time)
        if cached is None:
            cached = self._lease_times[lease_time] = lease_times(lease_time)
        return cached

    def _network_options(self, msg: ClientMessage, subnet: SubnetProfile,
                         machine: Assignment | None) -> dict[int, bytes]:
        options = dict(subnet.options)
        del options[OPT_TFTP_SERVER]  # only with a boot file
        if OPT_ROUTER not in options and msg.giaddr != ZERO_IP:
            # A relayed subnet without a configured gateway: the relay's
            # address on the client's link is its router.
            options[OPT_ROUTER] = tlv(OPT_ROUTER, ip_bytes(msg.giaddr))
        if machine is not None and machine.name:
            options[OPT_HOST_NAME] = tlv(OPT_HOST_NAME, machine.name.encode())
        return options

    def _lease_reply(self, msg: ClientMessage, message_type: int, subnet: SubnetProfile,
                     grant: LeaseGrant, boot_plan: BootPlan) -> Outgoing:
        options = self._network_options(msg, subnet, grant)
        choice = boot_plan.choice if boot_plan.known else self.boot.choose(msg, grant)
        boot = boot_fields(choice, self.server_ip, self.tftp_server)
        options.update(boot.options)
        payload = write(msg, message_type, options, server_id=self.server_id,
                        yiaddr=grant.ip, siaddr=boot.siaddr,
                        ciaddr=msg.ciaddr if message_type == DHCPACK else ZERO_IP,
                        file=boot.file, lease=self._lease_tlvs(grant.lease_time),
                        tail=boot.tail + relay_tail(msg))
        dest = destination(msg, message_type, grant.ip, server_port=self.server_port,
                           client_port=self.client_port)
        return Outgoing(payload, dest, message_type)

    def _boot_plan(self, msg: ClientMessage) -> BootPlan:
        """The boot choice, made before the store answers when the machine
        does not matter, and what the boot event says: the boot file for
        firmware, nothing for an OS's own client, "iPXE" for a client already
        running iPXE, whose script depends on the machine's OS and so is
        chosen with the grant."""
        if is_ipxe(msg):
            return IPXE_PLAN
        if needs_machine(msg):  # UEFI: the machine's loader decides
            arch = client_arch(msg)
            return BootPlan(False, None, f"uefi arch {arch}" if arch is not None else "uefi")
        choice = self.boot.choose(msg, None)
        return BootPlan(True, choice, choice.filename if choice else "")

    def _nak(self, msg: ClientMessage, reason: str, ip: str | None) -> Outgoing:
        self.stats["naks"] += 1
        self.report(stages.DHCP_NAK, msg.mac, ip, reason)
        log.info("NAK to %s (xid %08x) for %s: %s", msg.mac, msg.xid, ip, reason)
        payload = write(msg, DHCPNAK, {}, server_id=self.server_id,
                        tail=(tlv(OPT_MESSAGE, reason.encode()),) + relay_tail(msg))
        dest = destination(msg, DHCPNAK, ZERO_IP, server_port=self.server_port,
                           client_port=self.client_port)
        return Outgoing(payload, dest, DHCPNAK)

    # -- DISCOVER ------------------------------------------------------------

    async def _discover(self, msg: ClientMessage, arrival: Arrival) -> Outgoing | None:
        subnet = self._subnet(msg)
        if subnet is None:
            return None
        plan = self._boot_plan(msg)
        reply = await self.store.request(LeaseOffer(
            mac=msg.mac, subnet=subnet.name, client_id=msg.client_id,
            requested_ip=msg.requested_ip, hostname=msg.hostname,
            report=True, detail=plan.detail))
        if not isinstance(reply, LeaseGrant):
            if isinstance(reply, ErrorReply) and reply.code == ErrorCode.POOL_EXHAUSTED.value:
                self.stats["pool_exhausted"] += 1
                self._warn(subnet.name, "no free address in %s for %s", subnet.name, msg.mac)
            else:
                self._store_error(msg, reply)
            return None
        out = self._lease_reply(msg, DHCPOFFER, subnet, reply, plan)
        self.stats["offers"] += 1
        return out

    # -- REQUEST -------------------------------------------------------------

    async def _request(self, msg: ClientMessage, arrival: Arrival) -> Outgoing | None:
        mode = request_state(msg, arrival)
        if mode is None:
            self._ignore("request_without_address", msg)
            return None
        if mode == "select" and msg.server_id != self.server_ip:
            self._ignore("other_server", msg)  # the client chose another server
            return None
        ip = msg.ciaddr if mode in ("renew", "rebind") else msg.requested_ip
        assert ip is not None
        if mode == "renew":
            subnet = self.subnets.by_address(ip)  # unicast: no giaddr to go by
        else:
            subnet = self._subnet(msg)
            if subnet is None:
                return None  # a relay whose subnet is not configured
        if subnet is None or not subnet.contains(ip):
            # Checked here, without the store: INIT-REBOOT on the wrong network,
            # or renewing an address that is on none of ours (RFC 2131 4.3.2).
            return self._nak(msg, f"{ip} is not on this network", ip)
        plan = self._boot_plan(msg)
        reply = await self.store.request(LeaseCommit(
            mac=msg.mac, subnet=subnet.name, ip=ip, mode=mode, client_id=msg.client_id,
            hostname=msg.hostname, report=True, detail=f"{mode} {plan.detail}".rstrip()))
        if isinstance(reply, LeaseGrant):
            out = self._lease_reply(msg, DHCPACK, subnet, reply, plan)
            self.stats["acks"] += 1
            self.stats[f"acks.{mode}"] += 1
            return out
        if isinstance(reply, ErrorReply):
            action = COMMIT_ERRORS.get((mode, reply.code))
            if action == NAK:
                return self._nak(msg, reply.detail or f"{ip} is not yours", ip)
            if action == SILENCE:
                self._ignore(f"unknown_client_{mode}", msg)
                return None
        self._store_error(msg, reply)
        return None

    # -- DECLINE, RELEASE, INFORM --------------------------------------------

    async def _decline(self, msg: ClientMessage, arrival: Arrival) -> None:
        if msg.server_id != self.server_ip:
            self._ignore("other_server", msg)
            return
        assert msg.requested_ip is not None
        reply = await self.store.request(LeaseDecline(mac=msg.mac, ip=msg.requested_ip,
                                                      client_id=msg.client_id, report=True))
        if isinstance(reply, ErrorReply):
            if reply.code in (ErrorCode.CONFLICT.value, ErrorCode.NOT_FOUND.value):
                # Not this client's address to decline (RFC 2131 4.3.3).
                self.stats["declines_refused"] += 1
                self._warn(msg.mac, "DECLINE of %s from %s refused: %s", msg.requested_ip,
                           msg.mac, reply.detail, level=logging.INFO)
                return
            self._store_error(msg, reply)
            return
        self.stats["declines"] += 1
        self._warn(msg.mac, "%s declined %s (address in use on the network?)", msg.mac,
                   msg.requested_ip)

    async def _release(self, msg: ClientMessage, arrival: Arrival) -> None:
        if msg.server_id is not None and msg.server_id != self.server_ip:
            self._ignore("other_server", msg)
            return
        reply = await self.store.request(LeaseRelease(mac=msg.mac, ip=msg.ciaddr,
                                                      client_id=msg.client_id, report=True))
        if isinstance(reply, ErrorReply):
            self._store_error(msg, reply)
            return
        self.stats["releases"] += 1

    async def _inform(self, msg: ClientMessage, arrival: Arrival) -> Outgoing | None:
        """ACK with the network's settings and no lease (RFC 2131 4.3.5)."""
        if msg.relayed:
            subnet = self._subnet(msg)
        else:
            address = msg.ciaddr if msg.ciaddr != ZERO_IP else arrival.source[0]
            subnet = self.subnets.by_address(address)
            if subnet is None:
                self._ignore("inform_from_unknown_network", msg)
        if subnet is None:
            return None
        options = self._network_options(msg, subnet, None)
        payload = write(msg, DHCPACK, options, server_id=self.server_id, ciaddr=msg.ciaddr,
                        tail=relay_tail(msg))
        self.stats["informs"] += 1
        dest = destination(msg, DHCPACK, ZERO_IP, server_port=self.server_port,
                           client_port=self.client_port)
        return Outgoing(payload, dest, DHCPACK)
