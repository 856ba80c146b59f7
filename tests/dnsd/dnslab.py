"""The dnsd lab: dnsd (``dnsd_proc.py``) in the server namespace of a
:class:`Lab`, real clients (``dig``, or sockets made by :func:`in_netns`) in
client namespaces, an upstream (dnsmasq) in a namespace of its own."""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from astralboot.common.cli.demo.netns import Namespace

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; the socket module omits it
_libc = ctypes.CDLL(None, use_errno=True)

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

    def pause(self) -> None:
        """Stop dnsmasq (SIGSTOP): questions sent to it wait in its socket,
        unanswered, until :meth:`resume`. Returns once it has stopped."""
        assert self.proc is not None and self.proc.poll() is None
        pid = self.proc.pid  # `ip netns exec` execs dnsmasq, which stays in the foreground
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
        os.kill(pid, signal.SIGSTOP)
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.resume()
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


def in_netns(ns: Namespace, make: Callable[[], T]) -> T:
    """``make()`` run by a thread of its own that has entered ``ns``'s network
    stack: the sockets it makes live there for good, whichever thread uses
    them later. The caller's thread never changes namespace."""

    def entered() -> T:
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {ns.name}: {os.strerror(err)}")
        finally:
            os.close(fd)
        return make()

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(entered).result()


def bound_sockets(ns: Namespace, kind: socket.SocketKind, addresses: Iterable[str], *,
                  port: int = 0, reuse: bool = False, rcvbuf: int = 0) -> list[socket.socket]:
    """Non-blocking IPv4 sockets in ``ns``, one bound to each of ``addresses``
    (``port`` 0: the kernel picks). ``rcvbuf``: a receive buffer past
    net.core.rmem_max (as root), so a burst of replies waits instead of being lost."""

    def make() -> list[socket.socket]:
        out = []
        for address in addresses:
            sock = socket.socket(socket.AF_INET, kind)
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            sock.bind((address, port))
            sock.setblocking(False)
            out.append(sock)
        return out

    return in_netns(ns, make)


def udp_counters(ns: Namespace) -> dict[str, int]:
    """The kernel's UDP counters in ``ns`` (``RcvbufErrors``: datagrams lost
    for want of room in a socket's buffer)."""
    rows = [line.split()[1:] for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Udp:")]
    return dict(zip(rows[0], map(int, rows[1])))


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
           "bound_sockets", "in_netns", "status", "udp_counters"]
