"""The machines the store has seen: names, OS, class, labels, boot-once, loader.

A machine is created on its first bound lease, named ``nodeN`` as the
original server did (N is the address's offset in its subnet, so
192.168.50.3 is ``node3``), or by ``MachineSet`` for a MAC not seen yet.
Names are unique; the database's unique constraint backs that up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from astralboot.common.errors import ErrorCode
from astralboot.common.messages import LOADERS, MachineRecord, MachineSet
from astralboot.common.names import DEFAULT_MACHINE_NAME as _NODE
from astralboot.common.names import MACHINE_NAME as _LABEL
from astralboot.common.names import WORD as _WORD
from astralboot.common.names import label_problem

from astralboot.services.store.journal import MachineWrite
from astralboot.services.store.leases import Refusal


@dataclass(slots=True, eq=False)
class Machine:
    mac: str
    name: str
    os: str | None = None
    machine_class: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    boot_once: bool = False
    first_seen: float = 0.0
    last_seen: float = 0.0
    loader: str | None = None
    stored: bool = False

    def record(self, ip: str | None) -> MachineRecord:
        return MachineRecord(mac=self.mac, name=self.name, os=self.os,
                             machine_class=self.machine_class, labels=dict(self.labels),
                             boot_once=self.boot_once, first_seen=self.first_seen,
                             last_seen=self.last_seen, ip=ip, loader=self.loader)

    def row(self) -> dict[str, Any]:
        return {"mac": self.mac, "name": self.name, "os": self.os,
                "machine_class": self.machine_class, "labels": dict(self.labels),
                "boot_once": self.boot_once, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "loader": self.loader}


class MachineBook:
    def __init__(self) -> None:
        self.by_mac: dict[str, Machine] = {}
        self.by_name: dict[str, Machine] = {}
        self._counter = 1  # for machines created without an address

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            m = Machine(mac=row["mac"], name=row["name"], os=row["os"],
                        machine_class=row["machine_class"], labels=dict(row["labels"] or {}),
                        boot_once=bool(row["boot_once"]), first_seen=row["first_seen"],
                        last_seen=row["last_seen"], loader=row.get("loader"), stored=True)
            self.by_mac[m.mac] = m
            self.by_name[m.name] = m
            number = _NODE.fullmatch(m.name)
            if number:
                self._counter = max(self._counter, int(number.group(1)) + 1)

    def get(self, mac: str) -> Machine | None:
        return self.by_mac.get(mac)

    def __len__(self) -> int:
        return len(self.by_mac)

    def list(self, os: str | None = None) -> list[Machine]:
        found = (m for m in self.by_mac.values() if os is None or m.os == os)
        return sorted(found, key=lambda m: m.name)

    def seen(self, mac: str, now: float, number: int | None, name: str | None = None,
             os: str | None = None) -> tuple[Machine, MachineWrite]:
        """Touch (or create) the machine of a bound lease; ``number`` names it."""
        m = self.by_mac.get(mac)
        if m is None:
            m = self._create(mac, now, number, name, os)
        else:
            m.last_seen = now
        return m, self._write(m)

    def change(self, req: MachineSet, now: float,
               number: int | None) -> tuple[Machine, MachineWrite]:
        """Apply a MachineSet: ``clear`` first, then every field that is not None."""
        for name in req.clear:
            if getattr(req, name) is not None:
                raise Refusal(ErrorCode.BAD_REQUEST, f"{name} is both set and cleared")
        if req.name is not None and not _LABEL.fullmatch(req.name):
            raise Refusal(ErrorCode.BAD_REQUEST, f"{req.name!r} is not a valid host name")
        for what, value in (("os", req.os), ("machine_class", req.machine_class)):
            if value is not None and not _WORD.fullmatch(value):
                raise Refusal(ErrorCode.BAD_REQUEST, f"{what}: {value!r} is not a valid name")
        if req.loader is not None and req.loader not in LOADERS:
            raise Refusal(ErrorCode.BAD_REQUEST,
                          f"loader: {req.loader!r} is not one of {', '.join(LOADERS)}")
        if req.labels is not None:
            problem = label_problem(req.labels)
            if problem is not None:
                raise Refusal(ErrorCode.BAD_REQUEST, problem)
        if req.name is not None:
            other = self.by_name.get(req.name)
            if other is not None and other.mac != req.mac:
                raise Refusal(ErrorCode.CONFLICT, f"name {req.name} belongs to {other.mac}")
        m = self.by_mac.get(req.mac)
        if m is None:
            m = self._create(req.mac, now, number, req.name, None)
        if "name" in req.clear:
            del self.by_name[m.name]  # so the machine may keep its own default name
            m.name = self._free_name(number)
            self.by_name[m.name] = m
        if "os" in req.clear:
            m.os = None
        if "machine_class" in req.clear:
            m.machine_class = None
        if "labels" in req.clear:
            m.labels = {}
        if "boot_once" in req.clear:
            m.boot_once = False
        if "loader" in req.clear:
            m.loader = None
        if req.name is not None and req.name != m.name:
            self._rename(m, req.name)
        if req.os is not None:
            m.os = req.os
        if req.machine_class is not None:
            m.machine_class = req.machine_class
        if req.labels is not None:
            m.labels = dict(req.labels)
        if req.boot_once is not None:
            m.boot_once = req.boot_once
        if req.loader is not None:
            m.loader = req.loader
        return m, self._write(m)

    def imported(self, mac: str, name: str | None, os: str | None, machine_class: str | None,
                 created: float | None, now: float,
                 number: int | None) -> tuple[Machine, MachineWrite]:
        """Take a machine from the original server's machines.json."""
        usable = name if name and _LABEL.fullmatch(name) and (
            name not in self.by_name or self.by_name[name].mac == mac) else None
        m = self.by_mac.get(mac)
        if m is None:
            m = self._create(mac, created or now, number, usable, None)
            m.last_seen = created or now
        elif usable is not None and usable != m.name:
            self._rename(m, usable)
        if os:
            m.os = os if _WORD.fullmatch(os) else m.os
        if machine_class:
            m.machine_class = machine_class if _WORD.fullmatch(machine_class) else m.machine_class
        return m, self._write(m)

    # -- internals ----------------------------------------------------------------

    def _create(self, mac: str, now: float, number: int | None, name: str | None,
                os: str | None) -> Machine:
        if os is not None and not _WORD.fullmatch(os):
            os = None
        if name is None or name in self.by_name or not _LABEL.fullmatch(name):
            name = self._free_name(number)
        m = Machine(mac=mac, name=name, os=os, first_seen=now, last_seen=now)
        self.by_mac[mac] = m
        self.by_name[name] = m
        return m

    def _rename(self, m: Machine, name: str) -> None:
        if self.by_name.get(m.name) is m:
            del self.by_name[m.name]
        m.name = name
        self.by_name[name] = m

    def _free_name(self, number: int | None) -> str:
        if number is None:
            while f"node{self._counter}" in self.by_name:
                self._counter += 1
            number = self._counter
            self._counter += 1
        name = f"node{number}"
        suffix = 2
        while name in self.by_name:
            name = f"node{number}-{suffix}"
            suffix += 1
        return name

    @staticmethod
    def _write(m: Machine) -> MachineWrite:
        write = MachineWrite(m.row(), insert=not m.stored)
        m.stored = True
        return write
