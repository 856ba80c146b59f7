"""Isolated test networks built from Linux network namespaces.

Everything that sends DHCP, TFTP or HTTP traffic in tests, benchmarks and
the demo runs inside namespaces made here, never on a real interface. A
:class:`Lab` is one boot network: a server namespace holding bridge
``br0`` (192.0.2.1/24 by default), to which client namespaces attach with
veth pairs and QEMU guests with taps. Names carry a random tag so several
labs can exist at once, and everything is deleted on exit, also after a
failure or Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence

from astralboot.common.errors import AstralBootError

DEFAULT_SUBNET = "192.0.2"


class LabError(AstralBootError):
    """A namespace, link or address could not be set up."""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (network namespaces); run it with sudo")
    if shutil.which("ip") is None:
        raise LabError(f"{what} needs the `ip` command (package iproute2)")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Namespace:
    name: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float | None = 120,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self.argv(cmd), timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(cmd)} exited {proc.returncode}: "
                           f"{(proc.stderr or '').strip()[-2000:]}")
        return proc

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(cmd), **kw)

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)


@dataclass
class Host:
    """A client namespace attached to the lab's bridge (or behind a router)."""

    ns: Namespace
    ifname: str
    address: str | None
    mac: str
    uplink: str | None = None  # behind a router: the router's interface facing this host


@dataclass
class Lab:
    subnet: str = DEFAULT_SUBNET  # first three octets; the server is .1
    prefix: int = 24
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    bridge: str = "br0"
    server: Namespace = field(init=False)
    hosts: list[Host] = field(default_factory=list, init=False)
    _namespaces: list[str] = field(default_factory=list, init=False)
    _taps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.server = Namespace(f"ab{self.tag}srv")

    @property
    def server_address(self) -> str:
        return f"{self.subnet}.1"

    def __enter__(self) -> "Lab":
        require_root("a test network")
        try:
            self._make_ns(self.server.name)
            s = self.server
            s.ip("link", "add", self.bridge, "type", "bridge")
            # Forward at once: a bridge port otherwise spends seconds in "learning".
            s.ip("link", "set", self.bridge, "type", "bridge", "forward_delay", "0")
            s.ip("addr", "add", f"{self.server_address}/{self.prefix}", "dev", self.bridge)
            s.ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_ns(self, name: str) -> Namespace:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        ns = Namespace(name)
        ns.ip("link", "set", "lo", "up")
        return ns

    def add_host(self, name: str, address: str | None = None, mac: str | None = None) -> Host:
        """A new namespace joined to the bridge by a veth pair.

        ``address`` is e.g. "192.0.2.10/24"; None leaves it unconfigured,
        for DHCP clients.
        """
        index = len(self.hosts)
        ns = self._make_ns(f"ab{self.tag}{name}"[:15])
        outer = f"v{self.tag}{index}"[:15]
        inner = "eth0"
        mac = mac or f"02:ab:{secrets.token_hex(1)}:{secrets.token_hex(1)}:00:{index + 1:02x}"
        self.server.ip("link", "add", outer, "type", "veth", "peer", "name", inner,
                       "netns", ns.name)
        self.server.ip("link", "set", outer, "master", self.bridge)
        self.server.ip("link", "set", outer, "up")
        ns.ip("link", "set", inner, "address", mac)
        if address:
            ns.ip("addr", "add", address, "dev", inner)
        ns.ip("link", "set", inner, "up")
        host = Host(ns=ns, ifname=inner, address=address.split("/")[0] if address else None,
                    mac=mac)
        self.hosts.append(host)
        return host

    def add_behind(self, router: Host, name: str, router_address: str,
                   mac: str | None = None) -> Host:
        """A client namespace on a segment of its own behind ``router`` (a relay).

        ``router_address`` (e.g. "198.18.0.2/16") goes on the router's side of
        the new link; the client's side is left unconfigured, for DHCP.
        """
        index = len(self.hosts)
        ns = self._make_ns(f"ab{self.tag}{name}"[:15])
        down = f"down{index}"
        mac = mac or f"02:ab:{secrets.token_hex(1)}:{secrets.token_hex(1)}:01:{index + 1:02x}"
        router.ns.ip("link", "add", down, "type", "veth", "peer", "name", "eth0",
                     "netns", ns.name)
        router.ns.ip("addr", "add", router_address, "dev", down)
        router.ns.ip("link", "set", down, "up")
        ns.ip("link", "set", "eth0", "address", mac)
        ns.ip("link", "set", "eth0", "up")
        host = Host(ns=ns, ifname="eth0", address=None, mac=mac, uplink=down)
        self.hosts.append(host)
        return host

    def add_tap(self) -> str:
        """A tap on the bridge for a QEMU guest; returns its name."""
        name = f"tap{self._taps}"
        self._taps += 1
        self.server.ip("tuntap", "add", name, "mode", "tap")
        self.server.ip("link", "set", name, "master", self.bridge)
        self.server.ip("link", "set", name, "up")
        return name

    def add_address(self, address: str, dev: str | None = None) -> None:
        """A second address on the server side (a relayed subnet's router)."""
        self.server.ip("addr", "add", address, "dev", dev or self.bridge)

    def close(self) -> None:
        for name in reversed(self._namespaces):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()


def _kill_namespace_processes(name: str) -> None:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


def leftover_namespaces() -> list[str]:
    """Namespaces a crashed lab left behind (names start with "ab")."""
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith("ab") and len(n) >= 8]
