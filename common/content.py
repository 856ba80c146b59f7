"""The digest-keyed file cache shared by the store and the front ends.

Every cached file is named by the hex SHA-256 of its bytes
(``<root>/<sha256>``) and is written only through :meth:`DigestCache.write`
or :meth:`DigestCache.add`: into a temporary file in the same folder,
hashed while written, compared, fsynced and renamed into place. A reader
therefore never sees a partial file, and a file under a digest's name held
the right bytes when it was written.

A front end on the store's host opens ``path_for(digest)`` straight after
the store's ``ContentStat`` reply; a front end on another host calls
:func:`fetch_to_cache` (or :func:`fetch_to_cache_async`), which streams the
bytes over the bus with ``ContentRead`` once and serves locally afterwards.

A cache may be bounded (``[store] cache_max``): after each new file, the
files used least recently (their access time, refreshed on use at most
once a minute) are removed until the cache is back under nine tenths of
its bound. Every process copes with a file that vanished: the store fetches
it again from its source, a front end streams it again from the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable

from astralboot.common.errors import AstralBootError
from astralboot.common.messages import ContentDataReply, ContentEntry, ContentRead

if TYPE_CHECKING:
    from astralboot.common.bus.client import AsyncBusClient, SyncBusClient

READ_CHUNK = 1 << 20  # bytes per ContentRead; the store accepts up to MAX_READ
MAX_READ = 4 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".tmp-"
TOUCH_EVERY = 60.0  # seconds; a used file's access time is refreshed at most this often
LOW_WATER = 0.9  # trimming stops at this share of the bound

log = logging.getLogger(__name__)


class CacheError(AstralBootError):
    """The content cache could not produce a verified file."""


class BadDigest(CacheError):
    """A digest is not 64 lower-case hex characters."""

    def __init__(self, digest: object) -> None:
        self.digest = digest
        super().__init__(f"{digest!r} is not a hex SHA-256 digest")


class DigestMismatch(CacheError):
    """The bytes written do not hash to the digest they were written under."""

    def __init__(self, expected: str, actual: str, size: int) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        super().__init__(f"content for {expected} hashed to {actual} ({size} bytes); discarded")


class SizeMismatch(CacheError):
    """The store sent a different number of bytes than the entry said."""

    def __init__(self, digest: str, expected: int, actual: int) -> None:
        self.digest = digest
        self.expected = expected
        self.actual = actual
        super().__init__(f"content for {digest}: expected {expected} bytes, got {actual}")


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise BadDigest(digest)
    return digest


def sha256_file(path: Path, chunk: int = READ_CHUNK) -> tuple[str, int]:
    """The hex SHA-256 and size of a file's current bytes."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class DigestCache:
    """A folder of immutable files named by their SHA-256, optionally bounded."""

    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes  # 0: no bound
        self.evicted = 0
        self.evicted_bytes = 0

    def path_for(self, digest: str) -> Path:
        return self.root / check_digest(digest)

    def lookup(self, digest: str, size: int) -> Path | None:
        """The cached file if it is present with the expected size (one stat)."""
        path = self.path_for(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if st.st_size != size:
            return None
        self.touch(path, st)
        return path

    def touch(self, path: Path, st: os.stat_result) -> None:
        """Record a use of ``path`` for trimming (its access time; never its mtime)."""
        if self.max_bytes and st.st_atime < time.time() - TOUCH_EVERY:
            try:
                os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
            except FileNotFoundError:
                pass

    def trim(self, keep: str | None = None) -> int:
        """Remove the least recently used files while the cache is over its bound.

        ``keep`` (the file just added) is never removed. Returns the bytes freed.
        """
        if not self.max_bytes:
            return 0
        files = []
        total = 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not _DIGEST.match(entry.name):
                continue  # temporaries, the store's refs/ folder
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            total += st.st_size
            if entry.name != keep:
                files.append((st.st_atime, st.st_size, entry.path))
        if total <= self.max_bytes:
            return 0
        goal = int(self.max_bytes * LOW_WATER)
        freed = 0
        for _, size, path in sorted(files):
            if total - freed <= goal:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # another process trimmed it first
            freed += size
            self.evicted += 1
        self.evicted_bytes += freed
        log.info("cache %s over its bound of %d bytes: removed %d bytes used least recently",
                 self.root, self.max_bytes, freed)
        return freed

    def write(self, digest: str, chunks: Iterable[bytes]) -> Path:
        """Store ``chunks`` under ``digest``; raise DigestMismatch if they differ."""
        return _drain(self.spool(digest), chunks)

    def add(self, chunks: Iterable[bytes]) -> tuple[str, int, Path]:
        """Store bytes whose digest is not known yet; returns (digest, size, path)."""
        spool = self.spool(None)
        path = _drain(spool, chunks)
        return path.name, spool.size, path

    def spool(self, digest: str | None) -> "Spool":
        """A temporary file to feed; ``finish()`` verifies and publishes it."""
        if digest is not None:
            check_digest(digest)
        return Spool(self, digest)

    def verify(self, digest: str) -> bool:
        """Re-hash a cached file; a file that fails is removed."""
        path = self.path_for(digest)
        try:
            actual, _ = sha256_file(path)
        except FileNotFoundError:
            return False
        if actual == digest:
            return True
        path.unlink(missing_ok=True)
        return False

    def drop(self, digest: str) -> None:
        self.path_for(digest).unlink(missing_ok=True)

    def remove_stale_temporaries(self, older_than: float = 3600.0) -> int:
        """Delete temporary files left by a writer that died mid-way."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


class Spool:
    """One file being written into the cache: temp file, hash, fsync, rename."""

    def __init__(self, cache: DigestCache, digest: str | None) -> None:
        self.cache = cache
        self.root = root = cache.root
        self.expected = digest
        self.size = 0
        self._hash = hashlib.sha256()
        root.mkdir(parents=True, exist_ok=True)
        self._temp = root / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        self._file = open(self._temp, "xb")

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._temp.unlink(missing_ok=True)

    def finish(self) -> Path:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            actual = self._hash.hexdigest()
            if self.expected is not None and actual != self.expected:
                raise DigestMismatch(self.expected, actual, self.size)
            os.chmod(self._temp, 0o644)
            final = self.root / actual
            os.replace(self._temp, final)
        except BaseException:
            self.abort()
            raise
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.cache.trim(keep=actual)
        return final


def _drain(spool: Spool, chunks: Iterable[bytes]) -> Path:
    try:
        for chunk in chunks:
            spool.feed(chunk)
    except BaseException:
        spool.abort()
        raise
    return spool.finish()


def _entry_digest(entry: ContentEntry) -> str:
    if entry.is_dir or entry.digest is None:
        raise CacheError(f"{entry.path} is a folder, not a file")
    return check_digest(entry.digest)


def _checked_data(reply: object, digest: str, offset: int, size: int) -> bytes:
    if not isinstance(reply, ContentDataReply):
        raise CacheError(f"unexpected reply {type(reply).__name__} to content.read")
    if reply.size != size:
        raise SizeMismatch(digest, size, reply.size)
    if reply.offset != offset or (not reply.data and offset < size):
        raise CacheError(f"content.read of {digest} at {offset} returned nothing")
    if offset + len(reply.data) > size:
        raise SizeMismatch(digest, size, offset + len(reply.data))
    return reply.data


FETCH_ATTEMPTS = 2  # what arrived hashed wrong: the store re-verifies its copy, so once more

# What the fetch asks of the loop that drives it: a ContentRead to send to
# the store (the reply is sent back in), or blocking file work to run (in a
# worker thread under asyncio; its result is sent back in).
Step = ContentRead | Callable[[], Any]


def _fetch(cache: DigestCache, digest: str, size: int) -> Generator[Step, Any, Path]:
    """Every rule of a fetch, with no I/O of its own: the one copy both loops drive.

    Each reply is checked against the entry's size and the offset asked for;
    the spool checks the digest; anything that goes wrong, including an
    exception the driver throws in (a bus timeout, a cancellation), discards
    the spool before it propagates.
    """
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        spool = cache.spool(digest)
        try:
            offset = 0
            while offset < size:
                reply = yield ContentRead(digest=digest, offset=offset,
                                          length=min(READ_CHUNK, size - offset))
                data = _checked_data(reply, digest, offset, size)
                yield partial(spool.feed, data)
                offset += len(data)
        except BaseException:
            spool.abort()
            raise
        try:
            return (yield spool.finish)  # finish() discards the spool itself if it fails
        except DigestMismatch:
            if attempt == FETCH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def fetch_to_cache(bus: "SyncBusClient", cache: DigestCache, entry: ContentEntry) -> Path:
    """The cached file for ``entry``, streaming it from the store if missing.

    Raises :class:`RemoteError`/:class:`BusTimeout` when the store cannot
    send it, :class:`CacheError` when what arrived is wrong (nothing is left
    behind; the next call fetches again).
    """
    digest = _entry_digest(entry)
    found = cache.lookup(digest, entry.size)
    if found is not None:
        return found
    steps = _fetch(cache, digest, entry.size)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        value = error = None
        try:
            value = bus.call(step) if isinstance(step, ContentRead) else step()
        except BaseException as exc:  # thrown into the fetch, which cleans up and re-raises
            error = exc


async def fetch_to_cache_async(bus: "AsyncBusClient", cache: DigestCache,
                               entry: ContentEntry) -> Path:
    """:func:`fetch_to_cache` for asyncio code.

    Writing, hashing and the fsync run in a worker thread: a 40 MB fetch
    must not stall the other transfers served from the same loop.
    """
    digest = _entry_digest(entry)
    found = cache.lookup(digest, entry.size)
    if found is not None:
        return found
    steps = _fetch(cache, digest, entry.size)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        value = error = None
        try:
            if isinstance(step, ContentRead):
                value = await bus.call(step)
            else:
                value = await asyncio.to_thread(step)
        except BaseException as exc:  # thrown into the fetch, which cleans up and re-raises
            error = exc
