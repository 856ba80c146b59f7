"""A scriptable TFTP client for tests: crafted packets and firmware sequences.

Real clients (tftp-hpa, atftp, curl) cover ordinary transfers; this one
does what they cannot: a UEFI tsize probe, a packet from a stranger's port
in the middle of a transfer, raw bytes. It runs in-process, or as a script
inside a client network namespace, printing one JSON object:

    python tftp_client.py SERVER[:PORT] uefi NAME [--same-port]
    python tftp_client.py SERVER[:PORT] stranger NAME
    python tftp_client.py SERVER[:PORT] raw HEX [--wait SECONDS]
    python tftp_client.py SERVER[:PORT] get NAME [OPTION=VALUE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import time
from typing import Any

from astralboot.services.tftpd.packets import (Ack, Data, Error, OptionAck, Packet, ReadRequest,
                                               TftpProtocolError, decode, encode)

Address = tuple[str, int]


class RawClient:
    def __init__(self, server: Address, *, timeout: float = 5.0, source: str = "0.0.0.0") -> None:
        self.server = server
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.requests_sent = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, packet: Packet | bytes, to: Address | None = None) -> None:
        data = packet if isinstance(packet, bytes) else encode(packet)
        self.sock.sendto(data, to or self.server)

    def request(self, name: bytes | str, options: dict[str, str] | None = None) -> None:
        filename = name.encode() if isinstance(name, str) else name
        self.send(ReadRequest(filename=filename, options=tuple((options or {}).items())))
        self.requests_sent += 1

    def recv(self, timeout: float | None = None) -> tuple[Packet, Address]:
        """The next packet; TimeoutError if none comes in ``timeout`` seconds."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data, addr = self.sock.recvfrom(70000)
        except socket.timeout:
            raise TimeoutError("no answer") from None
        return decode(data), addr

    def recv_all(self, timeout: float) -> list[tuple[Packet, Address]]:
        out = []
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def receive_file(self, first: tuple[Packet, Address], blksize: int = 512,
                     windowsize: int = 1, stranger: "RawClient | None" = None) -> bytes:
        """Finish a transfer whose first answer is ``first`` (OACK or DATA 1).

        With ``stranger``, that other socket sends an ACK to the transfer's
        port after the first block, which must get ERROR 5 and change nothing.
        """
        packet, tid = first
        if isinstance(packet, OptionAck):
            opts = {n.lower(): v for n, v in packet.options}
            blksize = int(opts.get("blksize", blksize))
            windowsize = int(opts.get("windowsize", windowsize))
            self.send(Ack(block=0), tid)
            packet, addr = self.recv()
        received = bytearray()
        expected, in_window = 1, 0
        while True:
            if isinstance(packet, Error):
                raise RuntimeError(f"ERROR {packet.code}: {packet.message}")
            if not isinstance(packet, Data):
                raise RuntimeError(f"unexpected {packet!r}")
            ack_now = False
            if packet.block == expected & 0xFFFF:
                received += packet.payload
                expected += 1
                in_window += 1
                last = len(packet.payload) < blksize
                ack_now = last or in_window == windowsize
            else:
                last = False
                ack_now = True  # out of order: ACK the last block in order
            if stranger is not None and expected == 2:
                stranger.send(Ack(block=1), tid)
                answer, _ = stranger.recv()
                if answer != Error(code=5, message="unknown transfer ID"):
                    raise RuntimeError(f"stranger got {answer!r}")
                stranger = None
            if ack_now:
                in_window = 0
                self.send(Ack(block=(expected - 1) & 0xFFFF), tid)
            if last:
                return bytes(received)
            while True:
                packet, addr = self.recv()
                if addr == tid:
                    break


def _result(data: bytes | None = None, **kw: Any) -> dict[str, Any]:
    if data is not None:
        kw.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return kw


def describe(packet: Packet) -> dict[str, Any]:
    if isinstance(packet, Error):
        return {"op": "ERROR", "code": packet.code, "message": packet.message}
    if isinstance(packet, Data):
        return {"op": "DATA", "block": packet.block, "size": len(packet.payload)}
    if isinstance(packet, OptionAck):
        return {"op": "OACK", "options": dict(packet.options)}
    return {"op": type(packet).__name__}


def uefi(server: Address, name: str, same_port: bool) -> dict[str, Any]:
    """EDK2's sequence: RRQ with tsize, take the OACK, ERROR 8, then the real RRQ."""
    with RawClient(server) as probe:
        probe.request(name, {"tsize": "0", "blksize": "1468"})
        oack, tid = probe.recv()
        if not isinstance(oack, OptionAck):
            return _result(error=describe(oack))
        size = int(dict(oack.options)["tsize"])
        probe.send(Error(code=8, message="tsize probe"), tid)
        client = probe if same_port else RawClient(server)
        try:
            before = client.requests_sent
            client.request(name, {"blksize": "1468"})
            data = client.receive_file(client.recv(), blksize=512)
            # Nothing more may come from the probe's session once it ended,
            # not even an OACK resent by its timer (1 s by default).
            late = [describe(p) for p, a in probe.recv_all(1.5) if a == tid]
            return _result(data, tsize=size, requests=client.requests_sent - before, late=late)
        finally:
            if client is not probe:
                client.close()


def stranger(server: Address, name: str) -> dict[str, Any]:
    with RawClient(server) as client, RawClient(server) as other:
        client.request(name)
        data = client.receive_file(client.recv(), stranger=other)
        return _result(data)


def raw(server: Address, hexdata: str, wait: float) -> dict[str, Any]:
    with RawClient(server) as client:
        client.send(bytes.fromhex(hexdata))
        answers = []
        for packet, _ in client.recv_all(wait):
            answers.append(describe(packet))
        return {"answers": answers}


def get(server: Address, name: str, options: dict[str, str]) -> dict[str, Any]:
    with RawClient(server) as client:
        client.request(name, options)
        try:
            first = client.recv()
            oack = dict(first[0].options) if isinstance(first[0], OptionAck) else None
            data = client.receive_file(first)
        except (RuntimeError, TftpProtocolError, TimeoutError) as exc:
            return {"error": str(exc)}
        return _result(data, oack=oack)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("scenario", choices=["uefi", "stranger", "raw", "get"])
    p.add_argument("arg")
    p.add_argument("options", nargs="*")
    p.add_argument("--same-port", action="store_true")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect raw answers")
    args = p.parse_args(argv)
    host, _, port = args.server.partition(":")
    server = (host, int(port or 69))
    if args.scenario == "uefi":
        out = uefi(server, args.arg, args.same_port)
    elif args.scenario == "stranger":
        out = stranger(server, args.arg)
    elif args.scenario == "raw":
        out = raw(server, args.arg, args.wait)
    else:
        out = get(server, args.arg, dict(o.split("=", 1) for o in args.options))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
