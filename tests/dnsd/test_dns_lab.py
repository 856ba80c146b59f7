"""dnsd as clients see it: the server in the lab's server namespace (on br0,
192.0.2.1:53), ``dig`` in client namespaces, dnsmasq as the upstream in a
namespace of its own (198.18.5.53), all on the lab's bridge.

- a client in the served subnet (192.0.2.50): A and PTR answers, NXDOMAIN
  with the SOA, names forwarded to the upstream, truncation and TCP;
- a client outside it (198.18.7.9): REFUSED;
- hostile bytes from a raw socket: counted, and dnsd answers after them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from astralboot.common.cli.demo.netns import Host, Lab
from dnslab import DnsdProcess, Dnsmasq, answers, authority_types, dig, flags, status

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
CLIENT = "192.0.2.50/24"
OUTSIDER = "198.18.7.9/24"
UPSTREAM = "198.18.5.53"
DOMAIN = "lab.example"
HOSTS = [
    ["52:54:00:00:00:01", "web1", "192.0.2.10", False],
    ["52:54:00:00:00:02", "db-primary", "192.0.2.11", True],
]
BIG = 40  # A records of big.example.test: over 512 bytes, under 1232
HUGE = 100  # A records of huge.example.test: over 1232, so dnsmasq truncates too
UPSTREAM_RECORDS = (
    [("www.example.test", "198.18.5.5")]
    + [("big.example.test", f"198.18.6.{i}") for i in range(1, BIG + 1)]
    + [("huge.example.test", f"198.18.8.{i}") for i in range(1, HUGE + 1)]
)


@dataclass
class DnsLab:
    lab: Lab
    dnsd: DnsdProcess
    client: Host
    outsider: Host

    def dig(self, *args: str, host: Host | None = None) -> str:
        return dig((host or self.client).ns, SERVER, *args, port=self.dnsd.port)


@pytest.fixture
def dns_lab(lab: Lab, short_tmp: Path) -> Iterator[DnsLab]:
    lab.add_address("198.18.5.1/24")
    lab.add_address("198.18.7.1/24")
    client = lab.add_host("c1", CLIENT)
    outsider = lab.add_host("out", OUTSIDER)
    outsider.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    upstream = lab.add_host("up", f"{UPSTREAM}/24")
    upstream.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    settings = {"address": SERVER, "port": 53, "domain": DOMAIN, "server_name": "bootsrv",
                "subnets": ["192.0.2.0/24"], "clients": ["192.0.2.0/24"], "hosts": HOSTS,
                "upstreams": [UPSTREAM], "server": {"forward_timeout": 1.0}}
    with Dnsmasq(upstream.ns, UPSTREAM, UPSTREAM_RECORDS, short_tmp / "dnsmasq.pid"), \
            DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
        yield DnsLab(lab, dnsd, client, outsider)
        assert dnsd.alive(), dnsd.log()


def test_authoritative_answers(dns_lab: DnsLab) -> None:
    out = dns_lab.dig("web1.lab.example", "A")
    assert status(out) == "NOERROR" and "aa" in flags(out)
    assert answers(out) == ["web1.lab.example. A 192.0.2.10"]
    out = dns_lab.dig("-x", "192.0.2.11")
    assert answers(out) == ["11.2.0.192.in-addr.arpa. PTR db-primary.lab.example."]
    out = dns_lab.dig("bootsrv.lab.example")
    assert answers(out) == ["bootsrv.lab.example. A 192.0.2.1"]
    out = dns_lab.dig("+tcp", "WEB1.Lab.Example")
    assert status(out) == "NOERROR" and "192.0.2.10" in answers(out)[0]


def test_nxdomain_carries_the_soa(dns_lab: DnsLab) -> None:
    out = dns_lab.dig("nobody.lab.example")
    assert status(out) == "NXDOMAIN" and "aa" in flags(out)
    assert authority_types(out) == ["SOA"]
    out = dns_lab.dig("-x", "192.0.2.77")
    assert status(out) == "NXDOMAIN" and authority_types(out) == ["SOA"]
    out = dns_lab.dig("web1.lab.example", "AAAA")  # NODATA
    assert status(out) == "NOERROR" and answers(out) == [] and authority_types(out) == ["SOA"]


def test_a_client_outside_the_served_subnets_is_refused(dns_lab: DnsLab) -> None:
    for name in ("web1.lab.example", "www.example.test"):
        out = dns_lab.dig(name, host=dns_lab.outsider)
        assert status(out) == "REFUSED" and answers(out) == []
    assert dns_lab.dnsd.stats()["refused_outside"] == 2


def test_forwarded_through_the_upstream(dns_lab: DnsLab) -> None:
    out = dns_lab.dig("www.example.test")
    assert status(out) == "NOERROR" and "ra" in flags(out) and "aa" not in flags(out)
    assert answers(out) == ["www.example.test. A 198.18.5.5"]
    again = dns_lab.dig("www.example.test")
    assert answers(again) == ["www.example.test. A 198.18.5.5"]
    stats = dns_lab.dnsd.stats()
    assert stats["fwd_answered"] == 1 and stats["fwd_cache_hits"] == 1
    assert stats["upstream_sockets"] == 0  # each closed with its answer
    out = dns_lab.dig("+norecurse", "www.example.test")  # no RD: not forwarded
    assert status(out) == "REFUSED"


def test_truncated_over_udp_then_whole_over_tcp(dns_lab: DnsLab) -> None:
    cut = dns_lab.dig("+noedns", "+ignore", "big.example.test")
    assert status(cut) == "NOERROR" and "tc" in flags(cut) and answers(cut) == []
    whole = dns_lab.dig("+noedns", "+tcp", "big.example.test")
    assert "tc" not in flags(whole) and len(answers(whole)) == BIG
    # dig's own fallback: TC over UDP, then TCP by itself
    retried = dns_lab.dig("+noedns", "big.example.test")
    assert "Truncated, retrying in TCP mode" in retried and len(answers(retried)) == BIG


def test_upstream_truncation_moves_to_tcp(dns_lab: DnsLab) -> None:
    out = dns_lab.dig("+tcp", "huge.example.test")
    assert status(out) == "NOERROR" and len(answers(out)) == HUGE
    stats = dns_lab.dnsd.stats()
    assert stats["fwd_truncated"] == 1 and stats["fwd_sent_tcp"] == 1


def test_unreachable_upstream_gives_servfail(lab: Lab, short_tmp: Path) -> None:
    client = lab.add_host("c1", CLIENT)
    settings = {"address": SERVER, "port": 53, "domain": DOMAIN, "server_name": None,
                "subnets": ["192.0.2.0/24"], "clients": ["192.0.2.0/24"], "hosts": HOSTS,
                "upstreams": ["192.0.2.1:5399"],  # nothing listens: ICMP port unreachable
                "server": {"forward_timeout": 5.0, "forward_attempts": 2}}
    with DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
        out = dig(client.ns, SERVER, "www.example.test", "+time=4")
        assert status(out) == "SERVFAIL"
        stats = dnsd.stats()
        # each attempt ended by the ICMP error at once, not by the 5 s timeout
        assert stats["fwd_unreachable"] == 2 and stats.get("fwd_timeouts", 0) == 0


HOSTILE = r"""
import os, socket, sys, time
server = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payloads = [b"", b"\x00", b"\x12\x34\x01", b"\x00" * 12, b"\xff" * 12, b"\x80" * 512,
            os.urandom(1500), os.urandom(4000), b"\x12\x34" + b"\xff" * 65000]
for _ in range(200):
    payloads.append(os.urandom(12 + os.urandom(1)[0]))
for data in payloads:
    s.sendto(data, server)
    time.sleep(0.002)  # a flood is another test's subject: here each one must arrive
t = socket.create_connection(server, timeout=5)  # a TCP message announced too large
t.sendall(b"\xff\xff" + b"\x00" * 100)
assert t.recv(10) == b""  # closed by the server
t.close()
t = socket.create_connection(server, timeout=5)  # a TCP message cut short
t.sendall(b"\x00\x40" + b"\x00" * 10)
t.close()
print(len(payloads))
"""


def test_hostile_datagrams_do_not_stop_it(dns_lab: DnsLab) -> None:
    ns = dns_lab.client.ns
    proc = ns.run([sys.executable, "-c", HOSTILE, SERVER, str(dns_lab.dnsd.port)])
    sent = int(proc.stdout)
    out = dns_lab.dig("web1.lab.example")
    assert answers(out) == ["web1.lab.example. A 192.0.2.10"]
    out = dns_lab.dig("+tcp", "web1.lab.example")
    assert answers(out) == ["web1.lab.example. A 192.0.2.10"]
    stats = dns_lab.dnsd.stats()
    assert stats.get("errors", 0) == 0
    assert stats["queries"] >= sent  # every datagram was looked at
    assert stats["malformed"] >= 10 and stats["drop_oversize"] >= 2
    assert stats["tcp_oversize"] == 1


TCP_LIMITS = r"""
import socket, sys, time
server = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(server, timeout=5) for _ in range(2)]
time.sleep(0.3)
extra = socket.create_connection(server, timeout=5)  # over the bound: closed at once
assert extra.recv(10) == b"", "third connection left open"
start = time.monotonic()
for s in held:  # idle: closed after tcp_idle (1 s here)
    assert s.recv(10) == b""
print(round(time.monotonic() - start, 2))
"""


def test_tcp_connections_are_bounded_and_idle_ones_closed(lab: Lab, short_tmp: Path) -> None:
    client = lab.add_host("c1", CLIENT)
    settings = {"address": SERVER, "port": 53, "domain": DOMAIN, "server_name": None,
                "subnets": ["192.0.2.0/24"], "clients": ["192.0.2.0/24"], "hosts": HOSTS,
                "server": {"tcp_clients": 2, "tcp_idle": 1.0}}
    with DnsdProcess(lab.server, settings, short_tmp / "dnsd.log") as dnsd:
        proc = client.ns.run([sys.executable, "-c", TCP_LIMITS, SERVER, str(dnsd.port)])
        assert float(proc.stdout) < 3.0
        out = dig(client.ns, SERVER, "+tcp", "web1.lab.example")  # room again
        assert answers(out) == ["web1.lab.example. A 192.0.2.10"]
        stats = dnsd.stats()
        assert stats["tcp_refused"] == 1 and stats["tcp_idle_closed"] == 2
        assert stats["tcp_accepted"] == 3 and stats["tcp_open"] == 0
