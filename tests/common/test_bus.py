"""The bus over real ZeroMQ sockets: ipc and tcp, concurrency, loss, timeouts."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from astralboot.common.bus import server as bus_server
from support.ports import free_port
from astralboot.common.bus.events import boot_event
from astralboot.common.bus.client import AsyncBusClient, SyncBusClient
from astralboot.common.bus.frames import pack, unpack
from astralboot.common.bus.schema import Reply
from astralboot.common.errors import BusTimeout, ErrorCode, RemoteError
from astralboot.common.messages import (ErrorReply, EventReport, Health, HealthReply,
                                        MachineGet, MachineRecord, MachineReply)


class EchoStore:
    """A minimal bus peer: MachineGet(mac) → machine with that MAC; 'missing' → not_found.

    With ``drop_first`` it ignores the first copy of every request id, as if
    the reply were lost on the way back.
    """

    def __init__(self, endpoint: str, drop_first: bool = False) -> None:
        self.endpoint = endpoint
        self.drop_first = drop_first
        self.seen: set[int] = set()
        self.copies: Counter[int] = Counter()
        self.events: list[EventReport] = []
        self.frames: list[list[bytes]] = []  # every request as the ROUTER read it
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "EchoStore":
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        ctx = zmq.Context()
        sock = bus_server.request_socket(ctx)
        bus_server.bind(sock, self.endpoint, "store")
        self._ready.set()
        while not self._stop.is_set():
            if not sock.poll(50):
                continue
            frames = sock.recv_multipart()
            self.frames.append(frames)
            incoming, answer = bus_server.decode(frames, self.stats)
            if incoming is not None:
                req = incoming.request
                if isinstance(req, EventReport):
                    self.events.append(req)
                    continue
                self.copies[req.request_id] += 1
                if self.drop_first and req.request_id not in self.seen:
                    self.seen.add(req.request_id)
                    continue
                answer = bus_server.encode(incoming, self.reply_for(req))
            if answer is not None:
                sock.send_multipart(answer)
        sock.close(0)
        ctx.term()

    def reply_for(self, req: object) -> Reply:
        if isinstance(req, MachineGet) and req.mac == "missing":
            return bus_server.error(ErrorCode.NOT_FOUND, "no such machine")
        if isinstance(req, MachineGet):
            return MachineReply(machine=MachineRecord(mac=req.mac, name="node1"))
        return bus_server.health_reply("store", 0.0, {"ready": True})



@pytest.fixture(params=["ipc", "tcp"])
def endpoint(request: pytest.FixtureRequest, short_tmp: Path) -> str:
    if request.param == "ipc":
        return f"ipc://{short_tmp / 'bus.sock'}"
    return f"tcp://127.0.0.1:{free_port()}"


def test_async_client_correlates_many_concurrent_requests(endpoint: str) -> None:
    async def run() -> list[MachineReply]:
        async with AsyncBusClient(endpoint) as client:
            return await asyncio.gather(*(client.call(MachineGet(mac=f"m{i}"))
                                          for i in range(2000)))

    with EchoStore(endpoint):
        replies = asyncio.run(run())
    assert [r.machine.mac for r in replies] == [f"m{i}" for i in range(2000)]


def test_sync_client_round_trip_and_error_reply(endpoint: str) -> None:
    with EchoStore(endpoint), SyncBusClient(endpoint) as client:
        reply = client.call(MachineGet(mac="aa"))
        assert isinstance(reply, MachineReply) and reply.machine.mac == "aa"
        assert isinstance(client.request(MachineGet(mac="missing")), ErrorReply)
        with pytest.raises(RemoteError) as info:
            client.call(MachineGet(mac="missing"))
        assert info.value.code is ErrorCode.NOT_FOUND


def test_sync_client_shared_by_threads(endpoint: str) -> None:
    errors: list[str] = []

    def worker(n: int, client: SyncBusClient) -> None:
        for i in range(200):
            mac = f"t{n}-{i}"
            reply = client.call(MachineGet(mac=mac))
            if reply.machine.mac != mac:
                errors.append(f"{mac} got {reply.machine.mac}")

    with EchoStore(endpoint), SyncBusClient(endpoint) as client:
        threads = [threading.Thread(target=worker, args=(n, client)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_store_down_gives_typed_timeout_within_the_deadline(short_tmp: Path, kind: str) -> None:
    endpoint = f"ipc://{short_tmp / 'nobody.sock'}"
    deadline = 0.6
    started = time.monotonic()
    with pytest.raises(BusTimeout) as info:
        if kind == "async":
            async def run() -> None:
                async with AsyncBusClient(endpoint, deadline=deadline) as client:
                    await client.call(Health())
            asyncio.run(run())
        else:
            with SyncBusClient(endpoint, deadline=deadline) as client:
                client.call(Health())
    elapsed = time.monotonic() - started
    assert info.value.kind == "health" and info.value.attempts == 3
    assert elapsed < deadline + 1.0  # a typed error within the deadline, never a hang


def test_lost_replies_are_retried_on_a_fresh_socket(endpoint: str) -> None:
    async def run() -> tuple[list[MachineReply], Counter[str]]:
        async with AsyncBusClient(endpoint, deadline=3.0, retries=2) as client:
            replies = await asyncio.gather(*(client.call(MachineGet(mac=f"x{i}"))
                                             for i in range(20)))
            return replies, client.stats

    with EchoStore(endpoint, drop_first=True):
        replies, stats = asyncio.run(run())
        with SyncBusClient(endpoint, deadline=3.0) as sync:
            assert sync.call(MachineGet(mac="s")).machine.mac == "s"
            assert sync.stats["resets"] == 1
    assert [r.machine.mac for r in replies] == [f"x{i}" for i in range(20)]
    assert stats["resets"] >= 1 and stats["retries"] >= 1


def test_a_lost_reply_is_retried_with_the_same_request_id(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"

    async def run() -> tuple[MachineReply, Counter[str]]:
        async with AsyncBusClient(endpoint, deadline=3.0, retries=2) as client:
            return await client.call(MachineGet(mac="one")), client.stats

    with EchoStore(endpoint, drop_first=True) as store:
        reply, stats = asyncio.run(run())
        assert list(store.copies.values()) == [2]  # one id, sent twice
    assert reply.machine.mac == "one" and stats["retries"] == 1


def test_async_client_recovers_when_the_store_comes_back(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"

    async def run() -> tuple[MachineReply, Counter[str]]:
        async with AsyncBusClient(endpoint, deadline=1.0) as client:
            with pytest.raises(BusTimeout):
                await client.call(MachineGet(mac="early"), deadline=0.3)
            with EchoStore(endpoint):
                reply = await client.call(MachineGet(mac="late"), deadline=5)
            return reply, client.stats

    reply, stats = asyncio.run(run())
    assert reply.machine.mac == "late"
    assert stats["resets"] >= 1  # nothing heard: the socket was reopened


def test_notifications_arrive_in_order_before_a_later_request(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"
    macs = [f"02:00:00:00:00:0{i}" for i in range(5)]

    async def run() -> None:
        async with AsyncBusClient(endpoint) as client:
            for mac in macs:
                client.notify(boot_event("dhcpd", "dhcp.ack", mac, "192.0.2.9"))
            # When this reply comes back the store has read the events before it.
            await client.call(MachineGet(mac="after"))

    with EchoStore(endpoint) as store:
        asyncio.run(run())
        assert [e.event.mac for e in store.events] == macs


def test_store_restart_mid_conversation_is_survived(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"
    with SyncBusClient(endpoint, deadline=5.0) as client:
        with EchoStore(endpoint):
            assert client.call(MachineGet(mac="before")).machine.mac == "before"
        with EchoStore(endpoint):
            assert client.call(MachineGet(mac="after")).machine.mac == "after"


def test_sync_client_works_in_a_forked_child(endpoint: str) -> None:
    with EchoStore(endpoint), SyncBusClient(endpoint) as client:
        client.call(MachineGet(mac="parent"))
        pid = os.fork()
        if pid == 0:  # the child: what a gunicorn worker does after the fork
            try:
                ok = client.call(MachineGet(mac="child")).machine.mac == "child"
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.call(MachineGet(mac="parent2")).machine.mac == "parent2"


def test_bad_frames_get_answers_or_are_dropped_and_serving_goes_on(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp / 'ctl.sock'}"

    async def run() -> list[object]:
        ctl = bus_server.ControlEndpoint(endpoint, "dhcpd", lambda: {"packets": 5})
        ctl.bind()
        task = asyncio.create_task(bus_server.serve_forever(ctl))
        ctx = zmq.asyncio.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.connect(endpoint)
        answers: list[object] = []
        try:
            await raw.send_multipart([b"", b"\x00garbage"])  # unreadable: dropped, counted
            # Readable envelope, body not a map: answered, since the id is known.
            await raw.send_multipart([b"", pack(Health(), 5)[:-1] + b"\xff"])
            import msgpack
            await raw.send_multipart([b"", msgpack.packb([1, "no.such.kind", 77, {}])])
            await raw.send_multipart([b"", msgpack.packb([2, "health", 78, {}])])
            await raw.send_multipart([b"", pack(MachineGet(mac="x"), 79)])
            await raw.send_multipart([b"", pack(Health(), 80)])
            for _ in range(5):
                frames = await asyncio.wait_for(raw.recv_multipart(), 5)
                answers.append(unpack(frames[-1]))
            answers.append(dict(ctl.stats))
        finally:
            raw.close(0)
            task.cancel()
        return answers

    *replies, stats = asyncio.run(run())
    by_id = {r.request_id: r for r in replies}
    assert by_id[5].code == "bad_request" and "body is not a map" in by_id[5].detail
    assert by_id[77].code == "bad_request" and "unknown message kind" in by_id[77].detail
    assert by_id[78].code == "bad_request" and "protocol version 2" in by_id[78].detail
    assert by_id[79].code == "bad_request"
    assert isinstance(by_id[80], HealthReply) and by_id[80].details["packets"] == 5
    assert stats["malformed"] == 4


class WrongStore(EchoStore):
    """Answers every MachineGet with another machine's record (a crossed reply)."""

    def reply_for(self, req: object) -> Reply:
        if isinstance(req, MachineGet):
            return MachineReply(machine=MachineRecord(mac="02:00:00:00:00:99",
                                                      name="someone-else"))
        return super().reply_for(req)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_reply_about_another_machine_is_never_taken(short_tmp: Path, kind: str) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"
    with WrongStore(endpoint):
        if kind == "async":
            async def run() -> Counter[str]:
                async with AsyncBusClient(endpoint, deadline=0.6) as client:
                    with pytest.raises(BusTimeout):
                        await client.call(MachineGet(mac="52:54:00:00:00:01"))
                    return client.stats
            stats = asyncio.run(run())
        else:
            with SyncBusClient(endpoint, deadline=0.6) as client:
                with pytest.raises(BusTimeout):
                    client.call(MachineGet(mac="52:54:00:00:00:01"))
                stats = client.stats
    assert stats["mismatched_replies"] >= 1


def test_forked_workers_draw_their_own_request_ids(short_tmp: Path) -> None:
    """gunicorn builds the app (and its bus client) once, then forks: the
    workers must not send the same sequence of request ids."""
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"
    with EchoStore(endpoint) as store, SyncBusClient(endpoint) as client:
        client.call(MachineGet(mac="parent"))
        read, write = os.pipe()
        children = []
        for n in range(2):
            pid = os.fork()
            if pid == 0:  # a worker: a few requests, then out without cleanup
                try:
                    for i in range(5):
                        client.call(MachineGet(mac=f"child{n}-{i}"))
                    os.write(write, b"k")
                finally:
                    os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        assert os.read(read, 2) == b"kk"
        os.close(read)
        os.close(write)
    ids = list(store.copies)
    assert len(ids) == 11 and len(set(ids)) == 11


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_both_clients_send_one_frame_from_one_identity_kept_across_a_reset(
        short_tmp: Path, kind: str) -> None:
    endpoint = f"ipc://{short_tmp / 'bus.sock'}"
    with EchoStore(endpoint, drop_first=True) as store:
        if kind == "async":
            async def run() -> Counter[str]:
                async with AsyncBusClient(endpoint, deadline=3.0) as client:
                    await client.call(MachineGet(mac="one"))
                    return client.stats
            stats = asyncio.run(run())
        else:
            with SyncBusClient(endpoint, deadline=3.0) as client:
                client.call(MachineGet(mac="one"))
                stats = client.stats
    assert stats["resets"] == 1  # the first copy got no answer: a new socket sent the second
    assert [len(f) for f in store.frames] == [2, 2]  # [identity, body]: no delimiter
    identities = {f[0] for f in store.frames}
    assert len(identities) == 1 and len(identities.pop()) == 16


@pytest.mark.parametrize("envelope", [[b"\x01peer"], [b"\x01peer", b""]],
                         ids=["one frame", "with delimiter"])
def test_the_server_decodes_both_layouts_and_answers_on_the_same_envelope(
        envelope: list[bytes]) -> None:
    stats: Counter[str] = Counter()
    incoming, answer = bus_server.decode(envelope + [pack(Health(), 9)], stats)
    assert answer is None and incoming is not None and incoming.envelope == envelope
    reply = bus_server.encode(incoming, bus_server.health_reply("store", 0.0, {}))
    assert reply[:-1] == envelope and unpack(reply[-1]).request_id == 9
