"""Secure Boot's GRUB over TFTP: tftpd, the real store, real clients, in network namespaces.

The server namespace runs ``astralboot store`` and ``astralboot tftpd`` on
br0 (192.0.2.1) and, standing in for httpd's GRUB pages, an HTTP server on
192.0.2.1:8080 (httpd_standin.py) that records each request with its
``X-AstralBoot-Client`` header. Clients run in their own namespace.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from httpd_standin import (BROKEN_MAC, HUGE_MAC, NOT_FOUND_MAC, SLOW_MAC, grub_config,
                           grub_page)

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.cli.demo.netns import Host, Lab
from astralboot.common.config import load
from astralboot.common.messages import LeaseCommit, LeaseGrant, LeaseOffer
from support.stack import Stack, write_config

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
CLIENT = "192.0.2.150"
HTTP_PORT = 8080
HERE = Path(__file__).parent
CLIENT_SCRIPT = str(HERE / "tftp_client.py")
STANDIN = str(HERE / "httpd_standin.py")
GRUB_CFG = "debian-installer/amd64/grub/grub.cfg"  # what Debian's signed GRUB asks for
SHIM = Path("/usr/lib/ipxe/ipxe.efi").read_bytes()  # any binary will do for a plain file
KERNEL = bytes(range(256)) * 3000  # 768000 bytes: several windows at any block size
INITRD = b"initrd " * 5000
PRESEED_SECRET = b"d-i passwd/root-password password s3cret-root\n"
DEADLINE = 3  # seconds: 3 x max([tftp] timeout, [bus] deadline), both 1 s here


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dashed(mac: str) -> str:
    return mac.replace(":", "-")


@dataclass
class GrubLab:
    lab: Lab
    stack: Stack
    client: Host
    folder: Path
    standin: subprocess.Popen[str]
    log: Path

    def run(self, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.client.ns.run(cmd, check=False, timeout=timeout, cwd=self.folder)

    def script(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """tftp_client.py in the client namespace; its JSON answer."""
        proc = self.run([sys.executable, CLIENT_SCRIPT, SERVER, *args], timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def get(self, name: str, *options: str) -> dict[str, Any]:
        return self.script("get", name, *options)

    def requests(self) -> list[dict[str, Any]]:
        """What the stand-in httpd was asked, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def lease(self, mac: str, ip: str) -> None:
        """A bound lease in the store, as dhcpd would make it."""
        with SyncBusClient(load(self.stack.config).bus.endpoint) as bus:
            offer = bus.call(LeaseOffer(mac=mac, subnet="192.0.2.0/24", requested_ip=ip))
            assert isinstance(offer, LeaseGrant) and offer.ip == ip, offer
            bus.call(LeaseCommit(mac=mac, subnet="192.0.2.0/24", ip=ip, mode="select"))

    def status(self) -> dict[str, Any]:
        """tftpd's counters, once its last sessions have ended."""
        for _ in range(100):
            out = self.stack.cli("status", "--service", "tftpd", "--json").stdout
            details: dict[str, Any] = json.loads(out)[0]["details"]
            if details.get("sessions") == 0:
                break
            time.sleep(0.1)
        return details

    def events(self, mac: str, stage: str, count: int = 1) -> list[dict[str, Any]]:
        """The store's events of ``stage`` for ``mac``, once ``count`` have arrived."""
        found: list[dict[str, Any]] = []
        for _ in range(50):  # events travel tftpd -> store asynchronously
            proc = self.stack.cli("events", "--json", "--mac", mac)
            found = [e for e in (json.loads(line) for line in proc.stdout.splitlines()
                                 if line.strip()) if e["stage"] == stage]
            if len(found) >= count:
                break
            time.sleep(0.2)
        return found

    def stop_standin(self) -> None:
        self.standin.terminate()
        self.standin.wait(10)


def make_data(folder: Path) -> Path:
    data = folder / "data"
    shim = data / "tftp" / "debian-installer" / "amd64"
    shim.mkdir(parents=True)
    (shim / "bootnetx64.efi").write_bytes(SHIM)
    images = data / "boot" / "debian" / "images"
    images.mkdir(parents=True)
    (images / "linux").write_bytes(KERNEL)
    (images / "initrd.gz").write_bytes(INITRD)
    template = data / "boot" / "debian" / "template"
    template.mkdir()
    (template / "preseed.cfg").write_bytes(PRESEED_SECRET)
    (template / "start.tmpl").write_bytes(b"#!ipxe\n" + PRESEED_SECRET)
    return data


@pytest.fixture
def grub_lab(lab: Lab, short_tmp: Path) -> Iterator[Callable[..., GrubLab]]:
    """Start the stand-in httpd, then store + tftpd with ``public_url`` pointing at it."""
    started: list[tuple[Stack, subprocess.Popen[str]]] = []

    def start(**tftp: Any) -> GrubLab:
        log = short_tmp / "httpd-requests.jsonl"
        standin = lab.server.popen([sys.executable, STANDIN, SERVER, str(HTTP_PORT), str(log)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert standin.stdout is not None
        if standin.stdout.readline().strip() != "ready":
            standin.kill()
            raise RuntimeError(f"the stand-in httpd did not start: {standin.communicate()[1]}")
        extra = {"tftp.per_client": 128, "bus.deadline": 1.0,
                 "http.public_url": f"http://{SERVER}:{HTTP_PORT}"}
        extra.update({f"tftp.{k}": v for k, v in tftp.items()})
        config = write_config(short_tmp, data=make_data(short_tmp), extra=extra)
        stack = Stack(config, services=("store", "tftpd"), netns=lab.server)
        started.append((stack, standin))
        stack.__enter__()
        client = lab.add_host("c1", f"{CLIENT}/24")
        (short_tmp / "out").mkdir()
        return GrubLab(lab=lab, stack=stack, client=client, folder=short_tmp / "out",
                       standin=standin, log=log)

    yield start
    for stack, standin in started:
        stack.stop()
        if standin.poll() is None:
            standin.kill()
        standin.wait(10)


# --- the machine's GRUB config ---------------------------------------------------------


def test_grub_cfg_is_the_asking_machines_config(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    mac = t.client.mac
    t.lease(mac, CLIENT)
    expected = grub_config(mac, CLIENT)
    # tftp-hpa, as plain as GRUB asks
    hpa = t.run(["tftp", SERVER, "-m", "binary", "-c", "get", GRUB_CFG, "grub.cfg"])
    assert hpa.returncode == 0, hpa.stdout + hpa.stderr
    assert (t.folder / "grub.cfg").read_bytes() == expected
    # atftp with options: tsize says the rendered size, a window of big blocks
    atftp = t.run(["atftp", "--trace", "--option", "tsize 0", "--option", "blksize 1024",
                   "--option", "windowsize 4", "-g", "-r", "/" + GRUB_CFG, "-l", "atftp.cfg",
                   SERVER])
    assert atftp.returncode == 0, atftp.stderr
    assert (t.folder / "atftp.cfg").read_bytes() == expected
    trace = atftp.stdout + atftp.stderr
    assert f"tsize: {len(expected)}" in trace and "blksize: 1024" in trace, trace
    # httpd was asked for this machine's page, told the machine's address, by tftpd itself
    assert t.requests() == [{"path": f"/grub/{mac}", "client": CLIENT, "peer": SERVER}] * 2
    sent = t.events(mac, "tftp.sent", 2)
    assert sorted(e["detail"] for e in sent) == [  # each name as the client sent it
        f"/{GRUB_CFG} {len(expected)} bytes", f"{GRUB_CFG} {len(expected)} bytes"]
    assert {e["ip"] for e in sent} == {CLIENT} and {e["service"] for e in sent} == {"tftpd"}
    status = t.status()
    assert status["transfers"] == 2
    assert status["httpd.fetched"] == 2 and status["httpd.bytes"] == 2 * len(expected)


def test_grub_cfg_named_by_mac_needs_no_lease(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    mac = "52:54:00:5b:00:11"
    named = t.get(f"debian-installer/amd64/grub/grub.cfg-01-{dashed(mac)}")
    assert named["sha256"] == sha(grub_config(mac, CLIENT)), named
    # without a MAC in the name and no lease, nobody knows whose config it is
    unknown = t.get(GRUB_CFG)
    assert unknown == {"error": f"ERROR 1: no GRUB config: no machine holds {CLIENT} (no lease "
                                f"for {CLIENT}); ask for grub.cfg-01-<mac>"}
    # GRUB's hex-IP names are the machine holding the address too
    assert t.get("grub/grub.cfg-C0000296")["error"].startswith("ERROR 1: no GRUB config")
    assert t.requests() == [{"path": f"/grub/{mac}", "client": CLIENT, "peer": SERVER}]
    t.lease(t.client.mac, CLIENT)
    assert t.get("grub/grub.cfg-C0000296")["sha256"] == sha(grub_config(t.client.mac, CLIENT))
    assert t.status()["refused.file_not_found"] == 2


def test_menu_choices_pass_through_to_httpd(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    mac = t.client.mac
    pages = [f"grub/choose/debian/{mac}", f"/grub/class/debian/{mac}",
             f"grub/setclass/debian/web/{mac}", f"grub/choose/ubuntu-22.04/{dashed(mac)}"]
    paths = [f"/grub/choose/debian/{mac}", f"/grub/class/debian/{mac}",
             f"/grub/setclass/debian/web/{mac}", f"/grub/choose/ubuntu-22.04/{mac}"]
    for name, path in zip(pages, paths):
        assert t.get(name)["sha256"] == sha(grub_page(path, CLIENT)), name
    assert [r["path"] for r in t.requests()] == paths
    assert {r["client"] for r in t.requests()} == {CLIENT}
    # a name that is not one of them never reaches httpd
    for bad in (f"grub/choose/debian/{mac}/x", "grub/choose/debian/not-a-mac",
                f"grub/setclass/debian/{mac}", f"grub/choose/../{mac}",
                f"grub/class/de bian/{mac}"):
        result = t.get(bad)
        assert result["error"].startswith(("ERROR 2: grub/", "ERROR 2: file name leaves")), bad
    assert len(t.requests()) == len(paths)


# --- when httpd fails ----------------------------------------------------------------------


def test_httpd_failures_are_tftp_errors_and_tftpd_goes_on(
        grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    t.lease(t.client.mac, CLIENT)  # the failures show in this machine's events
    good = "52:54:00:00:00:01"

    def config_of(mac: str) -> dict[str, Any]:
        return t.get(f"grub.cfg-01-{dashed(mac)}")

    assert config_of(NOT_FOUND_MAC) == {
        "error": f"ERROR 1: no GRUB config for {NOT_FOUND_MAC}: httpd answered 404 Not Found "
                 f"(unknown machine: no machine {NOT_FOUND_MAC})"}
    assert config_of(BROKEN_MAC) == {
        "error": f"ERROR 0: no GRUB config for {BROKEN_MAC}: httpd answered 500 Internal Server "
                 "Error (template error: grub.tmpl line 3)"}
    assert config_of(HUGE_MAC) == {
        "error": f"ERROR 0: no GRUB config for {HUGE_MAC}: httpd's answer is over 262144 bytes"}
    # A slow httpd: its machine gets an ERROR at the deadline (the test client
    # waits 5 s for an answer), and others are served meanwhile.
    slow = t.client.ns.popen([sys.executable, CLIENT_SCRIPT, SERVER, "get",
                              f"grub.cfg-01-{dashed(SLOW_MAC)}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=t.folder)
    try:
        for _ in range(100):  # until tftpd has asked httpd, so the two overlap
            if any(r["path"] == f"/grub/{SLOW_MAC}" for r in t.requests()):
                break
            time.sleep(0.05)
        assert config_of(good)["sha256"] == sha(grub_config(good, CLIENT))
        assert t.get("debian-installer/amd64/bootnetx64.efi")["sha256"] == sha(SHIM)
        out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    assert json.loads(out) == {
        "error": f"ERROR 0: no GRUB config for {SLOW_MAC}: httpd did not answer within "
                 f"{DEADLINE} s"}, err
    assert config_of(good)["sha256"] == sha(grub_config(good, CLIENT))
    status = t.status()
    assert status["httpd.failed.status"] == 2
    assert status["httpd.failed.too_large"] == 1 and status["httpd.failed.timeout"] == 1
    assert status["httpd.fetched"] == 2
    assert status["refused.file_not_found"] == 1 and status["refused.not_defined"] == 3
    failed = t.events(t.client.mac, "tftp.failed", 3)  # ERROR 0 only: not the 404
    assert sorted(e["detail"].split(": ", 1)[0] for e in failed) == sorted(
        f"grub.cfg-01-{dashed(m)}" for m in (BROKEN_MAC, HUGE_MAC, SLOW_MAC))
    assert all("no GRUB config for" in e["detail"] for e in failed)


def test_httpd_down_is_an_error_at_once_and_files_are_still_served(
        grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    t.lease(t.client.mac, CLIENT)
    assert t.get(GRUB_CFG)["sha256"] == sha(grub_config(t.client.mac, CLIENT))
    t.stop_standin()
    assert t.get(GRUB_CFG) == {
        "error": f"ERROR 0: no GRUB config for {t.client.mac}: httpd at {SERVER}:{HTTP_PORT} "
                 "is unreachable: Connection refused"}
    assert t.get("debian-installer/amd64/bootnetx64.efi")["sha256"] == sha(SHIM)
    assert t.get("image/debian/initrd.gz")["sha256"] == sha(INITRD)
    failed = t.events(t.client.mac, "tftp.failed")
    assert len(failed) == 1 and "unreachable" in failed[0]["detail"]
    assert failed[0]["detail"].startswith(GRUB_CFG + ": ")
    assert t.status()["httpd.failed.down"] == 1


# --- the OS images, and nothing else ------------------------------------------------------


def test_images_are_served_from_the_os_folder(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    hpa = t.run(["tftp", SERVER, "-m", "binary", "-c", "get", "/image/debian/linux", "linux"])
    assert hpa.returncode == 0 and (t.folder / "linux").read_bytes() == KERNEL, hpa.stdout
    windowed = t.get("image/debian/linux", "blksize=1468", "windowsize=8", "tsize=0")
    assert windowed["sha256"] == sha(KERNEL)
    assert windowed["oack"] == {"blksize": "1468", "windowsize": "8", "tsize": str(len(KERNEL))}
    assert t.get("image\\debian\\initrd.gz")["sha256"] == sha(INITRD)
    assert t.get("image/debian/missing")["error"] == "ERROR 1: file not found"
    assert t.requests() == []  # files never go through httpd
    assert t.status()["transfers"] == 3


FORBIDDEN = [
    "boot/debian/template/preseed.cfg",  # the store's own layout: tftp/boot/... is not there
    "boot/debian/template/start.tmpl",
    "boot/debian/images/linux",
    "image/debian/../template/preseed.cfg",
    "image/debian/../../boot/debian/template/preseed.cfg",
    "image/../boot/debian/template/preseed.cfg",
    "image/debian/..\\template\\preseed.cfg",
    "../boot/debian/template/preseed.cfg",
    "/../boot/debian/template/preseed.cfg",
    "tftp/../boot/debian/template/preseed.cfg",
    "image/debian",
    "image/.debian/linux",
    "image/debian/../../../config.toml",
    "../config.toml",
    "C:\\boot\\debian\\template\\preseed.cfg",
]


def test_templates_and_everything_outside_are_refused(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    for name in FORBIDDEN:
        result = t.get(name)
        assert "sha256" not in result, f"{name!r} was served"
        assert result["error"].startswith(("ERROR 1:", "ERROR 2:")), (name, result)
    # netascii and a real client: still nothing
    ascii_ = t.run(["tftp", SERVER, "-m", "ascii", "-c", "get",
                    "image/debian/../template/preseed.cfg", "leak"])
    leaked = t.folder / "leak"
    assert not leaked.exists() or PRESEED_SECRET not in leaked.read_bytes(), ascii_.stdout
    assert t.requests() == []
    assert t.status().get("transfers", 0) == 0


# --- many machines at once -----------------------------------------------------------------


def test_50_machines_at_once_each_get_their_own_config(grub_lab: Callable[..., GrubLab]) -> None:
    t = grub_lab()
    machines = {f"192.0.2.{100 + i}": f"02:00:00:01:00:{i:02x}" for i in range(50)}
    for ip, mac in machines.items():
        t.lease(mac, ip)
        t.client.ns.ip("addr", "add", f"{ip}/24", "dev", t.client.ifname)
    # curl binds each download to one machine's address
    script = " ".join(f"curl -sS --interface {ip} -o out.{ip} tftp://{SERVER}/{GRUB_CFG} &"
                      for ip in machines) + " wait"
    proc = t.run(["sh", "-c", script], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for ip, mac in machines.items():
        got = (t.folder / f"out.{ip}").read_bytes()
        assert got == grub_config(mac, ip), ip
        assert got.startswith(f"# AstralBoot GRUB config for {mac} (asked for {ip})".encode())
    asked = {(r["path"], r["client"]) for r in t.requests()}
    assert asked == {(f"/grub/{mac}", ip) for ip, mac in machines.items()}
    assert len(t.requests()) == 50
    status = t.status()
    assert status["transfers"] == 50 and status["httpd.fetched"] == 50
