"""Diskless QEMU guests that network-boot on a lab's bridge.

BIOS guests run SeaBIOS with the e1000's iPXE option ROM, so their first
DHCP request already says "iPXE". UEFI guests run OVMF with a virtio NIC
whose option ROM is removed, so EDK2's own PXE client goes first (client
arch 7, TFTP with the tsize probe) and chainloads iPXE. TCG is used: it
works everywhere, KVM does not on every host.

More firmware, for the machines iPXE cannot boot or does not reach:

- ``uefi-secure``: OVMF built with Secure Boot, its variables holding
  Microsoft's keys (Debian's ``OVMF_*_4M.secboot.fd``/``.ms.fd``), on a
  q35 machine with SMM: it runs only signed loaders (shim, then Debian's
  GRUB and kernel) and refuses iPXE ("Access Denied").
- ``uefi-http``: plain OVMF with its PXE boot options removed
  (``opt/org.tianocore/IPv4PXESupport``), so the first thing it tries is
  UEFI HTTP boot (client arch 16, vendor class ``HTTPClient``).
- ``arm64``: ``qemu-system-aarch64 -machine virt`` with AAVMF and
  Microsoft's keys (Secure Boot on, client arch 11); emulated, so slow.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astralboot.common.cli.demo.netns import LabError, Namespace

Firmware = Literal["bios", "uefi", "uefi-secure", "uefi-http", "arm64"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_SECURE_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")  # Microsoft's keys enrolled
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.ms.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.ms.fd")
QEMU = "qemu-system-x86_64"
QEMU_ARM64 = "qemu-system-aarch64"


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
        qemu = QEMU_ARM64 if self.firmware == "arm64" else QEMU
        if shutil.which(qemu) is None:
            raise LabError(f"{qemu} is missing (package "
                           f"{'qemu-system-arm' if self.firmware == 'arm64' else 'qemu-system-x86'})")
        cmd = [qemu, "-accel", "tcg", "-m", str(self.memory_mb), "-nographic", "-no-reboot",
               "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
        nic = ["-device", f"virtio-net-pci,netdev=n0,mac={self.mac},romfile="]
        if self.firmware == "bios":
            return cmd + ["-boot", "n", "-device", f"e1000,netdev=n0,mac={self.mac}"]
        if self.firmware == "arm64":
            code, variables, package = AAVMF_CODE, AAVMF_VARS, "qemu-efi-aarch64"
            cmd += ["-machine", "virt", "-cpu", "cortex-a57"]
        elif self.firmware == "uefi-secure":
            code, variables, package = OVMF_SECURE_CODE, OVMF_SECURE_VARS, "ovmf"
            cmd += ["-boot", "n", "-machine", "q35,smm=on",
                    "-global", "driver=cfi.pflash01,property=secure,value=on"]
        else:
            code, variables, package = OVMF_CODE, OVMF_VARS, "ovmf"
            cmd += ["-boot", "n"]
            if self.firmware == "uefi-http":  # no PXE options: HTTP boot comes first
                cmd += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                        "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]
        for path in (code, variables):
            if not path.exists():
                raise LabError(f"{path} is missing (package {package})")
        vars_copy = self.workdir / f"vars-{self.mac.replace(':', '')}.fd"
        shutil.copyfile(variables, vars_copy)  # the firmware writes to its variables
        return cmd + ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                      "-drive", f"if=pflash,format=raw,file={vars_copy}", *nic]

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
