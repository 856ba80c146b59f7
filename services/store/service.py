"""The store's decisions for every lease, machine, reservation and event request.

Sans-IO: a request and the time go in, a :class:`Result` comes out (a
reply, the writes that must be durable before it is sent, an event to
publish, or a database read to answer from). The server owns the sockets,
the database thread and the clock; content requests are its business too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from astralboot.common.bus.events import (DHCP_ACK, DHCP_DECLINE, DHCP_OFFER, DHCP_RELEASE,
                                          MACHINE_CHANGED, POOL_PRESSURE, TOKEN_CREATED,
                                          TOKEN_REVOKED)
from astralboot.common.bus.schema import Reply, Request
from astralboot.common.config import Config, normalise_mac
from astralboot.common.errors import ErrorCode
from astralboot.common.names import (CLIENT_ID_MAX, MACHINE_NAME, WORD, clean_hostname,
                                     clean_text, ipv4_text)
from astralboot.common.tokens import NAME as TOKEN_NAME
from astralboot.common.messages import (BootEvent, Done, ErrorReply, EventList, EventListReply,
                                        EventReport, ImportReply, LeaseCommit, LeaseDecline,
                                        LeaseImport, LeaseList, LeaseListReply, LeaseLookup,
                                        LeaseGrant, LeaseOffer, LeaseRelease, LeaseReply,
                                        MachineGet, MachineList, MachineListReply, MachineReply,
                                        MachineSet, Reservation, ReservationDelete,
                                        ReservationList, ReservationListReply, ReservationSet,
                                        TokenCheck, TokenCreate, TokenInfo, TokenList,
                                        TokenListReply, TokenReply, TokenRevoke)

from astralboot.services.store.database import Snapshot, query_events
from astralboot.services.store.journal import (EventPruning, EventWrite, ReservationDeletion, ReservationWrite,
                      TokenDeletion, TokenWrite, Write)
from astralboot.services.store.leases import (Client, Lease, LeaseBook, LeaseState, Pool, Refusal, Reservations, ip_int,
                     ip_str)
from astralboot.services.store.machines import Machine, MachineBook

log = logging.getLogger(__name__)

EVENTS_KEPT = 200_000  # the event log is pruned to about this many rows...
EVENTS_PRUNE_STEP = 2_000
PRESSURE_EVERY = 60.0  # seconds between two pool.pressure events of one pool  # ...a small step at a time, so no commit waits on a big delete
_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class Result:
    """What the server must do for one request.

    ``writes`` must be durable before ``reply`` is sent (and ``publish``
    goes out with it); ``background`` rides along in the next batch with
    nobody waiting; ``read`` answers from the database after the pending
    writes.
    """

    reply: Reply | None = None
    writes: list[Write] = field(default_factory=list)
    background: list[Write] = field(default_factory=list)
    publish: BootEvent | None = None
    read: Callable[[Any], Reply] | None = None


def _client(mac: str, client_id: bytes | None) -> Client:
    if client_id is not None and not 0 < len(client_id) <= CLIENT_ID_MAX:
        raise Refusal(ErrorCode.BAD_REQUEST,
                      f"client identifier of {len(client_id)} bytes (1..{CLIENT_ID_MAX})")
    return Client(_mac(mac), client_id)


def _mac(text: str) -> str:
    if _CANONICAL_MAC.fullmatch(text):
        return text
    try:
        return normalise_mac(text)
    except ValueError as exc:
        raise Refusal(ErrorCode.BAD_REQUEST, str(exc)) from None


class StoreService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.handlers: dict[type[Request], Callable[[Any, float], Result]] = {
            LeaseOffer: self.offer,
            LeaseCommit: self.commit,
            LeaseRelease: self.release,
            LeaseDecline: self.decline,
            LeaseLookup: self.lookup,
            LeaseList: self.list_leases,
            LeaseImport: self.import_leases,
            ReservationSet: self.set_reservation,
            ReservationDelete: self.delete_reservation,
            ReservationList: self.list_reservations,
            MachineGet: self.get_machine,
            MachineSet: self.set_machine,
            MachineList: self.list_machines,
            EventReport: self.report_event,
            EventList: self.list_events,
            TokenCreate: self.create_token,
            TokenRevoke: self.revoke_token,
            TokenList: self.list_tokens,
            TokenCheck: self.check_token,
        }
        self.reset()

    def reset(self) -> None:
        """Forget everything (before loading a snapshot)."""
        dhcp = self.config.dhcp
        fixed = [(r.mac, int(r.address)) for r in dhcp.reservations]
        self.presets: dict[str, tuple[str | None, str | None]] = {
            r.mac: (r.name, r.os) for r in dhcp.reservations}
        self.book = LeaseBook(dhcp.subnets, self.config.address, offer_hold=dhcp.offer_hold,
                              quarantine=dhcp.decline_quarantine,
                              reservations=Reservations(fixed), offer_share=dhcp.offer_share)
        self._pressure_reported: dict[str, float] = {}
        self.machines = MachineBook()
        self.tokens: dict[str, TokenInfo] = {}  # digest -> token
        self.last_event_id = 0
        self.events_kept = 0
        self.events_no_lease = 0  # reports by address that no lease holds

    def load(self, snapshot: Snapshot) -> None:
        self.reset()
        for row in snapshot.reservations:
            if row["mac"] in self.book.reservations.fixed_macs:
                continue
            address = ip_int(row["address"])
            if self.book.reservations.owner_of(address) is None:
                self.book.reservations.put(row["mac"], address)
                self.presets[row["mac"]] = (row["name"], row["os"])
        self.book.load(snapshot.leases)
        self.machines.load(snapshot.machines)
        for row in snapshot.tokens:
            self.tokens[row["digest"]] = TokenInfo(name=row["name"], scope=row["scope"],
                                                   created=row["created"])
        self.last_event_id = snapshot.last_event_id
        self.events_kept = snapshot.event_count

    def handle(self, request: Request, now: float) -> Result:
        handler = self.handlers.get(type(request))
        if handler is None:
            return Result(reply=_error(ErrorCode.BAD_REQUEST,
                                       f"the store does not answer {request.kind}"))
        try:
            return handler(request, now)
        except Refusal as refusal:
            log.debug("%s %x refused: %s", request.kind, request.request_id, refusal)
            return Result(reply=_error(refusal.code, refusal.detail))

    # -- leases -------------------------------------------------------------------

    def offer(self, req: LeaseOffer, now: float) -> Result:
        client = _client(req.mac, req.client_id)
        pool = self.book.pool(req.subnet)
        reclaimed = pool.reclaimed
        try:
            lease = self.book.offer(req.subnet, client, req.requested_ip,
                                    clean_hostname(req.hostname), now)
        except Refusal as refusal:
            if refusal.code is ErrorCode.POOL_EXHAUSTED:
                pressure = self._pressure(pool, client.mac, now, "no free address left")
                if pressure is not None:
                    return Result(reply=_error(refusal.code, refusal.detail),
                                  background=pressure.writes, publish=pressure.publish)
            raise
        pressure = None
        if pool.reclaimed != reclaimed:
            pressure = self._pressure(pool, client.mac, now,
                                      "unbound offers reached the cap; the oldest was given up")
        result = Result(reply=self._grant(client.mac, lease.ip, LeaseState.OFFERED,
                                           lease.lease_time, now + self.book.offer_hold,
                                           self.machines.get(client.mac)))
        if req.report:  # an offer is not durable: its event needs no waiting either
            event = self._dhcp_event(DHCP_OFFER, client.mac, lease.ip, now, req.detail)
            result.background, result.publish = event.writes, event.publish
        if pressure is not None:  # rare: its event is recorded, not published
            result.background = [*pressure.writes, *result.background]
        return result

    def _pressure(self, pool: Pool, mac: str, now: float, what: str) -> Result | None:
        """The ``pool.pressure`` event, at most once a minute per pool."""
        pool.pressure_events += 1
        last = self._pressure_reported.get(pool.name)
        if last is not None and now - last < PRESSURE_EVERY:
            return None
        self._pressure_reported[pool.name] = now
        counts = pool.counts(now)
        detail = (f"pool {pool.name}: {what}; {counts['bound']} bound, {counts['offered']} "
                  f"offered (cap {self.book.offer_cap(pool)}), {counts['declined']} declined "
                  f"of {pool.size}")
        log.warning("%s (last asked by %s)", detail, mac)
        return self._event(BootEvent(time=now, mac=mac, service="store", stage=POOL_PRESSURE,
                                     detail=detail))

    def commit(self, req: LeaseCommit, now: float) -> Result:
        client = _client(req.mac, req.client_id)
        lease, writes = self.book.commit(req.subnet, req.ip, req.mode, client,
                                         clean_hostname(req.hostname), now)
        machine, machine_write = self._seen(lease, now)
        reply = self._grant(client.mac, lease.ip, LeaseState.BOUND, lease.lease_time, lease.expires,
                            machine)
        result = Result(reply=reply, writes=[*writes, machine_write])
        if req.report:
            event = self._dhcp_event(DHCP_ACK, client.mac, lease.ip, now, req.detail)
            result.writes += event.writes
            result.publish = event.publish
        return result

    @staticmethod
    def _grant(mac: str, ip: str, state: LeaseState, lease_time: int, expires: float,
               machine: Machine | None) -> LeaseGrant:
        return LeaseGrant(ip=ip, state=state, lease_time=lease_time,  # type: ignore[arg-type]
                          expires=expires, name=machine.name if machine else None,
                          os=machine.os if machine else None, mac=mac,
                          loader=machine.loader if machine else None,
                          machine_class=machine.machine_class if machine else None)

    def _seen(self, lease: Lease, now: float) -> tuple[Machine, Write]:
        number = lease.address - self.book.pools[lease.subnet].base
        name, os = self.presets.get(lease.mac, (None, None))
        return self.machines.seen(lease.mac, now, number, name, os)

    def release(self, req: LeaseRelease, now: float) -> Result:
        client = _client(req.mac, req.client_id)
        mac = client.mac
        writes = self.book.release(req.ip, client, now)
        return self._reported(Result(reply=Done(), writes=list(writes)), req.report,
                              DHCP_RELEASE, mac, req.ip, now, req.detail)

    def decline(self, req: LeaseDecline, now: float) -> Result:
        client = _client(req.mac, req.client_id)
        mac = client.mac
        writes = self.book.decline(req.ip, client, now)
        return self._reported(Result(reply=Done(), writes=list(writes)), req.report,
                              DHCP_DECLINE, mac, req.ip, now, req.detail)

    def _reported(self, result: Result, report: bool, stage: str, mac: str, ip: str,
                  now: float, detail: str) -> Result:
        if report:
            event = self._dhcp_event(stage, mac, ip, now, detail)
            result.writes += event.writes
            result.publish = event.publish
        return result

    def _dhcp_event(self, stage: str, mac: str, ip: str, now: float, detail: str) -> Result:
        """The boot event dhcpd asked the store to record for it (``report=True``)."""
        return self._event(BootEvent(time=now, mac=mac, service="dhcpd", stage=stage, ip=ip,
                                     detail=detail))

    def lookup(self, req: LeaseLookup, now: float) -> Result:
        if req.ip is not None:
            try:
                lease = self.book.by_address(ip_int(req.ip))
            except ValueError:
                raise Refusal(ErrorCode.BAD_REQUEST, f"{req.ip!r} is not an IPv4 address") from None
            what = req.ip
        else:
            lease = self.book.by_mac(_mac(req.mac or ""), now)
            what = req.mac or ""
        if lease is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no lease for {what}")
        return Result(reply=LeaseReply(lease=lease.record(now),
                                       machine=self._machine(lease.mac, now)))

    def list_leases(self, req: LeaseList, now: float) -> Result:
        if req.subnet is not None:
            self.book.pool(req.subnet)  # unknown subnet: not_found
        found = [x for x in self.book.all()
                 if (req.subnet is None or x.subnet == req.subnet)
                 and (req.state is None or x.shown_state(now) == req.state)]
        found.sort(key=lambda x: x.address)
        return Result(reply=LeaseListReply(
            leases=tuple(x.record(now) for x in found[:max(0, req.limit)])))

    def import_leases(self, req: LeaseImport, now: float) -> Result:
        """Take the original server's machines.json, idempotently, in one transaction."""
        counts = {"leases": 0, "machines": 0, "reserved": 0, "skipped": 0}
        writes: list[Write] = []
        for entry in req.entries:
            try:
                mac = normalise_mac(entry.mac) if entry.mac else None
                address = ip_int(entry.ip)
            except ValueError:
                mac, address = None, 0
            pool = self.book.pool_of(address) if mac else None
            if mac is None:
                # The original kept a row for every address; ones without a MAC
                # (network, server, broadcast, unused) carry nothing to import.
                counts["skipped"] += 1
                continue
            number = address - pool.base if pool else None
            _, machine_write = self.machines.imported(mac, entry.name, entry.os,
                                                      entry.machine_class, entry.created, now,
                                                      number)
            writes.append(machine_write)
            counts["machines"] += 1
            if pool is None:
                counts["skipped"] += 1
            elif entry.reserved or not pool.in_range(address):
                if self._reserve(mac, address, entry.name, entry.os, writes):
                    counts["reserved"] += 1
                else:
                    counts["skipped"] += 1
            else:
                adopted = self.book.adopt(ip_str(address), mac, now)
                if adopted is None:
                    counts["skipped"] += 1
                else:
                    writes.extend(adopted[1])
                    counts["leases"] += 1
        return Result(reply=ImportReply(**counts), writes=writes)

    # -- reservations -------------------------------------------------------------

    def _reserve(self, mac: str, address: int, name: str | None, os: str | None,
                 writes: list[Write]) -> bool:
        reservations = self.book.reservations
        pool = self.book.pool_of(address)
        if mac in reservations.fixed_macs or pool is None or address in pool.excluded:
            return False
        if name is not None and not MACHINE_NAME.fullmatch(name):
            name = None  # an import keeps the address; a bad name is the machine's default
        if os is not None and not WORD.fullmatch(os):
            os = None
        owner = reservations.owner_of(address)
        if owner is not None and owner != mac:
            return False
        previous = reservations.address_of(mac)
        reservations.put(mac, address)
        if previous is not None and previous != address:
            self.book.unreserved(previous)
        self.presets[mac] = (name, os)
        writes.append(ReservationWrite({"mac": mac, "address": ip_str(address),
                                        "name": name, "os": os}))
        return True

    def set_reservation(self, req: ReservationSet, now: float) -> Result:
        r = req.reservation
        mac = _mac(r.mac)
        if r.name is not None and not MACHINE_NAME.fullmatch(r.name):
            raise Refusal(ErrorCode.BAD_REQUEST, f"{r.name[:80]!r} is not a valid host name")
        if r.os is not None and not WORD.fullmatch(r.os):
            raise Refusal(ErrorCode.BAD_REQUEST, f"os: {r.os[:80]!r} is not a valid name")
        try:
            address = ip_int(r.ip)
        except ValueError:
            raise Refusal(ErrorCode.BAD_REQUEST, f"{r.ip!r} is not an IPv4 address") from None
        pool = self.book.pool_of(address)
        if pool is None or address in pool.excluded:
            raise Refusal(ErrorCode.BAD_REQUEST, f"{r.ip} is not a usable address of any pool")
        if mac in self.book.reservations.fixed_macs:
            raise Refusal(ErrorCode.CONFLICT, f"{mac} is reserved in config.toml")
        owner = self.book.reservations.owner_of(address)
        if owner is not None and owner != mac:
            raise Refusal(ErrorCode.CONFLICT, f"{r.ip} is reserved for {owner}")
        writes: list[Write] = []
        self._reserve(mac, address, r.name, r.os, writes)
        return Result(reply=Done(), writes=writes)

    def delete_reservation(self, req: ReservationDelete, now: float) -> Result:
        mac = _mac(req.mac)
        if mac in self.book.reservations.fixed_macs:
            raise Refusal(ErrorCode.CONFLICT, f"{mac} is reserved in config.toml")
        address = self.book.reservations.remove(mac)
        if address is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no reservation for {mac}")
        self.presets.pop(mac, None)
        self.book.unreserved(address)
        return Result(reply=Done(), writes=[ReservationDeletion(mac)])

    def list_reservations(self, req: ReservationList, now: float) -> Result:
        out = []
        for mac, address in self.book.reservations:
            name, os = self.presets.get(mac, (None, None))
            out.append(Reservation(mac=mac, ip=ip_str(address), name=name, os=os))
        return Result(reply=ReservationListReply(reservations=tuple(out)))

    # -- machines -----------------------------------------------------------------

    def _machine(self, mac: str, now: float) -> Any:
        m = self.machines.get(mac)
        return None if m is None else m.record(self.book.bound_address(mac, now))

    def get_machine(self, req: MachineGet, now: float) -> Result:
        mac = _mac(req.mac)
        record = self._machine(mac, now)
        if record is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no machine {mac}")
        return Result(reply=MachineReply(machine=record))

    def set_machine(self, req: MachineSet, now: float) -> Result:
        mac = _mac(req.mac)
        if mac != req.mac:
            req = MachineSet(mac=mac, name=req.name, os=req.os, machine_class=req.machine_class,
                             labels=req.labels, boot_once=req.boot_once, loader=req.loader,
                             clear=req.clear, actor=req.actor, request_id=req.request_id)
        lease = self.book.by_mac(mac, now)
        number = None
        if lease is not None:
            number = lease.address - self.book.pools[lease.subnet].base
        machine, write = self.machines.change(req, now, number)
        record = machine.record(self.book.bound_address(mac, now))
        detail = _describe(machine)
        if req.actor:
            detail += f" by {clean_text(req.actor, 80)}"
        event = self._event(BootEvent(time=now, mac=mac, service="store",
                                      stage=MACHINE_CHANGED, ip=record.ip, detail=detail))
        return Result(reply=MachineReply(machine=record), writes=[write, *event.writes],
                      publish=event.publish)

    def list_machines(self, req: MachineList, now: float) -> Result:
        return Result(reply=MachineListReply(machines=tuple(
            m.record(self.book.bound_address(m.mac, now)) for m in self.machines.list(req.os))))

    # -- admin tokens ---------------------------------------------------------------

    def create_token(self, req: TokenCreate, now: float) -> Result:
        if not TOKEN_NAME.fullmatch(req.name):
            raise Refusal(ErrorCode.BAD_REQUEST, f"{req.name[:80]!r} is not a token name")
        if not _DIGEST.fullmatch(req.digest):
            raise Refusal(ErrorCode.BAD_REQUEST, "digest: not a hex SHA-256")
        if any(t.name == req.name for t in self.tokens.values()):
            raise Refusal(ErrorCode.CONFLICT, f"a token named {req.name} exists; revoke it first")
        if req.digest in self.tokens:
            raise Refusal(ErrorCode.CONFLICT, "that secret is already a token")
        token = TokenInfo(name=req.name, scope=req.scope, created=now)
        self.tokens[req.digest] = token
        event = self._event(BootEvent(time=now, mac="", service="store", stage=TOKEN_CREATED,
                                      detail=f"{req.name} ({req.scope})"))
        write = TokenWrite({"name": req.name, "scope": req.scope, "digest": req.digest,
                            "created": now})
        return Result(reply=TokenReply(token=token), writes=[write, *event.writes],
                      publish=event.publish)

    def revoke_token(self, req: TokenRevoke, now: float) -> Result:
        for key, token in self.tokens.items():
            if token.name == req.name:
                del self.tokens[key]
                event = self._event(BootEvent(time=now, mac="", service="store",
                                              stage=TOKEN_REVOKED, detail=req.name))
                return Result(reply=Done(), writes=[TokenDeletion(req.name), *event.writes],
                              publish=event.publish)
        raise Refusal(ErrorCode.NOT_FOUND, f"no token named {req.name[:80]}")

    def list_tokens(self, req: TokenList, now: float) -> Result:
        found = sorted(self.tokens.values(), key=lambda t: t.name)
        return Result(reply=TokenListReply(tokens=tuple(found)))

    def check_token(self, req: TokenCheck, now: float) -> Result:
        token = self.tokens.get(req.digest)
        if token is None:
            raise Refusal(ErrorCode.NOT_FOUND, "no such token")
        return Result(reply=TokenReply(token=token))

    # -- events -------------------------------------------------------------------

    def report_event(self, req: EventReport, now: float) -> Result:
        """Record and publish a front end's event; one by address goes to its lease's MAC.

        TFTP and image downloads know only the client's address: the lease
        that holds it names the machine (as ``LeaseLookup`` would, whatever
        its state), so the front end spends no round trip asking first.
        """
        e = req.event
        try:
            if e.mac is not None:
                mac = _mac(e.mac)
            else:
                lease = self.book.by_address(ip_int(e.ip or ""))
                if lease is None:
                    self.events_no_lease += 1
                    return Result()  # a static address: no machine to report to
                mac = lease.mac
        except (Refusal, ValueError):
            return Result()  # notify-only: nobody to tell; the server counts it
        event = self._event(BootEvent(time=e.time, mac=mac, service=e.service, stage=e.stage,
                                      ip=e.ip, detail=e.detail))
        return Result(background=event.writes, publish=event.publish)

    def _event(self, e: BootEvent) -> Result:
        """Number an event; its row (and any pruning) come back as ``writes``."""
        self.last_event_id += 1
        event = BootEvent(id=self.last_event_id, time=e.time, mac=e.mac,
                          service=clean_text(e.service, 16), stage=clean_text(e.stage, 32),
                          ip=ipv4_text(e.ip), detail=clean_text(e.detail))
        writes: list[Write] = [EventWrite({"id": event.id, "time": event.time, "mac": event.mac,
                                           "ip": event.ip, "service": event.service,
                                           "stage": event.stage, "detail": event.detail})]
        self.events_kept += 1
        if self.events_kept > EVENTS_KEPT + EVENTS_PRUNE_STEP:
            writes.append(EventPruning(upto=self.last_event_id - EVENTS_KEPT))
            self.events_kept = EVENTS_KEPT
        return Result(writes=writes, publish=event)

    def list_events(self, req: EventList, now: float) -> Result:
        mac = _mac(req.mac) if req.mac else None

        def answer(conn: Any) -> Reply:
            return EventListReply(events=tuple(query_events(conn, mac, req.after_id, req.limit)))
        return Result(read=answer)

    # -- health -------------------------------------------------------------------

    def details(self, now: float) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {}
        totals = {"bound": 0, "offered": 0, "declined": 0}
        for pool in self.book.pools.values():
            counts = pool.counts(now)
            for k, v in counts.items():
                totals[k] += v
            out[f"pool.{pool.name}.size"] = pool.size
            out[f"pool.{pool.name}.bound"] = counts["bound"]
            out[f"pool.{pool.name}.offered"] = counts["offered"]
            out[f"pool.{pool.name}.declined"] = counts["declined"]
            out[f"pool.{pool.name}.offer_cap"] = self.book.offer_cap(pool)
            out[f"pool.{pool.name}.offers_reclaimed"] = pool.reclaimed
            out[f"pool.{pool.name}.pressure"] = pool.pressure_events
        out.update({f"leases.{k}": v for k, v in totals.items()})
        out["machines"] = len(self.machines)
        out["events"] = self.last_event_id
        out["events.no_lease"] = self.events_no_lease
        return out


def _describe(m: Machine) -> str:
    parts = [f"name={m.name}"]
    if m.os:
        parts.append(f"os={m.os}")
    if m.machine_class:
        parts.append(f"class={m.machine_class}")
    if m.boot_once:
        parts.append("boot_once")
    if m.loader:
        parts.append(f"loader={m.loader}")
    return " ".join(parts)


def _error(code: ErrorCode, detail: str) -> ErrorReply:
    return ErrorReply(code=code.value, detail=detail)

