"""Records the DHCP replies arriving on an interface, without taking them from
anyone: run inside a client (or relay) namespace next to the real client.

An AF_PACKET socket gets a copy of every IPv4 frame the interface receives
(outgoing frames are ignored), so the client's own UDP socket still gets
each reply. Every UDP datagram to ``--port`` that the project's codec reads
as a BOOTREPLY is written to ``--out``, one line each::

    <kernel receive time, epoch seconds> <ACK|OFFER|NAK|...> <chaddr> <yiaddr> <xid>

Lines are flushed after every read of what is waiting, so a test can follow
the file while traffic flows. The script prints ``ready`` once it is
listening; on SIGTERM or SIGINT it reads what is still waiting, prints a
JSON summary (frames, replies, undecodable ones, the kernel's count of
frames dropped for want of buffer) and exits.

    python dhcp_sniffer.py --iface eth0 --port 67 --out replies.txt
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
from collections import Counter

from astralboot.services.dhcpd.constants import (BOOTREPLY, MESSAGE_TYPE_NAMES,
                                                 OPT_MESSAGE_TYPE)
from astralboot.services.dhcpd.packet import decode
from astralboot.services.dhcpd.reader import MalformedPacket

ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20; not in the socket module
SO_RCVBUFFORCE = 33  # root may go past net.core.rmem_max; not in the socket module
SO_TIMESTAMPNS = 35  # x86-64 and arm64; not in the socket module
RECEIVE_BUFFER = 64 << 20
TIMESPEC = struct.Struct("@qq")
UDP = struct.Struct("!HHHH")  # source port, destination port, length, checksum
PROTO_UDP = 17
BATCH = 2048  # frames read before the lines are written out


def open_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((iface, ETH_P_IP))
    sock.setblocking(False)
    return sock


def udp_payload(frame: bytes, port: int) -> bytes | None:
    """The payload of an unfragmented IPv4/UDP datagram to ``port``, else None."""
    if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != PROTO_UDP:
        return None
    if int.from_bytes(frame[6:8], "big") & 0x3FFF:  # a fragment
        return None
    ihl = (frame[0] & 0x0F) * 4
    if len(frame) < ihl + UDP.size:
        return None
    _source, dest, length, _checksum = UDP.unpack_from(frame, ihl)
    if dest != port or length < UDP.size:
        return None
    return frame[ihl + UDP.size:ihl + length]


def receive_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanos = TIMESPEC.unpack_from(data)
            return seconds + nanos / 1e9
    return 0.0


def describe(payload: bytes) -> str | None:
    """``"ACK 02:..:01 198.18.1.7 0a1b2c3d"`` for a DHCP reply; None for anything else."""
    packet = decode(payload)
    if packet.op != BOOTREPLY:
        return None
    kind = packet.options.get(OPT_MESSAGE_TYPE, b"")
    name = MESSAGE_TYPE_NAMES.get(kind[0], str(kind[0])) if len(kind) == 1 else "BOOTP"
    mac = ":".join(f"{b:02x}" for b in packet.chaddr)
    return f"{name} {mac} {packet.yiaddr} {packet.xid:08x}"


def read_waiting(sock: socket.socket, port: int, counts: Counter[str]) -> list[str]:
    """A line for each reply among the frames waiting on ``sock`` (up to BATCH)."""
    ancillary_size = socket.CMSG_SPACE(TIMESPEC.size)
    lines = []
    for _ in range(BATCH):
        try:
            frame, ancillary, _flags, _address = sock.recvmsg(65535, ancillary_size)
        except BlockingIOError:
            break
        counts["frames"] += 1
        payload = udp_payload(frame, port)
        if payload is None:
            continue
        try:
            line = describe(payload)
        except MalformedPacket:
            counts["undecodable"] += 1
            continue
        if line is not None:
            counts["replies"] += 1
            lines.append(f"{receive_time(ancillary):.6f} {line}\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--port", type=int, default=67, help="UDP port the replies go to")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    counts: Counter[str] = Counter()
    sock = open_socket(args.iface)
    with open(args.out, "w") as out:
        print("ready", flush=True)
        while True:
            finishing = stopping  # after a stop, one last read of what is waiting
            select.select([sock], [], [], 0 if finishing else 0.1)
            lines = read_waiting(sock, args.port, counts)
            if lines:
                out.writelines(lines)
                out.flush()
            if finishing and len(lines) < BATCH:
                break
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    sock.close()
    print(json.dumps({**counts, "kernel_packets": packets, "kernel_drops": drops}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
