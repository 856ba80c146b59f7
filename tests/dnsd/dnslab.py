"""The dnsd lab: dnsd (``dnsd_proc.py``) in the server namespace of a
:class:`Lab`, real clients (``dig``) in client namespaces, an upstream
(dnsmasq) in a namespace of its own."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from astralboot.common.cli.demo.netns import Namespace

PROC = str(Path(__file__).with_name("dnsd_proc.py"))
_STATUS = re.compile(r"status: ([A-Z]+)")
_FLAGS = re.compile(r";; flags: ([a-z ]*);")


class DnsdProcess:
    """dnsd running in ``ns``; a context manager that fails loudly if it does not start."""

    def __init__(self, ns: Namespace, settings: dict[str, Any], log: Path) -> None:
        self.ns = ns
        self.settings = settings
        self.log_path = log
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> DnsdProcess:
        log = open(self.log_path, "w")
        self.proc = self.ns.popen([sys.executable, PROC, json.dumps(self.settings)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                  text=True)
        log.close()
        line = self._line(40)
        if not line.startswith("ready "):
            self.__exit__()
            raise AssertionError(f"dnsd did not start: {line!r}\n{self.log()}")
        self.port = int(line.split()[1])
        return self

    def _line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[str] = self.proc.stdout
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            return ""
        return out.readline()

    def stats(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsd exited with {self.proc.returncode}:\n{self.log()}")
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self._line(10)
        assert line, f"no stats from dnsd:\n{self.log()}"
        return json.loads(line)  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Dnsmasq:
    """dnsmasq as the upstream: ``--no-resolv``, answering only its host records."""

    def __init__(self, ns: Namespace, address: str, records: list[tuple[str, str]],
                 pid_file: Path) -> None:
        self.ns = ns
        self.pid_file = pid_file
        self.address = address
        self.records = records
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Dnsmasq:
        argv = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv",
                "--no-hosts", "--conf-file=/dev/null", f"--pid-file={self.pid_file}", "--user=root",
                f"--listen-address={self.address}", "--bind-interfaces", "--port=53",
                "--log-queries", "--local-ttl=300"]
        argv += [f"--host-record={name},{ip}" for name, ip in self.records]
        self.proc = self.ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        first = self.records[0][0]
        for _ in range(100):
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            probe = dig(self.ns, self.address, first, "+short")
            if probe.strip():
                return self
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError("dnsmasq did not answer")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def dig(ns: Namespace, server: str, *args: str, port: int = 53, timeout: float = 30) -> str:
    """``dig`` in ``ns``; its output (one try, 2 s: a lost answer shows)."""
    proc = ns.run(["dig", f"@{server}", "-p", str(port), "+tries=1", "+time=2", *args],
                  check=False, timeout=timeout)
    return proc.stdout + proc.stderr


def status(out: str) -> str:
    found = _STATUS.search(out)
    assert found, out
    return found.group(1)


def flags(out: str) -> set[str]:
    found = _FLAGS.search(out)
    assert found, out
    return set(found.group(1).split())


def answers(out: str) -> list[str]:
    """The answer section's records as ``name TYPE data`` (TTL left out)."""
    lines = []
    section = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
            continue
        if section:
            if not line.strip():
                break
            name, _ttl, _cls, rtype, data = line.split(None, 4)
            lines.append(f"{name} {rtype} {data}")
    return lines


def authority_types(out: str) -> list[str]:
    types = []
    section = False
    for line in out.splitlines():
        if line.startswith(";; AUTHORITY SECTION"):
            section = True
            continue
        if section:
            if not line.strip():
                break
            types.append(line.split()[3])
    return types


__all__ = ["DnsdProcess", "Dnsmasq", "answers", "authority_types", "dig", "flags",
           "status"]
