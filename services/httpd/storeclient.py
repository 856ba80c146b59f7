"""What httpd needs from the store, and the real client that asks it over the bus.

Resources never see the bus: they talk to a :class:`StoreClient`. Tests hand
:func:`~astralboot.services.httpd.app.create_app` a fake with the same
methods; production hands it a :class:`BusStore`. Failures surface as the
project's own errors, mapped to HTTP once in ``app.py``: a
:class:`~astralboot.common.errors.RemoteError` with the code the store
answered (``not_found`` becomes 404, ``unavailable`` 503, ...),
:class:`~astralboot.common.errors.BusTimeout` when the store does not answer
within its deadline (503 with Retry-After), and httpd's own
:class:`~.errors.NoLocalCopy` or :class:`~.errors.UnfitContent` when the
bytes cannot be had here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from astralboot.common.bus.schema import Request
from astralboot.common.errors import ErrorCode, RemoteError
from astralboot.common.messages import (BootEvent, ContentEntry, ContentList, ContentListReply,
                                ContentStat, ContentStatReply, EventList, EventListReply,
                                EventReport, Health, HealthReply, LeaseList, LeaseListReply,
                                LeaseLookup, LeaseRecord, LeaseReply, LeaseState, MachineGet,
                                MachineList, MachineListReply, MachineRecord, MachineReply,
                                MachineSet, TokenCheck, TokenInfo, TokenReply)
from astralboot.services.httpd.errors import NoLocalCopy, UnfitContent

if TYPE_CHECKING:
    from astralboot.common.bus.client import SyncBusClient

log = logging.getLogger(__name__)


class StoreClient(Protocol):
    """The store as httpd sees it. Every method may raise BusTimeout or RemoteError;
    :meth:`local_file` also httpd's NoLocalCopy or UnfitContent."""

    def machine(self, mac: str) -> MachineRecord | None: ...

    def set_machine(self, change: MachineSet) -> MachineRecord: ...

    def machines(self, os: str | None = None) -> list[MachineRecord]: ...

    def lease_for_ip(self, ip: str) -> LeaseReply | None: ...

    def leases(self, state: LeaseState | None = None,
               subnet: str | None = None) -> list[LeaseRecord]: ...

    def events(self, mac: str | None = None, after_id: int = 0,
               limit: int = 1000) -> list[BootEvent]: ...

    def stat(self, path: str) -> ContentEntry: ...

    def listdir(self, path: str) -> list[ContentEntry]: ...

    def local_file(self, entry: ContentEntry) -> Path:
        """A verified local copy of a file's bytes (fetched into the cache if needed)."""
        ...

    def report(self, event: EventReport) -> None:
        """Fire and forget; never blocks, never raises."""
        ...

    def health(self, deadline: float) -> HealthReply: ...

    def token(self, digest: str) -> TokenInfo | None:
        """The admin token with this SHA-256, or None (unknown or revoked)."""
        ...


def _expect(reply: object, kind: type) -> None:
    if not isinstance(reply, kind):
        raise RemoteError(ErrorCode.INTERNAL,
                          f"store answered {type(reply).__name__}, expected {kind.__name__}")


class BusStore:
    """:class:`StoreClient` over the ZeroMQ bus, with content from a digest cache.

    On the store's own host the cache folder is shared, so a stat is enough
    for the bytes to be there; elsewhere :func:`fetch_to_cache` streams them
    in once. A file under its digest's name was verified as it was written,
    so an image request costs one stat and no hashing.
    """

    def __init__(self, bus: "SyncBusClient", cache_root: Path, cache_max: int = 0) -> None:
        from astralboot.common.content import DigestCache  # the store engineer's module
        self.bus = bus
        self.cache = DigestCache(cache_root, cache_max)
        self._fetching: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- machines and leases ------------------------------------------------

    def _found(self, request: Request, kind: type) -> Any:
        """The reply of ``kind`` to ``request``, or None when the store has no such thing."""
        try:
            reply = self.bus.call(request)
        except RemoteError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise
        _expect(reply, kind)
        return reply

    def machine(self, mac: str) -> MachineRecord | None:
        reply = self._found(MachineGet(mac=mac), MachineReply)
        return reply.machine if reply else None

    def set_machine(self, change: MachineSet) -> MachineRecord:
        reply = self.bus.call(change)
        _expect(reply, MachineReply)
        return reply.machine  # type: ignore[attr-defined, no-any-return]

    def machines(self, os: str | None = None) -> list[MachineRecord]:
        reply = self.bus.call(MachineList(os=os))
        _expect(reply, MachineListReply)
        return list(reply.machines)  # type: ignore[attr-defined]

    def lease_for_ip(self, ip: str) -> LeaseReply | None:
        return self._found(LeaseLookup(ip=ip), LeaseReply)  # type: ignore[no-any-return]

    def leases(self, state: LeaseState | None = None,
               subnet: str | None = None) -> list[LeaseRecord]:
        reply = self.bus.call(LeaseList(state=state, subnet=subnet))
        _expect(reply, LeaseListReply)
        return list(reply.leases)  # type: ignore[attr-defined]

    def events(self, mac: str | None = None, after_id: int = 0,
               limit: int = 1000) -> list[BootEvent]:
        reply = self.bus.call(EventList(mac=mac, after_id=after_id, limit=limit))
        _expect(reply, EventListReply)
        return list(reply.events)  # type: ignore[attr-defined]

    # -- content ------------------------------------------------------------

    def stat(self, path: str) -> ContentEntry:
        reply = self.bus.call(ContentStat(path=path))
        _expect(reply, ContentStatReply)
        return reply.entry  # type: ignore[attr-defined, no-any-return]

    def listdir(self, path: str) -> list[ContentEntry]:
        reply = self.bus.call(ContentList(path=path))
        _expect(reply, ContentListReply)
        return list(reply.entries)  # type: ignore[attr-defined]

    def local_file(self, entry: ContentEntry) -> Path:
        from astralboot.common.content import CacheError, fetch_to_cache
        digest = entry.digest
        if digest is None:
            raise UnfitContent(f"{entry.path} is a folder")
        known = self.cache.lookup(digest, entry.size)  # one stat; marks the file used
        if known is not None:
            return known
        with self._lock:
            gate = self._fetching.setdefault(digest, threading.Lock())
        with gate:  # one download per digest, however many requests wait for it
            path = self.cache.lookup(digest, entry.size)
            if path is None:
                log.info("fetching %s (%s, %d bytes) into %s", entry.path, digest[:12],
                         entry.size, self.cache.path_for(digest).parent)
                try:
                    path = fetch_to_cache(self.bus, self.cache, entry)
                except CacheError as exc:  # bad bytes were dropped; a retry fetches again
                    raise NoLocalCopy(str(exc)) from None
        with self._lock:
            self._fetching.pop(digest, None)
        return path

    # -- events and health --------------------------------------------------

    def report(self, event: EventReport) -> None:
        try:
            self.bus.notify(event)
        except Exception:  # an event must never break serving
            log.exception("could not report %s for %s", event.event.stage, event.event.mac)

    def health(self, deadline: float) -> HealthReply:
        reply = self.bus.call(Health(), deadline=deadline)
        _expect(reply, HealthReply)
        return reply  # type: ignore[return-value]

    def token(self, digest: str) -> TokenInfo | None:
        reply = self._found(TokenCheck(digest=digest), TokenReply)
        return reply.token if reply else None
