"""What a machine boots next: its OS's installer, or its own disk after a boot-once install.

Pure: records in, decisions and :class:`MachineSet` changes out. No bus, no HTTP.

``MachineRecord.boot_once`` set means "run this OS's installer on the next
network boot, then boot the local disk". It is consumed when the installer
fetches its first template for the machine (``/action`` or ``/config``: the
preseed, kickstart, autoinstall or Ignition config): that proves the kernel
and initrd arrived and the installer runs, while a failure before it (a
lost download, a power cut) simply runs the installer again next boot.
Consuming clears the flag and records the next boot as the disk in the
label ``astralboot/next-boot = disk``. A machine with an OS and neither flag
nor label gets the OS's start script on every boot (the original behaviour,
right for live systems such as Flatcar PXE). Assigning an OS (menu, API)
clears the label; the menu sets boot-once for OS folders whose
``classes.toml`` says ``boot = "once"``.
"""

from __future__ import annotations

from typing import Literal

from astralboot.common.messages import MachineRecord, MachineSet
from astralboot.services.httpd.classes import OsInfo

NEXT_BOOT_LABEL = "astralboot/next-boot"
DISK = "disk"

NextBoot = Literal["installer", "disk"]


def next_boot(machine: MachineRecord | None) -> NextBoot:
    if machine is None or machine.boot_once:
        return "installer"
    return DISK if machine.labels.get(NEXT_BOOT_LABEL) == DISK else "installer"


def consume_boot_once(machine: MachineRecord | None) -> MachineSet | None:
    """The change that ends a machine's boot-once install, or None if it has none."""
    if machine is None or not machine.boot_once:
        return None
    labels = dict(machine.labels)
    labels[NEXT_BOOT_LABEL] = DISK
    return MachineSet(mac=machine.mac, boot_once=False, labels=labels)


def assign(mac: str, machine: MachineRecord | None, os: OsInfo,
           machine_class: str | None = None) -> MachineSet:
    """Give a machine an OS (and class) from the menu: install it on this boot."""
    labels = dict(machine.labels) if machine else {}
    had_disk = labels.pop(NEXT_BOOT_LABEL, None) is not None
    change: dict[str, object] = {"mac": mac, "os": os.name, "boot_once": os.boot == "once"}
    if machine_class is not None:
        change["machine_class"] = machine_class
    elif machine is not None and machine.machine_class and (
            machine.os != os.name or machine.machine_class not in os.classes):
        change["clear"] = ("machine_class",)  # a class of another OS means nothing here
    if had_disk:
        change["labels"] = labels
    return MachineSet(**change)  # type: ignore[arg-type]
