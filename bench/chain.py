"""Whole chain: power-on to the Debian installer fetching its preseed.

AstralBoot (``astralboot serve``) against the peer pair people use today,
dnsmasq (DHCP + TFTP) + nginx (HTTP), serving the same files, in the same
run, one QEMU/TCG guest per leg:

- ``bios``: SeaBIOS with the e1000's iPXE ROM, then iPXE over HTTP;
- ``uefi``: OVMF's PXE client, iPXE (snponly.efi) over TFTP, then HTTP;
- ``secure``: OVMF with Secure Boot on and Microsoft's keys: Debian's signed
  shim and GRUB over TFTP, GRUB's config, then the signed kernel and the
  initrd over TFTP (GRUB has no HTTP); the preseed over HTTP. AstralBoot
  gives the machine loader ``shim``; dnsmasq names shim in the BOOTP file
  field (``dhcp-no-override``) and serves a static grub.cfg with the kernel
  command line AstralBoot renders. The leg checks, on both guests' serial
  consoles, that the kernel said Secure Boot was on.
- ``arm64``: the same through Debian's ARM64 shim and GRUB, on an emulated
  ``qemu-system-aarch64 -machine virt`` with AAVMF and Microsoft's keys
  (client arch 11), booting the bundled ``debian-arm64`` OS folder; AstralBoot
  picks shim by itself (``[uefi] arm64_loader = "auto"``). Slow: every
  instruction is emulated.

Both servers send the machine straight to its installer (AstralBoot: the
OS is assigned beforehand), so neither waits on a menu. The secure leg
also times each stage on both sides: AstralBoot's from its boot events,
the peer's from dnsmasq's log and nginx's access log as the lines appear
(polled every 0.1 s).

    sudo ./run.sh bench chain
    python -m bench chain --firmware secure        (or bios,uefi,secure,arm64; repeatable)
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.events import DHCP_ACK, HTTP_TEMPLATE, TFTP_SENT
from astralboot.common.config import load
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.cli.demo.boot import ServeProcess, boot_until
from astralboot.common.cli.demo.guest import Guest, stop
from astralboot.common.cli.demo.netns import Lab
from astralboot.common.cli.demo.site import write_config
from astralboot.common.messages import MachineSet

TIMEOUT = 900
ARM64_TIMEOUT = 3600  # emulated ARM64: the installer's start-up takes many minutes
RESULTS = Path(__file__).parent / "results"
SERVER = "192.0.2.1"
# Leg name -> the guest's firmware (common/cli/demo/guest.py).
LEGS = {"bios": "bios", "uefi": "uefi", "secure": "uefi-secure", "arm64": "arm64"}


@dataclass(frozen=True, slots=True)
class ShimLeg:
    """A leg that boots Debian's signed shim and GRUB: their folder (GRUB's
    built-in prefix is below it), the files, the OS folder, its serial console."""

    folder: str
    shim: str
    grub: str
    os: str
    console: str
    arch: int  # DHCP client architecture (option 93)


SHIM_LEGS = {
    "secure": ShimLeg("debian-installer/amd64", "bootnetx64.efi", "grubx64.efi", "debian",
                      "ttyS0,115200n8", 7),
    "arm64": ShimLeg("debian-installer/arm64", "bootnetaa64.efi", "grubaa64.efi",
                     "debian-arm64", "ttyAMA0,115200n8", 11),
}

PEER_SCRIPT = f"""#!ipxe
kernel http://{SERVER}/linux initrd=initrd.gz auto=true priority=critical preseed/url=http://{SERVER}/preseed.cfg
initrd http://{SERVER}/initrd.gz
boot
"""

# The kernel command line AstralBoot renders for an assigned, unnamed machine
# (common/bundled/boot/debian/template/start.tmpl; a fresh store names it
# node1; the default domain), with the preseed on nginx. The leg prints both
# kernels' lines.
def peer_grub(s: ShimLeg) -> str:
    return f"""set timeout=0
set default=0
menuentry 'Debian 12 installer (automated)' {{
  linux  /image/{s.os}/linux auto=true priority=critical preseed/url=http://{SERVER}/preseed.cfg hostname=node1 domain=astral.lan console=tty0 console={s.console}
  initrd /image/{s.os}/initrd.gz
}}
"""

DNSMASQ = """port=0
user=root
log-facility=-
interface=br0
bind-interfaces
dhcp-range=192.0.2.100,192.0.2.199,12h
dhcp-option=option:dns-server,192.0.2.1
dhcp-option=option:router,192.0.2.1
enable-tftp
tftp-root={root}/tftp
dhcp-leasefile={root}/leases
dhcp-match=set:efi64,option:client-arch,7
"""
DNSMASQ_IPXE = """dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi
dhcp-boot=tag:ipxe,http://192.0.2.1/boot.ipxe
"""
# shim takes its folder from the BOOTP file field, which dnsmasq leaves empty
# (the name only in option 67) unless told not to override it.
def dnsmasq_shim(s: ShimLeg) -> str:
    return f"""dhcp-no-override
dhcp-match=set:shim,option:client-arch,{s.arch}
dhcp-boot=tag:shim,{s.folder}/{s.shim},,{SERVER}
"""

NGINX = """daemon off;
worker_processes 2;
error_log {root}/nginx-error.log;
pid {root}/nginx.pid;
events {{}}
http {{
  access_log {root}/access.log;
  sendfile on;
  server {{ listen 192.0.2.1:80; root {root}/www; }}
}}
"""

# Lines of the serial console that show Secure Boot on (the EFI stub, the
# kernel's lockdown and its secureboot line), and the kernel's command line.
SECURE_EVIDENCE = ("Secure Boot is enabled", "locked down from EFI Secure Boot",
                   "secureboot: Secure boot enabled")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


@dataclass(frozen=True, slots=True)
class Mark:
    """One step of a boot, in AstralBoot's event terms: (seconds, stage, detail)."""

    at: float
    stage: str
    detail: str = ""


@dataclass
class Run:
    """One server's boot of one guest."""

    seconds: float
    marks: list[Mark] = field(default_factory=list)
    console: str = ""

    def evidence(self) -> list[str]:
        """The console lines saying Secure Boot was on."""
        return [line.strip() for line in self.console.splitlines()
                if any(e in line for e in SECURE_EVIDENCE)]

    def command_line(self) -> str | None:
        # x86 kernels print "Command line:", ARM64 ones "Kernel command line:"
        return next((line.split("ommand line:", 1)[1].strip()
                     for line in self.console.splitlines() if "ommand line:" in line), None)


def _mac() -> str:
    return "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))


def _console(guest: Guest) -> str:
    try:
        raw = guest.console_log.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""
    return _ESCAPES.sub("", raw)


# --- stages of the secure leg ------------------------------------------------------

def _sent(name: str) -> Callable[[Mark], bool]:
    return lambda m: m.stage == TFTP_SENT and m.detail.lstrip("/").startswith(name)


# Each stage is the first mark matching it after the previous stage.
def shim_stages(s: ShimLeg) -> list[tuple[str, Callable[[Mark], bool]]]:
    return [
        ("firmware DHCP ack", lambda m: m.stage == DHCP_ACK),
        ("shim sent", _sent(f"{s.folder}/{s.shim}")),
        ("GRUB sent", _sent(f"{s.folder}/{s.grub}")),
        ("grub.cfg sent", _sent(f"{s.folder}/grub/grub.cfg")),
        ("kernel sent", _sent(f"image/{s.os}/linux")),
        ("initrd sent", _sent(f"image/{s.os}/initrd.gz")),
        ("installer DHCP ack", lambda m: m.stage == DHCP_ACK),
        ("preseed fetched", lambda m: m.stage == HTTP_TEMPLATE),
    ]


def stages(marks: list[Mark], s: ShimLeg) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    rest = iter(sorted(marks, key=lambda m: m.at))
    for label, match in shim_stages(s):
        hit = next((m for m in rest if match(m)), None)
        out.append((label, None if hit is None else round(hit.at, 1)))
        if hit is None:
            rest = iter(())
    return out


# --- the peer: dnsmasq + nginx ---------------------------------------------------------

class LogWatch:
    """New lines of the peer's logs, each stamped with when it was first seen."""

    def __init__(self, *paths: Path) -> None:
        self.offsets = {p: 0 for p in paths}
        self.lines: list[tuple[float, str]] = []

    def poll(self, now: float) -> list[str]:
        new: list[str] = []
        for path, offset in self.offsets.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1  # whole lines only
            self.offsets[path] = offset + end
            new += chunk[:end].decode("utf-8", "replace").splitlines()
        self.lines += [(now, line) for line in new]
        return new


def peer_mark(at: float, line: str, tftp_root: Path) -> Mark | None:
    """A dnsmasq or nginx log line in AstralBoot's stage terms, or None."""
    if "DHCPACK(" in line:
        return Mark(at, DHCP_ACK, line.split("DHCPACK(", 1)[1])
    if "dnsmasq-tftp" in line and " sent " in line:
        path = line.split(" sent ", 1)[1].split(" to ", 1)[0]
        return Mark(at, TFTP_SENT, path.removeprefix(str(tftp_root)))
    if "GET /preseed.cfg" in line:
        return Mark(at, HTTP_TEMPLATE, "preseed.cfg")
    return None


def _peer_files(leg: str, data: Path, root: Path) -> None:
    (root / "www").mkdir(parents=True)
    tftp = root / "tftp"
    tftp.mkdir()
    images = data / "boot/debian/images"
    if leg in SHIM_LEGS:
        s = SHIM_LEGS[leg]
        loaders = tftp / s.folder
        (loaders / "grub").mkdir(parents=True)
        for name in (s.shim, s.grub):
            shutil.copy(data / "tftp" / s.folder / name, loaders / name)
        (loaders / "grub/grub.cfg").write_text(peer_grub(s))
        (tftp / "image" / s.os).mkdir(parents=True)
        for name in ("linux", "initrd.gz"):
            shutil.copy(data / "boot" / s.os / "images" / name, tftp / "image" / s.os / name)
        boot = dnsmasq_shim(s)
    else:
        for name in ("undionly.kpxe", "snponly.efi"):
            shutil.copy(data / "tftp" / name, tftp / name)
        for name in ("linux", "initrd.gz"):
            shutil.copy(images / name, root / "www" / name)
        (root / "www/boot.ipxe").write_text(PEER_SCRIPT)
        boot = DNSMASQ_IPXE
    (root / "www/preseed.cfg").write_text("d-i debian-installer/locale string en_US\n")
    (root / "dnsmasq.conf").write_text(DNSMASQ.format(root=root) + boot)
    (root / "nginx.conf").write_text(NGINX.format(root=root))


def peer(leg: str, data: Path, work: Path) -> Run:
    root = work / "peer"
    _peer_files(leg, data, root)
    with Lab() as lab:
        tap = lab.add_tap()
        with open(root / "peer.log", "wb") as out:
            dnsmasq = lab.server.popen(["dnsmasq", "-C", str(root / "dnsmasq.conf"), "-k"],
                                       stdout=out, stderr=out)
            nginx = lab.server.popen(["nginx", "-c", str(root / "nginx.conf")],
                                     stdout=out, stderr=out)
        try:
            time.sleep(1)
            if dnsmasq.poll() is not None or nginx.poll() is not None:
                raise RuntimeError(f"peer {leg}: dnsmasq or nginx did not start:\n"
                                   f"{(root / 'peer.log').read_text()}")
            guest = Guest(firmware=LEGS[leg], mac=_mac(), tap=tap, workdir=root)  # type: ignore[arg-type]
            return _peer_boot(leg, guest, lab, root)
        finally:
            for p in (dnsmasq, nginx):
                p.kill()
                p.wait()


def _peer_boot(leg: str, guest: Guest, lab: Lab, root: Path) -> Run:
    watch = LogWatch(root / "peer.log", root / "access.log")
    watch.poll(0.0)  # dnsmasq's start-up lines
    watch.lines.clear()
    started = time.time()
    proc = guest.start(lab.server)
    try:
        while time.time() - started < (ARM64_TIMEOUT if leg == "arm64" else TIMEOUT):
            now = time.time() - started
            new = watch.poll(now)
            if any("GET /preseed.cfg" in line for line in new):
                marks = [m for at, line in watch.lines
                         if (m := peer_mark(at, line, root / "tftp")) is not None]
                return Run(now, marks, _console(guest))
            refused = [line for line in new if "HTTP/1" in line
                       and ('" 4' in line or '" 5' in line)]
            if refused:
                raise RuntimeError(f"peer {leg}: nginx refused {refused[0]}")
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"peer {leg}: no preseed fetch\n{guest.console_tail()}")
    finally:
        stop(proc)


# --- AstralBoot ------------------------------------------------------------------------

def astralboot(leg: str, data: Path, work: Path) -> Run:
    root = work / "astral"
    with Lab() as lab:
        tap = lab.add_tap()
        config = load(write_config(root, interface=lab.bridge, address=lab.server_address,
                                   data=data, extra={"log_level": "warning"}))
        mac = _mac()
        with ServeProcess(config, lab.server, root / "serve.log"):
            with SyncBusClient(config.bus.endpoint) as bus:
                bus.call(MachineSet(mac=mac, os=SHIM_LEGS[leg].os if leg in SHIM_LEGS else "debian",
                                    loader="shim" if leg == "secure" else None))
            guest = Guest(firmware=LEGS[leg], mac=mac, tap=tap, workdir=root)  # type: ignore[arg-type]
            timeline = boot_until(guest, lab.server, config.bus.events, HTTP_TEMPLATE,
                                  ARM64_TIMEOUT if leg == "arm64" else TIMEOUT)
    marks = [Mark(timeline.at(e), e.stage, e.detail) for e in timeline.events]
    return Run(timeline.total(), marks, _console(guest))


# --- the run ---------------------------------------------------------------------------

def _legs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown leg(s) {', '.join(unknown) or '(none)'}; "
                                         f"have {', '.join(LEGS)}")
    return names


def _check_shim_files(data: Path, leg: str) -> None:
    s = SHIM_LEGS[leg]
    missing = [name for name in (s.shim, s.grub) if not (data / "tftp" / s.folder / name).is_file()]
    if missing:
        raise SystemExit(f"the {leg} leg needs {', '.join(missing)} in data/tftp/{s.folder}/ "
                         f"(package debian-installer-12-netboot-{s.folder.rsplit('/', 1)[1]})")


def _secure_report(row: dict, theirs: Run, ours: Run) -> bool:
    """Print the secure leg's stages and Secure Boot evidence; True if both had it on."""
    print("\n| secure stage (s from power-on) | dnsmasq + nginx | AstralBoot |")
    print("| --- | --- | --- |")
    for (label, p), (_, a) in zip(row["peer_stages"], row["astralboot_stages"]):
        print(f"| {label} | {'-' if p is None else p} | {'-' if a is None else a} |")
    ok = True
    for who, run in (("dnsmasq + nginx", theirs), ("AstralBoot", ours)):
        lines = run.evidence()
        ok &= any("Secure Boot is enabled" in line for line in lines)
        print(f"\n{who}: Secure Boot {'ON' if lines else 'NOT SEEN'} on the serial console")
        for line in lines:
            print(f"    {line}")
        print(f"  kernel command line: {run.command_line()}")
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chain")
    parser.add_argument("--firmware", type=_legs, action="append", metavar="LEG[,LEG]",
                        help=f"legs to run, of {', '.join(LEGS)} (default: all)")
    args = parser.parse_args(argv)
    legs = list(dict.fromkeys(sum(args.firmware or [list(LEGS)], [])))
    work = Path(tempfile.mkdtemp(prefix="ab-bench-chain-"))
    work.chmod(0o755)  # nginx's workers (nobody) read the peer's files from here
    data = work / "data"
    create_data_folder(data)
    for leg in legs:
        if leg in SHIM_LEGS:
            _check_shim_files(data, leg)
    RESULTS.mkdir(exist_ok=True)
    rows, status = [], 0
    busy = subprocess.run(["pgrep", "-a", "qemu"], capture_output=True, text=True).stdout.strip()
    if busy:
        print(f"note: other QEMU processes are running; figures may be disturbed:\n{busy}",
              flush=True)
    try:
        for leg in legs:
            theirs = peer(leg, data, work / leg)
            ours = astralboot(leg, data, work / leg)
            row = {"firmware": leg, "peer_s": round(theirs.seconds, 1),
                   "astralboot_s": round(ours.seconds, 1),
                   "ratio": round(ours.seconds / theirs.seconds, 2),
                   "stages": [(m.stage, round(m.at, 1)) for m in ours.marks]}
            print(f"{leg}: dnsmasq+nginx {theirs.seconds:.1f}s, AstralBoot {ours.seconds:.1f}s "
                  f"(AstralBoot/peer {ours.seconds / theirs.seconds:.2f})", flush=True)
            if leg in SHIM_LEGS:
                s = SHIM_LEGS[leg]
                row.update(peer_stages=stages(theirs.marks, s),
                           astralboot_stages=stages(ours.marks, s),
                           peer_secure_boot=theirs.evidence(),
                           astralboot_secure_boot=ours.evidence(),
                           peer_command_line=theirs.command_line(),
                           astralboot_command_line=ours.command_line())
                for who, run in (("peer", theirs), ("astralboot", ours)):
                    (RESULTS / f"chain-{leg}-{who}-console.log").write_text(run.console)
                if not _secure_report(row, theirs, ours):
                    print(f"{leg}: the kernel did not say Secure Boot was on in both runs",
                          flush=True)
                    status = 1
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| firmware | dnsmasq + nginx | AstralBoot | AstralBoot / peer |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['firmware']} | {r['peer_s']} s | {r['astralboot_s']} s | {r['ratio']} |")
    (RESULTS / "chain.json").write_text(json.dumps(rows, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
