"""Turning a client's file name into a path under the served root.

Firmware writes names every which way (``\\boot\\ipxe.efi``, ``/ipxe.efi``);
the answer is always a clean relative path below ``tftp/`` in the content
store, or a refusal before the store is asked anything. Symlinks are not
visible here: the store refuses any that leave its root.
"""

from __future__ import annotations

import re

from astralboot.services.tftpd.packets import Error, TftpCode

ROOT = "tftp"
MAX_NAME = 255  # bytes, as sent
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def store_path(name: bytes) -> str | Error:
    """``tftp/<clean relative path>``, or the ERROR that refuses the name."""
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
    return "/".join((ROOT, *parts))
