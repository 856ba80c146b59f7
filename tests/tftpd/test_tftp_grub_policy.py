"""The policy for GRUB's names: which machine, which page, and what a failure becomes.

Unit tests of one layer: the pages and leases are fakes here; the real
ones, against a real store and an HTTP server, are in test_tftp_grub_lab.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from astralboot.common.errors import ErrorCode
from astralboot.services.tftpd.files import FileError
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache
from astralboot.services.tftpd.options import Limits
from astralboot.services.tftpd.packets import (Data, Error, Mode, OptionAck, ReadRequest, TftpCode,
                                               decode, to_netascii)
from astralboot.services.tftpd.policy import ReadService
from astralboot.services.tftpd.rendered import Failure, PageError
from astralboot.services.tftpd.transfer import Transfer

PEER = ("192.0.2.150", 40000)
MAC = "52:54:00:12:34:56"


class FakePages:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bodies: dict[str, list[bytes]] = {}
        self.error: PageError | None = None

    async def get(self, path: str, client_ip: str) -> bytes:
        self.calls.append((path, client_ip))
        if self.error is not None:
            raise self.error
        return self.bodies[path].pop(0)


class FakeLeases:
    def __init__(self, macs: dict[str, str]) -> None:
        self.macs = macs
        self.calls: list[str] = []
        self.error: FileError | None = None

    async def mac_of(self, ip: str) -> str:
        self.calls.append(ip)
        if self.error is not None:
            raise self.error
        if ip not in self.macs:
            raise FileError(ErrorCode.NOT_FOUND, f"no lease for {ip}")
        return self.macs[ip]


@pytest.fixture
def pages() -> FakePages:
    return FakePages()


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases({PEER[0]: MAC})


def open_(content: Any, pages: FakePages | None, leases: FakeLeases | None, name: bytes,
          mode: Mode = Mode.OCTET, options: tuple[tuple[str, str], ...] = ()
          ) -> Transfer | Error:
    service = ReadService(content, Limits(max_blksize=1468), retries=3,
                          netascii=NetasciiCache(MemoryBudget(1 << 20)), pages=pages,
                          leases=leases)
    result = asyncio.run(service.open(ReadRequest(filename=name, mode=mode, options=options),
                                      PEER))
    assert not isinstance(result, Transfer) or result.peer == PEER
    return result  # type: ignore[return-value]


def sent(transfer: Transfer, oack: list[OptionAck] | None = None) -> bytes:
    """Everything the transfer sends, acknowledging each block at once."""
    out = bytearray()
    for _ in range(10_000):
        if transfer.done:
            return bytes(out)
        datagrams = transfer.datagrams_to_send(0.0)
        assert datagrams, "the transfer stalled"
        for data, _ in datagrams:
            packet = decode(data)
            if isinstance(packet, OptionAck):
                if oack is not None:
                    oack.append(packet)
                transfer.receive_datagram(b"\x00\x04\x00\x00", PEER, 0.0)
            elif isinstance(packet, Data):
                out += packet.payload
                transfer.receive_datagram(b"\x00\x04" + packet.block.to_bytes(2, "big"), PEER,
                                          0.0)
    raise AssertionError("the transfer never ended")


def test_grub_cfg_is_the_config_of_the_machine_holding_the_address(
        fake_content: Any, pages: FakePages, leases: FakeLeases) -> None:
    config = b"# for 52:54:00:12:34:56\n" * 100
    pages.bodies[f"/grub/{MAC}"] = [config]
    t = open_(fake_content, pages, leases, b"/debian-installer/amd64/grub/grub.cfg",
              options=(("tsize", "0"), ("blksize", "1024")))
    assert isinstance(t, Transfer)
    assert leases.calls == [PEER[0]]
    assert pages.calls == [(f"/grub/{MAC}", PEER[0])]
    oack: list[OptionAck] = []
    assert sent(t, oack) == config
    assert oack == [OptionAck(options=(("tsize", str(len(config))), ("blksize", "1024")))]
    assert fake_content.calls == []  # nothing from the store's files


def test_a_mac_in_the_name_needs_no_lease(fake_content: Any, pages: FakePages,
                                          leases: FakeLeases) -> None:
    pages.bodies["/grub/02:00:00:00:00:01"] = [b"set default=0\n"]
    t = open_(fake_content, pages, leases, b"grub/grub.cfg-01-02-00-00-00-00-01")
    assert isinstance(t, Transfer) and sent(t) == b"set default=0\n"
    assert leases.calls == []
    assert pages.calls == [("/grub/02:00:00:00:00:01", PEER[0])]


def test_each_request_fetches_again(fake_content: Any, pages: FakePages,
                                    leases: FakeLeases) -> None:
    # Boot-once changes a machine's config between two reads: nothing is kept.
    pages.bodies[f"/grub/{MAC}"] = [b"install\n", b"local disk\n"]
    first = open_(fake_content, pages, leases, b"grub.cfg")
    second = open_(fake_content, pages, leases, b"grub.cfg")
    assert isinstance(first, Transfer) and isinstance(second, Transfer)
    assert (sent(first), sent(second)) == (b"install\n", b"local disk\n")


def test_a_menu_choice_is_passed_on(fake_content: Any, pages: FakePages,
                                    leases: FakeLeases) -> None:
    pages.bodies[f"/grub/setclass/debian/web/{MAC}"] = [b"configfile /grub/grub.cfg\n"]
    t = open_(fake_content, pages, leases, b"/grub/setclass/debian/web/52-54-00-12-34-56")
    assert isinstance(t, Transfer) and sent(t) == b"configfile /grub/grub.cfg\n"
    assert leases.calls == []


def test_netascii_converts_the_page(fake_content: Any, pages: FakePages,
                                    leases: FakeLeases) -> None:
    page = b"line one\nline two\r\n"
    pages.bodies[f"/grub/{MAC}"] = [page]
    t = open_(fake_content, pages, leases, b"grub.cfg", mode=Mode.NETASCII)
    assert isinstance(t, Transfer) and sent(t) == to_netascii(page)


def test_an_image_comes_from_the_os_folder(fake_content: Any, pages: FakePages,
                                           leases: FakeLeases) -> None:
    fake_content.files["boot/debian/images/linux"] = b"kernel" * 1000
    t = open_(fake_content, pages, leases, b"image/debian/linux")
    assert isinstance(t, Transfer) and sent(t) == b"kernel" * 1000
    assert fake_content.calls == ["boot/debian/images/linux"]
    assert pages.calls == []


# --- refusals ----------------------------------------------------------------------------


def test_no_lease_is_file_not_found_saying_why(fake_content: Any, pages: FakePages) -> None:
    result = open_(fake_content, pages, FakeLeases({}), b"debian-installer/amd64/grub/grub.cfg")
    assert result == Error(TftpCode.FILE_NOT_FOUND,
                           "no GRUB config: no machine holds 192.0.2.150 (no lease for "
                           "192.0.2.150); ask for grub.cfg-01-<mac>")
    assert pages.calls == []


def test_store_down_is_error_0(fake_content: Any, pages: FakePages,
                               leases: FakeLeases) -> None:
    leases.error = FileError(ErrorCode.UNAVAILABLE, "the store did not answer: timeout")
    result = open_(fake_content, pages, leases, b"grub.cfg")
    assert result == Error(TftpCode.NOT_DEFINED,
                           "no GRUB config: the store did not answer: timeout")


@pytest.mark.parametrize("failure,status,code", [
    (Failure.STATUS, 404, TftpCode.FILE_NOT_FOUND),
    (Failure.STATUS, 403, TftpCode.ACCESS_VIOLATION),
    (Failure.STATUS, 400, TftpCode.ACCESS_VIOLATION),
    (Failure.STATUS, 500, TftpCode.NOT_DEFINED),
    (Failure.STATUS, 503, TftpCode.NOT_DEFINED),
    (Failure.TIMEOUT, None, TftpCode.NOT_DEFINED),
    (Failure.DOWN, None, TftpCode.NOT_DEFINED),
    (Failure.TOO_LARGE, 200, TftpCode.NOT_DEFINED),
    (Failure.BAD_RESPONSE, None, TftpCode.NOT_DEFINED),
    (Failure.UNSUPPORTED, None, TftpCode.NOT_DEFINED),
])
def test_what_an_httpd_failure_becomes(fake_content: Any, pages: FakePages, leases: FakeLeases,
                                       failure: Failure, status: int | None,
                                       code: TftpCode) -> None:
    pages.error = PageError(failure, "what went wrong", status)
    result = open_(fake_content, pages, leases, b"grub.cfg")
    assert result == Error(code, f"no GRUB config for {MAC}: what went wrong")
    result = open_(fake_content, pages, leases, b"grub/choose/debian/" + MAC.encode())
    assert result == Error(code, f"no /grub/choose/debian/{MAC}: what went wrong")


def test_a_long_reason_is_cut_to_fit_a_packet(fake_content: Any, pages: FakePages,
                                              leases: FakeLeases) -> None:
    pages.error = PageError(Failure.STATUS, "x" * 1000, 500)
    result = open_(fake_content, pages, leases, b"grub.cfg")
    assert isinstance(result, Error) and len(result.message) == 200


def test_without_httpd_grub_names_are_not_found(fake_content: Any) -> None:
    result = open_(fake_content, None, None, b"grub.cfg-01-52-54-00-12-34-56")
    assert isinstance(result, Error) and result.code == TftpCode.FILE_NOT_FOUND
    result = open_(fake_content, None, None, b"grub.cfg")
    assert isinstance(result, Error) and result.code == TftpCode.FILE_NOT_FOUND
