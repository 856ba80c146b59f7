"""dhcpd's bus link to the store, over real ZeroMQ sockets: correlation of many
concurrent requests, retries after a lost reply, a typed timeout when the
store is down, recovery when it returns, notifications."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from astralboot.common.bus import server as bus_server
from astralboot.common.bus.events import boot_event
from astralboot.common.errors import BusTimeout
from astralboot.common.messages import (
    ErrorReply,
    EventReport,
    MachineGet,
    MachineRecord,
    MachineReply,
)
from astralboot.services.dhcpd.storelink import StoreLink


class Peer:
    """A ROUTER in a thread answering MachineGet(mac) with that MAC's machine.

    ``drop`` decides, per request id and copy number, whether to ignore it.
    """

    def __init__(self, endpoint: str, drop: Callable[[int, int], bool] = lambda rid, n: False):
        self.endpoint = endpoint
        self.drop = drop
        self.seen: Counter[int] = Counter()
        self.events: list[EventReport] = []
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Peer:  # noqa: PYI034
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _serve(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        bus_server.bind(sock, self.endpoint, "store")
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                incoming, _ = bus_server.decode(sock.recv_multipart(), self.stats)
                if incoming is None:
                    continue
                request = incoming.request
                if isinstance(request, EventReport):
                    self.events.append(request)
                    continue
                self.seen[request.request_id] += 1
                if self.drop(request.request_id, self.seen[request.request_id]):
                    continue
                assert isinstance(request, MachineGet)
                reply = MachineReply(machine=MachineRecord(mac=request.mac, name="node1"))
                sock.send_multipart(bus_server.encode(incoming, reply))
        finally:
            sock.close(linger=0)
            ctx.term()


def endpoint(tmp: Path) -> str:
    return f"ipc://{tmp}/bus.sock"


async def with_link(ep: str, deadline: float, body: Callable[[StoreLink], object]) -> object:
    link = StoreLink(ep, deadline=deadline, retries=2)
    link.open()
    try:
        return await body(link)  # type: ignore[misc]
    finally:
        link.close()


def test_many_concurrent_requests_each_get_their_own_reply(short_tmp: Path) -> None:
    ep = endpoint(short_tmp)
    macs = [f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(2000)]

    async def body(link: StoreLink) -> list[object]:
        return await asyncio.gather(*(link.request(MachineGet(mac=m)) for m in macs))

    with Peer(ep):
        replies = asyncio.run(with_link(ep, 10, body))
    assert [r.machine.mac for r in replies] == macs  # type: ignore[attr-defined]


def test_lost_reply_is_retried_with_the_same_request_id(short_tmp: Path) -> None:
    ep = endpoint(short_tmp)

    async def body(link: StoreLink) -> object:
        reply = await link.request(MachineGet(mac="02:00:00:00:00:01"))
        return reply, dict(link.stats)

    with Peer(ep, drop=lambda rid, n: n == 1) as peer:
        reply, stats = asyncio.run(with_link(ep, 3, body))  # type: ignore[misc]
        assert list(peer.seen.values()) == [2]  # one id, sent twice
    assert isinstance(reply, MachineReply)
    assert stats["retries"] == 1


def test_store_down_raises_a_typed_timeout(short_tmp: Path) -> None:
    ep = endpoint(short_tmp)

    async def body(link: StoreLink) -> None:
        await link.request(MachineGet(mac="02:00:00:00:00:01"))

    with pytest.raises(BusTimeout) as failure:
        asyncio.run(with_link(ep, 0.3, body))
    assert failure.value.kind == "machine.get" and failure.value.attempts == 3


def test_recovers_when_the_store_comes_back(short_tmp: Path) -> None:
    ep = endpoint(short_tmp)

    async def body(link: StoreLink) -> object:
        with pytest.raises(BusTimeout):
            await link.request(MachineGet(mac="02:00:00:00:00:01"), deadline=0.3)
        with Peer(ep):
            reply = await link.request(MachineGet(mac="02:00:00:00:00:02"), deadline=5)
        return reply, dict(link.stats)

    reply, stats = asyncio.run(with_link(ep, 1, body))  # type: ignore[misc]
    assert isinstance(reply, MachineReply) and reply.machine.mac == "02:00:00:00:00:02"
    assert stats["resets"] >= 1  # nothing heard: the socket was reopened


def test_notifications_reach_the_store(short_tmp: Path) -> None:
    ep = endpoint(short_tmp)

    async def body(link: StoreLink) -> None:
        for i in range(5):
            link.notify(boot_event("dhcpd", "dhcp.ack", f"02:00:00:00:00:0{i}", "192.0.2.9"))
        # A request after them: when its reply comes, the events were read first.
        await link.request(MachineGet(mac="02:00:00:00:00:09"))

    with Peer(ep) as peer:
        asyncio.run(with_link(ep, 5, body))
        assert [e.event.mac for e in peer.events] == [f"02:00:00:00:00:0{i}" for i in range(5)]


def test_error_replies_are_returned_not_raised(short_tmp: Path) -> None:
    ep = f"ipc://{short_tmp}/err.sock"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(ep)

    def answer() -> None:
        incoming, _ = bus_server.decode(sock.recv_multipart(), Counter())
        assert incoming is not None
        sock.send_multipart(bus_server.encode(incoming, ErrorReply(code="not_found")))

    thread = threading.Thread(target=answer)
    thread.start()

    async def body(link: StoreLink) -> object:
        return await link.request(MachineGet(mac="02:00:00:00:00:01"))

    try:
        reply = asyncio.run(with_link(ep, 5, body))
    finally:
        thread.join(10)
        sock.close(linger=0)
        ctx.term()
    assert isinstance(reply, ErrorReply) and reply.code == "not_found"
