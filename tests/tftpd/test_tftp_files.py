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
from astralboot.services.tftpd.files import FileError, StoreContent
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache


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
    with pytest.raises(FileError) as info:
        asyncio.run(store(parts).open("tftp/x"))
    assert info.value.code is code


def test_a_corrupt_cache_file_is_not_served(parts: Any) -> None:
    bus, cache, _ = parts
    data = b"good" * 10
    bus.add("tftp/f", data)
    (cache.root / digest(data)).write_bytes(b"evil" * 10)
    with pytest.raises(FileError) as info:
        asyncio.run(store(parts).open("tftp/f"))
    assert info.value.code is ErrorCode.UNAVAILABLE


def test_a_failing_fetch_is_unavailable(parts: Any) -> None:
    bus, _, _ = parts
    bus.add("tftp/f", b"abc")

    async def fetch(b: Any, c: Any, e: ContentEntry) -> Path:
        raise BusTimeout("tcp://store:5555", "content.read", 3.0, 3)

    with pytest.raises(FileError) as info:
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


def test_small_files_share_the_budget_with_netascii_copies(parts: Any) -> None:
    """Hot files count against memory_max; an idle netascii copy makes room for
    them, one a transfer still sends cannot, and older hot files go instead."""
    bus, cache, _ = parts
    budget = MemoryBudget(8000)
    netascii = NetasciiCache(budget)
    content = StoreContent(bus, cache, None, memory_limit=8000,  # type: ignore[arg-type]
                           budget=budget)
    text = b"menu line\n" * 500  # a 5,500-byte netascii copy
    small = bytes(range(256)) * 7  # 1,792 bytes, under 8000 // 4
    for name, data in (("tftp/menu.txt", text), ("tftp/a", small), ("tftp/b", small[::-1]),
                       ("tftp/c", small[1:] + b"c")):
        bus.add(name, data)
        cache.put(data)

    async def go() -> None:
        in_use = memoryview(await netascii.open(await content.open("tftp/menu.txt")))
        assert budget.used == 5500 and content.memory_bytes == 0  # menu.txt is mapped
        await content.open("tftp/a")
        assert budget.used == 5500 + 1792 == netascii.held + content.memory_bytes
        blob = await content.open("tftp/b")  # 9,084 bytes: a goes, the copy in use stays
        assert bytes(blob.data) == small[::-1]
        assert content.memory_bytes == 1792 and netascii.held == 5500
        in_use.release()  # the transfer ends; the copy stays cached, idle
        assert len(netascii) == 1 and netascii.held == 5500
        await content.open("tftp/c")  # the idle copy goes, both hot files stay
        assert netascii.held == 0 and content.memory_bytes == 2 * 1792
        assert budget.used <= budget.limit

    asyncio.run(go())
