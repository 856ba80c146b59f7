"""The servers of bench/dns.py: dnsd as a process of its own, and the handles
the bench starts, reads and stops it (and dnsmasq) with.

    python -m bench.dns_server SETTINGS_JSON   (from the top of the repository)

(As a script, bench/ would come first on sys.path, and bench/dns.py would
shadow dnspython.)

Settings::

    {"address": "192.0.2.1", "port": 53, "domain": "bench.test",
     "server_name": "bootsrv", "subnets": [...], "hosts_file": PATH,
     "upstreams": ["192.0.2.53"], "rrl_rate": null, "cache_size": 1024}

The zone and the server are the service's own classes (services/dnsd
Zone and DnsServer), built as services/dnsd/service.py builds them with
the ``[dns]`` defaults, and the heap settled as the service settles it. ``hosts_file`` is the one dnsmasq reads with
``--addn-hosts`` (``IP NAME.DOMAIN`` a line); each line becomes a host
with a name the operator chose (``fixed=True``) under a MAC of its own.
Clients are the served subnets. Prints ``ready PORT`` once bound, then
answers each ``stats`` line on stdin with one line of JSON (the server's
counters, and the garbage collector's: collections of the oldest
generation, and the longest pause since the last ``stats``); stops at the
end of stdin. :class:`Dnsd` starts it in a namespace and reads those.
"""

from __future__ import annotations

import asyncio
import gc
import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import psutil

from astralboot.common import logs
from astralboot.common.cli.demo.netns import Namespace
from astralboot.common.frontend import settle_heap
from astralboot.services.dnsd.server import DnsServer
from astralboot.services.dnsd.zone import MAX_HOSTS, Zone

ROOT = Path(__file__).resolve().parents[1]

# -- in the bench: the server processes --------------------------------------------


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


class Daemon:
    """A server process in a namespace; stopped (and waited for) on exit."""

    def __init__(self, name: str, ns: Namespace, argv: list[str], log: Path) -> None:
        self.name = name
        self.log_path = log
        with open(log, "wb") as out:
            self.proc: subprocess.Popen[bytes] = ns.popen(argv, stdin=subprocess.PIPE,
                                                          stdout=subprocess.PIPE, stderr=out,
                                                          cwd=ROOT)
        self.cpu = psutil.Process(self.proc.pid)  # `ip netns exec` and taskset exec in place

    def cpu_seconds(self) -> float:
        times = self.cpu.cpu_times()
        return times.user + times.system

    def preempted(self) -> int:
        """Times the kernel took the CPU from it (others wanted its core)."""
        return int(self.cpu.num_ctx_switches().involuntary)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def line(self, timeout: float) -> str:
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        return out.readline().decode() if ready else ""

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Dnsd(Daemon):
    """``python -m bench.dns_server SETTINGS`` in ``ns``, once it is ready."""

    def __init__(self, ns: Namespace, settings: dict[str, Any], log: Path,
                 cpu: int | None) -> None:
        super().__init__(f"dnsd at {settings['address']}", ns,
                         pinned(cpu, [sys.executable, "-m", "bench.dns_server",
                                     json.dumps(settings)]), log)
        try:
            line = self.line(60)
            if not line.startswith("ready "):
                raise RuntimeError(f"dnsd did not start ({line!r}):\n{self.log()}")
        except BaseException:
            self.__exit__()
            raise

    def stats(self) -> dict[str, int]:
        self.check()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        line = self.line(10)
        if not line:
            raise RuntimeError(f"no stats from dnsd:\n{self.log()}")
        return {k: v for k, v in json.loads(line).items() if isinstance(v, int)}


# -- in dnsd's process --------------------------------------------------------------


def host_mac(index: int) -> str:
    """A locally administered MAC for the ``index``-th host of the file."""
    return "02:00:" + ":".join(f"{b:02x}" for b in index.to_bytes(4, "big"))


def read_hosts(path: Path) -> list[tuple[str, str]]:
    """(ip, name) from an /etc/hosts-shaped file."""
    hosts = []
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            hosts.append((fields[0], fields[1]))
    return hosts


class GcPauses:
    """How often the collector ran, and for how long (a pause holds every query)."""

    def __init__(self) -> None:
        self.full = 0
        self.total_us = 0
        self.max_us = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = int((time.perf_counter() - self._started) * 1e6)
        self.total_us += pause
        self.max_us = max(self.max_us, pause)
        if info.get("generation") == 2:
            self.full += 1

    def read(self) -> dict[str, int]:
        """The counters; the longest pause starts again from here."""
        out = {"gc_full": self.full, "gc_pause_total_us": self.total_us,
               "gc_pause_max_us": self.max_us}
        self.max_us = 0
        return out


def build(settings: dict[str, Any]) -> DnsServer:
    hosts = read_hosts(Path(settings["hosts_file"]))
    ttl = settings.get("ttl", 60)
    # As services/dnsd/service.py builds them, with the [dns] defaults.
    zone = Zone(settings["domain"], settings.get("server_name"), settings["address"],
                settings["subnets"], ttl=ttl, negative_ttl=min(ttl, 30),
                max_hosts=max(MAX_HOSTS, len(hosts)))
    for index, (ip, name) in enumerate(hosts):
        label = zone.set_host(host_mac(index), name, ip, fixed=True)
        if label != name.split(".", 1)[0]:
            raise SystemExit(f"host {name} got the label {label!r} in the zone")
    return DnsServer(zone, settings["address"], settings.get("port", 53),
                     clients=settings["subnets"], upstreams=settings.get("upstreams", ()),
                     rrl_rate=settings.get("rrl_rate"), rrl_slip=2, forward_timeout=2.0,
                     forward_attempts=3, cache_size=settings.get("cache_size", 1024))


async def main(settings: dict[str, Any]) -> None:
    server = build(settings)
    server.open()
    settle_heap()  # as the service does once started
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    loop = asyncio.get_running_loop()
    serving = loop.create_task(server.serve())
    print(f"ready {server.port}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            if serving.done():
                serving.result()  # a crash ends the bench, loudly
            if line.strip() == b"stats":
                print(json.dumps({**server.stats, **server.details(), **pauses.read()}),
                      flush=True)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


if __name__ == "__main__":
    logs.configure("warning", "dnsd")
    asyncio.run(main(json.loads(sys.argv[1])))
