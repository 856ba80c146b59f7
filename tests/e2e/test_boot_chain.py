"""Real firmware, power-on to the installer fetching its rendered preseed.

A diskless QEMU guest (SeaBIOS + iPXE ROM, or OVMF with EDK2's own PXE
client) boots in a namespace against ``astralboot serve`` with the bundled
Debian folder filled from Debian's netboot installer package. The tests
assert on what the server recorded: the boot events for that MAC in order,
and the lease in the database.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import Config, load
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.cli.demo.boot import ServeProcess, Timeline, WatchedBoot
from astralboot.common.cli.demo.guest import Guest
from astralboot.common.cli.demo.netns import Lab
from support.stack import write_config
from astralboot.common.messages import (EventList, EventListReply, LeaseLookup, LeaseReply,
                                        MachineSet)

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

BOOT_TIMEOUT = 900  # TCG on a busy 2-core machine; the installer start-up dominates
MIRROR_TIMEOUT = 300  # from the preseed fetch to the installer's mirror check
SERVER = "192.0.2.1"
DOMAIN = "lab.example"
MIRROR = f"astralboot.{DOMAIN}"  # the server's own name in dnsd's zone


@pytest.fixture(scope="module")
def data_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ab-e2e-data-"))
    create_data_folder(folder)
    for needed in ("boot/debian/images/linux", "boot/debian/images/initrd.gz",
                   "tftp/undionly.kpxe", "tftp/snponly.efi"):
        assert (folder / needed).exists(), f"{needed} not filled from the Debian packages"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _mac() -> str:
    return "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))


def _boot(lab: Lab, work: Path, data: Path, firmware: str, assign: str | None,
          labels: dict[str, str] | None = None, loader: str | None = None,
          then: Callable[[ServeProcess, Guest, Timeline], None] | None = None,
          ) -> tuple[Timeline, Config, str]:
    """Boot a new guest to its preseed fetch; ``then`` looks on while it goes on."""
    mac = _mac()
    tap = lab.add_tap()
    # An operator who wants unattended installs says so: [menu] default.
    config = load(write_config(work, interface=lab.bridge, address=lab.server_address,
                               data=data, extra={"menu.timeout": 2, "menu.default": "debian",
                                                 "domain": DOMAIN, "dns.upstream": [],
                                                 "dns.log_queries": True}))
    guest = Guest(firmware=firmware, mac=mac, tap=tap, workdir=work)  # type: ignore[arg-type]
    with ServeProcess(config, lab.server, work / "serve.log") as serve:
        if assign or labels or loader:
            with SyncBusClient(config.bus.endpoint) as bus:
                bus.call(MachineSet(mac=mac, os=assign, labels=labels, loader=loader))
        try:
            with WatchedBoot(guest, lab.server, config.bus.events) as boot:
                boot.wait_for("http.template", BOOT_TIMEOUT)
                recorded = _recorded(config, mac)
                if then is not None:
                    then(serve, guest, recorded)
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- console ---\n{guest.console_tail()}\n"
                                 f"--- serve ---\n{serve.tail()}") from None
    return recorded, config, mac


def _recorded(config: Config, mac: str) -> Timeline:
    """The events the store kept for this MAC (not just what was streamed)."""
    with SyncBusClient(config.bus.endpoint) as bus:
        reply = bus.call(EventList(mac=mac))
        assert isinstance(reply, EventListReply)
        lease = bus.call(LeaseLookup(mac=mac))
        assert isinstance(lease, LeaseReply)
    assert lease.lease.state == "bound"
    timeline = Timeline(powered_on=reply.events[0].time if reply.events else 0.0,
                        events=list(reply.events))
    timeline.lease = lease  # type: ignore[attr-defined]
    return timeline


def _in_order(stages: list[str], expected: list[str]) -> bool:
    """``expected`` appears in ``stages`` as a subsequence."""
    it = iter(stages)
    return all(any(s == e for s in it) for e in expected)


def _check_lease(timeline: Timeline, config: Config) -> None:
    from ipaddress import IPv4Address
    lease = timeline.lease.lease  # type: ignore[attr-defined]
    assert config.dhcp.local.in_range(IPv4Address(lease.ip))
    acks = [e for e in timeline.events if e.stage == "dhcp.ack"]
    assert acks and all(e.ip == lease.ip for e in acks)  # firmware, iPXE and installer agree


def _resolves_the_mirror(serve: ServeProcess, guest: Guest, timeline: Timeline) -> None:
    """The installer, past its preseed, looks its mirror up by name: dnsd answers it."""
    ip = timeline.lease.lease.ip  # type: ignore[attr-defined]
    wanted = f"{ip} udp: {MIRROR}. A -> NOERROR {SERVER}"
    deadline = time.monotonic() + MIRROR_TIMEOUT
    while wanted not in serve.log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the installer never had dnsd resolve {MIRROR} "
                                 f"(no {wanted!r} in dnsd's query log)")
        time.sleep(1)


def test_bios_guest_goes_through_the_menu_default_to_the_preseed(lab: Lab, short_tmp: Path,
                                                                 data_folder: Path) -> None:
    """... and on to its mirror, given as a name that only dnsd knows."""
    timeline, config, mac = _boot(lab, short_tmp, data_folder, "bios", assign=None,
                                  labels={"mirror": MIRROR}, then=_resolves_the_mirror)
    stages = timeline.stages()
    assert _in_order(stages, ["dhcp.ack", "http.script", "http.script", "http.image",
                              "http.image", "dhcp.ack", "http.template"]), stages
    assert "tftp.sent" not in stages  # the e1000 ROM is iPXE already
    scripts = [e.detail for e in timeline.events if e.stage == "http.script"]
    assert scripts[:2] == ["menu", "debian chosen"], scripts  # the menu, then its default
    images = [e.detail for e in timeline.events if e.stage == "http.image"]
    assert any("linux" in d for d in images) and any("initrd.gz" in d for d in images)
    template = timeline.first("http.template")
    assert template is not None and template.detail == "debian/preseed"
    _check_lease(timeline, config)


def test_an_unassigned_machine_boots_its_own_disk_by_default(lab: Lab, short_tmp: Path,
                                                             data_folder: Path) -> None:
    """Nothing installs unless someone decided it: the default config's menu
    takes ``local`` after its timeout, and no installer image is fetched."""
    mac = _mac()
    tap = lab.add_tap()
    config = load(write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                               data=data_folder, extra={"menu.timeout": 2}))
    assert config.menu.default == "local"
    guest = Guest(firmware="bios", mac=mac, tap=tap, workdir=short_tmp)
    with ServeProcess(config, lab.server, short_tmp / "serve.log") as serve:
        try:
            with WatchedBoot(guest, lab.server, config.bus.events) as boot:
                boot.wait_for("http.script", BOOT_TIMEOUT)
                deadline = time.monotonic() + 120
                while "Booting from local disk" not in guest.console_tail(200):
                    assert time.monotonic() < deadline, guest.console_tail()
                    boot.collect(timeout=1)
                time.sleep(3)  # anything the menu might still fetch
                while boot.collect(timeout=0.5) is not None:
                    pass
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- console ---\n{guest.console_tail()}\n"
                                 f"--- serve ---\n{serve.tail()}") from None
    timeline = boot.timeline
    stages = timeline.stages()
    scripts = [e.detail for e in timeline.events if e.stage == "http.script"]
    assert scripts == ["menu"], scripts
    assert "http.image" not in stages and "http.template" not in stages, stages


def test_uefi_guest_with_an_assigned_os_boots_straight_into_it(lab: Lab, short_tmp: Path,
                                                               data_folder: Path) -> None:
    timeline, config, mac = _boot(lab, short_tmp, data_folder, "uefi", assign="debian")
    stages = timeline.stages()
    assert _in_order(stages, ["dhcp.ack", "tftp.sent", "dhcp.ack", "http.script",
                              "http.image", "http.image", "dhcp.ack", "http.template"]), stages
    tftp = timeline.first("tftp.sent")
    assert tftp is not None and "snponly.efi" in tftp.detail
    scripts = [e.detail for e in timeline.events if e.stage == "http.script"]
    assert scripts == ["debian/start"], scripts  # straight to its own script, no menu
    _check_lease(timeline, config)


# --- the machines iPXE cannot boot, or does not reach first --------------------------

def _console_has(guest: Guest, text: str) -> bool:
    return text in guest.console_log.read_bytes().decode("utf-8", "replace")


def _until_console(boot: WatchedBoot, guest: Guest, text: str, timeout: float,
                   failure: str) -> None:
    """Collect events until ``text`` shows on the guest's console (``failure`` if not)."""
    deadline = time.monotonic() + timeout
    while not _console_has(guest, text):
        assert time.monotonic() < deadline, failure
        boot.collect(timeout=1)


def test_a_secure_boot_guest_boots_through_shim_and_grub_to_the_preseed(
        lab: Lab, short_tmp: Path, data_folder: Path) -> None:
    """OVMF with Secure Boot on and Microsoft's keys: Debian's signed shim, its
    signed GRUB with a config rendered for this machine, the signed kernel."""
    seen: dict[str, bool] = {}

    def enforced(serve: ServeProcess, guest: Guest, timeline: Timeline) -> None:
        seen["secure"] = _console_has(guest, "Secure Boot is enabled")

    timeline, config, mac = _boot(lab, short_tmp, data_folder, "uefi-secure", assign=None,
                                  loader="shim", then=enforced)
    stages = timeline.stages()
    assert _in_order(stages, ["dhcp.ack", "tftp.sent", "tftp.sent", "http.script",
                              "tftp.sent", "tftp.sent", "dhcp.ack", "http.template"]), stages
    sent = [e.detail.split()[0].lstrip("/") for e in timeline.events if e.stage == "tftp.sent"]
    # shim, GRUB, GRUB's config (rendered for this MAC by httpd), the menu's default
    # chosen through httpd, then the signed kernel and the initrd, all over TFTP
    assert sent == ["debian-installer/amd64/bootnetx64.efi",
                    "debian-installer/amd64/grubx64.efi", "debian-installer/amd64/grub/grub.cfg",
                    f"grub/choose/debian/{mac}", "image/debian/linux",
                    "image/debian/initrd.gz"], sent
    scripts = [e.detail for e in timeline.events if e.stage == "http.script"]
    assert scripts[:2] == ["grub menu", "debian chosen"], scripts  # the menu, then its default
    assert seen["secure"], "the kernel did not say Secure Boot was on"
    _check_lease(timeline, config)


def test_the_same_secure_boot_guest_refuses_ipxe(lab: Lab, short_tmp: Path,
                                                 data_folder: Path) -> None:
    """The negative control: handed iPXE (loader ipxe), the same firmware
    downloads it and refuses to run it, so the test above proves shim."""
    mac = _mac()
    config = load(write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                               data=data_folder, extra={"dns.upstream": []}))
    guest = Guest(firmware="uefi-secure", mac=mac, tap=lab.add_tap(), workdir=short_tmp)
    with ServeProcess(config, lab.server, short_tmp / "serve.log") as serve:
        try:
            with WatchedBoot(guest, lab.server, config.bus.events) as boot:
                sent = boot.wait_for("tftp.sent", BOOT_TIMEOUT)
                _until_console(boot, guest, "Access Denied", 120, "the firmware ran iPXE")
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- console ---\n{guest.console_tail()}\n"
                                 f"--- serve ---\n{serve.tail()}") from None
    assert "snponly.efi" in sent.detail
    assert "http.script" not in boot.timeline.stages()  # iPXE never ran


def test_a_uefi_http_boot_guest_reaches_the_preseed_without_tftp(
        lab: Lab, short_tmp: Path, data_folder: Path) -> None:
    """OVMF's own HTTP boot (PXE switched off): iPXE by URL, then as usual."""
    timeline, config, mac = _boot(lab, short_tmp, data_folder, "uefi-http", assign="debian")
    stages = timeline.stages()
    assert "tftp.sent" not in stages, stages
    assert _in_order(stages, ["dhcp.ack", "http.image", "dhcp.ack", "http.script",
                              "http.image", "http.image", "dhcp.ack", "http.template"]), stages
    first = timeline.first("http.image")
    assert first is not None and "snponly.efi" in first.detail
    _check_lease(timeline, config)


ARM64_TIMEOUT = 1200  # an emulated ARM64 CPU on x86 (TCG): the firmware alone takes minutes


def test_an_arm64_guest_boots_through_shim_and_grub_into_the_installer_kernel(
        lab: Lab, short_tmp: Path, data_folder: Path) -> None:
    """AAVMF (client arch 11) with Microsoft's keys: Debian's ARM64 shim and GRUB,
    the machine's own GRUB config, its OS's kernel and initrd, up to the kernel's
    start (the rest of the install is slow under emulation: bench/ runs it)."""
    mac = _mac()
    config = load(write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                               data=data_folder, extra={"dns.upstream": []}))
    assert config.uefi.arm64_loader == "auto"  # no ARM64 iPXE in the data folder: shim
    guest = Guest(firmware="arm64", mac=mac, tap=lab.add_tap(), workdir=short_tmp)
    with ServeProcess(config, lab.server, short_tmp / "serve.log") as serve:
        with SyncBusClient(config.bus.endpoint) as bus:
            bus.call(MachineSet(mac=mac, os="debian-arm64"))
        try:
            with WatchedBoot(guest, lab.server, config.bus.events) as boot:
                while True:
                    sent = boot.wait_for("tftp.sent", ARM64_TIMEOUT)
                    if "initrd.gz" in sent.detail:
                        break
                _until_console(boot, guest, "Linux version", 600, "the kernel never started")
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- console ---\n{guest.console_tail()}\n"
                                 f"--- serve ---\n{serve.tail()}") from None
    timeline = boot.timeline
    sent_names = [e.detail.split()[0].lstrip("/") for e in timeline.events
                  if e.stage == "tftp.sent"]
    assert sent_names == ["debian-installer/arm64/bootnetaa64.efi",
                          "debian-installer/arm64/grubaa64.efi",
                          "debian-installer/arm64/grub/grub.cfg",
                          "image/debian-arm64/linux", "image/debian-arm64/initrd.gz"], sent_names
    scripts = [e.detail for e in timeline.events if e.stage == "http.script"]
    assert scripts == ["debian-arm64/start"], scripts  # assigned: straight to its OS
    assert _console_has(guest, "Secure Boot is enabled") or _console_has(
        guest, "secureboot: Secure boot enabled"), guest.console_tail()
