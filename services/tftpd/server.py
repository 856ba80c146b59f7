"""tftpd's I/O: the UDP sockets, the timers and the bus; no decisions.

The listening socket (port 69) takes requests. Each transfer gets its own
socket on an ephemeral port, or, in single-port mode for NAT'd networks,
shares the listening socket and is found by the client's address and port.
Sockets are read with ``add_reader`` and written with plain ``sendto``: one
ACK in, one window out, no per-packet tasks or futures. Each session has at
most one asyncio timer, moved lazily: it fires, the transfer checks its own
deadline, and it is set again for the next one.

Every log line a client can cause at will (bad packets, refusals, timeouts,
even transfers) goes through a per-sender :class:`SenderLimit`, so one
host flooding the port cannot flood the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections import Counter
from typing import Callable

from astralboot.common import netif
from astralboot.common.bus.events import TFTP_FAILED, TFTP_SENT
from astralboot.common.config import Config, TftpConfig
from astralboot.common.errors import StartupError
from astralboot.common.frontend import FrontEnd, settle_heap
from astralboot.common.frontend import run as run_frontend
from astralboot.common.logs import SenderLimit

from astralboot.services.tftpd.files import StoreContent
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache
from astralboot.services.tftpd.options import Limits
from astralboot.services.tftpd.packets import (Error, TftpCode, ReadRequest, TftpProtocolError, WriteRequest, ack_block,
                      decode, encode_error)
from astralboot.services.tftpd.policy import NoMemory, ReadService, SessionTable, Verdict, stray_answer
from astralboot.services.tftpd.rendered import HttpdPages, LeaseDirectory
from astralboot.services.tftpd.transfer import Address, State, Transfer

log = logging.getLogger(__name__)

SERVICE = "tftpd"
RECV_SIZE = 4096  # requests are at most 512 bytes (RFC 2347); ACKs 4
READ_BATCH = 64  # datagrams read per wake-up before others get a turn
LISTEN_BUFFER = 4 << 20
SEND_BUFFER = 1 << 20
INTERNAL_ERROR = Error(TftpCode.NOT_DEFINED, "internal server error")
# Linux values; the socket module does not name them.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _set_buffer(sock: socket.socket, option: int, forced: int, size: int) -> None:
    # As root, *BUFFORCE goes past net.core.[rw]mem_max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def bind_error(exc: OSError, address: str, port: int) -> StartupError:
    reason = {
        errno.EADDRINUSE: f"UDP port {port} on {address} is in use by another program "
                          "(another TFTP server, or dnsmasq with enable-tftp?)",
        errno.EACCES: f"binding UDP port {port} needs root or CAP_NET_BIND_SERVICE",
        errno.EADDRNOTAVAIL: f"{address} is not an address of this host",
    }.get(exc.errno or 0, f"cannot bind UDP {address}:{port}: {exc.strerror}")
    return StartupError(SERVICE, reason)


def _raise_file_limit(wanted: int) -> None:
    """Room for a socket per session (the soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", limit, exc)


def _printable(name: bytes) -> str:
    """A client's file name as it can go into a log line or an event."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Session:
    """One client's transfer and the I/O that carries it."""

    __slots__ = ("peer", "request", "name", "transfer", "sock", "timer", "opening")

    def __init__(self, peer: Address, request: ReadRequest) -> None:
        self.peer = peer
        self.request = request
        self.name = _printable(request.filename)
        self.transfer: Transfer | None = None
        self.sock: socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.opening: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self.transfer is not None and self.transfer.started


class TftpServer:
    """Sockets and timers around :class:`ReadService` and the transfers."""

    def __init__(self, settings: TftpConfig, address: str, service: ReadService, *,
                 stats: Counter[str] | None = None,
                 report: Callable[[str, str, str], None] | None = None) -> None:
        self.settings = settings
        self.address = address
        self.service = service
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.sessions: SessionTable[Session] = SessionTable(settings.max_sessions,
                                                            settings.per_client)
        self._report = report or (lambda stage, ip, detail: None)
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged: set[str] = set()
        self._limit = SenderLimit()

    @property
    def port(self) -> int:
        assert self._listener is not None, "open() first"
        return int(self._listener.getsockname()[1])

    # -- lifecycle -----------------------------------------------------------

    def open(self) -> None:
        """Bind the listening port; :class:`StartupError` says why it cannot."""
        _raise_file_limit(self.settings.max_sessions + 256)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.address, self.settings.port))
        except OSError as exc:
            sock.close()
            raise bind_error(exc, self.address, self.settings.port) from None
        sock.setblocking(False)
        _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, LISTEN_BUFFER)
        if self.settings.single_port:
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, LISTEN_BUFFER)
        self._listener = sock
        log.info("serving TFTP on %s:%d (%s)", self.address, self.port,
                 "single port" if self.settings.single_port else "a port per transfer")

    async def serve(self) -> None:
        """Serve until cancelled."""
        assert self._listener is not None, "open() first"
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listener.fileno(), self._on_listener)
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def close(self) -> None:
        for session in self.sessions:
            self._end(session)
        if self._listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def details(self) -> dict[str, str | int | float | bool]:
        return {"sessions": len(self.sessions), "clients": self.sessions.clients(),
                "log.held_back": self._limit.suppressed_total}

    def _note(self, level: int, kind: object, peer: Address, msg: str, *args: object) -> None:
        """Log ``"ip:port: " + msg`` unless this sender had a ``kind`` line logged lately."""
        now = self._loop.time() if self._loop is not None else 0.0
        self._limit.log(log, level, (peer[0], kind), now, "%s:%d: " + msg, peer[0], peer[1],
                        *args)

    # -- the listening port --------------------------------------------------

    def _on_listener(self) -> None:
        sock = self._listener
        assert sock is not None and self._loop is not None
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier send
                log.debug("listener: %s", exc)
                continue
            self._on_datagram(data, addr, self._loop.time())

    def _on_datagram(self, data: bytes, peer: Address, now: float) -> None:
        if self.settings.single_port and ack_block(data) is not None:
            session = self.sessions.get(peer)  # the hot path of single-port mode
            if session is not None:
                if session.transfer is not None:
                    session.transfer.receive_datagram(data, peer, now)
                    self._pump(session, now)
                return
        try:
            packet = decode(data)
        except TftpProtocolError as exc:
            self._malformed(exc, peer)
            return
        is_request = isinstance(packet, (ReadRequest, WriteRequest))
        if self.settings.single_port and not is_request:
            session = self.sessions.get(peer)
            if session is not None:
                if session.transfer is not None:
                    session.transfer.receive_packet(packet, peer, now)
                    self._pump(session, now)
                return
        if isinstance(packet, ReadRequest):
            self._on_read_request(packet, peer)
            return
        answer = stray_answer(packet)
        if answer is not None:
            self.stats["unknown_tid" if not is_request else "refused.write"] += 1
            self._send_listener(answer, peer)

    def _malformed(self, exc: TftpProtocolError, peer: Address) -> None:
        self.stats["malformed"] += 1
        level = logging.DEBUG if exc.reason in self._logged else logging.WARNING
        if len(self._logged) < 100:
            self._logged.add(exc.reason)
        self._note(level, "malformed", peer, "malformed packet: %s", exc.reason)
        if exc.answer is not None:
            self._send_listener(encode_error(exc.answer, exc.reason), peer)

    def _send_listener(self, data: bytes, peer: Address) -> None:
        assert self._listener is not None
        try:
            self._listener.sendto(data, peer)
        except OSError as exc:
            self._note(logging.DEBUG, "send", peer, "cannot answer: %s", exc)

    def _on_read_request(self, request: ReadRequest, peer: Address) -> None:
        self.stats["requests"] += 1
        verdict, existing = self.sessions.consider(peer, request)
        if verdict is Verdict.DUPLICATE:
            self.stats["requests.duplicate"] += 1
            return
        if verdict is Verdict.REPLACE and existing is not None:
            self._note(logging.INFO, "replace", peer, "new request; ending its transfer of %s",
                       existing.name)
            self._end(existing)
        elif verdict in (Verdict.BUSY, Verdict.CLIENT_BUSY):
            # Silence: the client asks again after its timeout.
            self.stats[f"requests.{verdict.value}"] += 1
            self._note(logging.DEBUG, "busy", peer, "%s, request for %s dropped",
                       verdict.value, _printable(request.filename))
            return
        session = Session(peer, request)
        self.sessions.add(peer, session)
        assert self._loop is not None
        session.opening = self._loop.create_task(self._open(session))

    # -- sessions -------------------------------------------------------------

    async def _open(self, session: Session) -> None:
        peer = session.peer
        try:
            result = await self.service.open(session.request, peer)
        except Exception:
            log.exception("opening %r for %s:%d", session.name, peer[0], peer[1])
            result = INTERNAL_ERROR
        session.opening = None
        if self.sessions.get(peer) is not session:
            return  # replaced or closed meanwhile
        if isinstance(result, Error):
            self._refuse(session, result)
            return
        if isinstance(result, NoMemory):
            # Silence, as for a full session table: see NoMemory for why.
            self.sessions.remove(peer, session)
            self.stats["requests.no_memory"] += 1
            self._note(logging.WARNING, "no_memory", peer,
                       "netascii copy of %s (%d bytes) does not fit in memory_max "
                       "(%d bytes free); request dropped, the client will ask again",
                       session.name, result.needed, result.available)
            return
        if self.settings.single_port:
            session.sock = self._listener
        else:
            try:
                session.sock = self._transfer_socket()
            except OSError as exc:
                self._note(logging.WARNING, "socket", peer, "no socket: %s", exc)
                self._refuse(session, Error(TftpCode.NOT_DEFINED, "server busy"))
                return
            assert self._loop is not None
            self._loop.add_reader(session.sock.fileno(), self._on_session, session)
        session.transfer = result
        self._note(logging.INFO, ("sending", session.name), peer,
                   "sending %s (%d bytes, blksize %d, window %d)",
                   session.name, result.size, result.blksize, result.windowsize)
        assert self._loop is not None
        self._pump(session, self._loop.time())

    def _refuse(self, session: Session, error: Error) -> None:
        peer = session.peer
        self.sessions.remove(peer, session)
        self.stats[f"refused.{TftpCode(error.code).name.lower()}"] += 1
        self._note(logging.INFO, "refused", peer, "%s refused: %s", session.name, error.message)
        self._send_listener(encode_error(error.code, error.message), peer)
        if error.code == TftpCode.NOT_DEFINED:
            self._report(TFTP_FAILED, peer[0], f"{session.name}: {error.message}")

    def _transfer_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, SEND_BUFFER)
            sock.bind((self.address, 0))
        except OSError:
            sock.close()
            raise
        return sock

    def _on_session(self, session: Session) -> None:
        # One datagram per wake-up: a transfer port gets one ACK per window,
        # and trying for a second would cost an exception almost every time.
        # Anything else waiting wakes the loop again (epoll is level-triggered).
        sock, transfer = session.sock, session.transfer
        assert sock is not None and transfer is not None and self._loop is not None
        try:
            data, addr = sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._note(logging.DEBUG, "recv", session.peer, "%s", exc)
            return
        now = self._loop.time()
        transfer.receive_datagram(data, addr, now)
        self._pump(session, now)

    def _pump(self, session: Session, now: float) -> None:
        """Send what the transfer has to send, then finish it or arm its timer."""
        transfer, sock = session.transfer, session.sock
        assert transfer is not None and sock is not None
        sendto = sock.sendto
        for data, addr in transfer.datagrams_to_send(now):
            try:
                sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self.stats["send_dropped"] += 1  # as if lost: the timer resends
                break
            except OSError as exc:
                self._note(logging.DEBUG, "send", addr, "send: %s", exc)
                break
        if transfer.done:
            self._finished(session)
            return
        when = transfer.get_timer()
        timer = session.timer
        if when is None:
            if timer is not None:
                timer.cancel()
                session.timer = None
        elif timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            assert self._loop is not None
            session.timer = self._loop.call_at(when, self._on_timer, session)

    def _on_timer(self, session: Session) -> None:
        session.timer = None
        if session.transfer is None or self.sessions.get(session.peer) is not session:
            return
        assert self._loop is not None
        now = self._loop.time()
        session.transfer.handle_timer(now)
        self._pump(session, now)

    def _finished(self, session: Session) -> None:
        transfer = session.transfer
        assert transfer is not None
        self._end(session)
        peer, state = session.peer, transfer.state
        self.stats["retransmitted"] += transfer.retransmitted
        self.stats["unknown_tid"] += transfer.strangers
        if state is State.COMPLETE:
            self.stats["transfers"] += 1
            self.stats["bytes"] += transfer.size
            self._note(logging.INFO, ("sent", session.name), peer, "sent %s (%d bytes)",
                       session.name, transfer.size)
            self._report(TFTP_SENT, peer[0], f"{session.name} {transfer.size} bytes")
        elif state is State.ABORTED:
            error = transfer.peer_error
            probe = error is not None and error.code == TftpCode.OPTION_REFUSED
            self.stats["transfers.probes" if probe else "transfers.aborted"] += 1
            self._note(logging.INFO, "aborted", peer, "%s ended by the client: %s",
                       session.name, error.message if error else "")
        elif state is State.TIMED_OUT:
            self.stats["transfers.timed_out"] += 1
            self._note(logging.WARNING, "timed_out", peer, "%s timed out after %d of %d bytes",
                       session.name, transfer.bytes_acked, transfer.size)
            self._report(TFTP_FAILED, peer[0], f"{session.name}: timed out")

    def _end(self, session: Session) -> None:
        """Forget a session now: its port closes and its slot is free."""
        self.sessions.remove(session.peer, session)
        if session.opening is not None:
            session.opening.cancel()
            session.opening = None
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        sock = session.sock
        if sock is not None and sock is not self._listener:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        session.sock = None


# --- the entry point ----------------------------------------------------------


def limits_for(config: Config) -> Limits:
    mtu = netif.mtu_of(config.interface) if config.interface else 1500
    return Limits(max_blksize=Limits.blksize_for_mtu(mtu), timeout=config.tftp.timeout)


def page_deadline(config: Config) -> float:
    """Seconds httpd has to answer for a GRUB page: a few of tftpd's own
    retransmission timeouts or bus deadlines, whichever is longer. GRUB sends
    its request again for about 30 s, so an answer within this is in time."""
    return 3 * max(config.tftp.timeout, config.bus.deadline)


async def main(fe: FrontEnd) -> None:
    from astralboot.common.content import DigestCache, fetch_to_cache_async

    config = fe.config
    budget = MemoryBudget(config.tftp.memory_max)
    netascii = NetasciiCache(budget)  # joins first: its idle copies are shed first
    content = StoreContent(fe.bus, DigestCache(config.store.cache, config.store.cache_max),
                           fetch_to_cache_async, memory_limit=config.tftp.memory_cache,
                           budget=budget)
    pages = HttpdPages(config.http.public_url, deadline=page_deadline(config), stats=fe.stats)
    if pages.problem:
        log.warning("GRUB configs over TFTP will be refused: %s", pages.problem)
    service = ReadService(content, limits_for(config), retries=config.tftp.retries,
                          netascii=netascii, pages=pages,
                          leases=LeaseDirectory(fe.bus, stats=fe.stats))

    def report(stage: str, ip: str, detail: str) -> None:
        # TFTP carries no MAC: the event names the client's address and the
        # store, which holds the leases, attributes it (no lookup here).
        fe.report(stage, None, ip, detail)

    server = TftpServer(config.tftp, str(config.address), service, stats=fe.stats,
                        report=report)
    server.open()
    fe.bound(config.store.cache)  # port 69 is open; the cache is written on other hosts
    fe.extra_details = lambda: {**server.details(), "memory_cache": content.memory_bytes,
                                "netascii_cache": netascii.held,
                                "netascii.conversions": netascii.conversions,
                                "memory_used": budget.used, "memory_max": budget.limit}
    settle_heap()
    fe.ready = True
    await server.serve()


def run(config: Config) -> int:
    return run_frontend(SERVICE, config, main)
