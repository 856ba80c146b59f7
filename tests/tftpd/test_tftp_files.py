"""StoreContent: stat over the bus, bytes from the digest cache, hot files in memory.

The bus and the cache are stand-ins here (this tests one layer); the real
store is used in test_tftp_lab.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
from pathlib import Path
from typing import Any

import pytest

from astralboot.common.errors import BusTimeout, ErrorCode
from astralboot.common.messages import (ContentEntry, ContentStat, ContentStatReply, ErrorReply,
                                        HealthReply)
from astralboot.services.tftpd.files import ContentError, StoreContent


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeBus:
    def __init__(self) -> None:
        self.entries: dict[str, ContentEntry] = {}
        self.replies: dict[str, Any] = {}
        self.requests: list[Any] = []

    def add(self, path: str, data: bytes) -> ContentEntry:
        entry = ContentEntry(path=path, is_dir=False, size=len(data), digest=digest(data))
        self.entries[path] = entry
        return entry

    async def request(self, msg: Any, *, deadline: float | None = None) -> Any:
        self.requests.append(msg)
        await asyncio.sleep(0)
        assert isinstance(msg, ContentStat)
        if msg.path in self.replies:
            reply = self.replies[msg.path]
            if isinstance(reply, Exception):
                raise reply
            return reply
        if msg.path in self.entries:
            return ContentStatReply(entry=self.entries[msg.path])
        return ErrorReply(code="not_found", detail=msg.path)


class FakeCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lookups = 0

    def put(self, data: bytes) -> Path:
        path = self.root / digest(data)
        path.write_bytes(data)
        return path

    def lookup(self, dig: str, size: int) -> Path | None:
        self.lookups += 1
        path = self.root / dig
        return path if path.exists() and path.stat().st_size == size else None


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FakeBus, FakeCache, list[ContentEntry]]:
    return FakeBus(), FakeCache(tmp_path), []


def store(parts: Any, memory_limit: int = 4096, fetch: Any = None) -> StoreContent:
    bus, cache, fetched = parts

    async def fetch_into_cache(b: Any, c: FakeCache, entry: ContentEntry) -> Path:
        fetched.append(entry)
        return c.root / str(entry.digest)

    return StoreContent(bus, cache, fetch or fetch_into_cache,  # type: ignore[arg-type]
                        memory_limit=memory_limit)


def test_small_file_is_read_once_and_kept_in_memory(parts: Any) -> None:
    bus, cache, _ = parts
    data = b"iPXE" * 200  # 800 bytes, under 4096 // 4
    bus.add("tftp/ipxe.efi", data)
    cache.put(data)
    content = store(parts)

    async def go() -> list[Any]:
        return [await content.open("tftp/ipxe.efi") for _ in range(3)]

    blobs = asyncio.run(go())
    assert all(bytes(b.data) == data and b.size == len(data) for b in blobs)
    assert isinstance(blobs[0].data, bytes)
    assert cache.lookups == 1
    assert len(bus.requests) == 3  # the store is still asked each time (files change)
    assert content.memory_bytes == len(data)


def test_large_file_is_memory_mapped(parts: Any) -> None:
    bus, cache, _ = parts
    data = bytes(range(256)) * 64  # 16 KiB, over the memory limit
    bus.add("tftp/big", data)
    cache.put(data)
    blob = asyncio.run(store(parts).open("tftp/big"))
    assert isinstance(blob.data, mmap.mmap)
    assert blob.data[:] == data


def test_many_requests_at_once_load_the_file_once(parts: Any) -> None:
    bus, cache, _ = parts
    data = b"x" * 900
    bus.add("tftp/ipxe.efi", data)
    cache.put(data)
    content = store(parts)

    async def go() -> list[Any]:
        return await asyncio.gather(*(content.open("tftp/ipxe.efi") for _ in range(50)))

    blobs = asyncio.run(go())
    assert len({id(b.data) for b in blobs}) == 1
    assert cache.lookups == 1


def test_missing_from_the_cache_is_fetched_once(parts: Any) -> None:
    bus, cache, fetched = parts
    data = b"y" * 100
    entry = bus.add("tftp/remote", data)

    async def fetch(b: Any, c: FakeCache, e: ContentEntry) -> Path:
        fetched.append(e)
        return c.put(data)

    content = store(parts, fetch=fetch)
    asyncio.run(content.open("tftp/remote"))
    asyncio.run(content.open("tftp/remote"))
    assert fetched == [entry]


@pytest.mark.parametrize("reply,code", [
    (ErrorReply(code="not_found", detail="x"), ErrorCode.NOT_FOUND),
    (ErrorReply(code="unavailable", detail="IPFS daemon down"), ErrorCode.UNAVAILABLE),
    (ErrorReply(code="bad_request", detail="symlink leaves the root"), ErrorCode.BAD_REQUEST),
    (BusTimeout("ipc://x", "content.stat", 3.0, 3), ErrorCode.UNAVAILABLE),
    (ContentStatReply(entry=ContentEntry(path="tftp/d", is_dir=True)), ErrorCode.NOT_FOUND),
    (ContentStatReply(entry=ContentEntry(path="tftp/d", is_dir=False, size=3)),
     ErrorCode.INTERNAL),  # no digest
    (HealthReply(service="store", version="0", pid=1, host="h", started=0.0),
     ErrorCode.INTERNAL),
])
def test_store_answers_become_content_errors(parts: Any, reply: Any, code: ErrorCode) -> None:
    bus, _, _ = parts
    bus.replies["tftp/x"] = reply
    with pytest.raises(ContentError) as info:
        asyncio.run(store(parts).open("tftp/x"))
    assert info.value.code is code


def test_a_corrupt_cache_file_is_not_served(parts: Any) -> None:
    bus, cache, _ = parts
    data = b"good" * 10
    bus.add("tftp/f", data)
    (cache.root / digest(data)).write_bytes(b"evil" * 10)
    with pytest.raises(ContentError) as info:
        asyncio.run(store(parts).open("tftp/f"))
    assert info.value.code is ErrorCode.UNAVAILABLE


def test_a_failing_fetch_is_unavailable(parts: Any) -> None:
    bus, _, _ = parts
    bus.add("tftp/f", b"abc")

    async def fetch(b: Any, c: Any, e: ContentEntry) -> Path:
        raise BusTimeout("tcp://store:5555", "content.read", 3.0, 3)

    with pytest.raises(ContentError) as info:
        asyncio.run(store(parts, fetch=fetch).open("tftp/f"))
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "content.read" in info.value.detail


def test_memory_stays_within_its_limit(parts: Any) -> None:
    bus, cache, _ = parts
    content = store(parts, memory_limit=4000)

    async def go() -> None:
        for i in range(10):
            data = bytes([i]) * 900
            bus.add(f"tftp/f{i}", data)
            cache.put(data)
            assert bytes((await content.open(f"tftp/f{i}")).data) == data
            assert content.memory_bytes <= 4000

    asyncio.run(go())
    assert content.memory_bytes == 4 * 900  # the four most recent
