"""Resolving content paths to verified files in the digest cache.

``stat`` answers a path with its SHA-256 and size once the bytes sit,
verified, at ``<cache>/<sha256>``; ``read`` hands out byte ranges of a
cached file to front ends on other hosts. The store remembers which
version of a source file (a CID, or a local file's size/mtime/inode) has
which digest, and the stat signature of each cache file it has verified:
a cache file whose signature changed (or that was never checked by this
process) is hashed again before use, and dropped and fetched again if
its bytes are wrong.

All methods block and are safe to call from several worker threads; the
server calls :meth:`quick_stat` on its loop because it never hashes or
fetches.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterator

from astralboot.common.content import MAX_READ, BadDigest, DigestCache, check_digest
from astralboot.common.messages import ContentEntry

from astralboot.services.store.sources import (BadPath, ContentMissing, ContentUnavailable, Node, Source, clean_path)

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]  # size, mtime_ns, inode of a cache file


class ContentStore:
    def __init__(self, source: Source, cache: DigestCache) -> None:
        self.source = source
        self.cache = cache
        self._lock = threading.Lock()
        self._digests: dict[object, tuple[str, int]] = {}  # source version → (digest, size)
        self._origins: dict[str, Node] = {}  # digest → where to fetch it again
        self._verified: dict[str, Signature] = {}
        self._refs = cache.root / "refs"  # persisted version → digest, for IPFS
        self.stats = {"fetched": 0, "fetched_bytes": 0, "verified": 0, "corrupt": 0}

    # -- requests -----------------------------------------------------------------

    def quick_stat(self, path: str) -> ContentEntry | None:
        """The answer without hashing or fetching, when everything is known and intact."""
        clean = clean_path(path)
        node = self.source.known(clean)
        if node is None:
            return None
        if node.is_dir:
            return ContentEntry(path=clean, is_dir=True)
        known = self._digests.get(node.version)
        if known is None or not self._intact(known[0], known[1]):
            return None
        return ContentEntry(path=clean, is_dir=False, size=known[1], digest=known[0])

    def stat(self, path: str) -> ContentEntry:
        """Resolve ``path``; for a file, make sure its verified bytes are in the cache."""
        clean = clean_path(path)
        node = self.source.stat(clean)
        if node.is_dir:
            return ContentEntry(path=clean, is_dir=True)
        digest, size = self._ensure(node)
        return ContentEntry(path=clean, is_dir=False, size=size, digest=digest)

    def list(self, path: str) -> list[ContentEntry]:
        clean = clean_path(path)
        out = []
        for node in self.source.list(clean):
            known = None if node.is_dir else self._digests.get(node.version)
            out.append(ContentEntry(path=node.path, is_dir=node.is_dir, size=node.size,
                                    digest=known[0] if known else None))
        return out

    def read(self, digest: str, offset: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes at ``offset`` of a cached file, and the file's size."""
        try:
            check_digest(digest)
        except BadDigest as exc:
            raise BadPath(str(exc)) from None
        if offset < 0 or length < 0 or length > MAX_READ:
            raise BadPath(f"read of {length} bytes at {offset}: lengths go up to {MAX_READ}")
        path = self._verified_file(digest)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset > size:
                raise BadPath(f"offset {offset} is past the end ({size} bytes)")
            f.seek(offset)
            return f.read(length), size

    def walk(self, path: str = "") -> Iterator[ContentEntry]:
        """Every entry under ``path``, depth first (for precache and tests)."""
        for entry in self.list(path):
            yield entry
            if entry.is_dir:
                yield from self.walk(entry.path)

    # -- internals ----------------------------------------------------------------

    def _ensure(self, node: Node) -> tuple[str, int]:
        known = self._digests.get(node.version) or self._load_ref(node.version)
        if known is not None and self._intact(known[0], known[1], verify=True):
            self._origins.setdefault(known[0], node)
            return known
        return self._fetch(node)

    def _fetch(self, node: Node) -> tuple[str, int]:
        log.info("fetching %s from %s", node.path, self.source.description)
        digest, size, path = self.cache.add(self.source.open(node))
        if size != node.size:
            # A local file changed while it was read: what was read is consistent
            # (hashed as written) but belongs to no version we could name.
            log.info("%s changed while it was read; not remembering its digest", node.path)
        else:
            self._remember(node.version, digest, size)
        self._origins[digest] = node
        self._mark_verified(digest, path)
        with self._lock:
            self.stats["fetched"] += 1
            self.stats["fetched_bytes"] += size
        return digest, size

    def _intact(self, digest: str, size: int, verify: bool = False) -> bool:
        """Whether the cache file holds ``digest``'s bytes; hashes it only if ``verify``."""
        path = self.cache.path_for(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._verified.get(digest) == signature:
            self.cache.touch(path, st)
            return True
        if not verify:
            return False
        if st.st_size == size and self.cache.verify(digest):
            self._mark_verified(digest, path)
            return True
        log.warning("cache file %s is corrupt; dropped, fetching again", digest)
        self.cache.drop(digest)
        with self._lock:
            self.stats["corrupt"] += 1
            self._verified.pop(digest, None)
        return False

    def _verified_file(self, digest: str) -> Path:
        path = self.cache.path_for(digest)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = -1
        if size >= 0 and self._intact(digest, size, verify=True):
            return path
        origin = self._origins.get(digest)
        if origin is None:
            raise ContentMissing(f"{digest}: not in the cache")
        fetched, _ = self._fetch(origin)
        if fetched != digest:
            raise ContentMissing(f"{digest}: its source {origin.path} has changed")
        return path

    def _mark_verified(self, digest: str, path: Path) -> None:
        st = os.stat(path)
        with self._lock:
            self._verified[digest] = (st.st_size, st.st_mtime_ns, st.st_ino)
            self.stats["verified"] += 1

    def _remember(self, version: object, digest: str, size: int) -> None:
        with self._lock:
            self._digests[version] = (digest, size)
        if self.source.persistent_versions and isinstance(version, str):
            self._refs.mkdir(parents=True, exist_ok=True)
            ref = self._refs / version.replace(":", "-")
            temp = ref.with_name(f".{ref.name}.{threading.get_ident()}")
            temp.write_text(f"{digest} {size}\n")
            os.replace(temp, ref)

    def _load_ref(self, version: object) -> tuple[str, int] | None:
        if not (self.source.persistent_versions and isinstance(version, str)):
            return None
        try:
            digest, size = (self._refs / version.replace(":", "-")).read_text().split()
            known = (check_digest(digest), int(size))
        except (OSError, ValueError, BadDigest):
            return None
        with self._lock:
            self._digests[version] = known
        return known


__all__ = ["ContentStore", "BadPath", "ContentMissing", "ContentUnavailable"]
