"""The rogue-server guard and proxyDHCP mode, beside a real dnsmasq on the bridge."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from astralboot.common.cli.demo.netns import Host, Lab
from support.stack import Stack, StackError
from astralboot.services.dhcpd import constants as c
from dhcp_lab import read_env, serving, udhcpc_script, write_lab_config
from dhcptest import client_packet, message_type

pytestmark = pytest.mark.netns

PXE = b"PXEClient:Arch:00007:UNDI:003016"


@contextmanager
def dnsmasq(lab: Lab, folder: Path, *options: str) -> Iterator[Host]:
    """Another DHCP server on the bridge, at 192.0.2.5."""
    host = lab.add_host("other", address="192.0.2.5/24")
    folder.mkdir(parents=True, exist_ok=True)
    proc = host.ns.popen(
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
         f"--pid-file={folder}/dnsmasq.pid", f"--dhcp-leasefile={folder}/dnsmasq.leases",
         f"--interface={host.ifname}", "--bind-interfaces", "--dhcp-boot=other.kpxe",
         *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_guard_refuses_to_start_beside_another_server(lab: Lab, short_tmp: Path) -> None:
    with dnsmasq(lab, short_tmp / "other", "--dhcp-range=192.0.2.50,192.0.2.60,1h"):
        # dnsmasq pings an address before offering it: its answer takes ~3 s,
        # and the guard's default listening time (5 s) must outlast that.
        path = write_lab_config(short_tmp, {"dhcp.rogue_guard": True})
        with Stack(path, services=("store",), netns=lab.server) as stack, \
                pytest.raises(StackError) as failure:
            stack.start("dhcpd")
    message = str(failure.value)
    assert "exited with 2" in message
    assert "another DHCP server is handing out addresses on br0: 192.0.2.5" in message
    assert "dhcp.proxy = true" in message


def test_guard_lets_authoritative_mode_start_beside_a_proxy(lab: Lab, short_tmp: Path) -> None:
    # A proxyDHCP server answers the probe too, but without an address.
    with dnsmasq(lab, short_tmp / "other", "--dhcp-range=192.0.2.0,proxy",
                 "--pxe-service=x86PC,Boot,undionly"):
        settings = {"dhcp.rogue_guard": True, "dhcp.rogue_listen": 5}
        with serving(lab, short_tmp, settings) as dl:
            assert dl.stats()["ready"] is True
            assert dl.stats()["mode"] == "authoritative"
            assert "proxyDHCP server 192.0.2.5 answered" in dl.stack.log_tail("dhcpd")


def test_guard_alone_on_the_link_starts(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp, {"dhcp.rogue_guard": True, "dhcp.rogue_listen": 1}) as dl:
        host = lab.add_host("c1")
        discover = client_packet(c.DHCPDISCOVER, host.mac, flags=c.FLAG_BROADCAST)
        [(_, offer)] = dl.probe(host, [discover])
        assert message_type(offer) == c.DHCPOFFER
        # Its own probe, still queued when serving began, was not answered.
        assert dl.stats().get("offers") == 1
        assert len(dl.leases()) == 1


def test_proxy_mode_beside_the_address_server(lab: Lab, short_tmp: Path) -> None:
    with dnsmasq(lab, short_tmp / "other", "--dhcp-range=192.0.2.50,192.0.2.60,1h"):
        settings = {"dhcp.proxy": True, "dhcp.rogue_guard": True, "dhcp.rogue_listen": 2}
        with serving(lab, short_tmp, settings) as dl:
            assert dl.stats()["mode"] == "proxy"
            fw = lab.add_host("fw")
            discover = client_packet(c.DHCPDISCOVER, fw.mac, flags=c.FLAG_BROADCAST, arch=7,
                                     vendor=PXE)
            replies = dl.probe(fw, [discover], count=2)
            by_server = {source.split(":")[0]: p for source, p in replies}
            assert set(by_server) == {"192.0.2.5", "192.0.2.1"}
            other, ours = by_server["192.0.2.5"], by_server["192.0.2.1"]
            assert 50 <= int(other.yiaddr.split(".")[3]) <= 60  # the address: dnsmasq's
            assert ours.yiaddr == "0.0.0.0"  # boot information only
            assert ours.file == b"snponly.efi" and ours.siaddr == "192.0.2.1"
            assert ours.options[c.OPT_VENDOR_CLASS] == b"PXEClient"

            # With the address from dnsmasq, the client asks us on port 4011.
            client = lab.add_host("fw2", address="192.0.2.55/24")
            request = client_packet(c.DHCPREQUEST, client.mac, xid=9, ciaddr="192.0.2.55",
                                    arch=7, vendor=PXE)
            [(source, ack)] = dl.probe(client, [request], to="192.0.2.1:4011")
            assert source == "192.0.2.1:4011"
            assert message_type(ack) == c.DHCPACK and ack.file == b"snponly.efi"

            # A plain client gets its lease from dnsmasq; we hand out nothing.
            plain = lab.add_host("c1")
            plain.ns.run(["udhcpc", "-i", plain.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                          "-s", str(udhcpc_script(short_tmp))], timeout=60)
            env = read_env(short_tmp / "udhcpc.bound.env")
            assert env["serverid"] == "192.0.2.5"
            assert dl.leases() == []
            assert dl.stats()["ignored.not_a_boot_client"] >= 1


def _listening(host: Host, port: int) -> bool:
    out = host.ns.run(["ss", "-Hlun", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def test_proxy_mode_behind_a_relay(lab: Lab, short_tmp: Path) -> None:
    # A routed boot segment: client --- dhcrelay --- bridge with dnsmasq (addresses)
    # and AstralBoot (boot information only). The relay forwards to both.
    relay = lab.add_host("relay", address="192.0.2.3/24")
    fw = lab.add_behind(relay, "fw", "198.18.0.2/16")
    assert fw.uplink is not None
    lab.server.ip("route", "add", "198.18.0.0/16", "via", "192.0.2.3")
    with dnsmasq(lab, short_tmp / "other", "--dhcp-range=198.18.1.50,198.18.1.60,255.255.0.0,1h") \
            as other:
        other.ns.ip("route", "add", "198.18.0.0/16", "via", "192.0.2.3")
        with serving(lab, short_tmp, {"dhcp.proxy": True}) as dl:
            dhcrelay = relay.ns.popen(
                ["dhcrelay", "-4", "-d", "--no-pid", "-iu", relay.ifname, "-id", fw.uplink,
                 "192.0.2.1", "192.0.2.5"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                dl.wait_for("dhcrelay listening", lambda: _listening(relay, 67))
                discover = client_packet(c.DHCPDISCOVER, fw.mac, flags=c.FLAG_BROADCAST,
                                         arch=7, vendor=PXE)
                replies = dl.probe(fw, [discover], count=2, wait=15)
            finally:
                dhcrelay.terminate()
                dhcrelay.wait(timeout=10)
            by_server = {socket.inet_ntoa(p.options[c.OPT_SERVER_ID]): p for _, p in replies}
            assert set(by_server) == {"192.0.2.5", "192.0.2.1"}
            theirs, ours = by_server["192.0.2.5"], by_server["192.0.2.1"]
            assert 50 <= int(theirs.yiaddr.split(".")[3]) <= 60  # the address: dnsmasq's
            assert ours.yiaddr == "0.0.0.0" and ours.giaddr == "198.18.0.2"
            assert ours.file == b"snponly.efi" and ours.siaddr == "192.0.2.1"
            assert ours.options[c.OPT_VENDOR_CLASS] == b"PXEClient"
            assert dl.leases() == []
            assert dl.stats()["proxy_offers"] == 1
