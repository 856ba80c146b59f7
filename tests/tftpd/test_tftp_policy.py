"""The policy layer: RRQ to transfer or refusal, and who may start a session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from astralboot.common.errors import ErrorCode
from astralboot.services.tftpd.files import FileError
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache
from astralboot.services.tftpd.options import Limits
from astralboot.services.tftpd.packets import (Ack, Data, Error, TftpCode, Mode, OptionAck,
                                               ReadRequest, WriteRequest, decode)
from astralboot.services.tftpd.policy import ReadService, SessionTable, Verdict, stray_answer
from astralboot.services.tftpd.transfer import State, Transfer

PEER = ("192.0.2.10", 40000)
IPXE = bytes(range(256)) * 100


def service(content: Any, memory_max: int = 1 << 20) -> ReadService:
    return ReadService(content, Limits(max_blksize=1468), retries=3,
                       netascii=NetasciiCache(MemoryBudget(memory_max)))


def open_(content: Any, request: ReadRequest) -> Transfer | Error:
    return asyncio.run(service(content).open(request, PEER))


def test_rrq_for_a_file_gives_a_transfer(fake_content: Any) -> None:
    fake_content.files["tftp/ipxe.efi"] = IPXE
    t = open_(fake_content, ReadRequest(filename=b"/ipxe.efi"))
    assert isinstance(t, Transfer)
    assert fake_content.calls == ["tftp/ipxe.efi"]
    assert t.size == len(IPXE) and t.peer == PEER and t.state is State.SENDING
    assert t.get_timer() is None  # armed when the first block goes out
    out = t.datagrams_to_send(10.0)
    assert decode(out[0][0]) == Data(block=1, payload=IPXE[:512])
    assert t.get_timer() == 11.0


def test_options_are_negotiated_against_the_file_and_link(fake_content: Any) -> None:
    fake_content.files["tftp/ipxe.efi"] = IPXE
    t = open_(fake_content, ReadRequest(filename=b"ipxe.efi",
                                         options=(("tsize", "0"), ("blksize", "65464"))))
    assert isinstance(t, Transfer)
    assert t.blksize == 1468
    assert decode(t.datagrams_to_send(10.0)[0][0]) == OptionAck(
        options=(("tsize", str(len(IPXE))), ("blksize", "1468")))


@pytest.mark.parametrize("code,tftp_code", [
    (ErrorCode.NOT_FOUND, TftpCode.FILE_NOT_FOUND),
    (ErrorCode.BAD_REQUEST, TftpCode.ACCESS_VIOLATION),
    (ErrorCode.UNAVAILABLE, TftpCode.NOT_DEFINED),
    (ErrorCode.INTERNAL, TftpCode.NOT_DEFINED),
])
def test_store_errors_become_tftp_errors(fake_content: Any, code: ErrorCode,
                                         tftp_code: TftpCode) -> None:
    fake_content.errors["tftp/x"] = FileError(code, "IPFS daemon not answering")
    result = open_(fake_content, ReadRequest(filename=b"x"))
    assert isinstance(result, Error)
    assert result.code == tftp_code
    if tftp_code is TftpCode.NOT_DEFINED:
        assert "IPFS daemon not answering" in result.message


@pytest.mark.parametrize("name", [b"../x", b"a/../../x", b"C:\\x", b"a" * 300, b"\\..\\x"])
def test_refused_names_never_reach_the_store(fake_content: Any, name: bytes) -> None:
    result = open_(fake_content, ReadRequest(filename=name))
    assert isinstance(result, Error) and result.code == TftpCode.ACCESS_VIOLATION
    assert fake_content.calls == []


def test_mail_mode_is_refused(fake_content: Any) -> None:
    result = open_(fake_content, ReadRequest(filename=b"x", mode=Mode.MAIL))
    assert isinstance(result, Error) and result.code == TftpCode.ILLEGAL_OPERATION


def test_netascii_converts_and_tsize_counts_the_converted_bytes(fake_content: Any) -> None:
    fake_content.files["tftp/menu.txt"] = b"line 1\nline 2\n"
    t = open_(fake_content, ReadRequest(filename=b"menu.txt", mode=Mode.NETASCII,
                                         options=(("tsize", "0"),)))
    assert isinstance(t, Transfer)
    assert decode(t.datagrams_to_send(10.0)[0][0]) == OptionAck(options=(("tsize", "16"),))
    t.receive_datagram(b"\x00\x04\x00\x00", PEER, 10.1)
    assert decode(t.datagrams_to_send(10.1)[0][0]) == Data(block=1,
                                                          payload=b"line 1\r\nline 2\r\n")


@pytest.mark.parametrize("packet,answer", [
    (WriteRequest(filename=b"x"), Error(2, "this server is read-only")),
    (Ack(block=1), Error(5, "unknown transfer ID")),
    (Data(block=1, payload=b""), Error(5, "unknown transfer ID")),
    (OptionAck(options=()), Error(5, "unknown transfer ID")),
    (Error(code=0, message="x"), None),
])
def test_what_the_listening_port_answers(packet: Any, answer: Error | None) -> None:
    result = stray_answer(packet)
    assert (decode(result) if result is not None else None) == answer


# --- the session table ----------------------------------------------------------


class FakeSession:
    def __init__(self, request: ReadRequest, started: bool = False) -> None:
        self.request = request
        self.started = started


RRQ = ReadRequest(filename=b"ipxe.efi", options=(("tsize", "0"),))


def test_admits_until_the_caps() -> None:
    table: SessionTable[FakeSession] = SessionTable(max_sessions=3, per_client=2)
    assert table.consider(("10.0.0.1", 1), RRQ) == (Verdict.ADMIT, None)
    table.add(("10.0.0.1", 1), FakeSession(RRQ))
    table.add(("10.0.0.1", 2), FakeSession(RRQ))
    assert table.consider(("10.0.0.1", 3), RRQ) == (Verdict.CLIENT_BUSY, None)
    assert table.consider(("10.0.0.2", 1), RRQ) == (Verdict.ADMIT, None)
    table.add(("10.0.0.2", 1), FakeSession(RRQ))
    assert table.consider(("10.0.0.3", 1), RRQ) == (Verdict.BUSY, None)
    assert len(table) == 3 and table.clients() == 2


def test_removing_frees_the_slot_at_once() -> None:
    table: SessionTable[FakeSession] = SessionTable(max_sessions=1, per_client=1)
    s = FakeSession(RRQ)
    table.add(("10.0.0.1", 1), s)
    assert table.remove(("10.0.0.1", 1), s)
    assert not table.remove(("10.0.0.1", 1), s)
    assert table.consider(("10.0.0.1", 1), RRQ) == (Verdict.ADMIT, None)
    assert table.clients() == 0


def test_same_request_again_before_any_ack_is_a_duplicate() -> None:
    table: SessionTable[FakeSession] = SessionTable(max_sessions=10, per_client=10)
    s = FakeSession(RRQ)
    table.add(PEER, s)
    assert table.consider(PEER, RRQ) == (Verdict.DUPLICATE, s)


def test_a_different_request_from_the_same_port_replaces_the_session() -> None:
    """The UEFI case: the real RRQ overtakes the ERROR 8 that ends the probe."""
    table: SessionTable[FakeSession] = SessionTable(max_sessions=10, per_client=1)
    s = FakeSession(RRQ)
    table.add(PEER, s)
    real = ReadRequest(filename=b"ipxe.efi", options=(("blksize", "1468"),))
    assert table.consider(PEER, real) == (Verdict.REPLACE, s)


def test_the_same_request_after_progress_is_a_restart() -> None:
    table: SessionTable[FakeSession] = SessionTable(max_sessions=10, per_client=10)
    s = FakeSession(RRQ, started=True)
    table.add(PEER, s)
    assert table.consider(PEER, RRQ) == (Verdict.REPLACE, s)
