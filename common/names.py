"""Text that arrives from the network, made safe to keep and to show.

A DHCP client picks its own host name (option 12, any bytes, any length once
split options are joined), a front end reports the address a request came
from (``::ffff:192.0.2.7`` on a dual-stack socket), an event carries free
text. Everything that ends up in the lease database, a log line or a boot
template goes through here first, in dhcpd and again at the store's edge,
so that no client can make a row too long for its column or put a line
break into a script.
"""

from __future__ import annotations

import re

HOSTNAME_MAX = 253  # RFC 1035: the longest name; the lease column holds 255
MACHINE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # one DNS label
# The names the store makes up for a machine (nodeN, nodeN-M); any other was chosen.
DEFAULT_MACHINE_NAME = re.compile(r"node(\d+)(?:-\d+)?")
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # an OS or class folder name
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
LABELS_MAX = 32
LABEL_VALUE_MAX = 255
DETAIL_MAX = 1024
CLIENT_ID_MAX = 255

_NOT_HOST = re.compile(r"[^A-Za-z0-9.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IPV4 = re.compile(r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")


def clean_hostname(text: str | None) -> str | None:
    """A client's host name as letters, digits, dots and hyphens, at most 253.

    Anything else becomes a hyphen (``my host\\n`` → ``my-host``), so what a
    client asked for stays recognisable; nothing usable left gives None.
    """
    if text is None:
        return None
    cleaned = _NOT_HOST.sub("-", text[:HOSTNAME_MAX * 4]).strip(".-")
    cleaned = cleaned[:HOSTNAME_MAX].rstrip(".-")
    return cleaned or None


def clean_text(text: str, limit: int = DETAIL_MAX) -> str:
    """Free text (an event's detail) on one line, at most ``limit`` characters."""
    return _CONTROL.sub(" ", text[:limit])


def ipv4_text(text: str | None) -> str | None:
    """A dotted IPv4 address, with ``::ffff:`` (a dual-stack socket's form) removed;
    None for anything that is not one."""
    if text is None:
        return None
    if text[:7].lower() == "::ffff:":
        text = text[7:]
    return text if _IPV4.fullmatch(text) else None


def label_problem(labels: dict[str, str]) -> str | None:
    """What is wrong with a machine's labels, or None."""
    if len(labels) > LABELS_MAX:
        return f"{len(labels)} labels; at most {LABELS_MAX}"
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            return f"label {key[:40]!r}: not a valid label name"
        if len(value) > LABEL_VALUE_MAX or _CONTROL.search(value):
            return f"label {key}: value too long or with control characters"
    return None


def printable(text: str | None) -> str:
    """``text`` for a terminal: control characters shown escaped (``\\x1b``), never run.

    What a client chose (a host name, an event's detail) may hold escape
    sequences that would repaint an operator's terminal.
    """
    if text is None:
        return "-"
    return _CONTROL_ANY.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_CONTROL_ANY = re.compile(r"[\x00-\x1f\x7f-\x9f]")
