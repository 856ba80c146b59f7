"""A free TCP port for a server a test starts.

Not from the kernel's ephemeral range: a port the kernel hands out for
``bind(0)`` may be handed out again, a moment later, as the local port of
some outgoing connection, and the server's own bind then fails with "address
already in use". Ports below that range are only ever taken on purpose.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on or is bound to right now, below the ephemeral range."""
    high = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(20000, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 20000 and {high}")
