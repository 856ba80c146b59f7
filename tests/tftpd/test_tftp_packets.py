"""The TFTP codec: byte fixtures, truncation, trailing junk, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astralboot.services.tftpd.packets import (Ack, Data, Error, TftpCode, Mode, OptionAck,
                                               ReadRequest, TftpProtocolError, WriteRequest,
                                               data_packet, decode, encode, to_netascii)

# (hex on the wire, what it means)
FIXTURES = [
    # RRQ "ipxe.efi" octet, no options (a BIOS PXE ROM)
    ("0001 697078652e656669 00 6f63746574 00",
     ReadRequest(filename=b"ipxe.efi", mode=Mode.OCTET)),
    # RRQ with options as UEFI firmware sends them: tsize 0, blksize 1468
    ("0001 697078652e656669 00 6f63746574 00 7473697a65 00 30 00 626c6b73697a65 00 31343638 00",
     ReadRequest(filename=b"ipxe.efi", mode=Mode.OCTET,
                 options=(("tsize", "0"), ("blksize", "1468")))),
    # RRQ with the mode in capitals (RFC 1350: case-insensitive)
    ("0001 61 00 4e455441534349 49 00", ReadRequest(filename=b"a", mode=Mode.NETASCII)),
    # WRQ "x" octet
    ("0002 78 00 6f63746574 00", WriteRequest(filename=b"x", mode=Mode.OCTET)),
    # DATA block 1 carrying "hi"
    ("0003 0001 6869", Data(block=1, payload=b"hi")),
    # DATA block 65535, empty (the last block of a file)
    ("0003 ffff", Data(block=65535, payload=b"")),
    # ACK block 0 (acknowledges an OACK)
    ("0004 0000", Ack(block=0)),
    # ACK block 258
    ("0004 0102", Ack(block=258)),
    # ERROR 8, "no" (a client refusing the OACK)
    ("0005 0008 6e6f 00", Error(code=8, message="no")),
    # OACK blksize 1468
    ("0006 626c6b73697a65 00 31343638 00", OptionAck(options=(("blksize", "1468"),))),
]


def _bytes(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


@pytest.mark.parametrize("wire,packet", FIXTURES)
def test_fixture_decodes(wire: str, packet: object) -> None:
    assert decode(_bytes(wire)) == packet


@pytest.mark.parametrize("wire,packet", FIXTURES)
def test_fixture_encodes_back(wire: str, packet: object) -> None:
    expected = _bytes(wire)
    if isinstance(packet, (ReadRequest, WriteRequest)):
        # Modes are case-insensitive (RFC 1350); the encoder writes them in lower case.
        mode = packet.mode.value.encode()
        expected = expected.replace(mode.upper(), mode)
    assert encode(packet) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("wire,packet", FIXTURES)
def test_every_truncation_fails_only_with_the_codec_error(wire: str, packet: object) -> None:
    data = _bytes(wire)
    for end in range(len(data)):
        try:
            decode(data[:end])
        except TftpProtocolError:
            pass


@pytest.mark.parametrize("wire,packet", [f for f in FIXTURES if isinstance(f[1], (Ack, Error))])
def test_trailing_junk_after_ack_and_error_is_ignored(wire: str, packet: object) -> None:
    assert decode(_bytes(wire) + b"\x99junk") == packet


def test_padding_after_request_options_is_ignored() -> None:
    # Some PXE ROMs pad the RRQ with NULs.
    data = _bytes("0001 61 00 6f63746574 00 7473697a65 00 30 00") + b"\0" * 20
    assert decode(data) == ReadRequest(filename=b"a", options=(("tsize", "0"),))


def test_option_without_value_is_dropped() -> None:
    data = _bytes("0001 61 00 6f63746574 00 7473697a65 00 30 00 626c6b73697a65 00")
    assert decode(data).options == (("tsize", "0"),)  # type: ignore[union-attr]


@pytest.mark.parametrize("wire,answer", [
    ("", None),  # empty datagram
    ("00", None),  # half an opcode
    ("0009 0000", TftpCode.ILLEGAL_OPERATION),  # unknown opcode
    ("0001 61", TftpCode.ILLEGAL_OPERATION),  # name without NUL
    ("0001 61 00", TftpCode.ILLEGAL_OPERATION),  # no mode
    ("0001 61 00 6f6374", TftpCode.ILLEGAL_OPERATION),  # mode without NUL
    ("0001 61 00 62696e617279 00", TftpCode.ILLEGAL_OPERATION),  # mode "binary"
    ("0004 00", None),  # ACK with half a block number
    ("0005", None),  # ERROR without code: never answered
    ("0001 61 00 2e2e2f6574632f706173737764 00 6f63746574 00",  # "a\0../etc/passwd\0octet"
     TftpCode.ACCESS_VIOLATION),
])
def test_malformed_datagrams(wire: str, answer: TftpCode | None) -> None:
    with pytest.raises(TftpProtocolError) as info:
        decode(_bytes(wire))
    assert info.value.answer == answer


def test_error_message_without_nul_is_read_to_the_end() -> None:
    assert decode(_bytes("0005 0000 6f6f7073")) == Error(code=0, message="oops")


def test_data_packet_wraps_block_numbers() -> None:
    assert data_packet(65535, b"x") == _bytes("0003 ffff 78")
    assert data_packet(65536, b"y") == _bytes("0003 0000 79")
    assert data_packet(65537, memoryview(b"z")) == _bytes("0003 0001 7a")


def test_encode_refuses_a_nul_in_a_name() -> None:
    with pytest.raises(ValueError):
        encode(ReadRequest(filename=b"a\0b"))


def test_netascii_line_endings() -> None:
    assert to_netascii(b"a\nb\r\nc\rd") == b"a\r\nb\r\0\r\nc\r\0d"
    assert to_netascii(b"") == b""


# --- properties --------------------------------------------------------------

names = st.binary(min_size=0, max_size=300).filter(lambda b: b"\0" not in b)
texts = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
option_lists = st.lists(st.tuples(texts.filter(bool), texts), max_size=5).map(tuple)
blocks = st.integers(0, 0xFFFF)

packets = st.one_of(
    st.builds(ReadRequest, filename=names, mode=st.sampled_from(Mode), options=option_lists),
    st.builds(WriteRequest, filename=names, mode=st.sampled_from(Mode), options=option_lists),
    st.builds(Data, block=blocks, payload=st.binary(max_size=600)),
    st.builds(Ack, block=blocks),
    st.builds(Error, code=blocks,
              message=st.text(alphabet=st.characters(blacklist_characters="\0",
                                                     blacklist_categories=("Cs",)),
                              max_size=50)),
    st.builds(OptionAck, options=option_lists),
)


@given(packets)
def test_decode_inverts_encode(packet: object) -> None:
    assert decode(encode(packet)) == packet  # type: ignore[arg-type]


@given(st.binary(max_size=700))
def test_arbitrary_bytes_raise_only_the_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except TftpProtocolError:
        pass


@given(st.sampled_from([1, 2, 3, 4, 5, 6]), st.binary(max_size=200))
def test_arbitrary_bodies_raise_only_the_codec_error(opcode: int, body: bytes) -> None:
    try:
        decode(opcode.to_bytes(2, "big") + body)
    except TftpProtocolError:
        pass
