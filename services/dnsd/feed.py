"""Keeps a :class:`zone.Zone` in step with the store's leases and machines.

Which hosts the zone holds: one per bound lease, named after its machine.
Every bound lease has a machine in the store (created on its first bound
lease), and dhcpd gives that machine's name to the client (option 12), so
the machine's name is the host's name. A name the store made up
(``nodeN``, ``nodeN-M``: :func:`chosen_name`) is the client's to lose; any
other name was set by the operator (``astralboot machine set --name``, a
reservation's ``name``, an import), so it goes into the zone with
``fixed=True`` and takes its label back from a host that only got it by
default. A lease without a machine (none should exist) is named by the host
name the client sent, not fixed. A reservation with a name (``reserved``:
from the configuration) has its record whether or not its machine holds a
lease: the address is that machine's for good, so its name resolves before
the machine first boots and after it releases; while the lease is bound the
machine's name (which the operator may have changed) is used.

How the zone follows the store:

- a full sync (``LeaseList`` of bound leases, ``MachineList``) at start,
  each time the event subscription is confirmed (at start, and again after
  the store restarted), and every ``resync`` seconds: that last one is how
  an expired lease leaves the zone, since the store publishes no event for
  expiry;
- the store's events, all MACs (``EventSubscriber``, read in a thread of
  its own since it blocks): ``dhcp.ack`` and ``machine.changed`` ask
  ``LeaseLookup(mac=...)`` (an event carries no name) and set or remove
  the host; ``dhcp.release`` and ``dhcp.decline`` remove it at once;
- ``Health`` every ``check`` seconds: a store that answers with another pid
  or start time was restarted, and one that answers after failing may have
  been; either may have lost the subscription and events with it, so the
  feed subscribes again and syncs once the store confirms it.

A store that is down costs a :class:`BusError` (a timeout within the bus
client's deadline), counted and logged; the sync is retried with backoff up
to ``retry_max`` seconds and meanwhile the zone goes on serving what it
knew.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.events import (DHCP_ACK, DHCP_DECLINE, DHCP_RELEASE, MACHINE_CHANGED,
                                          EventSubscriber)
from astralboot.common.errors import BusError, ErrorCode, RemoteError
from astralboot.common.messages import (BootEvent, Health, HealthReply, LeaseList,
                                        LeaseListReply, LeaseLookup, LeaseRecord, LeaseReply,
                                        MachineList, MachineListReply, MachineRecord)
from astralboot.common.names import DEFAULT_MACHINE_NAME
from astralboot.services.dnsd.zone import Zone, ZoneFull

if TYPE_CHECKING:
    from astralboot.common.bus.security import ClientCurve

log = logging.getLogger(__name__)

RESYNC = 60.0  # seconds between full syncs (expired leases leave the zone by these)
CHECK = 5.0  # seconds between health checks of the store
RETRY_MIN = 1.0
RETRY_MAX = 30.0
QUEUE_MAX = 10_000  # events waiting; past it they are dropped and a sync is due
SUBSCRIBE_TIMEOUT = 2.0
POLL = 0.2  # how often the listener thread looks at its stop flag


def chosen_name(lease: LeaseRecord, machine: MachineRecord | None) -> tuple[str | None, bool]:
    """The host's name and whether the operator chose it (``fixed``)."""
    if machine is not None and machine.name:
        return machine.name, DEFAULT_MACHINE_NAME.fullmatch(machine.name) is None
    return lease.hostname, False


class ZoneFeed:
    """The store's leases and machines into ``zone``, until cancelled (:meth:`run`)."""

    def __init__(self, zone: Zone, bus: AsyncBusClient, events: str, *,
                 reserved: Mapping[str, tuple[str, str]] | None = None,
                 curve: ClientCurve | None = None, resync: float = RESYNC,
                 check: float = CHECK, retry_max: float = RETRY_MAX,
                 stats: Counter[str] | None = None) -> None:
        self.zone = zone
        self.bus = bus
        self.events = events
        self.reserved = dict(reserved or {})  # MAC -> (name, address)
        self.curve = curve
        self.resync = resync
        self.check = check
        self.retry_max = retry_max
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.synced = asyncio.Event()  # set by the first full sync that succeeds
        self._need_sync = True
        self._retry = RETRY_MIN
        self._retry_at = 0.0
        self._next_resync = 0.0
        self._next_check = 0.0  # at once: the store's pid and start time, to notice a restart
        self._store: tuple[int, float] | None = None  # (pid, started) of the store seen last
        self._store_down = False
        self._lost = False  # the store failed a request since the last health check
        self._queue: asyncio.Queue[tuple[str, BootEvent | None]] = asyncio.Queue()
        self._stop = threading.Event()
        self._resubscribe = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._resubscribe.set()
        thread = threading.Thread(target=self._listen, name="dnsd-events", daemon=True)
        thread.start()
        try:
            while True:
                now = loop.time()
                if now >= self._next_resync:
                    self._need_sync = True
                if self._need_sync and now >= self._retry_at:
                    await self._sync_or_retry()
                if loop.time() >= self._next_check:
                    await self._check_store()
                now = loop.time()
                wake = min(self._next_check,
                           self._retry_at if self._need_sync else self._next_resync)
                try:
                    kind, event = await asyncio.wait_for(self._queue.get(),
                                                         max(0.0, wake - now))
                except TimeoutError:
                    continue
                if kind == "subscribed":
                    self.stats["feed_subscribed"] += 1
                    self._need_sync = True
                    self._retry_at = 0.0
                elif event is not None:
                    await self._on_event(event)
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join, SUBSCRIBE_TIMEOUT + 1)

    def details(self) -> dict[str, str | int | float | bool]:
        return {"feed.synced": self.synced.is_set(), "feed.store_down": self._store_down,
                "feed.queued": self._queue.qsize()}

    # -- full sync ---------------------------------------------------------------------

    async def _sync_or_retry(self) -> None:
        assert self._loop is not None
        try:
            await self.sync()
        except BusError as exc:
            self.stats["feed_sync_failures"] += 1
            level = logging.DEBUG if self._store_down else logging.WARNING
            log.log(level, "cannot sync the DNS zone with the store (%s); serving the %d "
                    "hosts it knew, again in %.0fs", exc, len(self.zone), self._retry)
            self._store_down = self._lost = True
            self._retry_at = self._loop.time() + self._retry
            self._retry = min(self._retry * 2, self.retry_max)
            return
        if self._store_down:
            log.info("store reachable again; DNS zone synced (%d hosts)", len(self.zone))
        self._store_down = False
        self._need_sync = False
        self._retry = RETRY_MIN
        self._next_resync = self._loop.time() + self.resync
        self.synced.set()

    async def sync(self) -> None:
        """Make the zone hold exactly the store's bound leases; BusError if the store fails."""
        leases = await self.bus.call(LeaseList(state="bound", limit=max(10_000,
                                                                         self.zone.max_hosts)))
        machines = await self.bus.call(MachineList())
        assert isinstance(leases, LeaseListReply) and isinstance(machines, MachineListReply)
        by_mac = {m.mac: m for m in machines.machines}
        wanted: dict[str, tuple[str | None, str, bool]] = {
            mac: (name, ip, True) for mac, (name, ip) in self.reserved.items()}
        for lease in leases.leases:
            name, fixed = chosen_name(lease, by_mac.get(lease.mac))
            wanted[lease.mac] = (name, lease.ip, fixed)
        for host in self.zone.hosts():
            if host.mac not in wanted:
                self.zone.remove_host(host.mac)
        # The operator's names first, so that they hold their labels from the start.
        for mac, (name, ip, fixed) in sorted(wanted.items(), key=lambda kv: not kv[1][2]):
            self._set(mac, name, ip, fixed)
        self.stats["feed_syncs"] += 1
        log.debug("DNS zone synced: %d hosts, serial %d", len(self.zone), self.zone.serial)

    def _absent(self, mac: str) -> None:
        """``mac`` holds no bound lease: its reservation's record, or none."""
        if mac in self.reserved:
            name, ip = self.reserved[mac]
            self._set(mac, name, ip, True)
        else:
            self.zone.remove_host(mac)

    def _set(self, mac: str, name: str | None, ip: str, fixed: bool) -> None:
        try:
            self.zone.set_host(mac, name, ip, fixed=fixed)
        except ZoneFull as exc:
            self.stats["feed_zone_full"] += 1
            log.warning("%s", exc)

    # -- events ------------------------------------------------------------------------

    async def _on_event(self, event: BootEvent) -> None:
        mac = event.mac
        if not mac:
            return
        self.stats["feed_events"] += 1
        if event.stage in (DHCP_RELEASE, DHCP_DECLINE):
            host = self.zone.host(mac)
            if host is not None and (event.ip is None or str(host.ip) == event.ip):
                self._absent(mac)
                log.debug("%s: %s, %s.%s removed", mac, event.stage, host.label, self.zone.origin)
        elif event.stage in (DHCP_ACK, MACHINE_CHANGED):
            await self.refresh(mac)

    async def refresh(self, mac: str) -> None:
        """Set or remove the host at ``mac`` as its lease says now."""
        try:
            reply = await self.bus.call(LeaseLookup(mac=mac))
        except RemoteError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                self._absent(mac)
                return
            self._lookup_failed(mac, exc)
            return
        except BusError as exc:
            self._lookup_failed(mac, exc)
            return
        assert isinstance(reply, LeaseReply)
        lease = reply.lease
        if lease.state != "bound":
            self._absent(mac)
            return
        name, fixed = chosen_name(lease, reply.machine)
        self._set(mac, name, lease.ip, fixed)

    def _lookup_failed(self, mac: str, exc: BusError) -> None:
        self.stats["feed_lookup_failures"] += 1
        log.warning("%s: lease lookup failed (%s); a full sync follows", mac, exc)
        self._need_sync = True
        if not isinstance(exc, RemoteError):
            self._lost = True

    # -- the store's health --------------------------------------------------------------

    async def _check_store(self) -> None:
        assert self._loop is not None
        self._next_check = self._loop.time() + self.check
        self.stats["feed_checks"] += 1
        try:
            reply = await self.bus.call(Health())
        except BusError as exc:
            if not self._store_down:
                log.warning("store not answering (%s); the DNS zone keeps its %d hosts",
                            exc, len(self.zone))
            self._store_down = self._lost = True
            self._need_sync = True
            return
        assert isinstance(reply, HealthReply)
        seen = (reply.pid, reply.started)
        restarted = self._store is not None and seen != self._store
        if restarted or self._lost:
            # A new store process knows no subscription until the next
            # renewal, and events meanwhile are lost: subscribe now, and
            # sync once the store confirms it.
            if restarted:
                self.stats["feed_store_restarts"] += 1
            log.info("the store is back (pid %d); subscribing to its events again", reply.pid)
            self._resubscribe.set()
        self._lost = False
        self._store = seen

    # -- the listener thread -------------------------------------------------------------

    def _post(self, kind: str, event: BootEvent | None) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._deliver, kind, event)
        except RuntimeError:  # the loop is closing
            self._stop.set()

    def _deliver(self, kind: str, event: BootEvent | None) -> None:
        if self._queue.qsize() >= QUEUE_MAX:
            self.stats["feed_events_dropped"] += 1
            self._need_sync = True  # what was dropped, a sync restores
            return
        self._queue.put_nowait((kind, event))

    def _listen(self) -> None:
        """The event stream, in a thread: EventSubscriber blocks."""
        sub = EventSubscriber(self.events, None, curve=self.curve)
        try:
            while not self._stop.is_set():
                if self._resubscribe.is_set():
                    try:
                        sub.wait_subscribed(SUBSCRIBE_TIMEOUT)
                    except BusError as exc:
                        log.debug("event subscription not confirmed: %s", exc)
                        self._stop.wait(POLL)  # the flag stays set: ask again
                        continue
                    self._resubscribe.clear()
                    self._post("subscribed", None)
                    continue
                event = sub.receive(POLL)
                if event is not None:
                    self._post("event", event)
        except Exception:
            log.exception("DNS zone feed: event listener failed; full syncs go on")
        finally:
            sub.close()
