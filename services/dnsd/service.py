"""``astralboot dnsd``: the DNS service as the configuration's ``[dns]`` table says.

Builds the :class:`zone.Zone` (``[dns] domain``, the server's names, one
reverse zone per DHCP subnet), binds UDP and TCP port 53 on ``[dns] bind``
(:class:`server.DnsServer`), gives up root, then keeps the zone in step
with the store (:class:`feed.ZoneFeed`) while it serves.

It reports ready once the first sync with the store is done, or after
``SYNC_WAIT`` seconds without one: a store that is down must not keep the
server's own names and forwarding from being answered. ``astralboot
status`` shows whether the zone is synced.

With ``[dns] enabled = false`` it exits 0 at once (the systemd unit and the
supervisord program are installed either way).
"""

from __future__ import annotations

import asyncio
import logging

from astralboot.common.bus.security import client_curve
from astralboot.common.config import Config
from astralboot.common.frontend import FrontEnd, settle_heap
from astralboot.common.frontend import run as run_frontend
from astralboot.services.dnsd.feed import ZoneFeed
from astralboot.services.dnsd.server import SERVICE, DnsServer
from astralboot.services.dnsd.zone import Zone

log = logging.getLogger(__name__)

SYNC_WAIT = 5.0  # seconds to wait for the store's leases before answering anyway


def build(config: Config, fe: FrontEnd) -> tuple[DnsServer, ZoneFeed]:
    """The server and the feed for ``config`` (nothing bound yet)."""
    d = config.dnsd
    subnets = [s.network for s in config.dhcp.subnets]
    zone = Zone(d.domain, d.server_name, d.bind, subnets or [config.network], ttl=d.ttl,
                negative_ttl=min(d.ttl, 30))
    server = DnsServer(zone, str(d.bind), d.port, clients=[*subnets, config.network, *d.clients],
                       upstreams=d.upstream, rrl_rate=d.rrl or None, rrl_slip=d.rrl_slip,
                       forward_timeout=d.forward_timeout, forward_attempts=d.forward_attempts,
                       cache_size=d.cache, log_queries=d.log_queries, stats=fe.stats)
    reserved = {r.mac: (r.name, str(r.address)) for r in config.dhcp.reservations if r.name}
    feed = ZoneFeed(zone, fe.bus, config.bus.events, reserved=reserved,
                    curve=client_curve(config, SERVICE), stats=fe.stats)
    return server, feed


async def main(fe: FrontEnd) -> None:
    server, feed = build(fe.config, fe)
    server.open()
    fe.bound()  # port 53 is open
    fe.extra_details = lambda: {**server.details(), **feed.details()}
    settle_heap()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(server.serve(), name="dnsd-server")
        tasks.create_task(feed.run(), name="dnsd-feed")
        try:
            await asyncio.wait_for(asyncio.shield(feed.synced.wait()), SYNC_WAIT)
        except TimeoutError:
            log.warning("the store has not answered within %.0fs: serving this server's own "
                        "names and forwarding until it does", SYNC_WAIT)
        fe.ready = True


def run(config: Config) -> int:
    if not config.dnsd.enabled:
        # Started by a unit or a program that is installed everywhere: nothing
        # to do, and nothing to restart (exit 0).
        log.info("[dns] enabled = false in %s: dnsd has nothing to serve", config.path)
        return 0
    return run_frontend(SERVICE, config, main)
