"""Fetching into the digest cache, sync and async, against a scripted store.

Both entry points drive the same fetch; each case runs through both. The
store here is a fake of the bus client alone (the real store and bus are in
tests/store/test_store_content.py): it answers ContentRead from bytes it is
given, or breaks in one chosen way.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from astralboot.common.content import (READ_CHUNK, CacheError, DigestCache, DigestMismatch,
                                       SizeMismatch, fetch_to_cache, fetch_to_cache_async)
from astralboot.common.errors import BusTimeout
from astralboot.common.messages import ContentDataReply, ContentEntry, ContentRead

DATA = bytes(range(256)) * (READ_CHUNK // 256 * 2 + 3)  # two full chunks and a short one
DIGEST = hashlib.sha256(DATA).hexdigest()


class ScriptedStore:
    """Answers ContentRead from ``served``; ``breaks`` names what goes wrong."""

    def __init__(self, served: list[bytes], breaks: str = "") -> None:
        self.served = served  # one byte string per fetch attempt; the last repeats
        self.breaks = breaks
        self.reads: list[ContentRead] = []
        self.attempt = 0

    def answer(self, req: ContentRead) -> ContentDataReply:
        if req.offset == 0 and self.reads:
            self.attempt += 1
        self.reads.append(req)
        data = self.served[min(self.attempt, len(self.served) - 1)]
        if self.breaks == "timeout" and req.offset > 0:
            raise BusTimeout("ipc:///run/astralboot/bus.sock", req.kind, 3.0, 3)
        size = len(DATA) + 1 if self.breaks == "size" else len(DATA)
        chunk = data[req.offset:req.offset + req.length]
        if self.breaks == "long" and req.offset > 0:
            chunk += b"x" * req.length
        return ContentDataReply(digest=req.digest, offset=req.offset, size=size, data=chunk)


class SyncBus:
    def __init__(self, store: ScriptedStore) -> None:
        self.store = store

    def call(self, req: ContentRead) -> ContentDataReply:
        return self.store.answer(req)


class AsyncBus:
    def __init__(self, store: ScriptedStore) -> None:
        self.store = store

    async def call(self, req: ContentRead) -> ContentDataReply:
        await asyncio.sleep(0)
        return self.store.answer(req)


def fetch(kind: str, store: ScriptedStore, cache: DigestCache) -> Path:
    entry = ContentEntry(path="boot/debian/images/linux", is_dir=False, digest=DIGEST, size=len(DATA))
    if kind == "sync":
        return fetch_to_cache(SyncBus(store), cache, entry)  # type: ignore[arg-type]
    return asyncio.run(fetch_to_cache_async(AsyncBus(store), cache, entry))  # type: ignore[arg-type]


def leftovers(cache: DigestCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir()) if cache.root.exists() else []


BAD = bytes(len(DATA))  # the right size, the wrong bytes


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_a_fetch_streams_in_chunks_and_then_serves_from_the_cache(kind: str,
                                                                   tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache")
    store = ScriptedStore([DATA])
    path = fetch(kind, store, cache)
    assert path == cache.path_for(DIGEST) and path.read_bytes() == DATA
    assert [(r.offset, r.length) for r in store.reads] == [
        (0, READ_CHUNK), (READ_CHUNK, READ_CHUNK), (2 * READ_CHUNK, len(DATA) - 2 * READ_CHUNK)]
    assert fetch(kind, store, cache) == path and len(store.reads) == 3  # no more reads
    assert leftovers(cache) == [DIGEST]


def test_bytes_that_hash_wrong_once_are_fetched_again(kind: str, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache")
    store = ScriptedStore([BAD, DATA])
    assert fetch(kind, store, cache).read_bytes() == DATA
    assert len(store.reads) == 6 and leftovers(cache) == [DIGEST]


def test_bytes_that_hash_wrong_twice_raise_and_leave_nothing(kind: str, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache")
    store = ScriptedStore([BAD])
    with pytest.raises(DigestMismatch):
        fetch(kind, store, cache)
    assert len(store.reads) == 6 and leftovers(cache) == []


@pytest.mark.parametrize("breaks, error", [
    ("size", SizeMismatch),  # the store says the file has another size
    ("long", SizeMismatch),  # more bytes than the entry holds
    ("timeout", BusTimeout),  # the store went away mid-way
])
def test_a_broken_fetch_raises_and_discards_the_spool(kind: str, tmp_path: Path, breaks: str,
                                                      error: type[Exception]) -> None:
    cache = DigestCache(tmp_path / "cache")
    with pytest.raises(error):
        fetch(kind, ScriptedStore([DATA], breaks), cache)
    assert leftovers(cache) == []


def test_an_empty_reply_before_the_end_is_an_error(kind: str, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache")
    with pytest.raises(CacheError, match="returned nothing"):
        fetch(kind, ScriptedStore([DATA[:READ_CHUNK]]), cache)
    assert leftovers(cache) == []


def test_a_cancelled_async_fetch_discards_the_spool(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache")
    entry = ContentEntry(path="boot/x", is_dir=False, digest=DIGEST, size=len(DATA))
    started = asyncio.Event()

    class SlowBus:
        async def call(self, req: ContentRead) -> ContentDataReply:
            if req.offset > 0:
                started.set()
                await asyncio.sleep(60)
            return ScriptedStore([DATA]).answer(req)

    async def run() -> None:
        task = asyncio.create_task(fetch_to_cache_async(SlowBus(), cache, entry))  # type: ignore[arg-type]
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert leftovers(cache) == []
