"""A client's file name becomes a clean path under tftp/, or a refusal."""

from __future__ import annotations

import pytest

from astralboot.services.tftpd.packets import Error, TftpCode
from astralboot.services.tftpd.paths import MAX_NAME, store_path


@pytest.mark.parametrize("name,path", [
    (b"ipxe.efi", "tftp/ipxe.efi"),
    (b"/ipxe.efi", "tftp/ipxe.efi"),  # a leading slash is ignored
    (b"//ipxe.efi", "tftp/ipxe.efi"),
    (b"\\ipxe.efi", "tftp/ipxe.efi"),  # backslashes are slashes
    (b"boot\\x86\\undionly.kpxe", "tftp/boot/x86/undionly.kpxe"),
    (b"./a//b/./c", "tftp/a/b/c"),
    (b"pxelinux.cfg/01-52-54-00-12-34-56", "tftp/pxelinux.cfg/01-52-54-00-12-34-56"),
    ("caf\u00e9.txt".encode(), "tftp/caf\u00e9.txt"),
    (b"a" * MAX_NAME, "tftp/" + "a" * MAX_NAME),
    (b"/etc/passwd", "tftp/etc/passwd"),  # stays inside the root: the store says not found
])
def test_names_inside_the_root(name: bytes, path: str) -> None:
    assert store_path(name) == path


@pytest.mark.parametrize("name,code", [
    (b"..", TftpCode.ACCESS_VIOLATION),
    (b"../etc/passwd", TftpCode.ACCESS_VIOLATION),
    (b"/../../etc/passwd", TftpCode.ACCESS_VIOLATION),
    (b"a/../../b", TftpCode.ACCESS_VIOLATION),
    (b"a/..", TftpCode.ACCESS_VIOLATION),
    (b"..\\..\\windows\\win.ini", TftpCode.ACCESS_VIOLATION),
    (b"C:\\boot.ini", TftpCode.ACCESS_VIOLATION),
    (b"c:/x", TftpCode.ACCESS_VIOLATION),
    (b"a\x00b", TftpCode.ACCESS_VIOLATION),
    (b"a\nb", TftpCode.ACCESS_VIOLATION),
    (b"a\x7f", TftpCode.ACCESS_VIOLATION),
    (b"\xff\xfe", TftpCode.ACCESS_VIOLATION),  # not UTF-8
    (b"a" * (MAX_NAME + 1), TftpCode.ACCESS_VIOLATION),
    (b"", TftpCode.FILE_NOT_FOUND),
    (b"/", TftpCode.FILE_NOT_FOUND),
    (b"./", TftpCode.FILE_NOT_FOUND),
])
def test_names_refused(name: bytes, code: TftpCode) -> None:
    result = store_path(name)
    assert isinstance(result, Error)
    assert result.code == code
    assert result.message
