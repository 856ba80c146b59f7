"""TFTP benchmark: AstralBoot (store + tftpd) against dnsmasq's TFTP, same run.

    sudo .venv/bin/python bench/tftp.py [--rounds 3] [--concurrent 100] [--file PATH]
        [--single-port]
    sudo .venv/bin/python -m bench tftp

One namespace network: AstralBoot serves on 192.0.2.1, dnsmasq (2.90,
--enable-tftp) on 192.0.2.2 of the same bridge, both from the same folder;
the clients run in a second namespace on a veth. The file is Debian's
40 MB netboot initrd (package debian-installer-12-netboot-amd64; random
bytes of the same size if it is missing). For each round, each server in
turn: curl --tftp-blksize 1468 (lock-step), atftp --option "windowsize 16"
(RFC 7440 windows of 512-byte blocks), and 100 tftp-hpa clients at once
fetching ipxe.efi. Every received file is checked against the original.
Reported: the median time of each, the ratio (dnsmasq time / AstralBoot
time: above 1 means AstralBoot is faster), failures, and the CPU the tftpd
process spent. Target: at least dnsmasq's throughput with windowsize, and
no failures. Figures drift between runs on shared machines: compare ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from astralboot.common.cli.demo.netns import Host, Lab, require_root
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers (support/)
from support.stack import Stack, write_config

ASTRAL = "192.0.2.1"
DNSMASQ = "192.0.2.2"
CLIENT = "192.0.2.150"
INITRD = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/initrd.gz")
IPXE = Path("/usr/lib/ipxe/ipxe.efi")
SERVERS = {"astralboot": ASTRAL, "dnsmasq": DNSMASQ}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Case:
    name: str
    times: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def add(self, server: str, seconds: float, failures: int) -> None:
        self.times.setdefault(server, []).append(seconds)
        self.failures[server] = self.failures.get(server, 0) + failures

    def median(self, server: str) -> float:
        return statistics.median(self.times[server])


class Bench:
    def __init__(self, lab: Lab, client: Host, folder: Path, big: Path, small: Path) -> None:
        self.lab = lab
        self.client = client
        self.folder = folder
        self.big = big
        self.small = small
        self.big_sha = sha256(big)
        self.small_sha = sha256(small)
        self.out = folder / "out"
        self.out.mkdir()

    def timed(self, cmd: list[str],
              timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.perf_counter()
        proc = self.client.ns.run(["sh", "-c", " ".join(cmd)], check=False, timeout=timeout,
                                  cwd=self.out)
        return time.perf_counter() - start, proc

    def single(self, cmd: list[str], expect: str) -> tuple[float, int]:
        target = self.out / "big"
        target.unlink(missing_ok=True)
        seconds, proc = self.timed(cmd, timeout=300)
        ok = proc.returncode == 0 and target.exists() and sha256(target) == expect
        if not ok:
            print(f"  failed: {' '.join(cmd)}: {proc.returncode} {proc.stdout[-300:]} "
                  f"{proc.stderr[-300:]}", file=sys.stderr)
        return seconds, 0 if ok else 1

    def curl(self, server: str) -> tuple[float, int]:
        return self.single(["curl", "-sS", "--tftp-blksize", "1468", "-o", "big",
                            f"tftp://{server}/{self.big.name}"], self.big_sha)

    def atftp(self, server: str) -> tuple[float, int]:
        return self.single(["atftp", "--option", "'windowsize 16'", "-g", "-r", self.big.name,
                            "-l", "big", server], self.big_sha)

    def concurrent(self, server: str, n: int) -> tuple[float, int]:
        for old in self.out.glob("small.*"):
            old.unlink()
        script = (f"for i in $(seq {n}); do tftp {server} -m binary -c get {self.small.name} "
                  f"small.$i >/dev/null 2>&1 & done; wait")
        seconds, _ = self.timed([script], timeout=600)
        good = sum(1 for i in range(1, n + 1)
                   if (f := self.out / f"small.{i}").exists() and sha256(f) == self.small_sha)
        return seconds, n - good


def start_dnsmasq(lab: Lab, root: Path, folder: Path) -> subprocess.Popen[bytes]:
    log = open(folder / "dnsmasq.log", "wb")
    proc = lab.server.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--enable-tftp",
                             f"--tftp-root={root}", f"--listen-address={DNSMASQ}",
                             "--bind-interfaces", "--user=root", "--group=root",
                             f"--pid-file={folder / 'dnsmasq.pid'}", "--tftp-max=1000",
                             "--log-facility=-"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {(folder / 'dnsmasq.log').read_text()}")
        check = lab.server.run(["ss", "-uln", f"src {DNSMASQ}:69"], check=False)
        if f"{DNSMASQ}:69" in check.stdout:
            return proc
        time.sleep(0.1)
    raise RuntimeError("dnsmasq did not bind its TFTP port")


def tftpd_cpu(stack: Stack) -> Callable[[], float]:
    """Seconds of CPU the tftpd process (the child of `ip netns exec`) has used."""
    root = psutil.Process(stack.procs["tftpd"].pid)
    procs = [root, *root.children(recursive=True)]

    def cpu() -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    return cpu


def report(cases: list[Case], cpu: dict[str, float], size: int) -> None:
    print(f"\n{'':26} {'AstralBoot':>11} {'dnsmasq':>11} {'ratio':>7}  failures (ours/dnsmasq)")
    for case in cases:
        ours, theirs = case.median("astralboot"), case.median("dnsmasq")
        print(f"{case.name:26} {ours:10.2f}s {theirs:10.2f}s {theirs / ours:6.2f}x  "
              f"{case.failures['astralboot']}/{case.failures['dnsmasq']}")
        if case.name in cpu:
            print(f"{'':26} tftpd CPU {cpu[case.name]:.2f}s per transfer; "
                  f"{size / ours / 1e6:.1f} MB/s")
    print("\nratio = dnsmasq time / AstralBoot time (above 1: AstralBoot is faster); "
          "medians of the rounds")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=100)
    p.add_argument("--single-port", action="store_true",
                   help="run tftpd in single-port mode (every transfer on port 69)")
    p.add_argument("--file", type=Path, default=INITRD,
                   help="the large file (default: %(default)s)")
    args = p.parse_args(argv)
    require_root("bench/tftp.py")
    folder = Path(tempfile.mkdtemp(prefix="ab-bench-tftp-"))
    try:
        data = folder / "data"
        tftp = data / "tftp"
        tftp.mkdir(parents=True)
        big = tftp / "initrd.gz"
        if args.file.exists():
            shutil.copyfile(args.file, big)
        else:
            print(f"{args.file} is missing; using 40 MB of random bytes", file=sys.stderr)
            big.write_bytes(os.urandom(40_810_276))
        small = tftp / "ipxe.efi"
        shutil.copyfile(IPXE, small)
        size = big.stat().st_size
        print(f"large file {size / 1e6:.1f} MB, small file {small.stat().st_size / 1e3:.0f} kB, "
              f"{args.rounds} rounds, {args.concurrent} concurrent, tftpd "
              f"{'single-port' if args.single_port else 'port per transfer'}", flush=True)
        config = write_config(folder, data=data, extra={
            "log_level": "warning", "tftp.per_client": max(args.concurrent, 8),
            "tftp.max_sessions": max(args.concurrent * 2, 512),
            "tftp.single_port": args.single_port})
        with Lab() as lab:
            lab.add_address(f"{DNSMASQ}/24")
            client = lab.add_host("bench", f"{CLIENT}/24")
            dnsmasq = start_dnsmasq(lab, tftp, folder)
            try:
                with Stack(config, services=("store", "tftpd"), netns=lab.server) as stack:
                    return run(args, Bench(lab, client, folder, big, small), stack, size)
            finally:
                dnsmasq.terminate()
                dnsmasq.wait(10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, bench: Bench, stack: Stack, size: int) -> int:
    cpu_of = tftpd_cpu(stack)
    # Warm up: the store hashes the files into its cache, tftpd maps them.
    for server in SERVERS.values():
        bench.curl(server)
        bench.concurrent(server, 2)
    curl = Case("curl --tftp-blksize 1468")
    atftp = Case("atftp windowsize 16")
    many = Case(f"{args.concurrent} concurrent ipxe.efi")
    cpu: dict[str, list[float]] = {curl.name: [], atftp.name: []}
    for rnd in range(args.rounds):
        for name, server in SERVERS.items():
            for case, fn in ((curl, bench.curl), (atftp, bench.atftp)):
                before = cpu_of()
                seconds, failed = fn(server)
                if name == "astralboot":
                    cpu[case.name].append(cpu_of() - before)
                case.add(name, seconds, failed)
                print(f"  round {rnd + 1} {name:10} {case.name:26} {seconds:6.2f}s"
                      f"{'  FAILED' if failed else ''}", flush=True)
            seconds, failed = bench.concurrent(server, args.concurrent)
            many.add(name, seconds, failed)
            print(f"  round {rnd + 1} {name:10} {many.name:26} {seconds:6.2f}s  "
                  f"{failed} failed", flush=True)
    report([curl, atftp, many], {k: statistics.median(v) for k, v in cpu.items()}, size)
    failures = sum(c.failures["astralboot"] for c in (curl, atftp, many))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
