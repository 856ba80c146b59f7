"""What a client's file name names: a stored file, a machine's GRUB config, or a GRUB page.

Each row is a name as a client sends it and where its bytes come from; the
refusals say which names reach nothing at all (the OS templates hold
secrets, so nothing but ``images/`` of an OS folder may be reachable).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astralboot.services.tftpd.packets import Error, TftpCode
from astralboot.services.tftpd.paths import (MAX_NAME, GrubPage, MachineGrubConfig, StoreFile,
                                             route)

MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize("name,where", [
    # plain files: today's behaviour
    (b"ipxe.efi", StoreFile("tftp/ipxe.efi")),
    (b"/debian-installer/amd64/bootnetx64.efi",
     StoreFile("tftp/debian-installer/amd64/bootnetx64.efi")),
    (b"debian-installer/amd64/grub/x86_64-efi/command.lst",
     StoreFile("tftp/debian-installer/amd64/grub/x86_64-efi/command.lst")),
    (b"grub/x86_64-efi/normal.mod", StoreFile("tftp/grub/x86_64-efi/normal.mod")),
    (b"image", StoreFile("tftp/image")),  # a file called "image" in the root
    (b"pxelinux.cfg/01-52-54-00-12-34-56", StoreFile("tftp/pxelinux.cfg/01-52-54-00-12-34-56")),
    (b"grub.cfg.bak", StoreFile("tftp/grub.cfg.bak")),
    (b"grub.cfg-01-52-54-00-12-34", StoreFile("tftp/grub.cfg-01-52-54-00-12-34")),  # short
    (b"grub.cfg-C000028C0", StoreFile("tftp/grub.cfg-C000028C0")),  # 9 hex digits
    # the machine's GRUB config, wherever GRUB looks for it
    (b"debian-installer/amd64/grub/grub.cfg", MachineGrubConfig(None)),  # what shim+GRUB ask
    (b"/debian-installer/amd64/grub/grub.cfg", MachineGrubConfig(None)),
    (b"grub.cfg", MachineGrubConfig(None)),
    (b"grub/grub.cfg", MachineGrubConfig(None)),
    (b"boot\\grub\\grub.cfg", MachineGrubConfig(None)),
    (b"grub/grub.cfg-01-52-54-00-12-34-56", MachineGrubConfig(MAC)),
    (b"grub.cfg-01-52-54-00-12-34-56", MachineGrubConfig(MAC)),
    (b"grub.cfg-01-52-54-00-AB-cd-EF", MachineGrubConfig("52:54:00:ab:cd:ef")),
    (b"grub/grub.cfg-C000028C", MachineGrubConfig(None)),  # hex IP: by the client's lease
    (b"grub/grub.cfg-C00002", MachineGrubConfig(None)),
    (b"grub/grub.cfg-c", MachineGrubConfig(None)),
    (b"image/debian/grub/grub.cfg", MachineGrubConfig(None)),  # any folder
    # choices from GRUB's menu, passed on to httpd
    (b"grub/choose/debian/52:54:00:12:34:56", GrubPage(f"/grub/choose/debian/{MAC}")),
    (b"/grub/choose/debian/52-54-00-12-34-56", GrubPage(f"/grub/choose/debian/{MAC}")),
    (b"grub/class/ubuntu-22.04/52:54:00:12:34:56", GrubPage(f"/grub/class/ubuntu-22.04/{MAC}")),
    (b"grub/setclass/debian/web_1/52:54:00:12:34:56",
     GrubPage(f"/grub/setclass/debian/web_1/{MAC}")),
    (b"grub/choose/debian/52:54:00:AB:CD:EF", GrubPage("/grub/choose/debian/52:54:00:ab:cd:ef")),
    # kernels and initrds of an OS folder
    (b"image/debian/linux", StoreFile("boot/debian/images/linux")),
    (b"/image/debian/initrd.gz", StoreFile("boot/debian/images/initrd.gz")),
    (b"image/debian/amd64/linux", StoreFile("boot/debian/images/amd64/linux")),
    (b"image\\debian\\linux", StoreFile("boot/debian/images/linux")),
    (b"image/debian/./linux", StoreFile("boot/debian/images/linux")),
    # a name that looks like the store's own layout stays below tftp/
    (b"boot/debian/template/preseed.cfg", StoreFile("tftp/boot/debian/template/preseed.cfg")),
    (b"boot/debian/images/linux", StoreFile("tftp/boot/debian/images/linux")),
])
def test_where_a_name_leads(name: bytes, where: object) -> None:
    assert route(name) == where


@pytest.mark.parametrize("name,code", [
    # the OS folder's templates are never reachable
    (b"image/debian/../template/preseed.cfg", TftpCode.ACCESS_VIOLATION),
    (b"image/debian/../../boot/debian/template/preseed.cfg", TftpCode.ACCESS_VIOLATION),
    (b"image/../boot/debian/template/preseed.cfg", TftpCode.ACCESS_VIOLATION),
    (b"../boot/debian/template/preseed.cfg", TftpCode.ACCESS_VIOLATION),
    (b"image\\debian\\..\\template\\preseed.cfg", TftpCode.ACCESS_VIOLATION),
    (b"image/.debian/linux", TftpCode.ACCESS_VIOLATION),  # not an OS folder name
    (b"image/deb ian/linux", TftpCode.ACCESS_VIOLATION),
    (b"image/debian", TftpCode.ACCESS_VIOLATION),  # no file
    (b"image/debian/", TftpCode.ACCESS_VIOLATION),
    # GRUB pages: exactly their fields, each valid
    (b"grub/choose", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/debian", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/debian/52:54:00:12:34:56/more", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/debian/52:54:00:12:34", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/debian/525400123456", TftpCode.ACCESS_VIOLATION),  # no separators
    (b"grub/choose/debian/52:54-00:12:34:56", TftpCode.ACCESS_VIOLATION),  # mixed
    (b"grub/choose/debian/zz:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/-debian/52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/deb%2fian/52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/../52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    (b"grub/choose/debian/grub.cfg", TftpCode.ACCESS_VIOLATION),
    (b"grub/class/debian", TftpCode.ACCESS_VIOLATION),
    (b"grub/setclass/debian/52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),  # no class
    (b"grub/setclass/debian/web?x=1/52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    (b"grub/setclass/debian/" + b"c" * 65 + b"/52:54:00:12:34:56", TftpCode.ACCESS_VIOLATION),
    # what every name is checked for first
    (b"../etc/passwd", TftpCode.ACCESS_VIOLATION),
    (b"grub/../../grub.cfg", TftpCode.ACCESS_VIOLATION),
    (b"C:\\grub\\grub.cfg", TftpCode.ACCESS_VIOLATION),
    (b"grub.cfg\nx", TftpCode.ACCESS_VIOLATION),
    (b"\xff/grub.cfg", TftpCode.ACCESS_VIOLATION),
    (b"a/" * 127 + b"grub.cfg", TftpCode.ACCESS_VIOLATION),  # longer than MAX_NAME
    (b"", TftpCode.FILE_NOT_FOUND),
    (b"/", TftpCode.FILE_NOT_FOUND),
])
def test_names_refused(name: bytes, code: TftpCode) -> None:
    result = route(name)
    assert isinstance(result, Error), result
    assert result.code == code
    assert result.message


def test_a_refusal_says_what_the_name_should_be() -> None:
    result = route(b"grub/setclass/debian/52:54:00:12:34:56")
    assert isinstance(result, Error)
    assert result.message == "grub/setclass/ takes <os>/<class>/<mac>"
    result = route(b"grub/choose/debian/nope")
    assert isinstance(result, Error)
    assert result.message == "grub/choose/: 'nope' is not a valid mac"


@given(st.binary(max_size=MAX_NAME + 10))
def test_any_name_is_a_route_or_a_refusal_and_never_leaves_its_folder(name: bytes) -> None:
    result = route(name)
    assert isinstance(result, (Error, StoreFile, MachineGrubConfig, GrubPage))
    if isinstance(result, StoreFile):
        parts = result.path.split("/")
        assert ".." not in parts and "" not in parts
        assert parts[0] == "tftp" or (parts[0] == "boot" and parts[2] == "images")
    if isinstance(result, GrubPage):
        assert result.path.startswith(("/grub/choose/", "/grub/class/", "/grub/setclass/"))
        assert ".." not in result.path.split("/")
