"""The one pack/unpack pair for bus frames, and the size limits of each side.

A frame is a msgpack array ``[version, kind, request_id, body]`` where body
is a map of the message's fields. Decoding never raises anything but
:class:`MalformedMessage`, whose ``request_id`` is set whenever the frame
was readable enough that the sender can be answered.

Every socket that receives frames from the network is bounded twice:
ZeroMQ drops a connection whose message is over the socket's
``MAXMSGSIZE`` before anything reaches Python, and msgpack refuses a
string, binary or container longer than the :class:`Limits` of that side
allow. Requests are small (the largest, a lease import, is sent in chunks);
replies may be large (a lease list, a 1 MiB content block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from astralboot.common import messages  # noqa: F401  (registers every kind)
from astralboot.common.errors import MalformedMessage
from astralboot.common.bus.schema import PROTOCOL_VERSION, REGISTRY, Message, build, to_plain


@dataclass(frozen=True, slots=True)
class Limits:
    """How large a frame, and each thing inside it, may be."""

    frame: int  # bytes; also the socket's ZMQ_MAXMSGSIZE
    string: int  # bytes of one str
    binary: int  # bytes of one bin
    array: int  # items of one array
    map: int  # pairs of one map


# What a server (the store, a control socket) accepts from any peer. Each
# byte of a frame can be an object (an empty array is one byte and a 64-byte
# Python list), so the frame bound is what bounds the memory one request can
# cost: 256 KiB frames, at most ~16 MB while one is decoded.
REQUEST_LIMITS = Limits(frame=256 << 10, string=64 << 10, binary=4 << 10, array=4096,
                        map=1024)
# What a client accepts from the store it asked.
REPLY_LIMITS = Limits(frame=64 << 20, string=1 << 20, binary=4 << 20, array=1 << 20,
                      map=1 << 16)
# What the event socket accepts from a subscriber (subscriptions only).
SUBSCRIBER_LIMITS = Limits(frame=4 << 10, string=256, binary=64, array=256, map=16)

MAX_FRAME = REPLY_LIMITS.frame

_packb = msgpack.Packer(use_bin_type=True).pack


def pack(msg: Message, request_id: int | None = None) -> bytes:
    """Encode ``msg``; ``request_id`` overrides the one the message carries."""
    rid = msg.request_id if request_id is None else request_id
    return _packb([PROTOCOL_VERSION, msg.kind, rid, to_plain(REGISTRY[msg.kind], msg)])


def unpack(data: bytes, limits: Limits = REPLY_LIMITS) -> Message:
    if len(data) > limits.frame:
        raise MalformedMessage(f"frame of {len(data)} bytes is over the {limits.frame} limit")
    try:
        obj: Any = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                   max_str_len=limits.string, max_bin_len=limits.binary,
                                   max_array_len=limits.array, max_map_len=limits.map,
                                   max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedMessage(f"not msgpack: {exc}") from None
    if not isinstance(obj, list) or len(obj) != 4:
        raise MalformedMessage("frame is not [version, kind, request_id, body]")
    version, kind, request_id, body = obj
    if type(request_id) is not int:
        raise MalformedMessage("request_id is not an integer")
    if version != PROTOCOL_VERSION:
        raise MalformedMessage(
            f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})",
            request_id)
    if type(kind) is not str:
        raise MalformedMessage("kind is not a string", request_id)
    spec = REGISTRY.get(kind)
    if spec is None:
        raise MalformedMessage(f"unknown message kind {kind!r}", request_id)
    if not isinstance(body, dict):
        raise MalformedMessage(f"{kind}: body is not a map", request_id)
    try:
        return build(spec, body, kind, request_id=request_id)
    except MalformedMessage as exc:
        exc.request_id = request_id
        raise
