"""Which boot file or URL a client is sent: the first link of the boot chain.

Firmware first loads an iPXE binary over TFTP (or HTTP, for UEFI HTTP
boot); that iPXE then asks DHCP again and is recognised (user class
"iPXE" or "skinny", or option 175), so it gets an HTTP script URL instead
of the binary it is already running. That is what breaks the chainload
loop. Pure: the only outside knowledge, which iPXE binaries the data
folder holds, is a :class:`BinaryCatalogue` refreshed by the server.

UEFI firmware with Secure Boot on refuses iPXE (it is not signed by the
UEFI CA). For those machines the loader is ``shim``: Debian's signed shim
(``bootnetx64.efi``, ``bootnetaa64.efi``), which loads Debian's signed GRUB
from the same folder, whose config tftpd fetches from httpd per machine.
DHCP cannot see whether Secure Boot is on, so the machine's record says
(``machines set --loader``), else ``[uefi] loader`` (x64) or ``[uefi]
arm64_loader`` (by default iPXE when the data folder has an ARM64 iPXE
binary, which Debian does not ship, else shim). shim goes by TFTP only: the signed GRUB cannot fetch over
HTTP, so a shim machine's UEFI HTTP boot request is not answered and its
firmware goes on to PXE.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from astralboot.common.bus.schema import Reply, Request
from astralboot.common.errors import ErrorCode
from astralboot.common.messages import (
    ContentStat,
    ContentStatReply,
    ErrorReply,
)

from astralboot.services.dhcpd.constants import (
    ARCH_BIOS,
    ARCH_EFI_ARM64,
    ARCH_EFI_ARM64_HTTP,
    ARCH_EFI_BC,
    ARCH_EFI_X64,
    ARCH_EFI_X64_HTTP,
    VENDOR_HTTP,
    VENDOR_PXE,
)
from astralboot.services.dhcpd.client_messages import ClientMessage

log = logging.getLogger(__name__)


class Assignment(Protocol):
    """What the boot chain needs to know of a machine: a LeaseGrant or a MachineRecord."""

    @property
    def name(self) -> str | None: ...

    @property
    def os(self) -> str | None: ...

    @property
    def loader(self) -> str | None: ...

    @property
    def machine_class(self) -> str | None: ...

# Where the binaries live in the data folder; tftpd serves this folder, and
# httpd serves the same files at HTTP_BINARY_PREFIX for UEFI HTTP boot.
TFTP_FOLDER = "tftp"
HTTP_BINARY_PREFIX = "/tftp/"
MENU_PATH = "/choose"
BOOT_PATH = "/boot/{os}/{mac}"

# Debian's signed shim, in the folders its GRUB's built-in prefix expects
# (debian-installer/<arch>/grub); shim loads grub*.efi from the same folder,
# which it takes from the BOOTP ``file`` field.
SHIM_X64 = "debian-installer/amd64/bootnetx64.efi"
SHIM_ARM64 = "debian-installer/arm64/bootnetaa64.efi"
UEFI_ARCHES = frozenset({ARCH_EFI_X64, ARCH_EFI_BC, ARCH_EFI_ARM64, ARCH_EFI_X64_HTTP,
                         ARCH_EFI_ARM64_HTTP})
ARM64_ARCHES = frozenset({ARCH_EFI_ARM64, ARCH_EFI_ARM64_HTTP})

BIOS_BINARIES = ("undionly.kpxe",)
X64_BINARIES = ("snponly.efi", "ipxe.efi")
ARM64_BINARIES = ("snponly-arm64.efi", "ipxe-arm64.efi")
CATALOGUED = X64_BINARIES + ARM64_BINARIES

IPXE_USER_CLASSES = frozenset({b"iPXE", b"skinny"})
_VENDOR_ARCH = re.compile(rb"^PXEClient:Arch:(\d{5})")

StoreRequest = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class BootChoice:
    """What to put in next-server/option 66, option 67 and the ``file`` field."""

    filename: str  # a TFTP path relative to the tftp folder, or a URL
    stage: str  # "firmware" (TFTP binary), "http-boot" (URL to a binary), "ipxe" (script URL)
    vendor_class: bytes | None = None  # echoed in option 60 (UEFI HTTP boot)

    @property
    def is_url(self) -> bool:
        return self.stage != "firmware"


@dataclass
class BinaryCatalogue:
    """Which optional iPXE binaries are in the data folder's tftp/.

    ``present`` maps a file name to True/False once the store has answered;
    a name missing from it is unknown (store not asked yet, or unreachable).
    """

    present: dict[str, bool] = field(default_factory=dict)

    def pick(self, candidates: tuple[str, ...], required: bool) -> str | None:
        """The first candidate known to be present.

        Otherwise the first one not known to be absent; otherwise, for a
        required chain, the first candidate (the operator sees the TFTP
        error); for an optional one, None.
        """
        for name in candidates:
            if self.present.get(name):
                return name
        for name in candidates:
            if name not in self.present:
                return name
        return candidates[0] if required else None

    async def refresh(self, request: StoreRequest) -> None:
        """Ask the store about each catalogued binary; errors leave it unknown."""
        for name in CATALOGUED:
            path = f"{TFTP_FOLDER}/{name}"
            reply = await request(ContentStat(path=path))
            if isinstance(reply, ContentStatReply):
                found = not reply.entry.is_dir
            elif isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND.value:
                found = False
            else:
                log.warning("cannot tell whether %s exists: %s", path, reply)
                continue
            if self.present.get(name) != found:
                log.info("%s %s", path, "found" if found else "not found")
            self.present[name] = found


def client_arch(msg: ClientMessage) -> int | None:
    """Option 93, else the architecture in a "PXEClient:Arch:xxxxx" vendor class."""
    if msg.arch is not None:
        return msg.arch
    m = _VENDOR_ARCH.match(msg.vendor_class)
    return int(m.group(1)) if m else None


def is_ipxe(msg: ClientMessage) -> bool:
    return msg.ipxe_options or any(c in IPXE_USER_CLASSES for c in msg.user_classes)


def is_boot_client(msg: ClientMessage) -> bool:
    """Firmware or iPXE, as opposed to an OS's own DHCP client."""
    return (is_ipxe(msg) or msg.arch is not None or msg.vendor_class.startswith(VENDOR_PXE)
            or msg.vendor_class.startswith(VENDOR_HTTP))


def needs_machine(msg: ClientMessage) -> bool:
    """Whether the boot file depends on the machine (its loader or its OS), so
    it can only be chosen once the store has answered."""
    if is_ipxe(msg) or msg.vendor_class.startswith(VENDOR_HTTP):
        return True
    return client_arch(msg) in UEFI_ARCHES


class BootChain:
    def __init__(self, public_url: str, catalogue: BinaryCatalogue, *,
                 loader: str = "ipxe", arm64_loader: str = "auto",
                 class_loaders: Mapping[str, str] | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self.catalogue = catalogue
        self.loader = loader
        self.arm64_loader = arm64_loader
        self.class_loaders = dict(class_loaders or {})

    def loader_for(self, arch: int | None, machine: Assignment | None) -> str:
        """``ipxe`` or ``shim``: the machine's own choice, else its class's
        (``[uefi.class]``), else the default for its arch."""
        if machine is not None and machine.loader:
            return machine.loader
        if machine is not None and machine.machine_class in self.class_loaders:
            return self.class_loaders[machine.machine_class]
        if arch not in ARM64_ARCHES:
            return self.loader
        if self.arm64_loader == "auto":  # iPXE if the data folder has one for ARM64
            return "ipxe" if any(self.catalogue.present.get(n) for n in ARM64_BINARIES) else "shim"
        return self.arm64_loader

    def script_url(self, mac: str, machine: Assignment | None) -> str:
        if machine is None or not machine.os:
            return self.public_url + MENU_PATH
        return self.public_url + BOOT_PATH.format(os=machine.os, mac=mac)

    def binary_for(self, arch: int | None) -> str | None:
        if arch == ARCH_BIOS:
            return BIOS_BINARIES[0]
        if arch in (ARCH_EFI_X64, ARCH_EFI_BC, ARCH_EFI_X64_HTTP):
            return self.catalogue.pick(X64_BINARIES, required=True)
        if arch in (ARCH_EFI_ARM64, ARCH_EFI_ARM64_HTTP):
            return self.catalogue.pick(ARM64_BINARIES, required=False)
        return None

    def choose(self, msg: ClientMessage, machine: Assignment | None) -> BootChoice | None:
        """The boot file for ``msg``'s client, or None if it is not booting."""
        if is_ipxe(msg):
            return BootChoice(self.script_url(msg.mac, machine), "ipxe")
        arch = client_arch(msg)
        if msg.vendor_class.startswith(VENDOR_HTTP):
            if self.loader_for(arch, machine) == "shim":
                return None  # GRUB cannot go on over HTTP: let the firmware try PXE
            name = self.binary_for(arch if arch is not None else ARCH_EFI_X64_HTTP)
            if name is None:
                return None
            return BootChoice(self.public_url + HTTP_BINARY_PREFIX + name, "http-boot",
                              VENDOR_HTTP)
        if arch is None and not msg.vendor_class.startswith(VENDOR_PXE):
            return None
        if arch in UEFI_ARCHES and self.loader_for(arch, machine) == "shim":
            return BootChoice(SHIM_ARM64 if arch in ARM64_ARCHES else SHIM_X64, "firmware")
        name = self.binary_for(arch if arch is not None else ARCH_BIOS)
        return BootChoice(name, "firmware") if name is not None else None
