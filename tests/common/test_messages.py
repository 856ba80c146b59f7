"""Bus messages: every kind survives pack/unpack, and bad frames raise one error."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.common import messages as m
from astralboot.common.bus.frames import pack, unpack
from astralboot.common.bus.schema import PROTOCOL_VERSION, REGISTRY, Record
from astralboot.common.errors import ErrorCode, MalformedMessage

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return st.text(max_size=20)
    if tp is int:
        return INT64
    if tp is float:
        return FLOATS
    if tp is bool:
        return st.booleans()
    if tp is bytes:
        return st.binary(max_size=20)
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return st.one_of(*(strategy_for(a) for a in args))
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, Record):
        return instances(tp)
    raise TypeError(tp)


SPECIAL: dict[type, st.SearchStrategy[Any]] = {
    m.ErrorReply: st.builds(m.ErrorReply, code=st.sampled_from([c.value for c in ErrorCode]),
                            detail=st.text(max_size=30), request_id=INT64),
    m.LeaseLookup: st.one_of(
        st.builds(m.LeaseLookup, mac=st.text(max_size=17), request_id=INT64),
        st.builds(m.LeaseLookup, ip=st.text(max_size=15), request_id=INT64)),
}


def instances(cls: type) -> st.SearchStrategy[Any]:
    if cls in SPECIAL:
        return SPECIAL[cls]
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)
              if f.name != "request_id"}
    if cls is m.MachineSet:
        fields["clear"] = st.lists(st.sampled_from(m.MACHINE_FIELDS), max_size=2).map(tuple)
    extra = {"request_id": INT64} if "request_id" in {f.name for f in dataclasses.fields(cls)} else {}
    return st.builds(cls, **fields, **extra)


ALL_MESSAGES = st.one_of(*(instances(spec.cls) for spec in REGISTRY.values()))


@settings(max_examples=600)
@given(ALL_MESSAGES)
def test_every_message_kind_round_trips(msg: Any) -> None:
    assert unpack(pack(msg)) == msg


def test_catalogue_covers_the_design() -> None:
    kinds = set(REGISTRY)
    for needed in ("lease.offer", "lease.commit", "lease.release", "lease.decline",
                   "lease.lookup", "lease.list", "machine.get", "machine.set", "machine.list",
                   "content.stat", "content.list", "content.read", "event.report",
                   "event.list", "health", "error"):
        assert needed in kinds


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_malformed_message(data: bytes) -> None:
    try:
        unpack(data)
    except MalformedMessage:
        pass


@settings(max_examples=500)
@given(st.lists(st.one_of(INT64, st.text(max_size=8), st.none(),
                          st.dictionaries(st.text(max_size=8), INT64, max_size=3)),
                max_size=5))
def test_random_msgpack_structures_raise_only_malformed_message(obj: list[Any]) -> None:
    try:
        unpack(msgpack.packb(obj))
    except MalformedMessage:
        pass


def frame(version: Any, kind: Any, rid: Any, body: Any) -> bytes:
    return msgpack.packb([version, kind, rid, body], use_bin_type=True)


@pytest.mark.parametrize("data, reason, rid", [
    (b"\xc1", "not msgpack", None),
    (msgpack.packb({"a": 1}), "not [version", None),
    (frame(PROTOCOL_VERSION, "health", "x", {}), "request_id", None),
    (frame(99, "health", 7, {}), "protocol version 99", 7),
    (frame(PROTOCOL_VERSION, "lease.nonsense", 8, {}), "unknown message kind", 8),
    (frame(PROTOCOL_VERSION, "lease.offer", 9, {"mac": "aa"}), "lease.offer.subnet: missing", 9),
    (frame(PROTOCOL_VERSION, "lease.offer", 10, {"mac": 5, "subnet": "s"}),
     "lease.offer.mac: expected str", 10),
    (frame(PROTOCOL_VERSION, "lease.commit", 11,
           {"mac": "a", "subnet": "s", "ip": "1.2.3.4", "mode": "grab"}), "not one of", 11),
    (frame(PROTOCOL_VERSION, "error", 12, {"code": "oops"}), "not a valid ErrorCode", 12),
    (frame(PROTOCOL_VERSION, "lease.lookup", 13, {}), "exactly one", 13),
])
def test_malformed_frames_name_the_problem(data: bytes, reason: str, rid: int | None) -> None:
    with pytest.raises(MalformedMessage) as info:
        unpack(data)
    assert reason in str(info.value)
    assert info.value.request_id == rid


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    data = frame(PROTOCOL_VERSION, "machine.get", 3, {"mac": "aa", "future_field": [1, 2]})
    assert unpack(data) == m.MachineGet(mac="aa", request_id=3)


def test_request_id_is_carried_and_overridable() -> None:
    msg = m.Health()
    assert unpack(pack(msg, 42)).request_id == 42


def test_a_reply_answers_only_the_request_it_is_about() -> None:
    record = m.MachineRecord(mac="52:54:00:00:00:01", name="one")
    assert m.answers(m.MachineGet(mac="52-54-00-00-00-01"), m.MachineReply(machine=record))
    assert not m.answers(m.MachineGet(mac="52:54:00:00:00:02"), m.MachineReply(machine=record))
    assert not m.answers(m.ContentStat(path="boot/x"), m.MachineReply(machine=record))
    assert m.answers(m.MachineGet(mac="52:54:00:00:00:02"), m.ErrorReply(code="not_found"))
    entry = m.ContentEntry(path="boot/debian/linux", is_dir=False)
    assert m.answers(m.ContentStat(path="boot//debian/./linux"), m.ContentStatReply(entry=entry))
    assert not m.answers(m.ContentStat(path="boot/debian/initrd.gz"),
                         m.ContentStatReply(entry=entry))
    grant = m.LeaseGrant(ip="192.0.2.9", state="bound", lease_time=60, expires=0.0,
                         mac="52:54:00:00:00:01")
    assert m.answers(m.LeaseCommit(mac="52:54:00:00:00:01", subnet="s", ip="192.0.2.9",
                                   mode="select"), grant)
    assert not m.answers(m.LeaseCommit(mac="52:54:00:00:00:01", subnet="s", ip="192.0.2.8",
                                       mode="select"), grant)
    assert not m.answers(m.LeaseOffer(mac="52:54:00:00:00:02", subnet="s"), grant)
