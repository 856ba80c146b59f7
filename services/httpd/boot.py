"""Boot decisions: which OS folders exist, what a machine boots next, boot-once.

Pure: records and TOML bytes in, decisions and :class:`MachineSet` changes
out. No bus, no HTTP.

Boot-once. ``MachineRecord.boot_once`` set means "run this OS's installer on
the next network boot, then boot the local disk". It is consumed when the
installer fetches its first template for the machine (``/action`` or
``/config``: the preseed, kickstart, autoinstall or Ignition config): that
proves the kernel and initrd arrived and the installer runs, while a failure
before it (a lost download, a power cut) simply runs the installer again
next boot. Consuming clears the flag and records the next boot as the disk
in the label ``astralboot/next-boot = disk``. A machine with an OS and
neither flag nor label gets the OS's start script on every boot (the
original behaviour, right for live systems such as Flatcar PXE).
Assigning an OS (menu, API) clears the label; the menu sets boot-once for
OS folders whose ``classes.toml`` says ``boot = "once"``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Literal

from ...common.config import normalise_mac
from ...common.messages import MachineRecord, MachineSet
from .scripts import MAC_VAR, MenuEntry

NEXT_BOOT_LABEL = "astralboot/next-boot"
DISK = "disk"

BootPolicy = Literal["once", "always"]
NextBoot = Literal["installer", "disk"]

_OS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class BadInput(ValueError):
    """A client sent a path segment or body that is not acceptable (HTTP 400)."""


# --- validating what comes in URLs -------------------------------------------------

_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def check_mac(text: str) -> str:
    if _CANONICAL_MAC.fullmatch(text):  # what iPXE sends: the common case, made cheap
        return text
    try:
        return normalise_mac(text)
    except ValueError:
        raise BadInput(f"{text[:40]!r} is not a MAC address like 52:54:00:12:34:56") from None


def check_os(text: str) -> str:
    if not _OS_NAME.fullmatch(text):
        raise BadInput(f"{text[:40]!r} is not an OS folder name")
    return text


def check_class(text: str) -> str:
    if not _CLASS_NAME.fullmatch(text):
        raise BadInput(f"{text[:40]!r} is not a class name")
    return text


def check_template(text: str) -> str:
    if not _TEMPLATE_NAME.fullmatch(text) or ".." in text:
        raise BadInput(f"{text[:40]!r} is not a template name")
    return text


def check_subpath(text: str) -> str:
    """A relative path below a content folder: no empty, ``.`` or ``..`` segments."""
    parts = text.split("/")
    if (not text or len(text) > 1024 or any(p in ("", ".", "..") for p in parts)
            or any(c in text for c in "\\\x00") or any(ord(c) < 32 for c in text)):
        raise BadInput(f"{text[:60]!r} is not a file path")
    return text


# --- OS folders ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OsInfo:
    """One bootable OS folder (``boot/<name>/``) and its ``classes.toml``."""

    name: str
    description: str
    classes: tuple[str, ...] = ()
    boot: BootPolicy = "always"


def parse_os_info(name: str, classes_toml: bytes | None) -> OsInfo:
    """Read ``classes.toml``: ``classes = [...]``, optional ``description`` and ``boot``.

    A broken file still leaves the OS bootable (no classes) rather than hiding it.
    """
    data: dict[str, object] = {}
    if classes_toml:
        try:
            data = tomllib.loads(classes_toml.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
    raw_classes = data.get("classes", [])
    classes = tuple(c for c in raw_classes if isinstance(c, str) and _CLASS_NAME.fullmatch(c)) \
        if isinstance(raw_classes, list) else ()
    description = data.get("description")
    boot = data.get("boot", "always")
    return OsInfo(name=name,
                  description=description if isinstance(description, str) else name,
                  classes=classes, boot="once" if boot == "once" else "always")


# --- what a machine boots -------------------------------------------------------------

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


# --- menus --------------------------------------------------------------------------

def os_menu(oses: list[OsInfo], public_url: str) -> list[MenuEntry]:
    return [MenuEntry(key=o.name, title=o.description, submenu=bool(o.classes),
                      url=f"{public_url}/{'class' if o.classes else 'choose'}/{o.name}/{MAC_VAR}")
            for o in oses]


def class_menu(os: OsInfo, public_url: str) -> list[MenuEntry]:
    return [MenuEntry(key=c, title=f"{os.description}: {c}",
                      url=f"{public_url}/setclass/{os.name}/{c}/{MAC_VAR}")
            for c in os.classes]


def menu_default(oses: list[OsInfo], wanted: str) -> str:
    """The configured default if it is a bootable OS (or local/shell), else the local disk."""
    if wanted in {o.name for o in oses} or wanted in ("local", "shell"):
        return wanted
    return "local"


def config_template_names(name: str, machine: MachineRecord | None) -> list[str]:
    """``/config/<os>/<name>``: ``<name>-<class>`` first (the original), then ``<name>``."""
    if machine is not None and machine.machine_class:
        return [f"{name}-{machine.machine_class}", name]
    return [name]
