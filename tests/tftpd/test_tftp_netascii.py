"""The netascii cache: one copy per file content, shared, bounded in bytes.

Real conversions and real transfers over the copies; only the content
source is a stand-in (the real store runs in test_tftp_lab.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astralboot.services.tftpd import netascii as netascii_module
from astralboot.services.tftpd.files import Blob
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache, NoRoom, convert, netascii_size
from astralboot.services.tftpd.options import Limits, negotiate
from astralboot.services.tftpd.packets import (Data, Error, TftpCode, Mode, OptionAck,
                                               ReadRequest, decode, to_netascii)
from astralboot.services.tftpd.policy import NoMemory, ReadService
from astralboot.services.tftpd.transfer import Transfer

PEER = ("192.0.2.10", 40000)
KIB = 1 << 10


def blob(data: bytes) -> Blob:
    return Blob(hashlib.sha256(data).hexdigest(), len(data), data)


def text_of(kib: int, seed: str) -> bytes:
    """A text file of ``kib`` KiB whose netascii copy is about 1/30 larger."""
    line = f"{seed}: a line of a boot menu\n".encode()
    return (line * (kib * KIB // len(line) + 1))[:kib * KIB]


class Holding:
    """A holder that keeps a fixed number of bytes and gives none up."""

    def __init__(self, held: int) -> None:
        self.held = held

    def shed(self, nbytes: int) -> None:
        pass


# --- the conversion ---------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"a\nb\r\nc\rd",  # LF, CR LF, bare CR
    b"\r" * 5 + b"\n" * 5,
    b"no line ends at all",
    b"\r",
    bytes(range(256)) * 3,
])
def test_conversion_in_pieces_equals_the_whole(data: bytes) -> None:
    for chunk in (1, 2, 3, 7, 1 << 20):
        size = netascii_size(data, chunk)
        assert size == len(to_netascii(data))
        if size:
            assert convert(data, size, chunk)[:] == to_netascii(data)


@given(st.binary(min_size=1, max_size=600), st.integers(min_value=1, max_value=64))
def test_conversion_in_pieces_equals_the_whole_for_any_bytes(data: bytes, chunk: int) -> None:
    size = netascii_size(data, chunk)
    assert size == len(to_netascii(data))
    assert convert(data, size, chunk)[:] == to_netascii(data)


# --- sharing ----------------------------------------------------------------------


def test_many_opens_at_once_convert_once_off_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = text_of(256, "menu")
    threads: list[int] = []

    def recording_convert(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return convert(*args)

    monkeypatch.setattr(netascii_module, "convert", recording_convert)
    cache = NetasciiCache(MemoryBudget(4 << 20))

    async def go() -> list[Any]:
        return await asyncio.gather(*(cache.open(blob(data)) for _ in range(144)))

    texts = asyncio.run(go())
    assert cache.conversions == 1 and threads and threading.get_ident() not in threads
    assert all(t is texts[0] for t in texts)  # one copy, shared
    assert texts[0][:] == to_netascii(data)
    assert cache.held == len(to_netascii(data))


def test_a_cancelled_waiter_does_not_cancel_the_conversion() -> None:
    data = text_of(64, "menu")
    cache = NetasciiCache(MemoryBudget(1 << 20))

    async def go() -> Any:
        first = asyncio.ensure_future(cache.open(blob(data)))
        second = asyncio.ensure_future(cache.open(blob(data)))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert asyncio.run(go())[:] == to_netascii(data)
    assert cache.conversions == 1


def test_a_file_without_line_ends_is_served_as_it_is() -> None:
    data = b"x" * 1000
    cache = NetasciiCache(MemoryBudget(1 << 20))
    text = asyncio.run(cache.open(blob(data)))
    assert text is data  # the copy would be the same bytes
    assert cache.conversions == 0 and cache.held == 0


# --- bounded in bytes, least recently used first -------------------------------------


def test_least_recently_used_copies_go_first_by_bytes() -> None:
    a, b, c = text_of(300, "a"), text_of(300, "b"), text_of(300, "c")
    one = len(to_netascii(a))
    cache = NetasciiCache(MemoryBudget(2 * one + one // 2))  # room for two copies

    async def go() -> None:
        await cache.open(blob(a))
        await cache.open(blob(b))
        await cache.open(blob(a))  # a is now the most recently used
        await cache.open(blob(c))

    asyncio.run(go())
    assert blob(a).digest in cache and blob(c).digest in cache
    assert blob(b).digest not in cache
    assert cache.held == 2 * one == cache.cached_bytes


def test_a_copy_in_use_stays_and_an_idle_one_goes() -> None:
    a, b = text_of(300, "a"), text_of(300, "b")
    one = len(to_netascii(a))
    cache = NetasciiCache(MemoryBudget(3 * one))

    async def go() -> None:
        text = await cache.open(blob(a))  # the older one, but in use
        transfer = Transfer(PEER, memoryview(text), negotiate((), one, Limits()), retries=1)
        del text
        await cache.open(blob(b))
        await asyncio.sleep(0)  # the loop's turn that resumed us lets go of the result
        cache.shed(3 * one)
        assert blob(a).digest in cache and blob(b).digest not in cache
        assert cache.held == one
        first = transfer.datagrams_to_send(1.0)[0][0]
        assert decode(first) == Data(block=1, payload=to_netascii(a)[:512])
        del transfer  # the transfer ends
        cache.shed(3 * one)
        assert cache.held == 0 and len(cache) == 0  # idle now: gone, and its bytes with it

    asyncio.run(go())


# --- refusal --------------------------------------------------------------------------


def test_no_room_while_copies_are_in_use_then_room_when_they_end() -> None:
    a, b = text_of(600, "a"), text_of(600, "b")
    cache = NetasciiCache(MemoryBudget(1 << 20))

    async def go() -> None:
        in_use = memoryview(await cache.open(blob(a)))  # a transfer sending a
        with pytest.raises(NoRoom) as info:
            await cache.open(blob(b))
        assert info.value.for_now and info.value.needed == len(to_netascii(b))
        assert info.value.available == (1 << 20) - len(to_netascii(a))
        assert cache.conversions == 1
        in_use.release()
        text_b = await cache.open(blob(b))  # a's idle copy is dropped for it
        assert text_b[:] == to_netascii(b) and blob(a).digest not in cache

    asyncio.run(go())


def test_other_holders_count_against_the_same_budget() -> None:
    a = text_of(600, "a")
    budget = MemoryBudget(1 << 20)
    budget.join(Holding(600 * KIB))  # e.g. the small-file cache
    cache = NetasciiCache(budget)
    with pytest.raises(NoRoom) as info:
        asyncio.run(cache.open(blob(a)))
    assert info.value.for_now and info.value.available == (1 << 20) - 600 * KIB
    assert cache.held == 0 and budget.used == 600 * KIB


def test_a_copy_larger_than_the_budget_never_fits() -> None:
    with pytest.raises(NoRoom) as info:
        asyncio.run(NetasciiCache(MemoryBudget(1 << 20)).open(blob(text_of(1100, "big"))))
    assert not info.value.for_now


def test_the_service_answers_no_room_with_silence_or_an_error(fake_content: Any) -> None:
    fake_content.files.update({"tftp/a.txt": text_of(600, "a"), "tftp/b.txt": text_of(600, "b"),
                               "tftp/big.txt": text_of(1100, "big")})
    service = ReadService(fake_content, Limits(), retries=1,
                          netascii=NetasciiCache(MemoryBudget(1 << 20)))

    def rrq(name: bytes, mode: Mode = Mode.NETASCII) -> ReadRequest:
        return ReadRequest(filename=name, mode=mode, options=(("tsize", "0"),))

    async def go() -> None:
        held = await service.open(rrq(b"a.txt"), PEER)
        assert isinstance(held, Transfer)
        oack = decode(held.datagrams_to_send(1.0)[0][0])
        assert oack == OptionAck(options=(("tsize", str(len(to_netascii(text_of(600, "a"))))),))
        busy = await service.open(rrq(b"b.txt"), PEER)
        assert busy == NoMemory(needed=len(to_netascii(text_of(600, "b"))),
                                available=(1 << 20) - held.size)
        octet = await service.open(rrq(b"b.txt", Mode.OCTET), PEER)
        assert isinstance(octet, Transfer)  # octet needs no copy
        too_big = await service.open(rrq(b"big.txt"), PEER)
        assert isinstance(too_big, Error) and too_big.code == TftpCode.NOT_DEFINED
        assert "use octet" in too_big.message

    asyncio.run(go())
