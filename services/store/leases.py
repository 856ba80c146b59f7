"""Address pools and their leases: every allocation decision, in memory.

The book is the authority for decisions (rebuilt from the database at
start and after a failed write); it reads no clock and touches no
database. Each change it makes comes back as :class:`LeaseWrite` rows the
server makes durable before answering.

Rules, in the order an offer applies them:

1. a reservation for the client's MAC (config.toml or the reservations table);
2. the client's current or previous binding (same client identifier, else
   same MAC), as RFC 2131 4.3.1 orders it;
3. the requested address, when it is free and in the range;
4. the address last offered to the client (a retransmitted DISCOVER);
5. a never-used address from the range, lowest first;
6. the address freed longest ago (so a returning client's old one lasts);
7. otherwise ``pool_exhausted``.

Never handed out: the network and broadcast addresses, the server, the
gateway, an address reserved for another MAC, a declined address during
its quarantine, an address another client holds.

A lease's state changes only as :data:`.leasestate.TRANSITIONS` says; the
guards that read the clock (held, quarantined) are here.
"""

from __future__ import annotations

import heapq
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable, Iterator, Mapping

from astralboot.common.config import SubnetConfig
from astralboot.common.errors import AstralBootError, ErrorCode
from astralboot.common.messages import CommitMode, LeaseRecord

from astralboot.services.store.journal import LeaseWrite
from astralboot.services.store.leasestate import HELD, TRANSITIONS, LeaseEvent, LeaseState

__all__ = ["HELD", "Client", "Lease", "LeaseBook", "LeaseEvent", "LeaseState", "Pool", "Refusal",
           "Reservations", "Usable", "ip_int", "ip_str"]

# Module names for members: a lookup on the enum class costs a call each time.
OFFERED, BOUND, DECLINED = LeaseState.OFFERED, LeaseState.BOUND, LeaseState.DECLINED
EXPIRED = LeaseState.EXPIRED
OFFER, COMMIT, RENEW = LeaseEvent.OFFER, LeaseEvent.COMMIT, LeaseEvent.RENEW
RELEASE, DECLINE, MOVE, RECLAIM = (LeaseEvent.RELEASE, LeaseEvent.DECLINE, LeaseEvent.MOVE,
                                   LeaseEvent.RECLAIM)
_BY_VALUE = {state.value: state for state in LeaseState}  # a column value to its state
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")


def ip_int(text: str) -> int:
    """``"192.0.2.7"`` → int; strict dotted quad (ipaddress is 10x slower)."""
    if not _DOTTED.fullmatch(text):
        raise ValueError(f"{text!r} is not an IPv4 address")
    return int.from_bytes(socket.inet_aton(text), "big")


def ip_str(address: int) -> str:
    return socket.inet_ntoa(address.to_bytes(4, "big"))


class Refusal(AstralBootError):
    """A request the store answers with an error reply (a typed code)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code.value}: {detail}")


class Client:
    """Who is asking: the MAC, and the client identifier when one was sent."""

    __slots__ = ("mac", "client_id")

    def __init__(self, mac: str, client_id: bytes | None = None) -> None:
        self.mac = mac
        self.client_id = client_id

    def owns(self, lease: "Lease") -> bool:
        if self.client_id is not None and lease.client_id == self.client_id:
            return True
        return lease.mac == self.mac and (self.client_id is None or lease.client_id is None)

    def __str__(self) -> str:
        return self.mac if self.client_id is None else f"{self.mac} (id {self.client_id.hex()})"


@dataclass(slots=True, eq=False)
class Lease:
    address: int
    subnet: str
    mac: str
    client_id: bytes | None
    hostname: str | None
    state: LeaseState
    expires: float
    lease_time: int
    stored: bool = False  # the database has a row for this address
    ip: str = ""  # dotted form of ``address``, filled in once

    def __post_init__(self) -> None:
        if not self.ip:
            self.ip = ip_str(self.address)

    def held(self, now: float) -> bool:
        return self.state in HELD and self.expires > now

    def shown_state(self, now: float) -> LeaseState:
        """The state a user sees: a held state past ``expires`` is expired."""
        return self.state if self.state not in HELD or self.expires > now else EXPIRED

    def record(self, now: float) -> LeaseRecord:
        return LeaseRecord(ip=self.ip, mac=self.mac, subnet=self.subnet,
                           state=self.shown_state(now),  # type: ignore[arg-type]
                           expires=self.expires, lease_time=self.lease_time,
                           client_id=self.client_id, hostname=self.hostname)

    def row(self, now: float) -> dict[str, Any]:
        return {"address": self.ip, "subnet": self.subnet, "mac": self.mac,
                "client_id": self.client_id, "hostname": self.hostname, "state": self.state,
                "expires": self.expires, "lease_time": self.lease_time, "updated": now}


class Reservations:
    """MAC ↔ address reservations: config.toml's (fixed) and the table's."""

    def __init__(self, fixed: Iterable[tuple[str, int]] = ()) -> None:
        self.fixed_macs: set[str] = set()
        self._by_mac: dict[str, int] = {}
        self._by_address: dict[int, str] = {}
        for mac, address in fixed:
            self.put(mac, address)
            self.fixed_macs.add(mac)

    def address_of(self, mac: str) -> int | None:
        return self._by_mac.get(mac)

    def owner_of(self, address: int) -> str | None:
        return self._by_address.get(address)

    def put(self, mac: str, address: int) -> None:
        self.remove(mac)
        self._by_mac[mac] = address
        self._by_address[address] = mac

    def remove(self, mac: str) -> int | None:
        address = self._by_mac.pop(mac, None)
        if address is not None:
            self._by_address.pop(address, None)
        return address

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self._by_mac.items(), key=lambda kv: kv[1]))


class Pool:
    """One subnet's addresses and the leases on them."""

    def __init__(self, subnet: SubnetConfig, server: IPv4Address) -> None:
        self.config = subnet
        self.name = subnet.name
        self.network: IPv4Network = subnet.network
        self.lease_time = subnet.lease_time
        self.first = int(subnet.range_start)
        self.last = int(subnet.range_end)
        self.base = int(subnet.network.network_address)
        self._broadcast = int(subnet.network.broadcast_address)
        self.excluded = {self.base, self._broadcast, int(server)}
        if subnet.gateway is not None:
            self.excluded.add(int(subnet.gateway))
        self.leases: dict[int, Lease] = {}
        self.by_mac: dict[str, Lease] = {}
        self.by_client_id: dict[bytes, Lease] = {}
        self._cursor = self.first  # every address below it has been considered
        # Unbound offers, oldest first (offers share one hold time, so they
        # also expire in this order); see LeaseBook.offer_cap.
        self.offers: OrderedDict[int, None] = OrderedDict()
        self.reclaimed = 0  # offers given up early because the cap was reached
        self.pressure_events = 0  # reclaims and exhaustions (a metric)
        self._freed: OrderedDict[int, None] = OrderedDict()  # once leased, now free; oldest first
        self._timers: list[tuple[float, int]] = []  # (expires, address), stale entries allowed
        self.size = self.last - self.first + 1 - sum(1 for a in self.excluded if self.in_range(a))

    def contains(self, address: int) -> bool:
        return self.base < address < self._broadcast

    def in_range(self, address: int) -> bool:
        return self.first <= address <= self.last

    def find(self, client: Client) -> Lease | None:
        """The client's most recent lease in this pool, if it still holds the address."""
        if client.client_id is not None:
            lease = self.by_client_id.get(client.client_id)
            if lease is not None and self.leases.get(lease.address) is lease:
                return lease
        lease = self.by_mac.get(client.mac)
        if lease is not None and self.leases.get(lease.address) is lease and client.owns(lease):
            return lease
        return None

    def put(self, lease: Lease) -> None:
        old = self.leases.get(lease.address)
        if old is not None and old is not lease:
            self._unindex(old)
        self.leases[lease.address] = lease
        self.by_mac[lease.mac] = lease
        if lease.client_id is not None:
            self.by_client_id[lease.client_id] = lease
        self._freed.pop(lease.address, None)
        if lease.state == OFFERED:
            self.offers[lease.address] = None
            self.offers.move_to_end(lease.address)
        else:
            self.offers.pop(lease.address, None)
        if lease.state in HELD:
            self.watch(lease)

    def _unindex(self, lease: Lease) -> None:
        if self.by_mac.get(lease.mac) is lease:
            del self.by_mac[lease.mac]
        if lease.client_id is not None and self.by_client_id.get(lease.client_id) is lease:
            del self.by_client_id[lease.client_id]

    def watch(self, lease: Lease) -> None:
        heapq.heappush(self._timers, (lease.expires, lease.address))
        if len(self._timers) > 2 * len(self.leases) + 1024:
            self._timers = [(x.expires, x.address) for x in self.leases.values() if x.state in HELD]
            heapq.heapify(self._timers)

    @property
    def queued_timers(self) -> int:
        """Expiry timers queued, stale ones included: at most 2 x leases + 1024 (a gauge)."""
        return len(self._timers)

    def mark_free(self, address: int) -> None:
        self._freed[address] = None
        self._freed.move_to_end(address)
        self.offers.pop(address, None)

    def outstanding_offers(self, now: float) -> int:
        """Unbound offers still held (the stale ones at the front are dropped)."""
        offers = self.offers
        while offers:
            address = next(iter(offers))
            lease = self.leases.get(address)
            if lease is not None and lease.state == OFFERED and lease.expires > now:
                break
            del offers[address]
        return len(offers)

    def reclaim_oldest_offer(self, now: float) -> Lease | None:
        """Give up the oldest unbound offer: its address may be offered again."""
        if not self.outstanding_offers(now):
            return None
        address, _ = self.offers.popitem(last=False)
        lease = self.leases[address]
        lease.state = TRANSITIONS[lease.state, RECLAIM]
        lease.expires = now
        self.mark_free(address)
        self.reclaimed += 1
        return lease

    def reap(self, now: float) -> None:
        """Move addresses whose offer, lease or quarantine ran out to the freed list."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            expires, address = heapq.heappop(timers)
            lease = self.leases.get(address)
            if lease is not None and lease.expires == expires and lease.state in HELD:
                self.mark_free(address)

    def next_fresh(self, usable: "Usable") -> int | None:
        while self._cursor <= self.last:
            address = self._cursor
            self._cursor += 1
            if address not in self.leases and usable(address):
                return address
        return None

    def next_freed(self, usable: "Usable") -> int | None:
        while self._freed:
            address, _ = self._freed.popitem(last=False)
            if usable(address):
                return address
        return None

    def forget_cursor(self) -> None:
        """Consider every address again (after a reservation was removed)."""
        self._cursor = self.first

    def counts(self, now: float) -> dict[str, int]:
        out = {"bound": 0, "offered": 0, "declined": 0}
        for lease in self.leases.values():
            if lease.held(now):
                out[lease.state] += 1
        return out


class Usable:
    """Whether an address may go to a client now (a predicate for the pool scans)."""

    __slots__ = ("book", "pool", "client", "now")

    def __init__(self, book: "LeaseBook", pool: Pool, client: Client, now: float) -> None:
        self.book, self.pool, self.client, self.now = book, pool, client, now

    def __call__(self, address: int, outside_range: bool = False) -> bool:
        pool = self.pool
        if address in pool.excluded or not pool.contains(address):
            return False
        owner = self.book.reservations.owner_of(address)
        if owner is not None and owner != self.client.mac:
            return False
        if not pool.in_range(address) and owner != self.client.mac and not outside_range:
            return False
        lease = pool.leases.get(address)
        if lease is None:
            return True
        if lease.state == DECLINED and lease.expires > self.now:
            return False  # quarantined, for the decliner too
        return self.client.owns(lease) or not lease.held(self.now)


class LeaseBook:
    """All pools; decides offers, commits, releases and declines."""

    def __init__(self, subnets: Iterable[SubnetConfig], server: IPv4Address, *,
                 offer_hold: float, quarantine: float,
                 reservations: Reservations | None = None, offer_share: float = 1.0) -> None:
        self.pools: dict[str, Pool] = {s.name: Pool(s, server) for s in subnets}
        self.offer_hold = offer_hold
        self.offer_share = offer_share
        self.quarantine = quarantine
        self.reservations = reservations or Reservations()
        self.orphans = 0  # rows of subnets no longer configured

    # -- loading ------------------------------------------------------------------

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        # Bound leases last, so they win the MAC index over older rows.
        ordered = sorted(rows, key=lambda r: (r["state"] == BOUND, r["expires"]))
        for row in ordered:
            pool = self.pools.get(row["subnet"])
            address = ip_int(row["address"])
            if pool is None or not pool.contains(address):
                self.orphans += 1
                continue
            lease = Lease(address=address, subnet=pool.name, mac=row["mac"],
                          client_id=row["client_id"], hostname=row["hostname"],
                          state=_BY_VALUE[row["state"]], expires=row["expires"],
                          lease_time=row["lease_time"], stored=True, ip=row["address"])
            pool.put(lease)
            if lease.state not in HELD:
                pool.mark_free(address)

    # -- queries ------------------------------------------------------------------

    def pool(self, subnet: str) -> Pool:
        pool = self.pools.get(subnet)
        if pool is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no pool for subnet {subnet}")
        return pool

    def pool_of(self, address: int) -> Pool | None:
        for pool in self.pools.values():
            if pool.contains(address):
                return pool
        return None

    def by_address(self, address: int) -> Lease | None:
        pool = self.pool_of(address)
        return pool.leases.get(address) if pool is not None else None

    def by_mac(self, mac: str, now: float) -> Lease | None:
        """The MAC's lease: a held one first, else the most recent."""
        found = [p.by_mac[mac] for p in self.pools.values() if mac in p.by_mac]
        found = [x for x in found if self.pools[x.subnet].leases.get(x.address) is x]
        if not found:
            return None
        return max(found, key=lambda x: (x.held(now), x.state == BOUND, x.expires))

    def bound_address(self, mac: str, now: float) -> str | None:
        lease = self.by_mac(mac, now)
        if lease is not None and lease.state == BOUND and lease.held(now):
            return lease.ip
        return None

    def all(self) -> Iterator[Lease]:
        for pool in self.pools.values():
            yield from pool.leases.values()

    # -- decisions ----------------------------------------------------------------

    def offer(self, subnet: str, client: Client, requested: str | None, hostname: str | None,
              now: float) -> Lease:
        """Choose an address for a DISCOVER and hold it for ``offer_hold`` seconds.

        Returns the held lease; a client that already holds a bound lease on
        the chosen address keeps it bound (the offer is then only a view).
        """
        pool = self.pool(subnet)
        pool.reap(now)
        if self.offer_share < 1.0 and pool.find(client) is None \
                and pool.outstanding_offers(now) >= self.offer_cap(pool):
            # A flood of DISCOVERs from made-up MACs: offers are not promises
            # (RFC 2131 4.3.1), so the oldest one goes rather than the pool.
            pool.reclaim_oldest_offer(now)
        usable = Usable(self, pool, client, now)
        address = self._choose(pool, client, requested, usable)
        current = pool.leases.get(address)
        if current is not None and current.state == BOUND and current.held(now) \
                and client.owns(current):
            return current  # no event: the client's own binding, shown as the offer
        state = TRANSITIONS[current.state if current is not None else None, OFFER]
        lease = Lease(address=address, subnet=pool.name, mac=client.mac,
                      client_id=client.client_id, hostname=hostname, state=state,
                      expires=now + self.offer_hold, lease_time=pool.lease_time,
                      stored=current.stored if current is not None else False)
        pool.put(lease)
        return lease

    def offer_cap(self, pool: Pool) -> int:
        """How many unbound offers a pool holds at once (``dhcp.offer_share``; 1: all)."""
        return max(1, int(pool.size * self.offer_share))

    def _choose(self, pool: Pool, client: Client, requested: str | None, usable: Usable) -> int:
        reserved = self.reservations.address_of(client.mac)
        if reserved is not None and pool.contains(reserved) and usable(reserved, True):
            return reserved
        own = pool.find(client)
        # RFC 2131 4.3.1: the current or previous binding, then the requested
        # address; an offer the client never took is not a binding.
        if own is not None and own.state != OFFERED and usable(own.address):
            return own.address
        if requested:
            wanted = _address(requested, "requested_ip")
            if pool.in_range(wanted) and usable(wanted):
                return wanted
        if own is not None and usable(own.address):
            return own.address
        for source in (pool.next_fresh, pool.next_freed):
            address = source(usable)
            if address is not None:
                return address
        raise Refusal(ErrorCode.POOL_EXHAUSTED, f"no free address in {pool.name} for {client}")

    def commit(self, subnet: str, ip: str, mode: CommitMode, client: Client,
               hostname: str | None, now: float) -> tuple[Lease, list[LeaseWrite]]:
        """Bind (or extend) ``ip`` for a REQUEST; raises Refusal for NAK or silence."""
        pool = self.pool(subnet)
        address = _address(ip, "ip")
        pool.reap(now)
        if not pool.contains(address):
            raise Refusal(ErrorCode.CONFLICT, f"{ip} is not in {pool.name}")
        usable = Usable(self, pool, client, now)
        if mode in ("renew", "rebind"):
            lease = pool.leases.get(address)
            if lease is None or not client.owns(lease):
                if lease is not None and lease.held(now):
                    raise Refusal(ErrorCode.CONFLICT, f"{ip} is held by another client")
                # No record of this client here: a REBINDING client may be
                # another server's, so dhcpd stays silent (RFC 2131 4.3.2).
                raise Refusal(ErrorCode.NOT_FOUND, f"no record of {client} at {ip}")
            if (lease.state, RENEW) not in TRANSITIONS:
                raise Refusal(ErrorCode.CONFLICT, f"{ip} is not bound to {client}")
            if not usable(address, True):
                raise Refusal(ErrorCode.CONFLICT, f"{ip} is reserved for another client")
            return self._bind(pool, address, client, hostname, now, RENEW)
        reserved = self.reservations.address_of(client.mac)
        if mode == "reboot" and pool.find(client) is None \
                and not (reserved is not None and pool.contains(reserved)):
            raise Refusal(ErrorCode.NOT_FOUND, f"no record of {client} in {pool.name}")
        if reserved is not None and reserved != address and pool.contains(reserved) \
                and usable(reserved, True):
            raise Refusal(ErrorCode.CONFLICT,
                          f"{client} is reserved {ip_str(reserved)}, not {ip}")
        if not usable(address):
            raise Refusal(ErrorCode.CONFLICT, f"{ip} is not available to {client}")
        return self._bind(pool, address, client, hostname, now, COMMIT)

    def _bind(self, pool: Pool, address: int, client: Client, hostname: str | None,
              now: float, event: LeaseEvent) -> tuple[Lease, list[LeaseWrite]]:
        writes: list[LeaseWrite] = []
        previous = pool.find(client)
        if previous is not None and previous.address != address and previous.held(now) \
                and (previous.state, MOVE) in TRANSITIONS:
            # A client holds one address per pool: moving frees the old one.
            was_bound = previous.state == BOUND
            previous.state = TRANSITIONS[previous.state, MOVE]
            previous.expires = now
            pool.mark_free(previous.address)
            if was_bound:
                writes.append(LeaseWrite(previous.row(now), insert=not previous.stored))
        current = pool.leases.get(address)
        if hostname is None and current is not None and client.owns(current):
            hostname = current.hostname
        stored = current is not None and current.stored
        lease = Lease(address=address, subnet=pool.name, mac=client.mac,
                      client_id=client.client_id, hostname=hostname,
                      state=TRANSITIONS[current.state if current is not None else None, event],
                      expires=now + pool.lease_time, lease_time=pool.lease_time, stored=True)
        pool.put(lease)
        writes.append(LeaseWrite(lease.row(now), insert=not stored))
        return lease, writes

    def release(self, ip: str, client: Client, now: float) -> list[LeaseWrite]:
        address = _address(ip, "ip")
        pool = self.pool_of(address)
        lease = pool.leases.get(address) if pool is not None else None
        if pool is None or lease is None or not client.owns(lease) or not lease.held(now):
            return []
        state = TRANSITIONS.get((lease.state, RELEASE))
        if state is None:  # a declined address stays quarantined
            return []
        was_bound = lease.state == BOUND
        lease.state = state
        lease.expires = now
        pool.mark_free(address)
        return [LeaseWrite(lease.row(now), insert=not lease.stored)] if was_bound else []

    def decline(self, ip: str, client: Client, now: float) -> list[LeaseWrite]:
        """Quarantine an address the client found in use (kept across restarts).

        Only the client the address was offered or bound to may decline it
        (RFC 2131 4.3.3); anyone else is refused, or a flood of DECLINEs from
        made-up MACs would empty the pool for the whole quarantine.
        """
        address = _address(ip, "ip")
        pool = self.pool_of(address)
        if pool is None or address in pool.excluded:
            raise Refusal(ErrorCode.NOT_FOUND, f"{ip} is not an address of any pool")
        current = pool.leases.get(address)
        if current is None or (current.state, DECLINE) not in TRANSITIONS \
                or not client.owns(current):
            raise Refusal(ErrorCode.CONFLICT, f"{ip} was not offered or bound to {client}")
        lease = Lease(address=address, subnet=pool.name, mac=client.mac,
                      client_id=client.client_id, hostname=None,
                      state=TRANSITIONS[current.state, DECLINE],
                      expires=now + self.quarantine, lease_time=pool.lease_time, stored=True)
        pool.put(lease)
        return [LeaseWrite(lease.row(now), insert=not current.stored)]

    def adopt(self, ip: str, mac: str, now: float) -> tuple[Lease, list[LeaseWrite]] | None:
        """Bind ``ip`` to ``mac`` for an import; None when it is not ours to give."""
        address = ip_int(ip)
        pool = self.pool_of(address)
        if pool is None or address in pool.excluded:
            return None
        client = Client(mac)
        current = pool.leases.get(address)
        if current is not None and current.held(now) and not client.owns(current):
            return None
        owner = self.reservations.owner_of(address)
        if owner is not None and owner != mac:
            return None
        return self._bind(pool, address, client, None, now, COMMIT)

    def unreserved(self, address: int) -> None:
        """A reservation was removed: its address may be handed out again."""
        pool = self.pool_of(address)
        if pool is not None and pool.in_range(address) and address not in pool.leases:
            pool.forget_cursor()


def _address(text: str, what: str) -> int:
    try:
        return ip_int(text)
    except ValueError:
        raise Refusal(ErrorCode.BAD_REQUEST, f"{what}: {text!r} is not an IPv4 address") from None
