"""``astralboot serve``: every configured service as a supervised child process
(store, dhcpd, tftpd, httpd, and dnsd unless ``[dns] enabled = false``).

The store starts first and must answer its health check before the front
ends start. While running, a child that dies is restarted with exponential
backoff (reset once it has stayed up for a while). SIGINT or SIGTERM stops
every child, front ends first, and exits 0. If a service cannot start at
all, serve stops the others and exits 2, naming the service and quoting
its reason.

Each child's output is relayed line by line, prefixed with its name.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO

from astralboot.common.config import SERVICES, Config
from astralboot.common.health import check
from astralboot.common.cli.services import astralboot_argv, load_config

log = logging.getLogger("astralboot.serve")

EXIT_CANNOT_START = 2
READY_TIMEOUT = 60.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # seconds up before the backoff resets
STOP_GRACE = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", choices=SERVICES, metavar="SERVICE",
                   help="run only these services (repeatable; default: every one the "
                        "configuration runs)")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if serve itself is killed (Linux prctl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[str] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None
        assert self.proc.stdout is not None
        threading.Thread(target=self._relay, args=(self.proc.stdout,), daemon=True,
                         name=f"relay-{self.name}").start()

    def _relay(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.tail.append(line)
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reason(self) -> str:
        lines = [l for l in self.tail if l.strip()]
        for line in reversed(lines):
            if "cannot start" in line or "bad configuration" in line or "Error" in line:
                return line
        return lines[-1] if lines else "no output"

    def terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    def __init__(self, config: Config, services: tuple[str, ...], verbose: int) -> None:
        self.config = config
        flags = ["-" + "v" * verbose] if verbose else []
        self.children = [Child(s, astralboot_argv(s, "-c", str(config.path), *flags))
                         for s in SERVICES if s in services]
        self.stopping = threading.Event()

    def _wait_ready(self, children: list[Child]) -> Child | None:
        """Wait until every child answers health; return the first that failed."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(children)
        while pending and not self.stopping.is_set():
            for child in list(pending):
                if not child.running:
                    time.sleep(0.2)  # let the relay thread drain its last words
                    return child
                if check(self.config, child.name, timeout=0.5).ready:
                    log.info("%s is up (pid %s)", child.name, child.proc.pid if child.proc else "?")
                    pending.remove(child)
            if time.monotonic() > deadline:
                return pending[0]
            if pending:
                time.sleep(0.2)
        return None

    def start(self) -> Child | None:
        store = [c for c in self.children if c.name == "store"]
        fronts = [c for c in self.children if c.name != "store"]
        for group in (store, fronts):
            for child in group:
                child.spawn()
            failed = self._wait_ready(group)
            if failed is not None:
                return failed
        return None

    def monitor(self) -> None:
        while not self.stopping.wait(0.25):
            now = time.monotonic()
            for child in self.children:
                if child.running:
                    if now - child.started_at > STABLE_AFTER:
                        child.backoff = BACKOFF_FIRST
                    continue
                if child.restart_at is None:
                    code = child.proc.returncode if child.proc else None
                    child.restart_at = now + child.backoff
                    log.warning("%s exited (status %s): %s; restarting in %.1fs",
                                child.name, code, child.reason(), child.backoff)
                    child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                elif now >= child.restart_at:
                    child.restarts += 1
                    child.spawn()

    def stop(self) -> None:
        self.stopping.set()
        # Front ends first, so nothing asks a store that is already gone.
        for child in reversed(self.children):
            child.terminate()
        for child in reversed(self.children):
            child.wait(STOP_GRACE)


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args, "serve")
    services = tuple(args.only) if args.only else config.services
    sup = Supervisor(config, services, args.verbose)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping all services", signal.Signals(signum).name)
        sup.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        failed = sup.start()
        if failed is not None and not sup.stopping.is_set():
            what = ("exited" if not failed.running else "did not become ready "
                    f"within {READY_TIMEOUT:.0f}s")
            print(f"astralboot serve: {failed.name} cannot start ({what}): {failed.reason()}",
                  file=sys.stderr, flush=True)
            sup.stop()
            return EXIT_CANNOT_START
        if not sup.stopping.is_set():
            log.info("serving: %s", ", ".join(c.name for c in sup.children))
            sup.monitor()
    finally:
        sup.stop()
    log.info("all services stopped")
    return 0
