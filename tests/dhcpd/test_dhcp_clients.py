"""dhcpd and the real store against real clients, inside network namespaces:
busybox udhcpc, ISC dhclient (lease, renew, release), crafted firmware
packets, a real relay (dnsmasq in relay mode), malformed packets."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from astralboot.common.cli.demo.netns import Host, Lab
from astralboot.services.dhcpd import constants as c
from dhcp_lab import (
    DhcpLab,
    dhclient_events,
    dhclient_script,
    read_env,
    serving,
    udhcpc_script,
)
from dhcptest import client_packet, message_type

pytestmark = pytest.mark.netns

RANGE = ("192.0.2.100", "192.0.2.199")


def in_range(ip: str) -> bool:
    return tuple(map(int, RANGE[0].split("."))) <= tuple(map(int, ip.split("."))) \
        <= tuple(map(int, RANGE[1].split(".")))


def run_udhcpc(host: Host, folder: Path, *extra: str) -> dict[str, str]:
    script = udhcpc_script(folder)
    host.ns.run(["udhcpc", "-i", host.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                 "-s", str(script), *extra], timeout=60)
    return read_env(folder / "udhcpc.bound.env")


def test_udhcpc_gets_a_lease_with_the_network_settings(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp, {"domain": "lab.example"}) as dl:
        host = lab.add_host("c1")
        env = run_udhcpc(host, short_tmp, "-O", "hostname")
        assert in_range(env["ip"])
        assert env["serverid"] == "192.0.2.1"
        assert env["subnet"] == "255.255.255.0"
        assert env["router"] == "192.0.2.1"
        assert env["dns"].strip() == "192.0.2.1"
        assert env["domain"] == "lab.example"
        assert env["lease"] == "86400"
        assert env["hostname"].startswith("node")  # the machine's name, from the store
        lease = dl.lease_of(host.mac)
        assert lease is not None and lease.state == "bound" and lease.ip == env["ip"]
        stats = dl.stats()
        assert stats["offers"] == 1 and stats["acks"] == 1
        # udhcpc asks without the broadcast flag: both went to its MAC and new address.
        assert stats["sent_link"] == 2


def test_udhcpc_gets_the_same_address_again(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp) as dl:
        host = lab.add_host("c1")
        first = run_udhcpc(host, short_tmp)["ip"]
        (short_tmp / "udhcpc.bound.env").unlink()
        assert run_udhcpc(host, short_tmp)["ip"] == first
        assert len(dl.leases(state="bound")) == 1


def test_udhcpc_reservation_gets_its_address_and_name(lab: Lab, short_tmp: Path) -> None:
    mac = "02:ab:00:00:00:42"
    with serving(lab, short_tmp, reservations=[
            {"mac": mac, "address": "192.0.2.42", "name": "web01", "os": "debian"}]):
        host = lab.add_host("c1", mac=mac)
        env = run_udhcpc(host, short_tmp, "-O", "hostname")
        assert env["ip"] == "192.0.2.42"  # outside the range: a static reservation
        assert env["hostname"] == "web01"


def test_dhclient_lease_renew_release(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp, {"dhcp.lease_time": 120}) as dl:
        host = lab.add_host("c1")
        script = dhclient_script(short_tmp)
        conf = short_tmp / "dhclient.conf"
        # Renew after 2 s instead of T1 (60 s): a real unicast RENEWING request.
        conf.write_text("supersede dhcp-renewal-time 2;\n")
        files = ["-cf", str(conf), "-lf", str(short_tmp / "lease"), "-pf",
                 str(short_tmp / "pid"), "-sf", str(script)]
        client = host.ns.popen(["dhclient", "-4", "-d", "-v", *files, host.ifname],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            dl.wait_for("dhclient to renew",
                        lambda: any(e["reason"] == "RENEW" for e in dhclient_events(short_tmp)))
        finally:
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=30)
        events = dhclient_events(short_tmp)
        bound = next(e for e in events if e["reason"] == "BOUND")
        renew = next(e for e in events if e["reason"] == "RENEW")
        assert in_range(bound["ip"]) and renew["ip"] == bound["ip"]
        assert bound["server"] == "192.0.2.1" and bound["lease"] == "120"
        assert bound["host"].startswith("node")
        # The renewal really was unicast RENEWING, committed as such.
        stats = dl.stats()
        assert stats["acks.select"] == 1 and stats["acks.renew"] >= 1
        dl.wait_for("the boot events", lambda: [e.stage for e in dl.events(host.mac)][:2]
                    == ["dhcp.offer", "dhcp.ack"])
        assert dl.lease_of(host.mac).state == "bound"  # type: ignore[union-attr]

        # Release: dhclient -r sends DHCPRELEASE for the lease it holds.
        host.ns.run(["dhclient", "-4", "-r", "-v", *files, host.ifname], timeout=60)
        dl.wait_for("the release", lambda: dl.stats().get("releases", 0) == 1)
        lease = dl.lease_of(host.mac)
        assert lease is None or lease.state == "released"


def test_dhclient_init_reboot_gets_its_lease_back(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp) as dl:
        host = lab.add_host("c1")
        script = dhclient_script(short_tmp)
        files = ["-lf", str(short_tmp / "lease"), "-pf", str(short_tmp / "pid"),
                 "-sf", str(script)]
        host.ns.run(["dhclient", "-4", "-1", "-v", *files, host.ifname], timeout=60)
        host.ns.run(["dhclient", "-4", "-x", *files, host.ifname], timeout=60)  # stop, keep lease
        host.ns.ip("addr", "flush", "dev", host.ifname)
        host.ns.run(["dhclient", "-4", "-1", "-v", *files, host.ifname], timeout=60)
        host.ns.run(["dhclient", "-4", "-x", *files, host.ifname], timeout=60)
        reasons = [e["reason"] for e in dhclient_events(short_tmp)]
        assert "BOUND" in reasons and "REBOOT" in reasons  # INIT-REBOOT answered with ACK
        ips = {e["ip"] for e in dhclient_events(short_tmp) if e["reason"] in ("BOUND", "REBOOT")}
        assert len(ips) == 1
        assert dl.stats()["offers"] == 1


def test_firmware_discover_gets_boot_file_and_next_server(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp) as dl:
        host = lab.add_host("fw")
        mac = host.mac
        pxe = client_packet(c.DHCPDISCOVER, mac, xid=1, flags=c.FLAG_BROADCAST, arch=7,
                            vendor=b"PXEClient:Arch:00007:UNDI:003016")
        ipxe = client_packet(c.DHCPDISCOVER, mac, xid=2, flags=c.FLAG_BROADCAST, arch=7,
                             vendor=b"PXEClient:Arch:00007:UNDI:003016", user_class=b"iPXE")
        replies = dl.probe(host, [pxe, ipxe], count=2)
        by_xid = {p.xid: p for _, p in replies}
        assert by_xid[1].file == b"snponly.efi" and by_xid[1].siaddr == "192.0.2.1"
        assert by_xid[1].options[c.OPT_TFTP_SERVER] == b"192.0.2.1"
        assert by_xid[2].file == b"http://192.0.2.1/choose"
        assert all(source.startswith("192.0.2.1:") for source, _ in replies)


def test_unknown_relay_gets_silence_and_known_relay_an_offer(lab: Lab, short_tmp: Path) -> None:
    subnet = {"network": "198.18.0.0/16", "range": "198.18.1.0-198.18.1.255"}
    with serving(lab, short_tmp, subnets=[subnet]) as dl:
        lab.add_address("198.18.0.1/16")
        relay = lab.add_host("rl", address="198.18.0.2/16")
        unknown = client_packet(c.DHCPDISCOVER, xid=1, giaddr="203.0.113.1")
        known = client_packet(c.DHCPDISCOVER, xid=2, giaddr="198.18.0.2")
        # Sent in this order from one socket: an answer to the first would come first.
        replies = dl.probe(relay, [unknown, known], port=67, to="198.18.0.1:67",
                           bind="198.18.0.2")
        assert [p.xid for _, p in replies] == [2]
        assert replies[0][1].yiaddr.startswith("198.18.1.")
        assert dl.stats()["ignored.unknown_relay"] == 1


def test_udhcpc_behind_a_real_relay(lab: Lab, short_tmp: Path) -> None:
    """udhcpc on another link, dnsmasq relaying its broadcasts to dhcpd."""
    subnet = {"network": "198.51.100.0/24", "range": "198.51.100.100-198.51.100.150",
              "gateway": "198.51.100.1"}
    with serving(lab, short_tmp, subnets=[subnet]) as dl:
        relay = lab.add_host("rl", address="192.0.2.2/24")
        lab.server.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.2")
        client = lab.add_host("c1")
        # Move the client's link from the bridge to the relay's namespace.
        outer = f"v{lab.tag}{len(lab.hosts) - 1}"[:15]
        lab.server.ip("link", "set", outer, "nomaster")
        lab.server.ip("link", "set", outer, "netns", relay.ns.name)
        relay.ns.ip("addr", "add", "198.51.100.1/24", "dev", outer)
        relay.ns.ip("link", "set", outer, "up")
        relay.ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        dnsmasq = relay.ns.popen(
            ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
             f"--pid-file={short_tmp}/relay.pid", f"--interface={outer}", "--bind-interfaces",
             "--dhcp-relay=198.51.100.1,192.0.2.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            env = run_udhcpc(client, short_tmp)
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        assert env["ip"].startswith("198.51.100.1")
        assert env["router"] == "198.51.100.1"
        assert env["subnet"] == "255.255.255.0"
        lease = dl.lease_of(client.mac)
        assert lease is not None and lease.subnet == "198.51.100.0/24"


def test_malformed_packets_are_counted_and_serving_goes_on(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp) as dl:
        sender = lab.add_host("bad", address="192.0.2.9/24")
        garbage = [b"", b"\x01" * 10, os.urandom(300),
                   bytes(236) + b"\x63\x82\x53\x64" + b"\x35\x01\x01\xff",  # bad cookie
                   bytes.fromhex("0101 0600 00000001".replace(" ", "")) + bytes(228)
                   + b"\x63\x82\x53\x63\x35\x01\x01\x0c\x20ab",  # option past the end
                   bytes.fromhex("0201 0600 00000002".replace(" ", "")) + bytes(228)
                   + b"\x63\x82\x53\x63\x35\x01\x02\xff"]  # a BOOTREPLY to port 67
        replies = dl.probe(sender, garbage, count=1, wait=0.5, to="192.0.2.1:67", port=68)
        assert replies == []
        dl.wait_for("malformed packets to be counted",
                    lambda: dl.stats().get("malformed", 0) == len(garbage))
        assert dl.stack.procs["dhcpd"].poll() is None
        host = lab.add_host("c1")
        assert in_range(run_udhcpc(host, short_tmp)["ip"])
        assert "malformed packet from 192.0.2.9" in dl.stack.log_tail("dhcpd", 200)


def test_store_down_means_silence_then_service_when_it_returns(lab: Lab, short_tmp: Path) -> None:
    with serving(lab, short_tmp, {"bus.deadline": 0.5}) as dl:
        dl.stack.stop_one("store")
        host = lab.add_host("fw")
        discover = client_packet(c.DHCPDISCOVER, host.mac, xid=7, flags=c.FLAG_BROADCAST)
        assert dl.probe(host, [discover], wait=2) == []
        dl.wait_for("the store timeout to be counted",
                    lambda: dl.stats().get("store_timeouts", 0) >= 1)
        dl.stack.start("store")
        replies = dl.probe(host, [discover], wait=10)
        assert [message_type(p) for _, p in replies] == [c.DHCPOFFER]


def dora(dl: DhcpLab, host: Host, mac: str, xid: int) -> str:
    """DISCOVER, REQUEST (crafted, broadcast flag); the address acknowledged."""
    discover = client_packet(c.DHCPDISCOVER, mac, xid=xid, flags=c.FLAG_BROADCAST)
    [(_, offer)] = dl.probe(host, [discover])
    request = client_packet(c.DHCPREQUEST, mac, xid=xid, flags=c.FLAG_BROADCAST,
                            server_id="192.0.2.1", requested=offer.yiaddr)
    [(_, ack)] = dl.probe(host, [request])
    assert message_type(ack) == c.DHCPACK
    return ack.yiaddr


def test_declined_address_stays_quarantined_across_a_store_restart(lab: Lab,
                                                                  short_tmp: Path) -> None:
    with serving(lab, short_tmp, {"dhcp.range": "192.0.2.100-192.0.2.101"}) as dl:
        host = lab.add_host("fw")
        first = dora(dl, host, "02:00:00:00:00:0a", 1)
        decline = client_packet(c.DHCPDECLINE, "02:00:00:00:00:0a", xid=2,
                                server_id="192.0.2.1", requested=first)
        assert dl.probe(host, [decline], wait=1) == []  # no reply to a DECLINE
        dl.wait_for("the decline", lambda: dl.stats().get("declines", 0) == 1)

        dl.stack.restart("store")
        second = dora(dl, host, "02:00:00:00:00:0b", 3)
        assert second != first  # the declined address is not handed out again
        third = client_packet(c.DHCPDISCOVER, "02:00:00:00:00:0c", xid=4,
                              flags=c.FLAG_BROADCAST)
        assert dl.probe(host, [third], wait=2) == []  # pool of two: exhausted
        dl.wait_for("pool exhaustion", lambda: dl.stats().get("pool_exhausted", 0) >= 1)
