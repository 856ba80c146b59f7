"""What every asyncio front end (dhcpd, tftpd) runs inside.

:func:`run` gives the service a :class:`FrontEnd`: the configuration, a bus
client to the store, a way to report boot events, counters that show up in
``astralboot status``, and a control socket answering health. It turns
SIGINT/SIGTERM into a clean stop and a :class:`StartupError` into exit
status 2 with the reason on stderr, which ``astralboot serve``,
supervisord and systemd all show the operator.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.bus.security import client_curve
from astralboot.common.bus.events import boot_event
from astralboot.common.bus.server import ControlEndpoint, serve_forever
from astralboot.common.config import Config
from astralboot.common.errors import ConfigError, StartupError
from astralboot.common.privileges import drop

log = logging.getLogger(__name__)

# With the default thresholds the cyclic collector runs every 700 allocations
# (a handful of packets) and keeps walking state that lives for good; what is
# loaded at start-up is frozen out of its sight and young collections are
# made rarer. Per-packet objects are freed by reference counting anyway.
GC_THRESHOLDS = (50_000, 20, 100)

EXIT_OK = 0
EXIT_STARTUP = 2  # do not restart blindly: the reason is on stderr


class FrontEnd:
    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.stats: Counter[str] = Counter()
        self.started = time.time()
        self.ready = False
        self.bus = AsyncBusClient(config.bus.endpoint, deadline=config.bus.deadline,
                                  curve=client_curve(config, name))
        self.extra_details: Callable[[], dict[str, str | int | float | bool]] = dict

    def bound(self, *written: Path) -> None:
        """The privileged sockets are open: stop being root (``[service] user``).

        ``written``: folders the service goes on writing, besides its runtime folder.
        """
        drop(self.config, self.name, [self.config.runtime_dir, *written])

    def report(self, stage: str, mac: str | None, ip: str | None = None,
               detail: str = "") -> None:
        """Tell the store a boot stage happened (never blocks, never raises).

        ``mac`` None: the store attributes the event to the lease holding ``ip``.
        """
        try:
            self.bus.notify(boot_event(self.name, stage, mac, ip, detail))
        except Exception:  # an event must never break serving
            log.exception("could not report %s for %s", stage, mac or ip)

    def details(self) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {"ready": self.ready}
        out.update({k: v for k, v in self.stats.items()})
        out.update({f"bus.{k}": v for k, v in self.bus.stats.items()})
        out.update(self.extra_details())
        return out


def settle_heap() -> None:
    """Call once start-up is done, before serving at rate."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(name: str, config: Config, main: Callable[[FrontEnd], Awaitable[None]]) -> int:
    """Run ``main`` until it returns or the process is told to stop."""
    try:
        return asyncio.run(_run(name, config, main))
    except (StartupError, ConfigError) as exc:
        print(f"astralboot {name}: {exc}", file=sys.stderr, flush=True)
        return EXIT_STARTUP


async def _run(name: str, config: Config, main: Callable[[FrontEnd], Awaitable[None]]) -> int:
    fe = FrontEnd(name, config)
    control = ControlEndpoint(config.control_endpoint(name), name, fe.details)
    control.bind()
    loop = asyncio.get_running_loop()
    service = asyncio.current_task()
    assert service is not None
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: %s received, stopping", name, signame)
            service.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    control_task = loop.create_task(serve_forever(control), name=f"{name}-control")
    try:
        await main(fe)
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        control_task.cancel()
        fe.bus.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("%s stopped", name)
    return EXIT_OK
