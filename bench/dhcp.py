"""DHCP benchmark: perfdhcp against AstralBoot (store + dhcpd) and dnsmasq, same run.

    sudo .venv/bin/python bench/dhcp.py [--rates 100,200,500,...] [--seconds 10] [--repeat 2]
    sudo .venv/bin/python -m bench dhcp

Each server runs alone in a fresh namespace network (bridge br0 with
192.0.2.1/24 and 198.18.0.1/16); perfdhcp runs in a second namespace at
198.18.0.2 and acts as a relay, so both servers answer a relayed subnet
(198.18.0.0/16, about 65,000 addresses). AstralBoot runs its default,
durable set-up: SQLite in WAL mode with synchronous=FULL, every ACK sent
only after its lease is on disk, a boot event per OFFER and ACK. dnsmasq
keeps its lease file and runs with --no-ping (with its ping check it answers
only a client's retransmission, and perfdhcp never retransmits). Offered
rates rise; at each one both servers get the same perfdhcp run (-r RATE for
--seconds, 60,000 distinct clients, a reply later than 1 s counts as
dropped). Reported: completed DORA exchanges/s, the
drops, and the CPU each server process spent per exchange. The summary is
the highest completed rate with 0 drops for each, and the ratio; with
--repeat N a rate is tried up to N times until one run has 0 drops.
With --kea, Kea (memfile, no persistence) runs too: it shows how fast the
machine is on the day (../shared/notes/peers.md saw it clean at 4,000/s).
Target: at least 2,000 durable DORA/s with 0 drops on a 2-core machine.
Figures drift between runs on shared machines: compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from astralboot.common.cli.demo.netns import Lab
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers (support/)
from support.stack import Stack, write_config

SERVER = "198.18.0.1"
RELAY = "198.18.0.2"
NETWORK = "198.18.0.0/16"
POOL = ("198.18.1.0", "198.18.255.254")
CLIENTS = 60000
RATES = (100, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000)


@dataclass
class Run:
    server: str
    rate: int
    seconds: int
    offers: tuple[int, int] = (0, 0)  # sent, received
    acks: tuple[int, int] = (0, 0)
    cpu: dict[str, float] = field(default_factory=dict)  # seconds of CPU per process
    error: str = ""

    @property
    def drops(self) -> int:
        return (self.offers[0] - self.offers[1]) + (self.acks[0] - self.acks[1])

    @property
    def completed(self) -> float:
        return self.acks[1] / self.seconds

    @property
    def clean(self) -> bool:
        return not self.error and self.drops == 0 and self.acks[1] > 0

    def drop_ratio(self) -> float:
        sent = self.offers[0] + self.acks[0]
        return 100.0 * self.drops / sent if sent else 100.0


def _exchange(text: str, name: str) -> tuple[int, int]:
    block = text.split(f"Statistics for: {name}", 1)[1] if f"Statistics for: {name}" in text \
        else ""
    sent = re.search(r"sent packets: (\d+)", block)
    received = re.search(r"received packets: (\d+)", block)
    return (int(sent.group(1)) if sent else 0, int(received.group(1)) if received else 0)


def perfdhcp(client: object, rate: int, seconds: int) -> tuple[str, str]:
    argv = ["perfdhcp", "-4", "-l", RELAY, "-r", str(rate), "-R", str(CLIENTS),
            "-p", str(seconds), "-W", "2000000", SERVER]
    proc = client.ns.run(argv, check=False, timeout=seconds + 120)  # type: ignore[attr-defined]
    return proc.stdout, proc.stderr


def _network(lab: Lab) -> object:
    lab.add_address(f"{SERVER}/16")
    return lab.add_host("perf", address=f"{RELAY}/16")


def _measure(result: Run, client: object, procs: dict[str, psutil.Process]) -> Run:
    """One perfdhcp run into ``result``, with the CPU each server process spent on it."""
    before = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    out, err = perfdhcp(client, result.rate, result.seconds)
    result.cpu = {name: sum(p.cpu_times()[:2]) - before[name] for name, p in procs.items()}
    result.offers, result.acks = _exchange(out, "DISCOVER-OFFER"), _exchange(out, "REQUEST-ACK")
    if result.offers[0] == 0:
        result.error = (err or out).strip()[-300:]
    return result


def _measure_peer(result: Run, argv: list[str], settle: float) -> Run:
    """A peer server started from ``argv`` in the lab, given ``settle`` seconds, measured."""
    with Lab() as lab:
        client = _network(lab)
        proc = lab.server.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(settle)
            return _measure(result, client, {result.server: psutil.Process(proc.pid)})
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def run_astralboot(rate: int, seconds: int, workdir: Path) -> Run:
    result = Run("astralboot", rate, seconds)
    folder = Path(tempfile.mkdtemp(prefix="ab-", dir=workdir))
    config = write_config(folder, range="192.0.2.100-192.0.2.199",
                          extra={"log_level": "warning"})
    with config.open("a") as f:
        f.write(f'\n[[dhcp.subnet]]\nnetwork = "{NETWORK}"\nrange = "{POOL[0]}-{POOL[1]}"\n')
    try:
        with Lab() as lab, Stack(config, services=("store", "dhcpd"), netns=lab.server) as stack:
            client = _network(lab)
            return _measure(result, client, {name: psutil.Process(p.pid)
                                             for name, p in stack.procs.items()})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_dnsmasq(rate: int, seconds: int, workdir: Path) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="dnsmasq-", dir=workdir))
    try:
        return _measure_peer(Run("dnsmasq", rate, seconds), [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            f"--pid-file={folder}/pid", f"--dhcp-leasefile={folder}/leases",
            "--interface=br0", "--bind-interfaces", "--dhcp-lease-max=100000",
            # dnsmasq pings an address before offering it and answers only a
            # retransmitted DISCOVER meanwhile; perfdhcp never retransmits.
            "--no-ping",
            f"--dhcp-range={POOL[0]},{POOL[1]},255.255.0.0,12h"], settle=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KEA = {"Dhcp4": {
    "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "udp"},
    "lease-database": {"type": "memfile", "persist": False},
    "valid-lifetime": 43200,
    "subnet4": [{"id": 1, "subnet": NETWORK, "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}],
                 "relay": {"ip-addresses": [RELAY]}}],
}}


def run_kea(rate: int, seconds: int, workdir: Path) -> Run:
    """Kea as measured in ../shared/notes/peers.md: memfile, no persistence."""
    folder = Path(tempfile.mkdtemp(prefix="kea-", dir=workdir))
    config = dict(KEA["Dhcp4"])
    config["loggers"] = [{"name": "kea-dhcp4", "severity": "WARN",
                          "output_options": [{"output": str(folder / "kea.log")}]}]
    (folder / "kea.json").write_text(json.dumps({"Dhcp4": config}))
    Path("/run/kea").mkdir(parents=True, exist_ok=True)
    try:
        return _measure_peer(Run("kea", rate, seconds),
                             ["kea-dhcp4", "-c", str(folder / "kea.json")], settle=2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _row(r: Run) -> str:
    if r.error:
        return f"{r.server:11} {r.rate:>6}  error: {r.error.splitlines()[-1] if r.error else ''}"
    per = "  ".join(f"{name} {secs / max(r.acks[1], 1) * 1e6:,.0f} us"
                    for name, secs in sorted(r.cpu.items()))
    return (f"{r.server:11} {r.rate:>6} {r.completed:>10,.0f} {r.drops:>7} "
            f"{r.drop_ratio():>6.2f}%   {per}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default=",".join(map(str, RATES)),
                   help="offered DORA/s, comma-separated, rising")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--only", choices=("astralboot", "dnsmasq"))
    p.add_argument("--kea", action="store_true",
                   help="also run Kea (memfile, not durable): how fast this machine is today")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per rate until one has 0 drops (default 1)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/dhcp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("perfdhcp", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (Debian packages kea-admin, dnsmasq-base)", file=sys.stderr)
            return 2
    rates = [int(r) for r in args.rates.split(",")]
    servers = [s for s in ("astralboot", "dnsmasq") if args.only in (None, s)]
    if args.kea:
        if shutil.which("kea-dhcp4") is None:
            print("--kea needs kea-dhcp4 (Debian package kea-dhcp4-server)", file=sys.stderr)
            return 2
        servers.append("kea")
    runners = {"astralboot": run_astralboot, "dnsmasq": run_dnsmasq, "kea": run_kea}
    workdir = Path(tempfile.mkdtemp(prefix="ab-bench-dhcp-"))
    print(f"perfdhcp through a relay, {args.seconds} s per rate, {CLIENTS:,} clients; "
          f"{os.cpu_count()} CPUs; AstralBoot: SQLite, durable\n")
    print(f"{'server':11} {'offered':>6} {'DORA/s':>10} {'drops':>7} {'ratio':>7}   "
          "CPU per exchange")
    runs: list[Run] = []
    failing = {s: 0 for s in servers}
    try:
        for rate in rates:
            for server in servers:
                if failing[server] >= 2:
                    continue  # two rates in a row with drops: it is past its limit
                for _ in range(args.repeat):  # the others on a shared machine come and go
                    run = runners[server](rate, args.seconds, workdir)
                    runs.append(run)
                    print(_row(run), flush=True)
                    if run.clean:
                        break
                failing[server] = 0 if run.clean else failing[server] + 1
            if all(failing[s] >= 2 for s in servers):
                break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\nhighest completed DORA/s with 0 drops:")
    best: dict[str, float] = {}
    for s in servers:
        clean = [r for r in runs if r.server == s and r.clean]
        if clean:
            best[s] = max(r.completed for r in clean)
            print(f"  {s:11} {best[s]:>8,.0f}")
        else:
            first = next((r for r in runs if r.server == s), None)
            seen = (f"{first.completed:,.0f}/s completed at {first.rate}/s offered, "
                    f"{first.drop_ratio():.2f}% dropped" if first else "not run")
            print(f"  {s:11}     none (lowest rate tried: {seen})")
    if "astralboot" in servers and "dnsmasq" in servers:
        if "astralboot" in best and "dnsmasq" in best:
            print(f"  ratio astralboot/dnsmasq: {best['astralboot'] / best['dnsmasq']:.1f}x")
        elif "astralboot" in best:
            lowest = min(r.rate for r in runs if r.server == "dnsmasq")
            print(f"  ratio astralboot/dnsmasq: over {best['astralboot'] / lowest:.1f}x "
                  f"(dnsmasq dropped already at {lowest}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
