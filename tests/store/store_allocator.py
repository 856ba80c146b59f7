"""A separate process that allocates leases through the bus, as dhcpd would.

    python store_allocator.py CONFIG TAG COUNT CONCURRENCY OUT

Runs COUNT offer+commit exchanges for MACs 02:TAG:..., CONCURRENCY at a
time, and appends one line "MAC IP" to OUT (flushed) for every commit the
store acknowledged. It stops at the first bus timeout (the store is gone)
and exits 0; any other error reply is written as "ERROR code detail".
"""

from __future__ import annotations

import asyncio
import sys

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.config import load
from astralboot.common.errors import BusTimeout
from astralboot.common.messages import ErrorReply, LeaseCommit, LeaseGrant, LeaseOffer


async def main(config_path: str, tag: int, count: int, concurrency: int, out_path: str) -> int:
    config = load(config_path)
    subnet = config.dhcp.local.name
    bus = AsyncBusClient(config.bus.endpoint, deadline=3.0, retries=2)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    stop = asyncio.Event()
    with open(out_path, "a", buffering=1) as out:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                mac = f"02:{tag:02x}:00:00:{i >> 8:02x}:{i & 255:02x}"
                try:
                    offered = await bus.request(LeaseOffer(mac=mac, subnet=subnet))
                    if not isinstance(offered, LeaseGrant):
                        out.write(f"ERROR {offered}\n")
                        continue
                    bound = await bus.request(LeaseCommit(mac=mac, subnet=subnet,
                                                          ip=offered.ip, mode="select"))
                except BusTimeout:
                    stop.set()
                    return
                if isinstance(bound, LeaseGrant):
                    out.write(f"{mac} {bound.ip}\n")
                elif isinstance(bound, ErrorReply):
                    out.write(f"ERROR {bound.code} {bound.detail}\n")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bus.close()
    return 0


if __name__ == "__main__":
    config_path, tag, count, concurrency, out_path = sys.argv[1:6]
    sys.exit(asyncio.run(main(config_path, int(tag), int(count), int(concurrency), out_path)))
