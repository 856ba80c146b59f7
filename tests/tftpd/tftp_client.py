"""A scriptable TFTP client for tests: crafted packets and firmware sequences.

Real clients (tftp-hpa, atftp, curl) cover ordinary transfers; this one
does what they cannot: a UEFI tsize probe, a packet from a stranger's port
in the middle of a transfer, raw bytes. It runs in-process, or as a script
inside a client network namespace, printing one JSON object:

    python tftp_client.py SERVER[:PORT] uefi NAME [--same-port]
    python tftp_client.py SERVER[:PORT] stranger NAME
    python tftp_client.py SERVER[:PORT] raw HEX [--wait SECONDS]
    python tftp_client.py SERVER[:PORT] get NAME [OPTION=VALUE ...] [--mode netascii]
    python tftp_client.py SERVER[:PORT] many NAME [OPTION=VALUE ...] --count N [--mode netascii]

``many`` runs N downloads at once from N ports of one process (one thread,
a selector), hashing as the blocks come, so hundreds of clients cost the
test machine little.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any

from astralboot.services.tftpd.packets import (Ack, Data, Error, Mode, OptionAck, Packet,
                                               ReadRequest, TftpProtocolError, decode, encode)

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

    def request(self, name: bytes | str, options: dict[str, str] | None = None,
                mode: Mode = Mode.OCTET) -> None:
        filename = name.encode() if isinstance(name, str) else name
        self.send(ReadRequest(filename=filename, mode=mode,
                              options=tuple((options or {}).items())))
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


class Download:
    """One of many concurrent downloads: a non-blocking RFC 7440 receiver."""

    RRQ_RETRY = 2.0  # seconds without an answer before the RRQ goes again
    RRQ_TRIES = 10

    def __init__(self, server: Address, name: str, options: dict[str, str], mode: Mode) -> None:
        self.server = server
        self.rrq = encode(ReadRequest(filename=name.encode(), mode=mode,
                                      options=tuple(options.items())))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.tid: Address | None = None
        self.blksize, self.windowsize = 512, 1
        self.tsize: int | None = None
        self.expected, self.in_window, self.size = 1, 0, 0
        self.hash = hashlib.sha256()
        self.requests = 0
        self.sent_at = 0.0
        self.done = False
        self.error: str | None = None

    def start(self, now: float) -> None:
        self.sock.sendto(self.rrq, self.server)
        self.requests += 1
        self.sent_at = now

    def tick(self, now: float) -> None:
        """Ask again if the server has said nothing yet (it may have been busy)."""
        if self.tid is None and not self.done and now - self.sent_at > self.RRQ_RETRY:
            if self.requests >= self.RRQ_TRIES:
                self.finish(f"no answer to {self.requests} requests")
            else:
                self.start(now)

    def finish(self, error: str | None = None) -> None:
        self.done, self.error = True, error
        self.sock.close()

    def readable(self) -> None:
        while not self.done:
            try:
                data, addr = self.sock.recvfrom(70000)
            except (BlockingIOError, InterruptedError):
                return
            if self.tid is None:
                self.tid = addr
            elif addr != self.tid:
                continue
            try:
                self.take(decode(data))
            except TftpProtocolError as exc:
                self.finish(f"bad packet: {exc}")

    def take(self, packet: Packet) -> None:
        assert self.tid is not None
        if isinstance(packet, OptionAck):
            opts = {n.lower(): v for n, v in packet.options}
            self.blksize = int(opts.get("blksize", self.blksize))
            self.windowsize = int(opts.get("windowsize", self.windowsize))
            self.tsize = int(opts["tsize"]) if "tsize" in opts else None
            self.sock.sendto(encode(Ack(block=0)), self.tid)
            return
        if isinstance(packet, Error):
            self.finish(f"ERROR {packet.code}: {packet.message}")
            return
        if not isinstance(packet, Data):
            self.finish(f"unexpected {type(packet).__name__}")
            return
        last = False
        if packet.block == self.expected & 0xFFFF:
            self.hash.update(packet.payload)
            self.size += len(packet.payload)
            self.expected += 1
            self.in_window += 1
            last = len(packet.payload) < self.blksize
            ack_now = last or self.in_window == self.windowsize
        else:
            ack_now = True  # out of order: ACK the last block in order
        if ack_now:
            self.in_window = 0
            self.sock.sendto(encode(Ack(block=(self.expected - 1) & 0xFFFF)), self.tid)
        if last:
            self.finish()


def many(server: Address, name: str, options: dict[str, str], mode: Mode, count: int,
         deadline: float = 300.0) -> dict[str, Any]:
    downloads = [Download(server, name, options, mode) for _ in range(count)]
    selector = selectors.DefaultSelector()
    now = time.monotonic()
    for d in downloads:  # every request first, so they reach the server at once
        d.start(now)
        selector.register(d.sock, selectors.EVENT_READ, d)
    end = now + deadline
    waiting = set(downloads)
    while waiting and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.2):
            d = key.data
            d.readable()
            if d.done:
                selector.unregister(key.fileobj)
                waiting.discard(d)
        now = time.monotonic()
        for d in list(waiting):
            d.tick(now)
            if d.done:
                selector.unregister(d.sock)
                waiting.discard(d)
    for d in waiting:
        d.finish("not finished before the deadline")
    finished = [d for d in downloads if d.error is None]
    return {
        "count": count,
        "finished": len(finished),
        "sha256": dict(Counter(d.hash.hexdigest() for d in finished)),
        "sizes": sorted({d.size for d in finished}),
        "tsizes": sorted({d.tsize for d in finished if d.tsize is not None}),
        "requests": sum(d.requests for d in downloads),
        "errors": sorted({d.error for d in downloads if d.error is not None}),
    }


def get(server: Address, name: str, options: dict[str, str],
        mode: Mode = Mode.OCTET) -> dict[str, Any]:
    with RawClient(server) as client:
        client.request(name, options, mode)
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
    p.add_argument("scenario", choices=["uefi", "stranger", "raw", "get", "many"])
    p.add_argument("arg")
    p.add_argument("options", nargs="*")
    p.add_argument("--same-port", action="store_true")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect raw answers")
    p.add_argument("--mode", default="octet", choices=["octet", "netascii"])
    p.add_argument("--count", type=int, default=1, help="downloads at once (many)")
    args = p.parse_args(argv)
    host, _, port = args.server.partition(":")
    server = (host, int(port or 69))
    if args.scenario == "uefi":
        out = uefi(server, args.arg, args.same_port)
    elif args.scenario == "stranger":
        out = stranger(server, args.arg)
    elif args.scenario == "raw":
        out = raw(server, args.arg, args.wait)
    elif args.scenario == "many":
        out = many(server, args.arg, dict(o.split("=", 1) for o in args.options),
                   Mode(args.mode), args.count)
    else:
        out = get(server, args.arg, dict(o.split("=", 1) for o in args.options),
                  Mode(args.mode))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
