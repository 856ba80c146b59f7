"""DNS benchmark: dnsperf against AstralBoot's dnsd and dnsmasq, same zone, same run.

    sudo .venv/bin/python -m bench dns [--seconds 10] [--hosts 1000] [--rounds 1]
        [--clients 4] [--outstanding 200] [--queue 200] [--rates R1,R2] [--rrl-rate 200]
        [--flood-rate 5000] [--no-pin]

One namespace network (bridge br0): dnsd (bench/dns_server.py: the
service's Zone and DnsServer, one process) on 192.0.2.1 and dnsmasq (2.90)
on 192.0.2.2 of the server namespace; an upstream dnsmasq in a namespace of
its own on 192.0.2.53, authoritative for example.test (--no-resolv, host
records only); dnsperf in a client namespace on 192.0.2.100. Both servers
answer the same zone, bench.test: --hosts names nodeN in 198.18.0.0/16, A
and PTR, from one hosts file (dnsmasq reads it with --addn-hosts, dnsd
puts each line in its Zone), and forward the rest to the upstream, each
with a 1,024-entry cache. dnsmasq runs the way an operator runs it next to
DHCP: --domain, --local for the zone and its reverse zones, --no-resolv
--server=UPSTREAM, bound to its address only, no DHCP.

Before any timing, dig asks both servers for a host name, its PTR, a name
that does not exist, a forwarded name and a sample of the query files;
the bench stops if the two disagree on any answer.

Two query files: authoritative (A for host names, PTR for their
addresses, A for names that do not exist, in --mix proportions) and
forwarded (A for --hot names of example.test over and over, so the caches
answer most, and a --miss share of names from 50,000 others, which go
upstream). For each, both servers in turn: the highest throughput
(dnsperf -c --clients -q --outstanding for --seconds), then runs at fixed
rates (-Q, up to --queue queries out): dnsmasq's measured throughput (does
dnsd keep up, with nothing lost?), half of dnsd's (latency under a load
both carry) and --rates, with each query's latency. A query without an
answer within --timeout seconds is lost; a server too slow for the rate
shows as dnsperf sending less than offered (it never has more than
--queue out). A larger --queue lets dnsperf send in bursts of that size,
and a server loses whatever its socket buffer cannot hold (dnsd asks for
1 MB, dnsmasq keeps the kernel's default of about 200 queries).
Reported: queries/s, lost, latency, the CPU each server spent per query
and how often the kernel preempted it, the CPU dnsperf used (near 100%:
the client, not the server, set the pace), and the ratio dnsd / dnsmasq
(above 1: dnsd does more).
Then dnsd again with response-rate limiting (--rrl-rate per client /24
and answer, as the service will default to) under floods from one /24 at
--flood-rate: one name, random names that do not exist, the
authoritative mix; dnsd's own counters say how many were answered,
truncated (slipped) and dropped.

With two CPUs or more, the servers run on CPU 1 and dnsperf and the
upstream on CPU 0 (--no-pin leaves it to the scheduler). Figures drift
between runs on shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from astralboot.common.cli.demo.netns import Host, Lab, Namespace, require_root
from bench.dns_server import Daemon, Dnsd, pinned

DNSD = "192.0.2.1"
DNSMASQ = "192.0.2.2"
DNSD_RRL = "192.0.2.3"
UPSTREAM = "192.0.2.53"
CLIENT = "192.0.2.100"
DOMAIN = "bench.test"
FORWARDED = "example.test"
HOST_NET = IPv4Network("198.18.0.0/16")
UPSTREAM_NET = IPv4Network("198.19.0.0/16")
SUBNETS = ("192.0.2.0/24", str(HOST_NET))
COLD_NAMES = 50_000
CACHE = 1024
UPSTREAM_TTL = 300  # the hot names outlive every run in both caches
LOCAL_TTL = 60  # dnsd's zone TTL; dnsmasq's --local-ttl is 0 unless told
SERVERS = ("dnsd", "dnsmasq")


# -- the zone and the queries -----------------------------------------------------


def host_ip(i: int) -> IPv4Address:
    return HOST_NET.network_address + i


@dataclass
class Files:
    """The zone's hosts file, the upstream's, and dnsperf's query files."""

    folder: Path
    hosts: int
    hot: int
    miss: float
    rng: random.Random = field(default_factory=lambda: random.Random(53))
    _cold: int = 0  # the last cold name asked
    _written: int = 0

    @property
    def zone_hosts(self) -> Path:
        return self.folder / "hosts"

    @property
    def upstream_hosts(self) -> Path:
        return self.folder / "upstream-hosts"

    def queries(self, kind: str) -> Path:
        return self.folder / f"{kind}.queries"

    def for_round(self, kind: str) -> Path:
        """The query file for the next round of ``kind``: a fresh forwarded one
        each time, so that its cold names are in neither cache yet (dnsperf
        starts every run at the top of its file)."""
        if kind != "fwd":
            return self.queries(kind)
        rng = self.rng
        fwd = []
        for _ in range(200_000):
            if rng.random() < self.miss:
                self._cold = self._cold % COLD_NAMES + 1
                fwd.append(f"cold{self._cold}.{FORWARDED} A")
            else:
                fwd.append(f"www{rng.randint(1, self.hot)}.{FORWARDED} A")
        self._written += 1
        path = self.folder / f"fwd-{self._written}.queries"
        path.write_text("\n".join(fwd) + "\n")
        return path

    def write(self, mix: tuple[int, int, int]) -> None:
        rng = self.rng
        self.zone_hosts.write_text("".join(f"{host_ip(i)} node{i}.{DOMAIN}\n"
                                           for i in range(1, self.hosts + 1)))
        self.upstream_hosts.write_text(
            "".join(f"{UPSTREAM_NET.network_address + i} www{i}.{FORWARDED}\n"
                    for i in range(1, self.hot + 1))
            + "".join(f"{UPSTREAM_NET.network_address + self.hot + i} cold{i}.{FORWARDED}\n"
                      for i in range(1, COLD_NAMES + 1)))
        auth = []
        for kind in rng.choices(("A", "PTR", "NX"), weights=mix, k=100_000):
            i = rng.randint(1, self.hosts)
            if kind == "A":
                auth.append(f"node{i}.{DOMAIN} A")
            elif kind == "PTR":
                auth.append(f"{host_ip(i).reverse_pointer} PTR")
            else:
                auth.append(f"ghost{rng.randrange(10 ** 8)}.{DOMAIN} A")
        self.queries("auth").write_text("\n".join(auth) + "\n")
        self.queries("one").write_text(f"node1.{DOMAIN} A\n")
        self.queries("nx").write_text("".join(f"ghost{rng.randrange(10 ** 8)}.{DOMAIN} A\n"
                                              for _ in range(100_000)))


# -- the servers ----------------------------------------------------------------


def start_dnsd(ns: Namespace, address: str, files: Files, folder: Path, cpu: int | None,
               rrl_rate: float | None = None) -> Dnsd:
    settings = {"address": address, "port": 53, "domain": DOMAIN, "server_name": "bootsrv",
                "subnets": list(SUBNETS), "hosts_file": str(files.zone_hosts),
                "upstreams": [UPSTREAM], "rrl_rate": rrl_rate, "cache_size": CACHE}
    return Dnsd(ns, settings, folder / f"dnsd-{address}.log", cpu)


def dnsmasq_argv(address: str, folder: Path, name: str, extra: list[str]) -> list[str]:
    return ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
            "--no-hosts", "--no-resolv", "--user=root", "--group=root",
            f"--pid-file={folder / (name + '.pid')}", "--port=53", "--bind-interfaces",
            f"--listen-address={address}", *extra]


def start_dnsmasq(name: str, ns: Namespace, argv: list[str], folder: Path, client: Host,
                  address: str, probe: str) -> Daemon:
    daemon = Daemon(name, ns, argv, folder / f"{name}.log")
    try:
        for _ in range(100):
            daemon.check()
            if dig(client, address, probe, "A").answers:
                return daemon
            time.sleep(0.1)
        raise RuntimeError(f"{name} does not answer {probe}:\n{daemon.log()}")
    except BaseException:
        daemon.__exit__()
        raise


def reverse_zone(net: IPv4Network) -> str:
    """The in-addr.arpa zone of a /8, /16 or /24."""
    octets = net.network_address.packed[:net.prefixlen // 8]
    return ".".join(str(o) for o in reversed(octets)) + ".in-addr.arpa"


def upstream_argv(files: Files, folder: Path) -> list[str]:
    return dnsmasq_argv(UPSTREAM, folder, "upstream", [
        f"--addn-hosts={files.upstream_hosts}", f"--local=/{FORWARDED}/",
        f"--local-ttl={UPSTREAM_TTL}"])


def peer_argv(files: Files, folder: Path) -> list[str]:
    """dnsmasq answering bench.test as an operator runs it beside DHCP (no DHCP here)."""
    reverse = [f"--local=/{reverse_zone(IPv4Network(s))}/" for s in SUBNETS]
    return dnsmasq_argv(DNSMASQ, folder, "dnsmasq", [
        f"--addn-hosts={files.zone_hosts}", f"--domain={DOMAIN}", f"--local=/{DOMAIN}/",
        *reverse, f"--server={UPSTREAM}", f"--cache-size={CACHE}",
        f"--local-ttl={LOCAL_TTL}"])


# -- dig: the same meaning from both ------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: str
    answers: tuple[str, ...]  # "name TYPE data", lower case, TTL left out, sorted

    def __str__(self) -> str:
        return f"{self.status} {', '.join(self.answers) or '(no records)'}"


def dig(client: Host, server: str, name: str, rdtype: str) -> Answer:
    proc = client.ns.run(["dig", f"@{server}", "+tries=1", "+time=2", name, rdtype],
                         check=False, timeout=30)
    found = re.search(r"status: ([A-Z]+)", proc.stdout)
    records = []
    section = False
    for line in proc.stdout.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif section and not line.strip():
            break
        elif section:
            owner, _ttl, _cls, rtype, data = line.split(None, 4)
            records.append(f"{owner} {rtype} {data}".lower())
    return Answer(found.group(1) if found else "NO ANSWER", tuple(sorted(records)))


def check_answers(client: Host, files: Files, samples: int) -> list[str]:
    """Ask both servers the same questions; what they disagree on (empty: nothing)."""
    ip = host_ip(1)
    probes: list[tuple[str, str, Answer | None]] = [
        (f"node1.{DOMAIN}", "A", Answer("NOERROR", (f"node1.{DOMAIN}. a {ip}",))),
        (ip.reverse_pointer, "PTR",
         Answer("NOERROR", (f"{ip.reverse_pointer}. ptr node1.{DOMAIN}.",))),
        (f"nohost.{DOMAIN}", "A", Answer("NXDOMAIN", ())),
        (f"www1.{FORWARDED}", "A",
         Answer("NOERROR", (f"www1.{FORWARDED}. a {UPSTREAM_NET.network_address + 1}",))),
    ]
    rng = random.Random(1)
    for kind in ("auth", "fwd"):
        lines = files.for_round(kind).read_text().splitlines()
        probes += [(*line.split(), None) for line in rng.sample(lines, samples)]  # type: ignore[misc]
    problems = []
    for name, rdtype, expected in probes:
        got = {server: dig(client, address, name, rdtype)
               for server, address in (("dnsd", DNSD), ("dnsmasq", DNSMASQ))}
        if got["dnsd"] != got["dnsmasq"] or (expected is not None and got["dnsd"] != expected):
            problems.append(f"{name} {rdtype}: dnsd {got['dnsd']}; dnsmasq {got['dnsmasq']}"
                            + (f"; expected {expected}" if expected else ""))
    return problems


# -- dnsperf ----------------------------------------------------------------------


@dataclass
class Run:
    server: str
    kind: str  # auth, fwd, or an RRL flood
    rate: int | None  # None: as fast as it answers
    duration: int = 0  # seconds asked of dnsperf (its run time adds the last timeouts)
    sent: int = 0
    completed: int = 0
    lost: int = 0
    seconds: float = 0.0
    qps: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)  # ms: avg, max, p50, p99, stddev
    server_cpu: float = 0.0  # seconds
    preempted: int = 0  # involuntary context switches of the server
    client_cpu: float = 0.0  # seconds
    counters: dict[str, int] = field(default_factory=dict)  # dnsd's own, this run's share

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 100.0

    @property
    def sent_qps(self) -> float:
        return self.sent / self.duration if self.duration else 0.0

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.completed * 1e6 if self.completed else 0.0

    def failures(self) -> int:
        """Answers that say something went wrong (a timed run must have none)."""
        return sum(n for code, n in self.rcodes.items() if code not in ("NOERROR", "NXDOMAIN"))


_SUMMARY = {
    "sent": r"Queries sent:\s+(\d+)", "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)", "seconds": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)"}


def parse_dnsperf(text: str, run: Run) -> Run:
    for attr, pattern in _SUMMARY.items():
        found = re.search(pattern, text)
        if found is None:
            raise RuntimeError(f"dnsperf said no {attr!r}:\n{text[-2000:]}")
        setattr(run, attr, type(getattr(run, attr))(float(found.group(1))))
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        run.rcodes = {c: int(n) for c, n in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1))}
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)", text)
    if avg:
        run.latency.update(avg=float(avg.group(1)) * 1e3, max=float(avg.group(2)) * 1e3)
    dev = re.search(r"Latency StdDev \(s\):\s+([\d.]+)", text)
    if dev:
        run.latency["stddev"] = float(dev.group(1)) * 1e3
    # -v: a line per answered query, "> RCODE name type seconds"
    each = sorted(float(m) for m in re.findall(r"^> [A-Z]+ \S+ \S+ ([\d.]+)$", text, re.M))
    if each:
        run.latency.update(avg=statistics.fmean(each) * 1e3, max=each[-1] * 1e3,
                           p50=each[len(each) // 2] * 1e3,
                           p99=each[min(len(each) - 1, int(len(each) * 0.99))] * 1e3)
    return run


@dataclass
class Perf:
    """dnsperf in the client namespace, and how it is run."""

    client: Host
    files: Files
    folder: Path
    seconds: int
    clients: int
    outstanding: int
    timeout: float
    queue: int  # -q of the fixed-rate runs
    cpu: int | None

    def run(self, run: Run, address: str, server: Daemon, queries: Path,
            queue: int | None = None) -> Run:
        argv = ["dnsperf", "-s", address, "-d", str(queries), "-l", str(self.seconds),
                "-c", str(self.clients), "-t", str(self.timeout)]
        if run.rate is None:
            argv += ["-q", str(self.outstanding)]
        else:
            argv += ["-Q", str(run.rate), "-v",
                     "-q", str(max(self.outstanding, queue or self.queue))]
        out = self.folder / "dnsperf.out"
        counters = server.stats() if isinstance(server, Dnsd) else {}
        cpu_before, preempted = server.cpu_seconds(), server.preempted()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "wb") as f:
            self.client.ns.run(pinned(self.cpu, argv), stdout=f, stderr=subprocess.STDOUT,
                               text=False, capture_output=False,
                               timeout=self.seconds + self.timeout + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.server_cpu = server.cpu_seconds() - cpu_before
        run.preempted = server.preempted() - preempted
        run.client_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        if isinstance(server, Dnsd):
            now = server.stats()
            run.counters = {k: v if k.endswith("_max_us") else v - counters.get(k, 0)
                            for k, v in now.items() if v != counters.get(k, 0)}
        server.check()
        run.duration = self.seconds
        parse_dnsperf(out.read_text(errors="replace"), run)
        if run.rate is not None:  # against the rate asked for, over the time asked for
            run.qps = run.completed / self.seconds
        return run

    def warm(self, address: str, server: Daemon, queries: Path) -> None:
        saved, self.seconds = self.seconds, 2
        try:
            self.run(Run("warm-up", "", None), address, server, queries)
        finally:
            self.seconds = saved


# -- the report -------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def row(run: Run) -> str:
    lat = run.latency
    rate = "max" if run.rate is None else f"{run.rate:,}/s"
    sent = "" if run.rate is None else f" (sent {run.sent_qps:,.0f}/s)"
    return (f"  {run.kind:4} {rate:>9} {run.server:8} {run.qps:>7,.0f} q/s{sent} "
            f"lost {run.lost:,} ({run.lost_pct:.2f}%)  "
            f"ms avg {fmt_ms(lat.get('avg'))} p50 {fmt_ms(lat.get('p50'))}"
            f" p99 {fmt_ms(lat.get('p99'))} max {fmt_ms(lat.get('max'))}  "
            f"CPU {run.cpu_us:.0f} us/q, preempted {run.preempted:,}, "
            f"dnsperf {100 * run.client_cpu / max(run.seconds, 1e-9):.0f}%"
            + counters_line(run))


# dnsd's counters that say something went wrong in a run
TROUBLE = ("errors", "malformed", "udp_recv_errors", "udp_send_errors", "fwd_servfail",
           "fwd_timeouts", "fwd_pending_full", "fwd_clients_full", "upstream_send_errors",
           "upstream_recv_errors")


def counters_line(run: Run) -> str:
    c = run.counters
    if not c:
        return ""
    parts = []
    if c.get("fwd_questions"):
        parts.append(f"{c['fwd_questions']:,} forwarded, {c.get('fwd_cache_hits', 0):,} from "
                     f"the cache, {c.get('fwd_sent_udp', 0):,} asked upstream")
    if c.get("gc_pause_total_us"):
        parts.append(f"GC {c['gc_pause_total_us'] / 1e3:,.0f} ms in all, {c.get('gc_full', 0)} "
                     f"full, longest {c.get('gc_pause_max_us', 0) / 1e3:.1f} ms")
    trouble = ", ".join(f"{k} {c[k]:,}" for k in TROUBLE if c.get(k))
    parts.append(trouble or "no errors")
    return "\n" + " " * 8 + "dnsd: " + "; ".join(parts)


def median_of(runs: list[Run], server: str, attr: str) -> float:
    values = [getattr(r, attr) for r in runs if r.server == server]
    return statistics.median(values) if values else 0.0


def median_latency(runs: list[Run], server: str, key: str) -> float | None:
    values = [r.latency[key] for r in runs if r.server == server and key in r.latency]
    return statistics.median(values) if values else None


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def report(title: str, best: list[Run], fixed: dict[int, list[Run]]) -> None:
    print(f"\n{title}")
    print(f"  {'':28} {'dnsd':>14} {'dnsmasq':>14}   dnsd/dnsmasq")
    q = {s: median_of(best, s, "qps") for s in SERVERS}
    print(f"  {'highest q/s':28} {q['dnsd']:>14,.0f} {q['dnsmasq']:>14,.0f}   "
          f"{ratio(q['dnsd'], q['dnsmasq'])}")
    lost = {s: sum(r.lost for r in best if r.server == s) for s in SERVERS}
    sent = {s: sum(r.sent for r in best if r.server == s) for s in SERVERS}
    print(f"  {'  lost':28} " + " ".join(f"{100 * lost[s] / max(sent[s], 1):>13.2f}%"
                                          for s in SERVERS)
          + f"   ({lost['dnsd']:,} and {lost['dnsmasq']:,} queries)")
    for key in ("avg", "max"):
        lat = {s: median_latency(best, s, key) for s in SERVERS}
        print(f"  {'  latency ' + key + ' (ms)':28} {fmt_ms(lat['dnsd']):>14} "
              f"{fmt_ms(lat['dnsmasq']):>14}")
    cpu = {s: median_of(best, s, "cpu_us") for s in SERVERS}
    print(f"  {'  server CPU per query (us)':28} {cpu['dnsd']:>14.1f} {cpu['dnsmasq']:>14.1f}   "
          f"{ratio(cpu['dnsd'], cpu['dnsmasq'])}")
    for rate, runs in fixed.items():
        print(f"  {f'at {rate:,} q/s offered':28}")
        q = {s: median_of(runs, s, "sent_qps") for s in SERVERS}
        print(f"  {'  sent q/s (dnsperf)':28} {q['dnsd']:>14,.0f} {q['dnsmasq']:>14,.0f}")
        q = {s: median_of(runs, s, "qps") for s in SERVERS}
        print(f"  {'  answered q/s':28} {q['dnsd']:>14,.0f} {q['dnsmasq']:>14,.0f}   "
              f"{ratio(q['dnsd'], q['dnsmasq'])}")
        pct = {s: median_of(runs, s, "lost_pct") for s in SERVERS}
        print(f"  {'  lost':28} {pct['dnsd']:>13.2f}% {pct['dnsmasq']:>13.2f}%")
        kept = {s: "yes" if all(r.lost == 0 and r.sent_qps >= 0.99 * rate
                                for r in runs if r.server == s) else "no" for s in SERVERS}
        print(f"  {'  kept the rate, 0 lost':28} {kept['dnsd']:>14} {kept['dnsmasq']:>14}")
        for key in ("p50", "p99", "max"):
            lat = {s: median_latency(runs, s, key) for s in SERVERS}
            print(f"  {'  latency ' + key + ' (ms)':28} {fmt_ms(lat['dnsd']):>14} "
                  f"{fmt_ms(lat['dnsmasq']):>14}")


FLOODS = {"one": f"one name (node1.{DOMAIN} A)", "nx": "random names, all NXDOMAIN",
          "auth": "the authoritative mix"}


def report_rrl(runs: list[Run], rate: float, seconds: int) -> None:
    print(f"\ndnsd with RRL ({rate:g}/s per client /24 and answer, burst {rate:g}, slip 2), "
          f"floods from {CLIENT}:")
    print(f"  {'flood':34} {'sent':>9} {'answered':>9} {'truncated':>9} {'dropped':>9} "
          f"{'unread':>7} {'lost':>6}")
    for r in runs:
        c = r.counters
        answered = sum(v for k, v in c.items() if k.startswith("rcode_"))
        print(f"  {FLOODS[r.kind]:34} {r.sent:>9,} {answered:>9,} {c.get('rrl_slipped', 0):>9,} "
              f"{c.get('rrl_dropped', 0):>9,} {r.sent - c.get('queries', 0):>7,} "
              f"{r.lost_pct:>5.1f}%")
    print("  (answered, truncated, dropped: dnsd's counters; unread: sent but never read by "
          "dnsd, its socket was full; lost: no answer in time, as dnsperf saw it)")
    print(f"  (one answer key alone may get about {rate:g} x {seconds} s + {rate:g} = "
          f"{rate * seconds + rate:,.0f} answers; truncated replies ask the client to retry "
          "over TCP)")


# -- the bench ----------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the labs and servers are torn down on the way out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10, help="per dnsperf run")
    p.add_argument("--hosts", type=int, default=1000, help="host names in the zone")
    p.add_argument("--hot", type=int, default=100, help="forwarded names asked over and over")
    p.add_argument("--miss", type=float, default=0.05,
                   help="share of forwarded queries for names no cache holds")
    p.add_argument("--mix", default="60,30,10", help="authoritative A,PTR,NXDOMAIN weights")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians reported")
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=200, help="dnsperf -q, highest q/s runs")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a query is lost")
    p.add_argument("--queue", type=int, default=200,
                   help="dnsperf -q of the fixed-rate runs (the burst dnsperf may send)")
    p.add_argument("--rates", default="", help="more fixed rates (q/s) to run both at")
    p.add_argument("--rrl-rate", type=float, default=200.0)
    p.add_argument("--flood-rate", type=int, default=5000, help="q/s of the RRL floods")
    p.add_argument("--samples", type=int, default=20, help="query lines checked with dig")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and dnsperf")
    args = p.parse_args(argv)
    require_root("bench/dns.py")
    for tool, package in (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq-base"),
                          ("dig", "bind9-dnsutils"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            print(f"bench/dns.py needs {tool} (Debian package {package})", file=sys.stderr)
            return 2
    if not 1 <= args.hosts <= HOST_NET.num_addresses - 2:
        p.error(f"--hosts: 1 to {HOST_NET.num_addresses - 2}")
    if not 1 <= args.hot <= UPSTREAM_NET.num_addresses - COLD_NAMES - 2:
        p.error("--hot: too many")
    mix = tuple(int(w) for w in args.mix.split(","))
    if len(mix) != 3:
        p.error("--mix: three weights, A,PTR,NXDOMAIN")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    server_cpu, client_cpu = (1, 0) if pin else (None, None)
    signal.signal(signal.SIGTERM, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="ab-bench-dns-"))
    try:
        files = Files(folder, args.hosts, args.hot, args.miss)
        files.write(mix)  # type: ignore[arg-type]
        print(f"{args.hosts:,} hosts in {DOMAIN}, queries {args.mix} (A,PTR,NXDOMAIN); "
              f"forwarded: {args.hot} hot names, {args.miss:.0%} misses; dnsperf -c "
              f"{args.clients} -q {args.outstanding} -l {args.seconds} -t {args.timeout:g}; "
              f"{os.cpu_count()} CPUs, "
              + ("servers on CPU 1, dnsperf on CPU 0" if pin else "not pinned"), flush=True)
        with Lab() as lab:
            lab.add_address(f"{DNSMASQ}/24")
            lab.add_address(f"{DNSD_RRL}/24")
            upstream_host = lab.add_host("up", f"{UPSTREAM}/24")
            client = lab.add_host("perf", f"{CLIENT}/24")
            with start_dnsmasq("upstream", upstream_host.ns,
                               pinned(client_cpu, upstream_argv(files, folder)), folder,
                               client, UPSTREAM, f"www1.{FORWARDED}"), \
                    start_dnsmasq("dnsmasq", lab.server,
                                  pinned(server_cpu, peer_argv(files, folder)), folder,
                                  client, DNSMASQ, f"node1.{DOMAIN}") as dnsmasq, \
                    start_dnsd(lab.server, DNSD, files, folder, server_cpu) as dnsd:
                problems = check_answers(client, files, args.samples)
                if problems:
                    print("\nthe servers disagree; no figures:", *problems, sep="\n  ",
                          file=sys.stderr)
                    return 1
                print(f"dig: both servers give the same answers to {4 + 2 * args.samples} "
                      "questions (host, PTR, NXDOMAIN, forwarded, samples of the files)",
                      flush=True)
                perf = Perf(client, files, folder, args.seconds, args.clients, args.outstanding,
                            args.timeout, args.queue, client_cpu)
                servers = {"dnsd": (DNSD, dnsd), "dnsmasq": (DNSMASQ, dnsmasq)}
                extra = [int(r) for r in args.rates.split(",") if r]
                failed = measure(perf, servers, args.rounds, extra)
                with start_dnsd(lab.server, DNSD_RRL, files, folder, server_cpu,
                                rrl_rate=args.rrl_rate) as limited:
                    report_rrl(floods(perf, limited, args.flood_rate), args.rrl_rate,
                               args.seconds)
                return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped, namespaces removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(perf: Perf, servers: dict[str, tuple[str, Daemon]], rounds: int,
            extra: list[int]) -> bool:
    """The highest-q/s and fixed-rate runs of both kinds; True if any answer was a failure."""
    titles = {"auth": "authoritative (A, PTR, NXDOMAIN in bench.test)",
              "fwd": "forwarded (example.test from the upstream, mostly from the cache)"}
    failed = False
    results = []
    for kind in ("auth", "fwd"):
        print(f"\n{titles[kind]}", flush=True)
        queries = perf.files.for_round(kind)
        for address, server in servers.values():
            perf.warm(address, server, queries)
        order = list(servers)

        def each(rate: int | None) -> Iterator[Run]:
            for rnd in range(rounds):
                queries = perf.files.for_round(kind)  # the same for both servers
                for name in (order if rnd % 2 == 0 else order[::-1]):
                    address, server = servers[name]
                    run = perf.run(Run(name, kind, rate), address, server, queries)
                    print(row(run), flush=True)
                    yield run

        best = list(each(None))
        # dnsmasq's rate (can dnsd keep up?) and half of dnsd's own (latency under a load
        # both carry).
        rates = [int(median_of(best, "dnsmasq", "qps")) // 100 * 100,
                 int(median_of(best, "dnsd", "qps") / 2) // 100 * 100, *extra]
        fixed = {rate: list(each(rate)) for rate in rates if rate > 0}
        for run in best + [r for runs in fixed.values() for r in runs]:
            if run.failures():
                failed = True
                print(f"  {run.server} answered with failures: {run.rcodes}", file=sys.stderr)
        results.append((titles[kind], best, fixed))
    for title, best, fixed in results:
        report(title, best, fixed)
    return failed


def floods(perf: Perf, dnsd: Dnsd, rate: int) -> list[Run]:
    print(f"\nfloods at {rate:,} q/s, dnsd with RRL", flush=True)
    out = []
    for kind in FLOODS:
        # Room for every dropped query until it times out, so the flood keeps its rate.
        run = perf.run(Run("dnsd-rrl", kind, rate), DNSD_RRL, dnsd, perf.files.queries(kind),
                       queue=int(rate * perf.timeout * 1.5))
        print(row(run), flush=True)
        out.append(run)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
