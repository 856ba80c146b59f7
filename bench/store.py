"""Store benchmark: durable lease commits per second through the bus.

    .venv/bin/python bench/store.py [--seconds 5] [--clients 1,4,16,64,256]
        [--backends sqlite,postgres] [--driver raw|client|both]
        [--events message,report|none]

Starts a real store (``astralboot store``) per backend, on an SQLite file or
a fresh database on the local PostgreSQL server, and runs
bench/store_driver.py against it with 1 to 256 concurrent clients. A client
does what dhcpd does for one DORA: LeaseOffer, then LeaseCommit (answered
only once the lease is durable), and the ``dhcp.ack`` boot event, either as
a separate EventReport (``message``) or by ``report=True`` on the commit
(``report``: one message fewer per DORA). Each exchange uses a new MAC, so
every commit inserts a lease, a machine and an event. Reported per row:
commits/s, commit latency (offer sent → commit answered), and the store's
CPU time per exchange (all its threads, from /proc), which stays
meaningful when other work shares the machine.

Driver ``raw`` multiplexes the clients on one DEALER socket cheaply and so
measures the store; ``client`` uses AsyncBusClient coroutines (the front
ends' client), where the driver's own CPU is often the limit on 2 cores.
The target behind it: dhcpd at 2,000 durable DORA/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers (support/)
from support.postgres import scratch_database
from support.stack import Stack, write_config

DRIVER = Path(__file__).with_name("store_driver.py")


@contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'astralboot.db'}"
        return
    with scratch_database("astralboot_bench") as url:
        yield url


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cell(config: Path, pid: int, clients: int, seconds: float, driver: str, events: str,
             tag: int) -> dict[str, float]:
    before = cpu_seconds(pid)
    done = subprocess.run([sys.executable, str(DRIVER), str(config), str(clients), str(seconds),
                           driver, events, str(tag)],
                          capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    used = cpu_seconds(pid) - before
    result["rate"] = result["commits"] / result["seconds"]
    result["cpu_us"] = used / max(result["commits"], 1) * 1e6
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/store.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", default="1,4,16,64,256")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--driver", choices=("raw", "client", "both"), default="raw")
    p.add_argument("--events", default="message,report",
                   help="how each dhcp.ack event travels: message, report, none "
                        "(comma-separated; default message,report)")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.clients.split(",")]
    drivers = ("raw", "client") if args.driver == "both" else (args.driver,)
    event_modes = args.events.split(",")

    print(f"store commits through the bus: {args.seconds:g}s per row, a new MAC per exchange, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':9} {'driver':7} {'events':8} {'clients':>7} {'commits/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'store CPU µs/commit':>20} {'errors':>7}")
    tag = 0
    for backend in args.backends.split(","):
        folder = Path(tempfile.mkdtemp(prefix="ab-bench-"))
        try:
            with database(backend, folder) as url:
                config = write_config(folder, address="10.64.0.1", network="10.64.0.0/14",
                                      range="10.64.1.0-10.67.254.254",
                                      extra={"store.database": url,
                                             "store.cache": str(folder / "cache"),
                                             "log_level": "warning"})
                with Stack(config, services=("store",), ready_timeout=120) as stack:
                    pid = stack.procs["store"].pid
                    for driver in drivers:
                        for events in event_modes:
                            for clients in counts:
                                tag += 1
                                r = run_cell(config, pid, clients, args.seconds, driver, events,
                                             tag)
                                print(f"{backend:9} {driver:7} {events:8} {clients:7d} "
                                      f"{r['rate']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                                      f"{r['cpu_us']:20.0f} {int(r['errors']):7d}", flush=True)
                                time.sleep(0.5)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
