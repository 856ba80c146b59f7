"""Running real AstralBoot services for tests and benchmarks (not shipped).

:class:`Stack` starts chosen services as separate ``astralboot <service>``
processes (inside a namespace when given one), waits until each answers its
health check, and stops them on exit. A service that exits or never becomes
ready fails loudly with its own stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from astralboot.common.cli.demo.netns import Namespace
from astralboot.common.cli.demo.site import write_config
from astralboot.common.cli.services import astralboot_argv
from astralboot.common.config import load
from astralboot.common.errors import AstralBootError
from astralboot.common.health import check

__all__ = ["ORDER", "Stack", "StackError", "astralboot_argv", "write_config"]

ORDER = ("store", "dhcpd", "tftpd", "httpd", "dnsd")


class StackError(AstralBootError):
    """A service of the stack did not start or died."""


class Stack:
    def __init__(self, config: Path, services: Sequence[str] = ORDER,
                 netns: Namespace | None = None, *, ready_timeout: float = 30.0,
                 env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.config = Path(config)
        self.services = tuple(s for s in ORDER if s in services)
        self.netns = netns
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, **(env or {})}
        self.log_dir = log_dir or self.config.parent / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> "Stack":
        try:
            for name in self.services:
                self.start(name)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def argv(self, *args: str) -> list[str]:
        cmd = astralboot_argv(*args)
        return self.netns.argv(cmd) if self.netns else cmd

    def cli(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``astralboot ARGS -c CONFIG`` where the services run."""
        proc = subprocess.run(self.argv(*args, "-c", str(self.config)), capture_output=True,
                              text=True, timeout=timeout, env=self.env, input=input)
        if check and proc.returncode != 0:
            raise StackError(f"astralboot {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen(self.argv(name, "-c", str(self.config)), stdout=log,
                                stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode} while starting:\n"
                                 f"{self.log_tail(name)}")
            config = load(self.config)
            # ipc sockets are files, reachable from any namespace; a tcp bus or
            # HTTP inside the namespace is reached from inside it.
            in_process = self.netns is None or (name in ("dhcpd", "tftpd") or
                                                (name == "store" and config.bus.is_local))
            if in_process:
                health = check(config, name, timeout=1.0)
                if health.ready:
                    return
                last = health.error or health.status
            else:
                result = self.cli("status", "--service", name, "--timeout", "1", check=False)
                if result.returncode == 0:
                    return
                last = result.stdout + result.stderr
            time.sleep(0.2)
        raise StackError(f"{name} not ready after {self.ready_timeout}s:\n{last}\n"
                         f"{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def restart(self, name: str) -> None:
        self.stop_one(name)
        self.start(name)

    def stop_one(self, name: str, timeout: float = 15) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop_one(name)
