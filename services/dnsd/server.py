"""dnsd's I/O: the UDP and TCP sockets, the upstream sockets and one timer;
no decisions (those are :class:`policy.DnsPolicy`'s and
:class:`forward.Forwarder`'s).

- UDP (port 53): read in batches with ``add_reader``; each query goes to the
  policy, whose reply goes back by ``sendto``.
- TCP (port 53): each message behind its 2-byte length (RFC 1035 4.2.2),
  several per connection, answered as they come (forwarded ones when the
  upstream answers, so possibly out of order, as RFC 7766 6.2.1.1 allows).
  At most ``tcp_clients`` connections; a connection that sends nothing for
  ``tcp_idle`` seconds, announces a message over ``tcp_query_max`` bytes, or
  lets its unread answers pile up past ``tcp_backlog`` bytes is closed.
- Upstream, UDP: every question goes from a fresh socket on a random port,
  connected to the upstream so that only its replies come in and an ICMP
  "port unreachable" ends the attempt at once (``upstream_failed``). The
  socket closes when the attempt ends, or after the forwarder's timeout.
- Upstream, TCP (after a truncated answer): one connection per question.
- One asyncio timer at the forwarder's next deadline (``get_timer``), also
  sweeping the upstream sockets whose time is up.

Nothing a client sends can stop the server: every exception while handling
a query is counted (``errors``) and logged, rate-limited per sender by
:class:`SenderLimit`, never raised out of a socket callback.

Besides the policy's and the forwarder's counters (one ``stats`` shared by
all three): ``errors``, ``udp_recv_errors``, ``udp_send_errors``,
``tcp_accepted``, ``tcp_refused`` (over ``tcp_clients``), ``tcp_idle_closed``,
``tcp_oversize``, ``tcp_backlog_closed``, ``tcp_gone`` (an answer for a
connection already closed), ``upstream_socket_errors``,
``upstream_send_errors``, ``upstream_recv_errors``, ``upstream_tcp_errors``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from astralboot.common.errors import StartupError
from astralboot.common.logs import SenderLimit
from astralboot.services.dnsd.forward import (Action as ForwardAction, Address, Forwarder,
                                              ToClient, ToUpstream)
from astralboot.services.dnsd.policy import Action, DnsPolicy, Forward, Reply
from astralboot.services.dnsd.ratelimit import ResponseRateLimit
from astralboot.services.dnsd.wire import Transport
from astralboot.services.dnsd.zone import Zone

log = logging.getLogger(__name__)

SERVICE = "dnsd"
RECV_SIZE = 65535  # a datagram over our payload is read whole, then dropped as oversize
READ_BATCH = 64  # datagrams read per wake-up before others get a turn
TCP_CLIENTS = 64
TCP_IDLE = 10.0  # seconds (RFC 7766 6.2.3 suggests a few seconds to tens)
TCP_QUERY_MAX = 4096  # a real query is well under this; the framing allows 65535
TCP_BACKLOG = 256 * 1024  # bytes of answers a TCP client may leave unread
LISTEN_BACKLOG = 64
UDP_BUFFER = 1 << 20  # a burst of queries waits in the kernel, not dropped
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; the socket module omits it


def bind_error(exc: OSError, proto: str, address: str, port: int) -> StartupError:
    reason = {
        errno.EADDRINUSE: f"{proto} port {port} on {address} is in use by another program "
                          "(systemd-resolved, dnsmasq or another DNS server?)",
        errno.EACCES: f"binding {proto} port {port} needs root or CAP_NET_BIND_SERVICE",
        errno.EADDRNOTAVAIL: f"{address} is not an address of this host",
    }.get(exc.errno or 0, f"cannot bind {proto} {address}:{port}: {exc.strerror}")
    return StartupError(SERVICE, reason)


def describe_answer(data: bytes, client: Address, transport: Transport) -> str:
    """One line for the query log: who asked what over which transport, and the answer."""
    try:
        reply = dns.message.from_wire(data)
    except dns.exception.DNSException as exc:
        return f"{client[0]} {transport}: answer of {len(data)} bytes ({exc})"
    if not reply.question:
        return f"{client[0]} {transport}: {dns.rcode.to_text(reply.rcode())}"
    q = reply.question[0]
    data_text = [rd.to_text() for rrset in reply.answer for rd in rrset]
    flags = " TC" if reply.flags & dns.flags.TC else ""
    return (f"{client[0]} {transport}: {q.name} {dns.rdatatype.to_text(q.rdtype)} -> "
            f"{dns.rcode.to_text(reply.rcode())}{flags}"
            + (f" {' '.join(data_text)}" if data_text else ""))


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ip_address(address.split("%", 1)[0]).version == 6 else socket.AF_INET


class _TcpClient:
    """One client connection: where its answers go."""

    __slots__ = ("writer", "address")

    def __init__(self, writer: asyncio.StreamWriter, address: Address) -> None:
        self.writer = writer
        self.address = address


class _UpstreamSocket:
    __slots__ = ("sock", "upstream", "query_id", "expires")

    def __init__(self, sock: socket.socket, upstream: Address, query_id: int,
                 expires: float) -> None:
        self.sock = sock
        self.upstream = upstream
        self.query_id = query_id
        self.expires = expires


class DnsServer:
    """The sockets around one :class:`DnsPolicy` and, with upstreams, one :class:`Forwarder`.

    Built from plain values; :meth:`open` binds (and raises
    :class:`StartupError`), :meth:`serve` runs until cancelled.
    """

    def __init__(self, zone: Zone, address: str, port: int = 53, *,
                 clients: Iterable[IPv4Network | IPv6Network | str],
                 upstreams: Sequence[str | Address] = (), rrl_rate: float | None = None,
                 rrl_burst: float | None = None, rrl_slip: int = 2,
                 forward_timeout: float = 2.0, forward_attempts: int = 3,
                 cache_size: int = 1024, tcp_clients: int = TCP_CLIENTS,
                 tcp_idle: float = TCP_IDLE, tcp_query_max: int = TCP_QUERY_MAX,
                 tcp_backlog: int = TCP_BACKLOG, log_queries: bool = False,
                 stats: Counter[str] | None = None,
                 rng: random.Random | None = None) -> None:
        self.zone = zone
        self.address = address
        self.wanted_port = port
        self.stats: Counter[str] = stats if stats is not None else Counter()
        rrl = None if rrl_rate is None else ResponseRateLimit(rrl_rate, burst=rrl_burst,
                                                               slip=rrl_slip)
        # The kept answers skip the per-answer log: with log_queries, every query
        # goes the full way.
        self.policy = DnsPolicy(zone, clients=clients, forwarding=bool(upstreams), rrl=rrl,
                                stats=self.stats, quick=not log_queries)
        self.forwarder = Forwarder(upstreams, timeout=forward_timeout,
                                   attempts=forward_attempts, cache_size=cache_size,
                                   rng=rng, stats=self.stats) if upstreams else None
        self.tcp_clients = tcp_clients
        self.tcp_idle = tcp_idle
        self.tcp_query_max = tcp_query_max
        self.tcp_backlog = tcp_backlog
        self.log_queries = log_queries
        self._udp: socket.socket | None = None
        self._tcp_listener: socket.socket | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[Address, _TcpClient] = {}
        self._up_udp: dict[int, _UpstreamSocket] = {}  # by file descriptor
        self._up_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._limit = SenderLimit()

    @property
    def port(self) -> int:
        assert self._udp is not None, "open() first"
        return int(self._udp.getsockname()[1])

    # -- lifecycle -----------------------------------------------------------

    def open(self) -> None:
        """Bind UDP and TCP on (address, port); :class:`StartupError` says why not.

        Port 0 picks a free UDP port and binds TCP to the same number.
        """
        family = _family(self.address)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((self.address, self.wanted_port))
        except OSError as exc:
            udp.close()
            raise bind_error(exc, "UDP", self.address, self.wanted_port) from None
        udp.setblocking(False)
        try:  # as root, *BUFFORCE goes past net.core.rmem_max
            udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_BUFFER)
        except OSError:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        port = int(udp.getsockname()[1])
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.address, port))
            tcp.listen(LISTEN_BACKLOG)
        except OSError as exc:
            tcp.close()
            udp.close()
            raise bind_error(exc, "TCP", self.address, port) from None
        tcp.setblocking(False)
        self._udp, self._tcp_listener = udp, tcp
        log.info("serving DNS for %s on %s:%d (UDP and TCP), %s", self.zone.origin,
                 self.address, port,
                 f"forwarding to {len(self.forwarder.upstreams)} upstream(s)"
                 if self.forwarder else "no forwarding")

    async def serve(self) -> None:
        """Serve until cancelled."""
        assert self._udp is not None and self._tcp_listener is not None, "open() first"
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._udp.fileno(), self._on_udp)
        try:
            self._tcp_server = await asyncio.start_server(self._on_tcp_client,
                                                          sock=self._tcp_listener,
                                                          limit=self.tcp_query_max + 2)
            await asyncio.Event().wait()
        finally:
            self.close()

    def close(self) -> None:
        loop = self._loop
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for up in list(self._up_udp.values()):
            self._close_upstream(up)
        for task in list(self._up_tasks):
            task.cancel()
        for conn in list(self._tcp.values()):
            conn.writer.close()
        self._tcp.clear()
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        elif self._tcp_listener is not None:
            self._tcp_listener.close()
        self._tcp_listener = None
        if self._udp is not None:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None

    def details(self) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {
            "hosts": len(self.zone), "serial": self.zone.serial,
            "tcp_open": len(self._tcp), "upstream_sockets": len(self._up_udp),
            "log.held_back": self._limit.suppressed_total}
        if self.forwarder is not None:
            out["forward_pending"] = self.forwarder.pending
            out["cache_entries"] = len(self.forwarder.cache)
        return out

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _note(self, level: int, kind: object, peer: Address, msg: str, *args: object,
              exc_info: bool = False) -> None:
        """Log ``"ip:port: " + msg`` unless this sender had a ``kind`` line logged lately."""
        ok, held = self._limit.allow((peer[0], kind), self._now())
        if ok:
            if held:
                msg += " (%d more from this sender held back)"
                args = (*args, held)
            log.log(level, "%s:%d: " + msg, peer[0], peer[1], *args, exc_info=exc_info)

    # -- queries ------------------------------------------------------------

    def _on_udp(self) -> None:
        sock = self._udp
        if sock is None:
            return
        quick = self.policy.quick
        now = self._now()
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier answer
                self.stats["udp_recv_errors"] += 1
                log.debug("UDP receive: %s", exc)
                continue
            try:
                reply = quick(data, addr[0], now)
            except Exception:  # the full path will say what went wrong
                reply = None
            if reply is None:
                self._query(data, (addr[0], addr[1]), "udp")
            elif reply:
                try:
                    sock.sendto(reply, addr)
                except OSError as exc:
                    self.stats["udp_send_errors"] += 1
                    self._note(logging.DEBUG, "send", (addr[0], addr[1]), "cannot answer: %s",
                               exc)

    def _query(self, data: bytes, client: Address, transport: Transport) -> None:
        """One query through the policy; whatever goes wrong is counted, never raised."""
        try:
            now = self._now()
            for action in self.policy.handle(data, client, now, transport):
                self._act(action, client, transport, now)
            self._arm()
        except Exception:
            self.stats["errors"] += 1
            self._note(logging.ERROR, "error", client, "query of %d bytes over %s failed",
                       len(data), transport, exc_info=True)

    def _act(self, action: Action, client: Address, transport: Transport, now: float) -> None:
        if isinstance(action, Reply):
            self._send_client(client, transport, action.data)
        elif isinstance(action, Forward):
            assert self.forwarder is not None  # the policy forwards only with upstreams
            self._run(self.forwarder.query(action.question, action.client, now))
        # Drop: counted by the policy

    def _send_client(self, client: Address, transport: Transport, data: bytes) -> None:
        if self.log_queries:
            log.info("%s", describe_answer(data, client, transport))
        if transport == "udp":
            if self._udp is None:
                return
            try:
                self._udp.sendto(data, client)
            except OSError as exc:
                self.stats["udp_send_errors"] += 1
                self._note(logging.DEBUG, "send", client, "cannot answer: %s", exc)
            return
        conn = self._tcp.get(client)
        if conn is None:
            self.stats["tcp_gone"] += 1  # it hung up before its answer came
            return
        writer = conn.writer
        if writer.transport.get_write_buffer_size() > self.tcp_backlog:
            self.stats["tcp_backlog_closed"] += 1
            self._note(logging.INFO, "backlog", client, "does not read its answers; closed")
            self._tcp.pop(client, None)
            writer.transport.abort()
            return
        writer.write(len(data).to_bytes(2, "big") + data)

    # -- the forwarder -------------------------------------------------------------

    def _run(self, actions: Iterable[ForwardAction]) -> None:
        for action in actions:
            if isinstance(action, ToClient):
                self._send_client(action.client.address, action.client.transport, action.data)
            elif action.transport == "udp":
                self._ask_udp(action)
            else:
                self._ask_tcp(action)

    def _ask_udp(self, action: ToUpstream) -> None:
        assert self._loop is not None and self.forwarder is not None
        upstream = action.upstream
        try:
            sock = socket.socket(_family(upstream[0]), socket.SOCK_DGRAM)
        except OSError as exc:
            self.stats["upstream_socket_errors"] += 1
            log.warning("no socket for a query to %s: %s", upstream[0], exc)
            self._run(self.forwarder.upstream_failed(upstream, action.query_id, self._now()))
            return
        try:
            sock.setblocking(False)
            sock.connect(upstream)  # bound to a random port by the kernel
            sock.send(action.data)
        except OSError as exc:
            sock.close()
            self.stats["upstream_send_errors"] += 1
            self._note(logging.WARNING, "upstream", upstream, "cannot send: %s", exc)
            self._run(self.forwarder.upstream_failed(upstream, action.query_id, self._now()))
            return
        up = _UpstreamSocket(sock, upstream, action.query_id,
                             self._now() + self.forwarder.timeout + 0.5)
        self._up_udp[sock.fileno()] = up
        self._loop.add_reader(sock.fileno(), self._on_upstream, up)

    def _on_upstream(self, up: _UpstreamSocket) -> None:
        assert self.forwarder is not None
        try:
            try:
                data = up.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP unreachable, refused
                self._close_upstream(up)
                self.stats["upstream_recv_errors"] += 1
                self._note(logging.INFO, "upstream", up.upstream, "%s", exc)
                actions = self.forwarder.upstream_failed(up.upstream, up.query_id, self._now())
            else:
                actions = self.forwarder.receive(data, up.upstream, self._now(), "udp")
                if actions:  # the attempt is over (answered, retried or moved to TCP)
                    self._close_upstream(up)
            self._run(actions)
            self._arm()
        except Exception:
            self.stats["errors"] += 1
            self._note(logging.ERROR, "error", up.upstream, "upstream reply failed",
                       exc_info=True)

    def _close_upstream(self, up: _UpstreamSocket) -> None:
        fd = up.sock.fileno()
        if fd < 0:
            return
        self._up_udp.pop(fd, None)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        up.sock.close()

    def _ask_tcp(self, action: ToUpstream) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._tcp_exchange(action))
        self._up_tasks.add(task)
        task.add_done_callback(self._up_tasks.discard)

    async def _tcp_exchange(self, action: ToUpstream) -> None:
        forwarder = self.forwarder
        assert forwarder is not None
        upstream = action.upstream
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(forwarder.timeout):
                reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
                writer.write(len(action.data).to_bytes(2, "big") + action.data)
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
        except TimeoutError:
            return  # the forwarder's own timer ends the attempt
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.stats["upstream_tcp_errors"] += 1
            self._note(logging.INFO, "upstream_tcp", upstream, "TCP: %s", exc)
            self._settle(lambda now: forwarder.upstream_failed(upstream, action.query_id, now),
                         upstream)
            return
        finally:
            if writer is not None:
                writer.close()
        self._settle(lambda now: forwarder.receive(data, upstream, now, "tcp"), upstream)

    def _settle(self, step: Callable[[float], list[ForwardAction]], peer: Address) -> None:
        try:
            self._run(step(self._now()))
            self._arm()
        except Exception:
            self.stats["errors"] += 1
            self._note(logging.ERROR, "error", peer, "upstream TCP reply failed", exc_info=True)

    # -- the timer ------------------------------------------------------------------

    def _arm(self) -> None:
        """One timer, at the forwarder's next deadline or the next upstream socket to close."""
        if self.forwarder is None or self._loop is None:
            return
        times = [up.expires for up in self._up_udp.values()]
        when = self.forwarder.get_timer()
        if when is not None:
            times.append(when)
        timer = self._timer
        if not times:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        first = min(times)
        if timer is None or timer.when() > first:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(first, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self.forwarder is not None
        try:
            now = self._now()
            for up in [u for u in self._up_udp.values() if u.expires <= now]:
                self._close_upstream(up)
            self._run(self.forwarder.handle_timer(now))
        except Exception:
            self.stats["errors"] += 1
            log.exception("forwarder timer")
        self._arm()

    # -- TCP clients ---------------------------------------------------------------

    async def _on_tcp_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client: Address = (str(peer[0]), int(peer[1]))
        if len(self._tcp) >= self.tcp_clients:
            self.stats["tcp_refused"] += 1
            self._note(logging.INFO, "tcp_full", client, "%d TCP connections already; closed",
                       len(self._tcp))
            writer.transport.abort()
            return
        self.stats["tcp_accepted"] += 1
        self._tcp[client] = _TcpClient(writer, client)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.tcp_idle):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        if size > self.tcp_query_max:
                            self.stats["tcp_oversize"] += 1
                            self._note(logging.INFO, "tcp_oversize", client,
                                       "announced a %d-byte query; closed", size)
                            return
                        data = await reader.readexactly(size)
                except TimeoutError:
                    self.stats["tcp_idle_closed"] += 1
                    return
                self._query(data, client, "tcp")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client hung up
        finally:
            if self._tcp.get(client) is not None and self._tcp[client].writer is writer:
                del self._tcp[client]
                if self.forwarder is not None:
                    # Whatever it still waits for must not reach the next
                    # connection from the same address and port.
                    self.forwarder.forget(client, "tcp")
            writer.close()
