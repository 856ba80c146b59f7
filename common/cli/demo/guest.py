"""Diskless QEMU guests that network-boot on a lab's bridge.

BIOS guests run SeaBIOS with the e1000's iPXE option ROM, so their first
DHCP request already says "iPXE". UEFI guests run OVMF with a virtio NIC
whose option ROM is removed, so EDK2's own PXE client goes first (client
arch 7, TFTP with the tsize probe) and chainloads iPXE. TCG is used: it
works everywhere, KVM does not on every host.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astralboot.common.cli.demo.netns import LabError, Namespace

Firmware = Literal["bios", "uefi"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"


@dataclass
class Guest:
    firmware: Firmware
    mac: str
    tap: str
    workdir: Path
    memory_mb: int = 1024  # the Debian installer stops in "low memory mode" below this

    @property
    def console_log(self) -> Path:
        return self.workdir / f"console-{self.mac.replace(':', '')}.log"

    def argv(self) -> list[str]:
        if shutil.which(QEMU) is None:
            raise LabError(f"{QEMU} is missing (package qemu-system-x86)")
        cmd = [QEMU, "-accel", "tcg", "-m", str(self.memory_mb), "-nographic", "-no-reboot",
               "-boot", "n", "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
        if self.firmware == "bios":
            cmd += ["-device", f"e1000,netdev=n0,mac={self.mac}"]
        else:
            for path in (OVMF_CODE, OVMF_VARS):
                if not path.exists():
                    raise LabError(f"{path} is missing (package ovmf)")
            vars_copy = self.workdir / f"vars-{self.mac.replace(':', '')}.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)  # the firmware writes to its variables
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={vars_copy}",
                    "-device", f"virtio-net-pci,netdev=n0,mac={self.mac},romfile="]
        return cmd

    def start(self, ns: Namespace) -> subprocess.Popen[bytes]:
        """Power on inside ``ns``; the serial console goes to :attr:`console_log`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.console_log, "wb")
        try:
            return ns.popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no console output)"
        # The installer paints screens with escape sequences; keep the words.
        clean = "".join(ch for ch in text if ch == "\n" or ch.isprintable())
        return "\n".join(clean.splitlines()[-lines:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
