"""Load for bench/store.py: N clients doing offer → commit (→ event) in a loop.

    python bench/store_driver.py CONFIG CLIENTS SECONDS DRIVER EVENTS TAG

DRIVER ``raw``: the clients are independent state machines multiplexed on
one DEALER socket by a tight loop, so the driver costs little CPU and the
figure measures the store. DRIVER ``client``: each client is a coroutine
on :class:`AsyncBusClient`, the front ends' own client (dhcpd's path),
which costs the driver far more CPU per request. EVENTS says how the
``dhcp.ack`` boot event of each acknowledged commit reaches the store:
``message`` (an EventReport after the ACK), ``report`` (``report=True`` on
the commit: the store records it, no extra message) or ``none``.
Prints one JSON object: commits, errors, seconds, latency percentiles (ms).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import zmq

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.events import boot_event
from astralboot.common.bus.frames import pack, unpack
from astralboot.common.config import load
from astralboot.common.messages import ErrorReply, LeaseCommit, LeaseGrant, LeaseOffer


def mac_for(tag: int, client: int, n: int) -> str:
    return f"06:{tag:02x}:{client:02x}:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"


def raw(endpoint: str, subnet: str, clients: int, seconds: float, events: str,
        tag: int) -> dict[str, object]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    rid = random.getrandbits(31) << 32
    waiting: dict[int, tuple[int, str, str, float]] = {}  # rid → client, mac, phase, started
    counters = [0] * clients
    latencies: list[float] = []
    errors = 0

    def start(client: int) -> None:
        nonlocal rid
        counters[client] += 1
        mac = mac_for(tag, client, counters[client])
        rid += 1
        waiting[rid] = (client, mac, "offer", time.perf_counter())
        sock.send_multipart([b"", pack(LeaseOffer(mac=mac, subnet=subnet), rid)])

    for client in range(clients):
        start(client)
    began = time.perf_counter()
    end = began + seconds
    while time.perf_counter() < end:
        if not sock.poll(1000):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            reply = unpack(frames[-1])
            client, mac, phase, started = waiting.pop(reply.request_id)
            if isinstance(reply, ErrorReply) or not isinstance(reply, LeaseGrant):
                errors += 1
                start(client)
                continue
            if phase == "offer":
                rid += 1
                waiting[rid] = (client, mac, "commit", started)
                sock.send_multipart([b"", pack(LeaseCommit(mac=mac, subnet=subnet,
                                                           ip=reply.ip, mode="select",
                                                           report=events == "report"),
                                               rid)])
                continue
            latencies.append(time.perf_counter() - started)
            if events == "message":
                rid += 1
                sock.send_multipart([b"", pack(boot_event("dhcpd", "dhcp.ack", mac,
                                                          reply.ip), rid)])
            start(client)
    elapsed = time.perf_counter() - began
    sock.close()
    return _result(latencies, errors, elapsed)


def client(endpoint: str, subnet: str, clients: int, seconds: float, events: str,
           tag: int) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0

    async def main() -> float:
        bus = AsyncBusClient(endpoint, deadline=10)
        end = time.perf_counter() + seconds

        async def one(c: int) -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < end:
                n += 1
                mac = mac_for(tag, c, n)
                started = time.perf_counter()
                offered = await bus.request(LeaseOffer(mac=mac, subnet=subnet))
                if not isinstance(offered, LeaseGrant):
                    errors += 1
                    continue
                bound = await bus.request(LeaseCommit(mac=mac, subnet=subnet,
                                                      ip=offered.ip, mode="select",
                                                      report=events == "report"))
                if not isinstance(bound, LeaseGrant):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if events == "message":
                    bus.notify(boot_event("dhcpd", "dhcp.ack", mac, bound.ip))

        began = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        bus.close()
        return time.perf_counter() - began

    elapsed = asyncio.run(main())
    return _result(latencies, errors, elapsed)


def _result(latencies: list[float], errors: int, elapsed: float) -> dict[str, object]:
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 \
            if latencies else 0.0
    return {"commits": len(latencies), "errors": errors, "seconds": elapsed,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def main(argv: list[str]) -> int:
    config_path, clients, seconds, driver, events, tag = argv
    config = load(config_path)
    run = {"raw": raw, "client": client}[driver]
    result = run(config.bus.endpoint, config.dhcp.local.name, int(clients), float(seconds),
                 events, int(tag))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
