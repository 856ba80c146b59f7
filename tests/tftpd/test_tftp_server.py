"""The server layer on loopback: real sockets, real clients, fake content.

Everything a client can see of the server without the store: transfers
with tftp-hpa, curl and atftp, both port modes, refusals, strangers, the
UEFI probe, caps, timeouts and start-up errors.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from tftp_client import RawClient, stranger, uefi

from astralboot.common.config.model import TftpConfig
from astralboot.common.errors import ErrorCode, StartupError
from astralboot.services.tftpd.files import FileError
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache
from astralboot.services.tftpd.options import Limits
from astralboot.services.tftpd.policy import ReadService
from astralboot.services.tftpd.server import Session, TftpServer, bind_error
from astralboot.services.tftpd.packets import (Ack, Data, Error, Mode, OptionAck, ReadRequest,
                                               to_netascii)

IPXE = Path("/usr/lib/ipxe/ipxe.efi").read_bytes()
TEXT = b"#!ipxe\nchain http://192.0.2.1/boot.ipxe\r\nmixed\rline\n"


@pytest.fixture(autouse=True)
def files(fake_content: Any) -> None:
    fake_content.files.update({
        "tftp/ipxe.efi": IPXE,
        "tftp/boot/menu.ipxe": TEXT,
        "tftp/empty": b"",
        "tftp/block": b"b" * 512,
    })


def run(cmd: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- real clients ------------------------------------------------------------


@pytest.mark.parametrize("single_port", [False, True])
def test_tftp_hpa_gets_a_file(loopback_server: Callable[..., Any], tmp_path: Path,
                              single_port: bool) -> None:
    with loopback_server(single_port=single_port) as srv:
        host, port = srv.address
        result = run(["tftp", host, str(port), "-m", "binary", "-c", "get", "ipxe.efi", "out"],
                     tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "out").read_bytes() == IPXE
        srv.settle()
        assert srv.stats["transfers"] == 1
        assert srv.events == [("tftp.sent", "127.0.0.1", f"ipxe.efi {len(IPXE)} bytes")]


def test_tftp_hpa_netascii(loopback_server: Callable[..., Any], tmp_path: Path) -> None:
    with loopback_server() as srv:
        host, port = srv.address
        result = run(["tftp", host, str(port), "-m", "ascii", "-c", "get", "boot/menu.ipxe",
                      "menu"], tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "menu").read_bytes() == TEXT  # converted there and back


@pytest.mark.parametrize("name", ["empty", "block"])
def test_tftp_hpa_edge_sizes(loopback_server: Callable[..., Any], tmp_path: Path,
                             name: str, fake_content: Any) -> None:
    with loopback_server() as srv:
        host, port = srv.address
        result = run(["tftp", host, str(port), "-m", "binary", "-c", "get", name, "out"],
                     tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "out").read_bytes() == fake_content.files[f"tftp/{name}"]


@pytest.mark.parametrize("single_port", [False, True])
def test_curl_with_blksize(loopback_server: Callable[..., Any], tmp_path: Path,
                           single_port: bool) -> None:
    with loopback_server(single_port=single_port) as srv:
        host, port = srv.address
        result = run(["curl", "-sS", "--tftp-blksize", "1468", "-o", "out",
                      f"tftp://{host}:{port}/ipxe.efi"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out").read_bytes() == IPXE


@pytest.mark.parametrize("single_port", [False, True])
def test_atftp_with_windowsize(loopback_server: Callable[..., Any], tmp_path: Path,
                               single_port: bool) -> None:
    with loopback_server(single_port=single_port) as srv:
        host, port = srv.address
        result = run(["atftp", "--option", "windowsize 16", "--option", "blksize 1468",
                      "--verbose", "-g", "-r", "ipxe.efi", "-l", "out", host, str(port)],
                     tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "out").read_bytes() == IPXE
        srv.settle()
        assert srv.stats["transfers"] == 1


def test_windowsize_is_acknowledged_and_used(loopback_server: Callable[..., Any]) -> None:
    with loopback_server() as srv, RawClient(srv.address) as client:
        client.request("ipxe.efi", {"windowsize": "16", "blksize": "1468", "tsize": "0"})
        oack, tid = client.recv()
        assert oack == OptionAck(options=(("windowsize", "16"), ("blksize", "1468"),
                                          ("tsize", str(len(IPXE)))))
        client.send(Ack(block=0), tid)
        window = [client.recv()[0] for _ in range(16)]
        assert [p.block for p in window] == list(range(1, 17))  # type: ignore[union-attr]
        assert client.recv_all(0.3) == []  # and no more until ACK 16
        client.send(Ack(block=16), tid)
        window = [client.recv()[0] for _ in range(16)]
        assert [p.block for p in window] == list(range(17, 33))  # type: ignore[union-attr]
        client.send(Error(code=0, message="enough"), tid)


def test_curl_file_not_found(loopback_server: Callable[..., Any], tmp_path: Path) -> None:
    with loopback_server() as srv:
        host, port = srv.address
        result = run(["curl", "-sS", "-o", "out", f"tftp://{host}:{port}/nothere"], tmp_path)
        assert result.returncode == 68  # CURLE_TFTP_NOTFOUND: curl got our ERROR 1
        assert not (tmp_path / "out").exists() or (tmp_path / "out").read_bytes() == b""
        assert srv.stats["refused.file_not_found"] == 1


def test_write_requests_are_refused(loopback_server: Callable[..., Any], tmp_path: Path,
                                    fake_content: Any) -> None:
    (tmp_path / "upload").write_bytes(b"evil")
    with loopback_server() as srv:
        host, port = srv.address
        result = run(["tftp", host, str(port), "-m", "binary", "-c", "put", "upload",
                      "ipxe.efi"], tmp_path)
        assert "read-only" in result.stdout + result.stderr
        assert srv.stats["refused.write"] == 1
        assert srv.sessions() == 0
    assert fake_content.files["tftp/ipxe.efi"] == IPXE


# --- crafted packets -------------------------------------------------------------


@pytest.mark.parametrize("single_port", [False, True])
def test_a_stranger_gets_error_5_and_the_transfer_goes_on(
        loopback_server: Callable[..., Any], single_port: bool) -> None:
    with loopback_server(single_port=single_port) as srv:
        result = stranger(srv.address, "ipxe.efi")
        assert result["sha256"] == sha(IPXE)
        srv.settle()
        assert srv.stats["unknown_tid"] == 1
        assert srv.stats["transfers"] == 1


@pytest.mark.parametrize("single_port", [False, True])
def test_single_port_mode_answers_from_the_listening_port(
        loopback_server: Callable[..., Any], single_port: bool) -> None:
    with loopback_server(single_port=single_port) as srv, RawClient(srv.address) as client:
        client.request("ipxe.efi")
        packet, tid = client.recv()
        assert packet == Data(block=1, payload=IPXE[:512])  # no options: DATA 1 at once
        assert (tid == srv.address) is single_port
        client.send(Error(code=0, message="enough"), tid)


@pytest.mark.parametrize("same_port", [False, True])
@pytest.mark.parametrize("single_port", [False, True])
def test_uefi_tsize_probe_then_real_request(loopback_server: Callable[..., Any],
                                            same_port: bool, single_port: bool) -> None:
    # One session per client: the real RRQ is served only if the probe's
    # session was freed the moment its ERROR 8 arrived.
    with loopback_server(per_client=1, single_port=single_port) as srv:
        result = uefi(srv.address, "ipxe.efi", same_port)
        assert result["tsize"] == len(IPXE)
        assert result["sha256"] == sha(IPXE)
        assert result["requests"] == 1  # answered at the first asking
        assert result["late"] == []  # the probe's session sent nothing more
        srv.settle()
        stats = srv.stats
        assert stats["transfers.probes"] == 1
        assert stats["transfers"] == 1
        assert [e[0] for e in srv.events] == ["tftp.sent"]


def test_a_repeated_request_starts_no_second_transfer(
        loopback_server: Callable[..., Any]) -> None:
    with loopback_server() as srv, RawClient(srv.address) as client:
        client.request("ipxe.efi")
        client.request("ipxe.efi")  # the firmware was impatient
        answers = client.recv_all(0.5)
        assert [p for p, _ in answers] == [Data(block=1, payload=IPXE[:512])]
        assert srv.stats["requests.duplicate"] == 1
        assert srv.sessions() == 1


@pytest.mark.parametrize("hexdata,answer", [
    ("0001 61 00 62696e617279 00", 4),  # mode "binary"
    ("0001 69707865 00 2e2e2f6574632f706173737764 00 6f63746574 00", 2),  # NUL in the name
    ("0001 2e2e2f2e2e2f6574632f706173737764 00 6f63746574 00", 2),  # ../../etc/passwd
    ("0004 0001", 5),  # an ACK to the listening port
    ("0009", 4),  # unknown opcode
])
def test_crafted_requests(loopback_server: Callable[..., Any], hexdata: str,
                          answer: int) -> None:
    with loopback_server() as srv, RawClient(srv.address) as client:
        client.send(bytes.fromhex(hexdata.replace(" ", "")))
        packets = [p for p, _ in client.recv_all(0.5)]
        assert len(packets) == 1 and isinstance(packets[0], Error), packets
        assert packets[0].code == answer
        assert srv.sessions() == 0


@pytest.mark.parametrize("hexdata", ["", "00", "0005", "0005 0000 6f6b 00"])
def test_junk_and_errors_get_no_answer(loopback_server: Callable[..., Any],
                                       hexdata: str) -> None:
    with loopback_server() as srv, RawClient(srv.address) as client:
        client.send(bytes.fromhex(hexdata.replace(" ", "")))
        assert client.recv_all(0.5) == []


# --- failures ---------------------------------------------------------------------


def test_store_unavailable_gives_error_0_with_a_message(
        loopback_server: Callable[..., Any], fake_content: Any) -> None:
    fake_content.errors["tftp/ipxe.efi"] = FileError(
        ErrorCode.UNAVAILABLE, "the store did not answer")
    with loopback_server() as srv, RawClient(srv.address) as client:
        client.request("ipxe.efi")
        packet, _ = client.recv()
        assert packet == Error(code=0, message="content unavailable: the store did not answer")
        srv.settle()
        assert srv.events == [("tftp.failed", "127.0.0.1",
                               "ipxe.efi: content unavailable: the store did not answer")]


def test_a_silent_client_is_given_up_on(loopback_server: Callable[..., Any]) -> None:
    with loopback_server(timeout=0.1, retries=2) as srv, RawClient(srv.address) as client:
        client.request("ipxe.efi")
        packets = [client.recv()[0] for _ in range(4)]
        assert packets[:3] == [Data(block=1, payload=IPXE[:512])] * 3  # sent, then 2 retries
        assert packets[3] == Error(code=0, message="transfer timed out")
        srv.settle()
        stats = srv.stats
        assert stats["transfers.timed_out"] == 1 and stats["retransmitted"] == 2
        assert srv.events == [("tftp.failed", "127.0.0.1", "ipxe.efi: timed out")]


def test_over_the_cap_a_request_waits_for_a_free_slot(
        loopback_server: Callable[..., Any]) -> None:
    with loopback_server(max_sessions=1) as srv, \
            RawClient(srv.address) as first, RawClient(srv.address) as second:
        first.request("ipxe.efi")
        _, tid = first.recv()
        second.request("ipxe.efi")
        assert second.recv_all(0.5) == []  # silence: the firmware will ask again
        assert srv.stats["requests.busy"] == 1
        first.send(Error(code=0, message="cancelled"), tid)
        second.request("ipxe.efi")  # its retransmission
        assert second.recv()[0] == Data(block=1, payload=IPXE[:512])


def test_per_client_cap_holds_back_one_address_only(
        loopback_server: Callable[..., Any]) -> None:
    with loopback_server(per_client=1) as srv, \
            RawClient(srv.address) as first, RawClient(srv.address) as second, \
            RawClient(srv.address, source="127.0.0.2") as other:
        first.request("ipxe.efi")
        first.recv()
        second.request("ipxe.efi")  # same address: over its cap
        assert second.recv_all(0.5) == []
        assert srv.stats["requests.client_busy"] == 1
        other.request("ipxe.efi")  # another machine is served at once
        assert other.recv()[0] == Data(block=1, payload=IPXE[:512])


def test_port_in_use_is_a_clear_startup_error(loopback_server: Callable[..., Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        srv = loopback_server()
        srv.settings = replace(srv.settings, port=taken.getsockname()[1])
        with pytest.raises(StartupError) as info:
            with srv:
                pass
        assert info.value.service == "tftpd"
        assert f"UDP port {taken.getsockname()[1]} on 127.0.0.1 is in use" in info.value.reason


def test_an_address_not_on_this_host_is_a_clear_startup_error(fake_content: Any) -> None:
    settings = TftpConfig(port=0, single_port=False, max_sessions=1, per_client=1,
                          timeout=1.0, retries=1, memory_cache=0)
    service = ReadService(fake_content, Limits(), retries=1,
                          netascii=NetasciiCache(MemoryBudget(1 << 20)))
    server = TftpServer(settings, "192.0.2.77", service)
    with pytest.raises(StartupError) as info:
        server.open()
    assert "192.0.2.77 is not an address of this host" in info.value.reason


@pytest.mark.parametrize("err,reason", [
    (errno.EACCES, "binding UDP port 69 needs root or CAP_NET_BIND_SERVICE"),
    (errno.EADDRINUSE, "UDP port 69 on 192.0.2.1 is in use"),
    (errno.EADDRNOTAVAIL, "192.0.2.1 is not an address of this host"),
])
def test_bind_failures_say_why(err: int, reason: str) -> None:
    exc = bind_error(OSError(err, os.strerror(err)), "192.0.2.1", 69)
    assert reason in exc.reason


def test_file_names_are_logged_printably() -> None:
    assert Session(("192.0.2.10", 1), ReadRequest(filename=b"a\nb\xff")).name == "a\\nb\\xff"


# --- boot events --------------------------------------------------------------------


# --- memory and the log ---------------------------------------------------------------


def menu_text(kib: int, seed: str) -> bytes:
    line = f"{seed}: kernel /boot/vmlinuz\n".encode()
    return (line * (kib * 1024 // len(line) + 1))[:kib * 1024]


def test_netascii_without_room_gets_silence_until_a_copy_is_freed(
        loopback_server: Callable[..., Any], fake_content: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = menu_text(600, "a"), menu_text(600, "b")
    fake_content.files.update({"tftp/a.txt": a, "tftp/b.txt": b})
    with loopback_server(memory_max=1 << 20) as srv, \
            RawClient(srv.address) as first, RawClient(srv.address) as second:
        first.request("a.txt", mode=Mode.NETASCII)
        block, tid = first.recv()  # a's copy is in use by this transfer
        assert block == Data(block=1, payload=to_netascii(a)[:512])
        for _ in range(3):
            second.request("b.txt", mode=Mode.NETASCII)
            assert second.recv_all(0.3) == []  # silence: the client will ask again
        assert srv.stats["requests.no_memory"] == 3 and srv.sessions() == 1
        warned = [r for r in caplog.records if "does not fit in memory_max" in r.getMessage()]
        assert len(warned) == 1, warned  # once per sender, not once per request
        first.send(Error(code=0, message="cancelled"), tid)
        srv.settle()
        second.request("b.txt", mode=Mode.NETASCII)  # its retransmission
        assert second.receive_file(second.recv()) == to_netascii(b)
        assert srv.call(lambda: srv.netascii.conversions) == 2  # type: ignore[union-attr]


def test_a_flood_of_bad_packets_logs_one_line_per_sender(
        loopback_server: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="astralboot.services.tftpd.server")
    with loopback_server() as srv, RawClient(srv.address) as one, \
            RawClient(srv.address, source="127.0.0.2") as other:
        for _ in range(50):
            one.send(bytes.fromhex("0009"))  # unknown opcode
            one.send(b"\x00\x01ipxe.efi\x00binary\x00")  # unknown mode
        other.send(bytes.fromhex("0009"))
        assert len(one.recv_all(1.0)) == 100  # every one still answered
        for _ in range(20):
            with RawClient(srv.address) as asker:
                asker.request("missing")
                assert asker.recv()[0] == Error(code=1, message="file not found")
        srv.settle()
        stats = srv.stats
        assert stats["malformed"] == 101 and stats["refused.file_not_found"] == 20
        lines = [r.getMessage() for r in caplog.records
                 if r.name == "astralboot.services.tftpd.server"]
        assert len([m for m in lines if m.startswith("127.0.0.1:") and "malformed" in m]) == 1
        assert len([m for m in lines if m.startswith("127.0.0.2:") and "malformed" in m]) == 1
        assert len([m for m in lines if "refused" in m]) == 1
        assert srv.call(lambda: srv.server.details()["log.held_back"]) == 99 + 19  # type: ignore
