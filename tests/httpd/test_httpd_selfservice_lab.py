"""The original's self-service URLs in a real network: real leases from the real
dhcpd, real httpd, curl from two machines. Only a machine itself (from the
address leased to it) may choose what it boots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from astralboot.common.cli.demo.netns import Host, Lab
from support.stack import Stack, write_config
from astralboot.common.messages import EventList, EventListReply, MachineGet, MachineReply
from httpd_support import BUNDLED

pytestmark = pytest.mark.netns


def leased(host: Host, folder: Path) -> str:
    """Run udhcpc on ``host``, put the address it got on its interface."""
    env_file = folder / f"{host.ns.name}.env"
    script = folder / f"{host.ns.name}.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > "{env_file}"\nexit 0\n')
    script.chmod(0o755)
    host.ns.run(["udhcpc", "-i", host.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                 "-s", str(script)], timeout=60)
    ip = env_file.read_text().strip()
    host.ns.ip("addr", "add", f"{ip}/24", "dev", host.ifname)
    return ip


def test_choose_changes_a_machine_only_from_its_own_address(lab: Lab, short_tmp: Path) -> None:
    data = short_tmp / "data"
    shutil.copytree(BUNDLED, data)
    (data / "boot/debian/images/linux").write_bytes(b"\x90" * 4096)
    (data / "boot/debian/images/initrd.gz").write_bytes(b"\x1f" * 4096)
    path = write_config(short_tmp, interface=lab.bridge, address=lab.server_address, data=data)
    config = load(path)
    with Stack(path, services=("store", "dhcpd", "httpd"), netns=lab.server):
        a, b = lab.add_host("a"), lab.add_host("b")
        ip_a, _ = leased(a, short_tmp), leased(b, short_tmp)
        url = f"http://{lab.server_address}/choose/debian/{a.mac}"
        other = b.ns.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url])
        assert other.stdout == "403"
        with SyncBusClient(config.bus.endpoint, deadline=5) as bus:
            before = bus.call(MachineGet(mac=a.mac))
            assert isinstance(before, MachineReply) and before.machine.os is None
        own = a.ns.run(["curl", "-sS", url])
        assert own.stdout.startswith("#!ipxe") and "image/debian/linux" in own.stdout
        with SyncBusClient(config.bus.endpoint, deadline=5) as bus:
            after = bus.call(MachineGet(mac=a.mac))
            assert isinstance(after, MachineReply) and after.machine.os == "debian"
            events = bus.call(EventList(mac=a.mac))
            assert isinstance(events, EventListReply)
        refused = [e for e in events.events if e.stage == "http.refused"]
        assert len(refused) == 1 and "not that machine's address" in refused[0].detail
        changed = [e for e in events.events if e.stage == "machine.changed"]
        assert changed and changed[-1].detail.endswith(f"by menu@{ip_a}")  # the audit trail
