"""The boot content and machine state httpd reads, behind short-lived caches.

:class:`Catalog` answers "which OS folders are there", "what is this path's
digest" and "give me this template compiled"; :class:`Directory` answers
"who is this machine" and "which MAC has this address". Each asks the store
at most once per key and TTL, so a busy boot script or image costs no bus
round trip. Content stats are served stale for a while if the store is
briefly unreachable (a restart), since a digest names immutable bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from astralboot.common.errors import ErrorCode, RemoteError
from astralboot.common.messages import ContentEntry, LeaseReply, MachineRecord, MachineSet
from astralboot.services.httpd.cache import Clock, Lru, TtlCache
from astralboot.services.httpd.classes import OsInfo, parse_os_info
from astralboot.services.httpd.errors import NotFound, UnfitContent
from astralboot.services.httpd.storeclient import StoreClient
from astralboot.services.httpd.templates import Compiled, TemplateCache

log = logging.getLogger(__name__)

CONTENT_TTL = 2.0        # how long a path → digest answer is trusted
CONTENT_STALE = 300.0    # ... and served anyway while the store is unreachable
MACHINE_TTL = 1.0        # machine records behind boot scripts
SMALL_FILE = 1 << 20     # templates and classes.toml are read into memory up to this


class Catalog:
    def __init__(self, store: StoreClient, *, clock: Clock = time.monotonic) -> None:
        self.store = store
        self._stats: TtlCache[str, ContentEntry | None] = TtlCache(
            CONTENT_TTL, 8192, stale_for=CONTENT_STALE, clock=clock)
        self._oses: TtlCache[str, list[OsInfo]] = TtlCache(
            CONTENT_TTL, 1, stale_for=CONTENT_STALE, clock=clock)
        self._bytes: Lru[str, bytes] = Lru(512)
        self.templates = TemplateCache()

    # -- content ------------------------------------------------------------

    def find(self, path: str) -> ContentEntry | None:
        """The entry at ``path``, or None when there is nothing there."""
        return self._stats.get(path, lambda: self._stat(path))

    def _stat(self, path: str) -> ContentEntry | None:
        try:
            return self.store.stat(path)
        except RemoteError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise

    def file(self, path: str) -> tuple[ContentEntry, Path]:
        """A file's entry and a verified local path to its bytes."""
        entry = self.find(path)
        if entry is None or entry.is_dir or entry.digest is None:
            raise NotFound(path)
        return entry, self.store.local_file(entry)

    def read(self, path: str) -> tuple[ContentEntry, bytes] | None:
        """A small file's bytes (templates, classes.toml), or None if absent."""
        entry = self.find(path)
        if entry is None or entry.is_dir or entry.digest is None:
            return None
        data = self._bytes.get(entry.digest)
        if data is None:
            if entry.size > SMALL_FILE:
                raise UnfitContent(f"{path} is too large for a template")
            data = self._bytes.put(entry.digest, self.store.local_file(entry).read_bytes())
        return entry, data

    def forget(self) -> None:
        self._stats.clear()
        self._oses.clear()

    def expire(self) -> None:
        """Let every content answer run out now: the next use asks the store again,
        and while the store does not answer the old answer is served (for a while)."""
        self._stats.expire()
        self._oses.expire()

    # -- OS folders and templates --------------------------------------------

    def oses(self) -> list[OsInfo]:
        """Bootable OS folders (those with ``template/start.tmpl``), by name."""
        return self._oses.get("boot", self._scan)

    def _scan(self) -> list[OsInfo]:
        found = []
        for entry in sorted(self.store.listdir("boot"), key=lambda e: e.path):
            if not entry.is_dir:
                continue
            name = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if self.find(f"boot/{name}/template/start.tmpl") is None:
                log.debug("boot/%s has no template/start.tmpl; not offered", name)
                continue
            toml = self.read(f"boot/{name}/classes.toml")
            found.append(parse_os_info(name, toml[1] if toml else None))
        return found

    def os(self, name: str) -> OsInfo:
        for info in self.oses():
            if info.name == name:
                return info
        raise NotFound(f"no bootable OS folder boot/{name}")

    def template(self, os: str, name: str) -> Compiled | None:
        path = f"boot/{os}/template/{name}.tmpl"
        found = self.read(path)
        if found is None:
            return None
        entry, data = found
        assert entry.digest is not None
        return self.templates.get(entry.digest, path, data)


class Directory:
    """Machines, cached briefly (changes made here drop the cache at once), and leases."""

    def __init__(self, store: StoreClient, *, clock: Clock = time.monotonic) -> None:
        self.store = store
        self._machines: TtlCache[str, MachineRecord | None] = TtlCache(MACHINE_TTL, 16384,
                                                                       clock=clock)

    def machine(self, mac: str) -> MachineRecord | None:
        return self._machines.get(mac, lambda: self.store.machine(mac))

    def set(self, change: MachineSet) -> MachineRecord:
        self._machines.drop(change.mac)
        record = self.store.set_machine(change)
        self._machines.put(record.mac, record)
        return record

    def lease_for_ip(self, ip: str) -> LeaseReply | None:
        """Uncached: templates need the current lease."""
        return self.store.lease_for_ip(ip)
