"""dhcpd's I/O: sockets, the rogue guard, tasks and timers. It decides nothing.

Each datagram is decoded here and handed to the policy in its own task, so
hundreds of clients wait on the store at once over one bus socket; a
malformed packet is counted, logged once per sender, and dropped; a store
that does not answer costs only the packet that asked (the client
retransmits).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.events import boot_event
from astralboot.common.config.model import Config
from astralboot.common.errors import BusTimeout, StartupError
from astralboot.common.frontend import FrontEnd
from astralboot.common.frontend import run as run_frontend
from astralboot.common.frontend import settle_heap

from astralboot.services.dhcpd.bootchain import BinaryCatalogue, BootChain
from astralboot.services.dhcpd.constants import BROADCAST_IP, PXE_PORT
from astralboot.services.dhcpd.client_messages import ClientMessage, UnsupportedMessage, read_client_message
from astralboot.services.dhcpd.policy import Arrival, DhcpPolicy
from astralboot.services.dhcpd.proxy import ProxyPolicy
from astralboot.services.dhcpd.reader import MalformedPacket
from astralboot.services.dhcpd.reply import Outgoing
from astralboot.services.dhcpd.rogue import find_other_servers
from astralboot.services.dhcpd.sockets import ANCILLARY_SIZE, SERVICE, LinkSender, destination_of, open_udp

log = logging.getLogger(__name__)

RECEIVE_BATCH = 64  # datagrams read per wake-up before yielding to other work
# Requests to the store wait up to this long for company: a lone message costs
# a wake-up of ZeroMQ's I/O thread, a burst shares one (DHCP clients wait seconds).
BUS_COALESCE = 0.002
MAX_IN_FLIGHT = 4096  # messages waiting on the store; beyond this, drop (clients retry)
CATALOGUE_REFRESH = 60.0
CATALOGUE_RETRY = 5.0
MAX_LOGGED_SOURCES = 4096


class Listener:
    """One bound socket and the port it serves (67, or 4011 for proxyDHCP)."""

    __slots__ = ("port", "sock")

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.port = port


class DhcpServer:
    def __init__(self, config: Config, policy: DhcpPolicy | ProxyPolicy,
                 listeners: list[Listener], stats: Counter[str],
                 link: LinkSender | None = None) -> None:
        self.interface = config.interface
        self.link = link
        self.policy = policy
        self.listeners = listeners
        self.stats = stats
        self.broadcasts = {socket.inet_aton(BROADCAST_IP)} | {
            s.network.broadcast_address.packed for s in config.dhcp.subnets}
        self._in_flight: dict[tuple[bytes, int, int], asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_sources: set[str] = set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for listener in self.listeners:
            self._drain(listener.sock)
            loop.add_reader(listener.sock.fileno(), self._readable, listener)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            loop.remove_reader(listener.sock.fileno())
            listener.sock.close()
        for task in list(self._in_flight.values()):
            task.cancel()
        if self.link is not None:
            self.link.close()

    def in_flight(self) -> int:
        return len(self._in_flight)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Drop what queued up before serving began (e.g. our own rogue probe)."""
        while True:
            try:
                sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return

    # -- receiving -----------------------------------------------------------

    def _readable(self, listener: Listener) -> None:
        sock = listener.sock
        loop = self._loop
        assert loop is not None
        for _ in range(RECEIVE_BATCH):
            try:
                data, ancillary, _flags, source = sock.recvmsg(4096, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. the interface went away; it may come back
                self.stats["receive_errors"] += 1
                log.warning("receiving on %s: %s", self.interface, exc)
                return
            self.stats["packets"] += 1
            try:
                msg = read_client_message(data)
            except UnsupportedMessage as exc:
                self.stats["unsupported"] += 1
                log.debug("from %s:%d: %s", source[0], source[1], exc)
                continue
            except MalformedPacket as exc:
                self._malformed(source, exc)
                continue
            key = (msg.chaddr, msg.xid, msg.message_type)
            if key in self._in_flight:
                self.stats["duplicates"] += 1  # a retransmission while we still work on it
                continue
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                self.stats["overload_drops"] += 1
                continue
            dst = destination_of(ancillary)
            arrival = Arrival(listener.port, dst is None or dst in self.broadcasts, source)
            self._in_flight[key] = loop.create_task(self._serve(msg, arrival, key, sock))

    def _malformed(self, source: tuple[str, int], exc: MalformedPacket) -> None:
        self.stats["malformed"] += 1
        who = source[0]
        if who in self._logged_sources:
            log.debug("malformed packet from %s:%d: %s", who, source[1], exc)
            return
        if len(self._logged_sources) >= MAX_LOGGED_SOURCES:
            self._logged_sources.clear()
        self._logged_sources.add(who)
        log.warning("malformed packet from %s:%d dropped: %s (further ones from this "
                    "address are counted, not logged)", who, source[1], exc)

    async def _serve(self, msg: ClientMessage, arrival: Arrival, key: tuple[bytes, int, int],
                     sock: socket.socket) -> None:
        try:
            out = await self.policy.handle(msg, arrival)
            if out is not None:
                self._send(sock, out)
        except Exception:
            # A bug for this one packet; the other clients must still be served.
            self.stats["errors"] += 1
            log.exception("failed to answer %r", msg)
        finally:
            del self._in_flight[key]

    # -- sending -------------------------------------------------------------

    def _send(self, sock: socket.socket, out: Outgoing) -> None:
        dest = out.destination
        ip = dest.ip
        try:
            if dest.hardware is not None:
                if self.link is not None:
                    self.link.send(out.payload, ip, dest.port, dest.hardware)
                    self.stats["sent"] += 1
                    self.stats["sent_link"] += 1
                    return
                ip = BROADCAST_IP  # no CAP_NET_RAW: the client hears a broadcast too
            sock.sendto(out.payload, (ip, dest.port))
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += 1
        except OSError as exc:
            self.stats["send_errors"] += 1
            log.warning("cannot send to %s:%d: %s", ip, dest.port, exc)
        else:
            self.stats["sent"] += 1


async def _keep_catalogue(bus: AsyncBusClient, catalogue: BinaryCatalogue) -> None:
    while True:
        try:
            await catalogue.refresh(bus.request)
            delay = CATALOGUE_REFRESH
        except BusTimeout as exc:
            log.warning("cannot check the iPXE binaries yet: %s", exc)
            delay = CATALOGUE_RETRY
        await asyncio.sleep(delay)


async def main(fe: FrontEnd) -> None:
    config = fe.config
    dhcp = config.dhcp
    ports = [dhcp.port] + ([PXE_PORT] if dhcp.proxy and dhcp.port != PXE_PORT else [])
    listeners: list[Listener] = []
    try:
        for port in ports:
            listeners.append(Listener(open_udp(config.interface, port), port))
        if dhcp.rogue_guard and not dhcp.proxy:
            others = await find_other_servers(config.interface, server_port=dhcp.port,
                                              client_port=dhcp.client_port,
                                              listen=dhcp.rogue_listen)
            if others:
                raise StartupError(SERVICE, (
                    f"another DHCP server is handing out addresses on {config.interface}: "
                    f"{', '.join(others)}. Refusing to serve addresses beside it; set "
                    "dhcp.proxy = true to serve boot information only, or stop that server"))
    except BaseException:
        for listener in listeners:
            listener.sock.close()
        raise

    bus = fe.bus  # bus stats show up in status through FrontEnd.details
    bus.coalesce = BUS_COALESCE

    def report(stage: str, mac: str, ip: str | None, detail: str) -> None:
        bus.notify(boot_event(SERVICE, stage, mac, ip, detail))

    catalogue = BinaryCatalogue()
    boot = BootChain(config.http.public_url, catalogue, loader=config.uefi.loader,
                     arm64_loader=config.uefi.arm64_loader,
                     class_loaders=dict(config.uefi.class_loaders))
    policy_class = ProxyPolicy if dhcp.proxy else DhcpPolicy
    policy = policy_class(config=config, store=bus, boot=boot, report=report, stats=fe.stats)
    link_sender = LinkSender.open(config.interface, str(config.address), dhcp.port)
    if link_sender is None:
        log.warning("no packet socket (no CAP_NET_RAW, or AF_PACKET not allowed): replies to "
                    "clients without an address are broadcast")
    fe.bound()  # ports 67 and the packet socket are open: root is no longer needed
    server = DhcpServer(config, policy, listeners, fe.stats, link_sender)
    fe.extra_details = lambda: {"in_flight": server.in_flight(),
                                "mode": "proxy" if dhcp.proxy else "authoritative"}
    refresher = asyncio.get_running_loop().create_task(_keep_catalogue(bus, catalogue))
    settle_heap()
    server.start()
    fe.ready = True
    log.info("serving DHCP on %s port%s %s (%s)", config.interface, "s" if len(ports) > 1 else "",
             ", ".join(map(str, ports)), "proxyDHCP" if dhcp.proxy else "authoritative")
    try:
        await asyncio.Event().wait()
    finally:
        refresher.cancel()
        server.close()


def run(config: Config) -> int:
    return run_frontend(SERVICE, config, main)
