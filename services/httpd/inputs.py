"""Checking what a client puts in a URL or query: MACs, OS, class and template names, paths.

Each check returns the accepted value or raises :class:`~.errors.BadInput`
(HTTP 400), so nothing a client sent reaches a store request, a content
path or a template unchecked.
"""

from __future__ import annotations

import re

from astralboot.common.config import normalise_mac
from astralboot.services.httpd.errors import BadInput

OS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def check_mac(text: str) -> str:
    if _CANONICAL_MAC.fullmatch(text):  # what iPXE sends: the common case, made cheap
        return text
    try:
        return normalise_mac(text)
    except ValueError:
        raise BadInput(f"{text[:40]!r} is not a MAC address like 52:54:00:12:34:56") from None


def check_os(text: str) -> str:
    if not OS_NAME.fullmatch(text):
        raise BadInput(f"{text[:40]!r} is not an OS folder name")
    return text


def check_class(text: str) -> str:
    if not CLASS_NAME.fullmatch(text):
        raise BadInput(f"{text[:40]!r} is not a class name")
    return text


def check_template(text: str) -> str:
    if not TEMPLATE_NAME.fullmatch(text) or ".." in text:
        raise BadInput(f"{text[:40]!r} is not a template name")
    return text


def check_subpath(text: str) -> str:
    """A relative path below a content folder: no empty, ``.`` or ``..`` segments."""
    parts = text.split("/")
    if (not text or len(text) > 1024 or any(p in ("", ".", "..") for p in parts)
            or any(c in text for c in "\\\x00") or any(ord(c) < 32 for c in text)):
        raise BadInput(f"{text[:60]!r} is not a file path")
    return text
