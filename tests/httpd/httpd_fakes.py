"""A fake store for unit tests of httpd's layers: the real data layout on disk,
machines, leases and events in memory. Integration tests use the real store."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from astralboot.common import tokens
from astralboot.common.errors import BusTimeout, ErrorCode, RemoteError
from astralboot.common.messages import (BootEvent, ContentEntry, EventReport, HealthReply,
                                        LeaseRecord, LeaseReply, MachineRecord, MachineSet,
                                        TokenInfo)
from httpd_support import READ_TOKEN, WRITE_TOKEN


class FakeStore:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.machines_by_mac: dict[str, MachineRecord] = {}
        self.leases_by_ip: dict[str, LeaseRecord] = {}
        self.reported: list[BootEvent] = []  # as the store records them
        self.sent: list[BootEvent] = []  # as httpd sent them
        self.down = False
        self.calls: list[str] = []
        self.changes: list[MachineSet] = []
        self._next = 1
        self.tokens: dict[str, TokenInfo] = {
            tokens.digest(WRITE_TOKEN): TokenInfo(name="admin", scope="write"),
            tokens.digest(READ_TOKEN): TokenInfo(name="watcher", scope="read")}

    # -- test set-up ----------------------------------------------------------

    def add_machine(self, mac: str, ip: str | None = None, hostname: str | None = None,
                    **fields: object) -> MachineRecord:
        name = fields.pop("name", None) or f"node{self._next}"
        self._next += 1
        m = MachineRecord(mac=mac, name=name, ip=ip, **fields)  # type: ignore[arg-type]
        self.machines_by_mac[mac] = m
        if ip:
            self.leases_by_ip[ip] = LeaseRecord(ip=ip, mac=mac, subnet="192.0.2.0/24",
                                                state="bound", expires=time.time() + 3600,
                                                lease_time=3600, hostname=hostname)
        return m

    def add_lease(self, ip: str, mac: str) -> None:
        """A bound lease with no machine record yet (a machine fresh at its menu)."""
        self.leases_by_ip[ip] = LeaseRecord(ip=ip, mac=mac, subnet="192.0.2.0/24",
                                            state="bound", expires=time.time() + 3600,
                                            lease_time=3600)

    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise BusTimeout("ipc:///fake", what, 0.1, 1)

    # -- StoreClient ----------------------------------------------------------

    def token(self, digest: str) -> TokenInfo | None:
        self._check("token")
        return self.tokens.get(digest)

    def machine(self, mac: str) -> MachineRecord | None:
        self._check("machine.get")
        return self.machines_by_mac.get(mac)

    def set_machine(self, change: MachineSet) -> MachineRecord:
        self._check("machine.set")
        self.changes.append(change)
        m = self.machines_by_mac.get(change.mac)
        if m is None:
            m = MachineRecord(mac=change.mac, name=f"node{self._next}")
            self._next += 1
        fields = {f: getattr(m, f) for f in ("name", "os", "machine_class", "labels",
                                              "boot_once", "first_seen", "last_seen", "ip",
                                              "loader")}
        for f in ("name", "os", "machine_class", "labels", "boot_once", "loader"):
            v = getattr(change, f)
            if v is not None:
                fields[f] = v
        for f in change.clear:
            fields[f] = {"labels": {}, "boot_once": False}.get(f)
        if fields["name"] is None:
            fields["name"] = m.name
        m = MachineRecord(mac=change.mac, **fields)  # type: ignore[arg-type]
        self.machines_by_mac[change.mac] = m
        return m

    def machines(self, os: str | None = None) -> list[MachineRecord]:
        self._check("machine.list")
        return [m for m in self.machines_by_mac.values() if os is None or m.os == os]

    def lease_for_ip(self, ip: str) -> LeaseReply | None:
        self._check("lease.lookup")
        lease = self.leases_by_ip.get(ip)
        if lease is None:
            return None
        return LeaseReply(lease=lease, machine=self.machines_by_mac.get(lease.mac))

    def leases(self, state: str | None = None, subnet: str | None = None) -> list[LeaseRecord]:
        self._check("lease.list")
        return [lease for lease in self.leases_by_ip.values()
                if state is None or lease.state == state]

    def events(self, mac: str | None = None, after_id: int = 0,
               limit: int = 1000) -> list[BootEvent]:
        self._check("event.list")
        return [e for e in self.reported if mac is None or e.mac == mac][:limit]

    def stat(self, path: str) -> ContentEntry:
        self._check("content.stat")
        p = self.data / path if path else self.data
        if p.is_dir():
            return ContentEntry(path=path, is_dir=True)
        if not p.is_file():
            raise RemoteError(ErrorCode.NOT_FOUND, path)
        data = p.read_bytes()
        return ContentEntry(path=path, is_dir=False, size=len(data),
                            digest=hashlib.sha256(data).hexdigest())

    def listdir(self, path: str) -> list[ContentEntry]:
        self._check("content.list")
        p = self.data / path
        if not p.is_dir():
            raise RemoteError(ErrorCode.NOT_FOUND, path)
        return [self.stat(str(c.relative_to(self.data))) for c in sorted(p.iterdir())]

    def local_file(self, entry: ContentEntry) -> Path:
        # Like the shared cache on the store's host: no bus round trip.
        self.calls.append("content.local")
        return self.data / entry.path

    def report(self, event: EventReport) -> None:
        # The store's contract (tested against the real one in tests/store):
        # an event without a MAC goes to the lease holding its address, and
        # is dropped when no lease does.
        e = event.event
        self.sent.append(e)
        if e.mac is None:
            lease = self.leases_by_ip.get(e.ip or "")
            if lease is None:
                return
            e = BootEvent(time=e.time, mac=lease.mac, service=e.service, stage=e.stage,
                          ip=e.ip, detail=e.detail)
        self.reported.append(e)

    def health(self, deadline: float) -> HealthReply:
        self._check("health")
        return HealthReply(service="store", version="test", pid=1, host="fake", started=0.0)
