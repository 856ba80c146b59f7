"""TFTP packets: bytes in, typed packets out, and back (RFC 1350, 2347).

Sans-IO: no sockets, no clock, no logging. :func:`decode` reads every field
through a bounds-checked :class:`Reader` and raises nothing but
:class:`TftpProtocolError`; :func:`encode` is its inverse. The transfer
machine's hot path uses :func:`data_packet` and the prebuilt ACK table so
that one DATA block costs one allocation.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Union

from astralboot.common.errors import RemoteProtocolError

MAX_BLOCK = 0xFFFF
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class TftpCode(enum.IntEnum):
    """The error codes of RFC 1350, plus 8 from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class Mode(str, enum.Enum):
    NETASCII = "netascii"
    OCTET = "octet"
    MAIL = "mail"


class TftpProtocolError(RemoteProtocolError):
    """A datagram that is not a valid TFTP packet.

    ``answer`` is the error code to send back, or None when the datagram
    deserves no answer (too short to be anything, or itself an ERROR).
    """

    def __init__(self, reason: str, answer: TftpCode | None = TftpCode.ILLEGAL_OPERATION) -> None:
        self.reason = reason
        self.answer = answer
        super().__init__(reason)


Option = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    filename: bytes
    mode: Mode = Mode.OCTET
    options: tuple[Option, ...] = ()  # as sent: order, spelling and repeats kept


@dataclass(frozen=True, slots=True)
class WriteRequest:
    filename: bytes
    mode: Mode = Mode.OCTET
    options: tuple[Option, ...] = ()


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: tuple[Option, ...]


Packet = Union[ReadRequest, WriteRequest, Data, Ack, Error, OptionAck]


# --- reading -----------------------------------------------------------------


class Reader:
    """Reads fields off one datagram; every read checks what is left."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u16(self, what: str) -> int:
        if self.remaining() < 2:
            raise TftpProtocolError(f"{what}: datagram ends after {len(self._data)} bytes",
                                    answer=None)
        value = (self._data[self._pos] << 8) | self._data[self._pos + 1]
        self._pos += 2
        return value

    def cstring(self, what: str) -> bytes:
        """A NUL-terminated field, without its NUL."""
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise TftpProtocolError(f"{what}: no terminating NUL")
        value = self._data[self._pos:end]
        self._pos = end + 1
        return value

    def text_until_nul(self) -> bytes:
        """Up to a NUL or to the end: lenient, for error messages."""
        end = self._data.find(b"\0", self._pos)
        end = len(self._data) if end < 0 else end
        value = self._data[self._pos:end]
        self._pos = min(end + 1, len(self._data))
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos:]
        self._pos = len(self._data)
        return value


def _mode(raw: bytes, following: list[bytes]) -> Mode:
    name = raw.decode("latin-1").lower()
    try:
        return Mode(name)
    except ValueError:
        pass
    # "file\0../etc\0octet\0": a NUL inside the name pushes the real mode
    # one field later. That is an attack on the name, answered as such.
    if any(f.decode("latin-1").lower() in Mode._value2member_map_ for f in following):
        raise TftpProtocolError("file name contains a NUL byte",
                                answer=TftpCode.ACCESS_VIOLATION) from None
    raise TftpProtocolError(f"unknown transfer mode {name[:32]!r}") from None


def _fields(r: Reader) -> list[bytes]:
    """The NUL-terminated strings that follow; an unterminated tail is dropped."""
    fields = []
    while r.remaining():
        try:
            fields.append(r.cstring("option"))
        except TftpProtocolError:
            break
    return fields


def _options(fields: list[bytes]) -> tuple[Option, ...]:
    # Some PXE ROMs pad requests with NULs: an empty name ends the list, and
    # a name without a value is dropped.
    out = []
    for i in range(0, len(fields) - 1, 2):
        name, value = fields[i], fields[i + 1]
        if not name:
            break
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return tuple(out)


def _decode_request(r: Reader, cls: type[ReadRequest] | type[WriteRequest]) -> Packet:
    filename = r.cstring("file name")
    if not r.remaining():
        raise TftpProtocolError("request has no transfer mode")
    raw_mode = r.cstring("transfer mode")
    fields = _fields(r)
    return cls(filename=filename, mode=_mode(raw_mode, fields), options=_options(fields))


def _decode_rrq(r: Reader) -> Packet:
    return _decode_request(r, ReadRequest)


def _decode_wrq(r: Reader) -> Packet:
    return _decode_request(r, WriteRequest)


def _decode_data(r: Reader) -> Packet:
    return Data(block=r.u16("DATA block"), payload=r.rest())


def _decode_ack(r: Reader) -> Packet:
    return Ack(block=r.u16("ACK block"))  # trailing bytes are ignored


def _decode_error(r: Reader) -> Packet:
    try:
        code = r.u16("ERROR code")
    except TftpProtocolError as exc:
        exc.answer = None  # never answer an error with an error
        raise
    return Error(code=code, message=r.text_until_nul().decode("utf-8", "replace"))


def _decode_oack(r: Reader) -> Packet:
    return OptionAck(options=_options(_fields(r)))


_DECODERS: dict[int, Callable[[Reader], Packet]] = {
    Opcode.RRQ: _decode_rrq,
    Opcode.WRQ: _decode_wrq,
    Opcode.DATA: _decode_data,
    Opcode.ACK: _decode_ack,
    Opcode.ERROR: _decode_error,
    Opcode.OACK: _decode_oack,
}


_ACK_PREFIX = b"\x00\x04"


def ack_block(data: bytes) -> int | None:
    """The block number if ``data`` is an ACK, else None (then use :func:`decode`).

    The transfer's hot path: one ACK per window, without building a packet.
    """
    if len(data) >= 4 and data.startswith(_ACK_PREFIX):
        return (data[2] << 8) | data[3]
    return None


def decode(data: bytes) -> Packet:
    """One datagram to one packet, or :class:`TftpProtocolError`."""
    r = Reader(data)
    opcode = r.u16("opcode")
    decoder = _DECODERS.get(opcode)
    if decoder is None:
        raise TftpProtocolError(f"unknown opcode {opcode}")
    return decoder(r)


# --- writing -----------------------------------------------------------------

_HEADER = struct.Struct("!HH")
_pack_header = _HEADER.pack


def data_packet(block: int, payload: bytes | memoryview) -> bytes:
    """DATA for an absolute block number (it wraps past 65535 to 0)."""
    return _pack_header(3, block & MAX_BLOCK) + payload


def _strings(*parts: bytes) -> bytes:
    return b"".join(p + b"\0" for p in parts)


def _check_string(value: bytes, what: str) -> bytes:
    if b"\0" in value:
        raise ValueError(f"{what} contains a NUL byte")
    return value


def _encode_options(options: tuple[Option, ...]) -> bytes:
    return b"".join(_strings(_check_string(n.encode("latin-1"), "option name"),
                             _check_string(v.encode("latin-1"), "option value"))
                    for n, v in options)


def _encode_request(opcode: Opcode, p: ReadRequest | WriteRequest) -> bytes:
    return (_HEADER.pack(opcode, 0)[:2]
            + _strings(_check_string(p.filename, "file name"), p.mode.value.encode())
            + _encode_options(p.options))


def encode_error(code: int, message: str) -> bytes:
    text = _check_string(message.encode("utf-8"), "error message")
    return _HEADER.pack(Opcode.ERROR, code) + text + b"\0"


def encode(packet: Packet) -> bytes:
    """The wire form of ``packet``; ValueError for a field that cannot be sent."""
    if isinstance(packet, Data):
        return data_packet(packet.block, packet.payload)
    if isinstance(packet, Ack):
        return _HEADER.pack(Opcode.ACK, packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    if isinstance(packet, OptionAck):
        return _HEADER.pack(Opcode.OACK, 0)[:2] + _encode_options(packet.options)
    if isinstance(packet, ReadRequest):
        return _encode_request(Opcode.RRQ, packet)
    if isinstance(packet, WriteRequest):
        return _encode_request(Opcode.WRQ, packet)
    raise TypeError(f"not a TFTP packet: {packet!r}")


# --- netascii ----------------------------------------------------------------


def to_netascii(data: bytes | memoryview) -> bytes:
    """RFC 764 line endings: LF becomes CR LF, a bare CR becomes CR NUL."""
    return bytes(data).replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
