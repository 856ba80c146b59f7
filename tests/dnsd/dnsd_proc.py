"""dnsd for the lab tests, as a process of its own (run inside a namespace).

Usage: ``python dnsd_proc.py SETTINGS_JSON``, where the settings are::

    {"address": "192.0.2.1", "port": 53, "domain": "lab.example",
     "server_name": "bootsrv", "subnets": [...], "clients": [...],
     "hosts": [[mac, name, ip, fixed], ...], "upstreams": [...],
     "server": {extra DnsServer keywords},
     "bus": endpoint, "events": endpoint, "feed": {extra ZoneFeed keywords}}

``bus``/``events`` start a :class:`ZoneFeed` from the store there. It prints
``ready PORT`` once the sockets are bound (and, with a feed, once the first
sync is done), then answers each ``stats`` line on stdin with one line of
JSON (the counters and ``details()``); it stops at the end of stdin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from astralboot.common.bus.client import AsyncBusClient
from astralboot.services.dnsd.feed import ZoneFeed
from astralboot.services.dnsd.server import DnsServer
from astralboot.services.dnsd.zone import Zone


async def main(settings: dict[str, Any]) -> None:
    zone = Zone(settings["domain"], settings.get("server_name"), settings["address"],
                settings["subnets"])
    for mac, name, ip, fixed in settings.get("hosts", ()):
        zone.set_host(mac, name, ip, fixed=fixed)
    server = DnsServer(zone, settings["address"], settings.get("port", 53),
                       clients=settings["clients"], upstreams=settings.get("upstreams", ()),
                       **settings.get("server", {}))
    server.open()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(server.serve())]
    feed = None
    if settings.get("bus"):
        bus = AsyncBusClient(settings["bus"], deadline=settings.get("deadline", 2.0))
        feed = ZoneFeed(zone, bus, settings["events"], stats=server.stats,
                        **settings.get("feed", {}))
        tasks.append(loop.create_task(feed.run()))
        await asyncio.wait_for(feed.synced.wait(), 30)
    print(f"ready {server.port}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            if line.strip() == b"stats":
                out = {**server.stats, **server.details(),
                       **(feed.details() if feed else {}),
                       "names": sorted(f"{h.label}={h.ip}" for h in zone.hosts())}
                print(json.dumps(out), flush=True)
            for task in tasks:
                if task.done():
                    task.result()  # a crash shows up in the test
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(json.loads(sys.argv[1])))
