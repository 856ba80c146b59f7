"""The one pack/unpack pair for bus frames.

A frame is a msgpack array ``[version, kind, request_id, body]`` where body
is a map of the message's fields. Decoding never raises anything but
:class:`MalformedMessage`, whose ``request_id`` is set whenever the frame
was readable enough that the sender can be answered.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .. import messages  # noqa: F401  (registers every kind)
from ..errors import MalformedMessage
from .schema import PROTOCOL_VERSION, REGISTRY, Message, build, to_plain

MAX_FRAME = 64 * 1024 * 1024

_packb = msgpack.Packer(use_bin_type=True).pack


def pack(msg: Message, request_id: int | None = None) -> bytes:
    """Encode ``msg``; ``request_id`` overrides the one the message carries."""
    rid = msg.request_id if request_id is None else request_id
    return _packb([PROTOCOL_VERSION, msg.kind, rid, to_plain(REGISTRY[msg.kind], msg)])


def unpack(data: bytes) -> Message:
    if len(data) > MAX_FRAME:
        raise MalformedMessage(f"frame of {len(data)} bytes is over the {MAX_FRAME} limit")
    try:
        obj: Any = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
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
