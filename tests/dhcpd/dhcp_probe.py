"""A tiny DHCP client for tests, run inside a client namespace.

Sends the given packets (hex) from a UDP port bound to an interface and
prints every DHCP packet it then receives, one JSON object per line, until
it has ``--count`` of them or ``--wait`` seconds pass. It crafts what real
clients cannot be made to send: PXE and relay traffic, garbage.

    python dhcp_probe.py --iface eth0 --port 68 --to 255.255.255.255:67 \\
        --send HEX [--send HEX ...] --count 1 --wait 10
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--port", type=int, default=68)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--to", default="255.255.255.255:67")
    p.add_argument("--send", action="append", default=[])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--wait", type=float, default=10.0)
    args = p.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.bind((args.bind, args.port))
    host, port = args.to.rsplit(":", 1)
    for hexdata in args.send:
        sock.sendto(bytes.fromhex(hexdata), (host, int(port)))
    received = 0
    end = time.monotonic() + args.wait
    while received < args.count:
        left = end - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, source = sock.recvfrom(4096)
        print(json.dumps({"source": f"{source[0]}:{source[1]}", "data": data.hex()}), flush=True)
        received += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
