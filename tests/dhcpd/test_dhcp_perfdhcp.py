"""5,000 simulated clients through a relay (ISC perfdhcp) against dhcpd and the
real store: every exchange completes, and no address goes to two clients."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from astralboot.common.cli.demo.netns import Lab
from dhcp_lab import serving

pytestmark = pytest.mark.netns

CLIENTS = 5000


def exchange(output: str, name: str) -> dict[str, int]:
    block = output.split(f"Statistics for: {name}", 1)[1]
    return {key: int(re.search(rf"{key}: (\d+)", block).group(1))  # type: ignore[union-attr]
            for key in ("sent packets", "received packets", "drops", "non unique addresses",
                        "rejected leases")}


def test_perfdhcp_5000_clients_through_a_relay(lab: Lab, short_tmp: Path) -> None:
    subnet = {"network": "198.18.0.0/16", "range": "198.18.1.0-198.18.40.255"}
    with serving(lab, short_tmp, {"log_level": "warning"}, subnets=[subnet]) as dl:
        lab.add_address("198.18.0.1/16")
        relay = lab.add_host("perf", address="198.18.0.2/16")
        # perfdhcp acts as the relay: giaddr = 198.18.0.2, replies to its port 67.
        # A reply later than -d seconds would count as a drop; this test is about
        # correctness on a shared machine, so it allows 5 s.
        proc = relay.ns.run(["perfdhcp", "-4", "-l", "198.18.0.2", "-r", "500",
                             "-R", str(CLIENTS), "-n", str(CLIENTS), "-d", "5", "-u",
                             "-W", "5000000", "198.18.0.1"], check=False, timeout=600)
        out = proc.stdout
        offers, acks = exchange(out, "DISCOVER-OFFER"), exchange(out, "REQUEST-ACK")
        assert proc.returncode == 0, out + proc.stderr
        for stats in (offers, acks):
            assert stats["sent packets"] == CLIENTS and stats["received packets"] == CLIENTS
            assert stats["drops"] == 0 and stats["rejected leases"] == 0
            assert stats["non unique addresses"] == 0

        leases = dl.leases(subnet="198.18.0.0/16", state="bound")
        assert len(leases) == CLIENTS
        assert len({lease.ip for lease in leases}) == CLIENTS  # no address twice
        assert len({lease.mac for lease in leases}) == CLIENTS
        stats = dl.stats()
        assert stats["offers"] == CLIENTS and stats["acks"] == CLIENTS
        assert stats.get("malformed", 0) == 0 and stats.get("store_timeouts", 0) == 0
