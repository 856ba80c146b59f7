"""Watching one machine boot through the chain, from the event stream.

Used by ``astralboot demo``, the end-to-end tests and the whole-chain
benchmark: power a guest on, print or collect each boot stage as the
services report it, and stop at a chosen stage (by default the installer
fetching its rendered install config). :class:`WatchedBoot` is the one way
they all do it: the store confirms the subscription before the guest
powers on, so its first DHCP request is never missed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from astralboot.common.bus.events import HTTP_TEMPLATE, EventSubscriber
from astralboot.common.config import Config
from astralboot.common.errors import AstralBootError
from astralboot.common.health import check_all
from astralboot.common.messages import BootEvent
from astralboot.common.cli.demo.guest import Guest, stop
from astralboot.common.cli.demo.netns import Namespace
from astralboot.common.cli.services import astralboot_argv

if TYPE_CHECKING:
    from astralboot.common.bus.security import ClientCurve

SUBSCRIBE_TIMEOUT = 10.0  # seconds for the store to confirm the subscription


class BootFailed(AstralBootError):
    """The guest did not reach the expected stage in time."""


@dataclass
class Timeline:
    powered_on: float
    events: list[BootEvent] = field(default_factory=list)

    def at(self, event: BootEvent) -> float:
        return event.time - self.powered_on

    def stages(self) -> list[str]:
        return [e.stage for e in self.events]

    def first(self, stage: str) -> BootEvent | None:
        return next((e for e in self.events if e.stage == stage), None)

    def total(self) -> float:
        return self.at(self.events[-1]) if self.events else 0.0


def wait_for_stage(sub: EventSubscriber, timeline: Timeline, until: str, timeout: float,
                   alive: Callable[[], bool],
                   on_event: Callable[[Timeline, BootEvent], None] | None = None) -> BootEvent:
    """Collect events until one of stage ``until`` arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = sub.receive(timeout=0.5)
        if event is None:
            if not alive():
                raise BootFailed("the guest stopped before reaching " + until)
            continue
        if event.time < timeline.powered_on:
            continue  # from an earlier boot of the same MAC
        timeline.events.append(event)
        if on_event:
            on_event(timeline, event)
        if event.stage == until:
            return event
    raise BootFailed(f"no {until} within {timeout:.0f}s; stages seen: "
                     f"{', '.join(timeline.stages()) or 'none'}")


class WatchedBoot:
    """A guest powered on once the store confirmed it will stream its events.

    On entry: subscribe to the guest's MAC, wait for the store's
    confirmation (:class:`~astralboot.common.errors.BusTimeout` if it does
    not come), power the guest on. On exit: power it off and unsubscribe.
    In between, :meth:`wait_for` collects stages into :attr:`timeline`.
    """

    def __init__(self, guest: Guest, ns: Namespace, events: str, *,
                 curve: "ClientCurve | None" = None,
                 subscribe_timeout: float = SUBSCRIBE_TIMEOUT) -> None:
        self.guest = guest
        self.ns = ns
        self.events = events
        self.curve = curve
        self.subscribe_timeout = subscribe_timeout
        self.timeline = Timeline(powered_on=0.0)
        self.sub: EventSubscriber | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "WatchedBoot":
        self.sub = EventSubscriber(self.events, self.guest.mac, curve=self.curve)
        try:
            self.sub.wait_subscribed(self.subscribe_timeout)
            self.timeline = Timeline(powered_on=time.time())
            self.proc = self.guest.start(self.ns)
        except BaseException:
            self.sub.close()
            raise
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, stage: str, timeout: float,
                 on_event: Callable[[Timeline, BootEvent], None] | None = None) -> BootEvent:
        """Collect events until one of ``stage``; BootFailed (with the console) if none."""
        assert self.sub is not None, "enter the boot first"
        try:
            return wait_for_stage(self.sub, self.timeline, stage, timeout, alive=self.alive,
                                  on_event=on_event)
        except BootFailed as exc:
            raise BootFailed(f"{exc}\nlast console lines:\n{self.guest.console_tail()}") \
                from None

    def collect(self, timeout: float) -> BootEvent | None:
        """The next event within ``timeout`` seconds, kept in the timeline too."""
        assert self.sub is not None, "enter the boot first"
        event = self.sub.receive(timeout=timeout)
        if event is not None and event.time >= self.timeline.powered_on:
            self.timeline.events.append(event)
        return event

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None:
                stop(self.proc)
        finally:
            if self.sub is not None:
                self.sub.close()


def boot_until(guest: Guest, ns: Namespace, events: str, until: str = HTTP_TEMPLATE,
               timeout: float = 900, *, curve: "ClientCurve | None" = None,
               on_event: Callable[[Timeline, BootEvent], None] | None = None) -> Timeline:
    """Power ``guest`` on in ``ns`` and collect its stages until ``until``; then power it off."""
    with WatchedBoot(guest, ns, events, curve=curve) as boot:
        boot.wait_for(until, timeout, on_event)
    return boot.timeline


class ServeProcess:
    """``astralboot serve`` running (in a namespace), ready when every service is."""

    def __init__(self, config: Config, ns: Namespace | None, log: Path,
                 ready_timeout: float = 60.0) -> None:
        self.config = config
        self.ns = ns
        self.log = log
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ServeProcess":
        argv = astralboot_argv("serve", "-c", str(self.config.path))
        argv = self.ns.argv(argv) if self.ns else argv
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise BootFailed(f"astralboot serve exited with {self.proc.returncode}:\n"
                                 f"{self.tail()}")
            # ipc sockets are files, so readiness can be checked from outside the namespace;
            # httpd's health is over HTTP, which needs the namespace's network.
            health = check_all(self.config, tuple(s for s in self.config.services
                                                  if s != "httpd"), timeout=0.5)
            if all(h.ready for h in health) and self._httpd_ready():
                return self
            if time.monotonic() > deadline:
                self.__exit__()
                raise BootFailed(f"services not ready after {self.ready_timeout:.0f}s:\n"
                                 f"{self.tail()}")
            time.sleep(0.3)

    def _httpd_ready(self) -> bool:
        argv = astralboot_argv("status", "--service", "httpd", "--timeout", "1",
                               "-c", str(self.config.path))
        argv = self.ns.argv(argv) if self.ns else argv
        return subprocess.run(argv, capture_output=True).returncode == 0

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


__all__ = ["BootFailed", "ServeProcess", "Timeline", "WatchedBoot", "boot_until", "wait_for_stage",
           "HTTP_TEMPLATE"]
