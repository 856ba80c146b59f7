"""Running the real store and dhcpd in a lab network, and looking at them.

:func:`serving` writes a config for the lab (plus relayed subnets and
reservations), fills a data folder with the iPXE binary names the boot chain
looks for, and starts the services in the server namespace.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import Config, load
from astralboot.common.config.render import toml_value
from astralboot.common.health import check
from astralboot.common.cli.demo.netns import Host, Lab
from support.dhcpclients import dhclient_events, dhclient_script, read_env, udhcpc_script
from support.stack import Stack, write_config
from astralboot.common.messages import (
    BootEvent,
    EventList,
    EventListReply,
    LeaseList,
    LeaseListReply,
    LeaseLookup,
    LeaseRecord,
    LeaseReply,
)
from astralboot.services.dhcpd.packet import Packet, decode, encode

PROBE = str(Path(__file__).with_name("dhcp_probe.py"))
BINARIES = ("undionly.kpxe", "snponly.efi", "ipxe.efi")


def write_lab_config(folder: Path, settings: dict[str, Any] | None = None,
                     subnets: Sequence[dict[str, Any]] = (),
                     reservations: Sequence[dict[str, Any]] = ()) -> Path:
    data = folder / "data"
    (data / "tftp").mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        (data / "tftp" / name).write_bytes(b"\0" * 64)
    path = write_config(folder, data=data, extra=settings)
    extra = []
    for table, items in (("dhcp.subnet", subnets), ("dhcp.reservation", reservations)):
        for item in items:
            extra.append(f"\n[[{table}]]")
            extra += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    with path.open("a") as f:
        f.write("\n".join(extra) + "\n")
    return path


class DhcpLab:
    """A running store + dhcpd, and ways to look at them."""

    def __init__(self, lab: Lab, stack: Stack, config: Config) -> None:
        self.lab = lab
        self.stack = stack
        self.config = config
        self.bus = SyncBusClient(config.bus.endpoint, deadline=10)

    def close(self) -> None:
        self.bus.close()

    def leases(self, subnet: str | None = None, state: str | None = None) -> list[LeaseRecord]:
        reply = self.bus.call(LeaseList(subnet=subnet, state=state))  # type: ignore[arg-type]
        assert isinstance(reply, LeaseListReply)
        return list(reply.leases)

    def lease_of(self, mac: str) -> LeaseRecord | None:
        reply = self.bus.request(LeaseLookup(mac=mac))
        return reply.lease if isinstance(reply, LeaseReply) else None

    def events(self, mac: str) -> list[BootEvent]:
        reply = self.bus.call(EventList(mac=mac))
        assert isinstance(reply, EventListReply)
        return list(reply.events)

    def stats(self) -> dict[str, Any]:
        health = check(self.config, "dhcpd", timeout=5)
        assert health.up, health.error
        return health.details

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"gave up waiting for {what}; dhcpd counters: "
                                     f"{self.stats()}\n{self.stack.log_tail('dhcpd')}")
            time.sleep(0.1)

    def probe(self, host: Host, packets: Sequence[Packet | bytes], *, count: int = 1,
              wait: float = 10, port: int = 68, to: str = "255.255.255.255:67",
              bind: str = "0.0.0.0") -> list[tuple[str, Packet]]:
        """Send crafted packets from ``host``; the replies it received, decoded."""
        argv = [sys.executable, PROBE, "--iface", host.ifname, "--port", str(port), "--to", to,
                "--count", str(count), "--wait", str(wait), "--bind", bind]
        for p in packets:
            argv += ["--send", (p if isinstance(p, bytes) else encode(p)).hex()]
        proc = host.ns.run(argv, timeout=wait + 30)
        out = []
        for line in proc.stdout.splitlines():
            item = json.loads(line)
            out.append((item["source"], decode(bytes.fromhex(item["data"]))))
        return out


@contextmanager
def serving(lab: Lab, folder: Path, settings: dict[str, Any] | None = None,
            subnets: Sequence[dict[str, Any]] = (),
            reservations: Sequence[dict[str, Any]] = ()) -> Iterator[DhcpLab]:
    path = write_lab_config(folder, settings, subnets, reservations)
    with Stack(path, services=("store", "dhcpd"), netns=lab.server) as stack:
        dl = DhcpLab(lab, stack, load(path))
        try:
            yield dl
        finally:
            dl.close()


__all__ = ["PROBE", "DhcpLab", "dhclient_events", "dhclient_script", "read_env", "serving",
           "udhcpc_script", "write_lab_config"]
