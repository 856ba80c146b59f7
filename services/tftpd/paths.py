"""Turning a client's file name into where its bytes come from.

Firmware writes names every which way (``\\boot\\ipxe.efi``, ``/ipxe.efi``);
each is cleaned into its parts, then :func:`route` decides, by the table
below, what it names, or refuses it before anything is asked:

- a GRUB config (``grub.cfg``, ``grub.cfg-01-<mac>``, ``grub.cfg-<hex IP>``,
  in any folder): the machine's own, rendered by httpd;
- ``grub/choose|class|setclass/...``: a choice made from GRUB's menu,
  passed on to httpd;
- ``image/<os>/<path>``: the store's ``boot/<os>/images/<path>`` (kernels
  and initrds; the OS's templates hold secrets and are never reachable);
- anything else: a plain file below ``tftp/`` in the content store.

Symlinks are not visible here: the store refuses any that leave its root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from astralboot.common.config import normalise_mac
from astralboot.common.names import WORD

from astralboot.services.tftpd.packets import Error, TftpCode

ROOT = "tftp"
MAX_NAME = 255  # bytes, as sent
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What GRUB's net module asks for, in order: its MAC, its address in hex,
# shorter and shorter, then the plain name (grub-core/net/net.c).
_GRUB_CFG = re.compile(r"grub\.cfg(?:-01-(?P<mac>[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5})"
                       r"|-[0-9A-Fa-f]{1,8})?")
_STRICT_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


@dataclass(frozen=True, slots=True)
class StoreFile:
    """A file of the content store, served as it is."""

    path: str  # "tftp/<path>" or "boot/<os>/images/<path>"


@dataclass(frozen=True, slots=True)
class MachineGrubConfig:
    """The asking machine's own GRUB config, rendered by httpd."""

    mac: str | None  # from the name; None: the machine holding the client's address


@dataclass(frozen=True, slots=True)
class GrubPage:
    """A choice from GRUB's menu, rendered by httpd at ``path``."""

    path: str  # "/grub/choose/<os>/<mac>", ...

    @classmethod
    def config_of(cls, mac: str) -> "GrubPage":
        """The page of a machine's GRUB config."""
        return cls(f"/grub/{mac}")


Route = StoreFile | MachineGrubConfig | GrubPage


def _parts(name: bytes) -> list[str] | Error:
    """The clean parts of a name: no empty, ``.`` or ``..`` ones, or the ERROR."""
    if len(name) > MAX_NAME:
        return Error(TftpCode.ACCESS_VIOLATION, f"file name longer than {MAX_NAME} bytes")
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return Error(TftpCode.ACCESS_VIOLATION, "file name is not UTF-8")
    if _CONTROL.search(text):
        return Error(TftpCode.ACCESS_VIOLATION, "file name contains control characters")
    text = text.replace("\\", "/")
    if _DRIVE.match(text):
        return Error(TftpCode.ACCESS_VIOLATION, "absolute file names are not served")
    parts = [p for p in text.split("/") if p not in ("", ".")]  # a leading slash is ignored
    if ".." in parts:
        return Error(TftpCode.ACCESS_VIOLATION, "file name leaves the served folder")
    if not parts:
        return Error(TftpCode.FILE_NOT_FOUND, "no file name")
    return parts


def store_path(name: bytes) -> str | Error:
    """``tftp/<clean relative path>``, or the ERROR that refuses the name."""
    parts = _parts(name)
    if isinstance(parts, Error):
        return parts
    return "/".join((ROOT, *parts))


# --- the table ------------------------------------------------------------------


def _word(text: str) -> str | None:
    return text if WORD.fullmatch(text) else None


def _mac(text: str) -> str | None:
    return normalise_mac(text) if _STRICT_MAC.fullmatch(text) else None


_FIELDS: dict[str, Callable[[str], str | None]] = {"os": _word, "class": _word, "mac": _mac}

# grub/<page>/<fields...>: what each page of GRUB's menu carries, in order.
_GRUB_PAGES: dict[str, tuple[str, ...]] = {
    "choose": ("os", "mac"),
    "class": ("os", "mac"),
    "setclass": ("os", "class", "mac"),
}


def _grub_page(parts: list[str]) -> GrubPage | Error:
    page = parts[1]
    fields = _GRUB_PAGES[page]
    values = parts[2:]
    if len(values) != len(fields):
        return Error(TftpCode.ACCESS_VIOLATION,
                     f"grub/{page}/ takes {'/'.join(f'<{f}>' for f in fields)}")
    checked = []
    for field, value in zip(fields, values):
        ok = _FIELDS[field](value)
        if ok is None:
            return Error(TftpCode.ACCESS_VIOLATION, f"grub/{page}/: {value[:40]!r} is not "
                                                    f"a valid {field}")
        checked.append(ok)
    return GrubPage("/" + "/".join(("grub", page, *checked)))


def _image(parts: list[str]) -> StoreFile | Error:
    if len(parts) < 3 or _word(parts[1]) is None:
        return Error(TftpCode.ACCESS_VIOLATION, "image/ takes <os>/<path>")
    return StoreFile("/".join(("boot", parts[1], "images", *parts[2:])))


def route(name: bytes) -> Route | Error:
    """What a client's file name names, or the ERROR that refuses it."""
    parts = _parts(name)
    if isinstance(parts, Error):
        return parts
    if len(parts) >= 2 and parts[0] == "grub" and parts[1] in _GRUB_PAGES:
        return _grub_page(parts)
    grub_cfg = _GRUB_CFG.fullmatch(parts[-1])
    if grub_cfg is not None:
        mac = grub_cfg.group("mac")
        return MachineGrubConfig(normalise_mac(mac) if mac else None)
    if len(parts) >= 2 and parts[0] == "image":
        return _image(parts)
    return StoreFile("/".join((ROOT, *parts)))
