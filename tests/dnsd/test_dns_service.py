"""``astralboot dnsd`` as shipped: configured from ``[dns]``, beside the real
store and dhcpd, in a lab namespace, asked by real clients.

An ISC dhclient gets its lease (and is told to resolve with dnsd, option
6), then ``dig`` from the client's own address finds its name, the
name back from its address, the server's own names and a name only the
upstream (a dnsmasq in another namespace) knows. Renaming the machine moves
its record; releasing the lease removes it. With ``[dns] enabled = false``
clients are handed ``[dhcp] dns`` instead and dnsd does not run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from astralboot.common.cli.demo.netns import Host, Lab
from astralboot.common.config import load
from dnslab import Dnsmasq, answers, dig, status
from support.dhcpclients import dhclient_events, dhclient_script, read_env, udhcpc_script
from support.stack import Stack, write_config

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
UPSTREAM = "198.18.5.53"
DOMAIN = "lab.example"
RESERVED = ("02:ab:00:00:00:42", "192.0.2.42", "web01")


def _config(folder: Path, lab: Lab, extra: dict[str, Any]) -> Path:
    data = folder / "data"
    (data / "tftp").mkdir(parents=True, exist_ok=True)
    path = write_config(folder, interface=lab.bridge, address=SERVER, data=data,
                        extra={"domain": DOMAIN, **extra})
    mac, address, name = RESERVED
    with path.open("a") as f:
        f.write(f'\n[[dhcp.reservation]]\nmac = "{mac}"\naddress = "{address}"\n'
                f'name = "{name}"\n')
    return path


def _udhcpc(host: Host, folder: Path) -> dict[str, str]:
    """One DHCP exchange with busybox udhcpc; the environment of its "bound" event."""
    script = udhcpc_script(folder)
    host.ns.run(["udhcpc", "-i", host.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                 "-s", str(script)], timeout=60)
    return read_env(folder / "udhcpc.bound.env")


def _dhclient(host: Host, folder: Path, *extra: str) -> list[str]:
    """ISC dhclient's command line (it sets the address it is given, nothing else)."""
    return ["dhclient", "-4", "-v", "-cf", "/dev/null", "-lf", str(folder / "lease"),
            "-pf", str(folder / "dhclient.pid"), "-sf", str(dhclient_script(folder)), *extra,
            host.ifname]


def _until(what: str, ask: Callable[[], str], done: Callable[[str], bool],
           timeout: float = 15.0) -> str:
    """Ask again until ``done`` (the feed follows an event within moments, not at once)."""
    end = time.monotonic() + timeout
    while True:
        out = ask()
        if done(out):
            return out
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}; last answer:\n{out}")
        time.sleep(0.1)


@pytest.fixture
def upstream(lab: Lab, short_tmp: Path) -> Iterator[None]:
    lab.add_address("198.18.5.1/24")
    host = lab.add_host("up", f"{UPSTREAM}/24")
    host.ns.ip("route", "add", f"{SERVER}/32", "dev", "eth0")
    with Dnsmasq(host.ns, UPSTREAM, [("www.example.test", "198.18.5.5")],
                 short_tmp / "dnsmasq.pid"):
        yield


def test_a_dhcp_client_resolves_its_own_name_and_the_world_through_dnsd(
        lab: Lab, short_tmp: Path, upstream: None) -> None:
    path = _config(short_tmp, lab, {"dns.upstream": [UPSTREAM], "dns.server_name": "bootsrv",
                                    "dns.log_queries": True})
    with Stack(path, services=("store", "dhcpd", "dnsd"), netns=lab.server) as stack:
        client = lab.add_host("c1")
        client.ns.run(_dhclient(client, short_tmp, "-1"), timeout=60)  # bound, then daemon
        env = next(e for e in dhclient_events(short_tmp) if e["reason"] == "BOUND")
        assert env["dns"] == SERVER  # option 6: dnsd, because it is enabled
        assert env["domain"] == DOMAIN
        ip, name = env["ip"], env["host"]

        def ask(*args: str) -> Callable[[], str]:
            return lambda: dig(client.ns, SERVER, *args)

        fqdn = f"{name}.{DOMAIN}"
        out = _until(f"{fqdn} to resolve", ask(fqdn), lambda o: status(o) == "NOERROR")
        assert answers(out) == [f"{fqdn}. A {ip}"]
        out = dig(client.ns, SERVER, "-x", ip)
        assert answers(out) == [f"{'.'.join(reversed(ip.split('.')))}.in-addr.arpa. PTR {fqdn}."]
        for own in ("astralboot", "bootsrv"):
            assert answers(dig(client.ns, SERVER, f"{own}.{DOMAIN}")) == \
                [f"{own}.{DOMAIN}. A {SERVER}"]
        out = dig(client.ns, SERVER, "www.example.test")
        assert status(out) == "NOERROR" and answers(out) == ["www.example.test. A 198.18.5.5"]

        # The operator names the machine: the new name resolves, the old one is gone.
        stack.cli("machines", "set", client.mac, "--name", "web7")
        out = _until("web7 to resolve", ask(f"web7.{DOMAIN}"), lambda o: status(o) == "NOERROR")
        assert answers(out) == [f"web7.{DOMAIN}. A {ip}"]
        assert status(dig(client.ns, SERVER, fqdn)) == "NXDOMAIN"

        # `astralboot status` shows dnsd, its zone synced with the store.
        shown = stack.cli("status", "--service", "store", "--service", "dnsd").stdout
        dnsd_line = next(line for line in shown.splitlines() if line.startswith("dnsd"))
        assert " up " in dnsd_line and "feed.synced=True" in dnsd_line, shown

        # Released: the name stops resolving.
        client.ns.run(_dhclient(client, short_tmp, "-r"), timeout=60)  # DHCPRELEASE
        _until("web7 to go", lambda: dig(lab.server, SERVER, f"web7.{DOMAIN}"),
               lambda o: status(o) == "NXDOMAIN")

        # A reservation's name resolves before its machine ever asked for a lease,
        # and stays after the machine released it: the address is its for good.
        mac, reserved_ip, reserved_name = RESERVED
        out = dig(lab.server, SERVER, f"{reserved_name}.{DOMAIN}")
        assert answers(out) == [f"{reserved_name}.{DOMAIN}. A {reserved_ip}"]
        reserved = lab.add_host("c2", mac=mac)
        folder = short_tmp / "c2"
        folder.mkdir()
        reserved.ns.run(_dhclient(reserved, folder, "-1"), timeout=60)
        assert next(e for e in dhclient_events(folder) if e["reason"] == "BOUND")["ip"] \
            == reserved_ip
        # While bound, the machine's name (renamed here) is the one in the zone ...
        stack.cli("machines", "set", mac, "--name", "renamed")
        _until("renamed to resolve", lambda: dig(lab.server, SERVER, f"renamed.{DOMAIN}"),
               lambda o: status(o) == "NOERROR")
        assert status(dig(lab.server, SERVER, f"{reserved_name}.{DOMAIN}")) == "NXDOMAIN"
        # ... and once released, the reservation's name is back, not nothing.
        reserved.ns.run(_dhclient(reserved, folder, "-r"), timeout=60)
        _until("the reservation's name back", lambda: dig(lab.server, SERVER, "-x", reserved_ip),
               lambda o: answers(o) == [f"42.2.0.192.in-addr.arpa. PTR {reserved_name}.{DOMAIN}."])
        assert status(dig(lab.server, SERVER, f"renamed.{DOMAIN}")) == "NXDOMAIN"

        # [dns] log_queries: each answer on its own line in dnsd's log.
        log = stack.log_path("dnsd").read_text()
        assert f"{ip} udp: web7.{DOMAIN}. A -> NOERROR {ip}" in log
        assert f"{ip} udp: www.example.test. A -> NOERROR 198.18.5.5" in log


def test_with_dnsd_off_clients_get_the_configured_resolvers_and_dnsd_does_not_run(
        lab: Lab, short_tmp: Path) -> None:
    path = _config(short_tmp, lab, {"dns.enabled": False, "dhcp.dns": [UPSTREAM]})
    config = load(path)
    assert config.services == ("store", "dhcpd", "tftpd", "httpd")
    with Stack(path, services=("store", "dhcpd"), netns=lab.server) as stack:
        env = _udhcpc(lab.add_host("c1"), short_tmp)
        assert env["dns"].strip() == UPSTREAM
        shown = stack.cli("config", "show").stdout
        assert "# option 6 (DNS servers): [dhcp] dns, because [dns] enabled = false" in shown
        started = stack.cli("dnsd", check=False)
        assert started.returncode == 0 and "dnsd has nothing to serve" in started.stderr
        listening = lab.server.run(["ss", "-Hlnu", "sport", "= :53"]).stdout
        assert listening.strip() == ""


def test_with_dnsd_off_and_no_resolvers_option_6_is_not_sent(lab: Lab, short_tmp: Path) -> None:
    path = _config(short_tmp, lab, {"dns.enabled": False})
    assert load(path).dns == ()
    with Stack(path, services=("store", "dhcpd"), netns=lab.server):
        env = _udhcpc(lab.add_host("c1"), short_tmp)
        assert env["ip"] and "dns" not in env


def test_dnsd_names_a_port_in_use_and_exits_2(lab: Lab, short_tmp: Path) -> None:
    path = _config(short_tmp, lab, {"dns.upstream": []})
    squatter = lab.server.popen(["python3", "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{SERVER}', 53))\nprint('bound', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
        proc = subprocess.run(lab.server.argv(Stack(path).argv("dnsd", "-c", str(path))),
                              capture_output=True, text=True, timeout=60)
    finally:
        squatter.kill()
        squatter.wait()
    assert proc.returncode == 2
    assert f"UDP port 53 on {SERVER} is in use by another program" in proc.stderr
