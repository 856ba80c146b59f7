"""How bus messages are declared and checked.

A message is a frozen, slotted, keyword-only dataclass registered under a
kind. Nested plain data (a lease, a machine) is a :class:`Record`. From each
class's annotations one converter per field is built once, at registration,
so decoding a frame checks every value against its declared type without
reflection on the hot path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, ClassVar, Literal

from astralboot.common.errors import MalformedMessage

PROTOCOL_VERSION = 1

Converter = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Plain nested data carried inside messages."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every bus message: a kind, and a request id for correlation."""

    kind: ClassVar[str] = ""
    request_id: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Request(Message):
    """A message sent to a service. ``expects_reply`` false means notify-only."""

    expects_reply: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reply(Message):
    """A successful answer; errors are :class:`~astralboot.common.messages.ErrorReply`."""


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    convert: Converter
    required: bool
    nested: bool  # holds Records, so packing must turn them into maps
    plain: frozenset[type]  # value types taken as they are, with no conversion


@dataclasses.dataclass(frozen=True, slots=True)
class ClassSpec:
    cls: type
    fields: tuple[FieldSpec, ...]
    nested: bool

    @property
    def decoding(self) -> tuple[tuple[str, Converter, bool, frozenset[type]], ...]:
        return tuple((f.name, f.convert, f.required, f.plain) for f in self.fields)


REGISTRY: dict[str, ClassSpec] = {}
_RECORD_SPECS: dict[type, ClassSpec] = {}
_DECODING: dict[type, tuple[tuple[str, Converter, bool, frozenset[type]], ...]] = {}
_MISSING: Any = object()


def message(kind: str) -> Callable[[type], type]:
    """Class decorator: make a frozen dataclass message and register its kind."""

    def wrap(cls: type) -> type:
        if kind in REGISTRY:
            raise TypeError(f"message kind {kind!r} registered twice")
        cls.kind = kind
        cls = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
        REGISTRY[kind] = spec = _class_spec(cls, skip=("request_id",))
        _DECODING[cls] = spec.decoding
        return cls

    return wrap


def record(cls: type) -> type:
    """Class decorator for nested records."""
    cls = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    _RECORD_SPECS[cls] = spec = _class_spec(cls, skip=())
    _DECODING[cls] = spec.decoding
    return cls


def _class_spec(cls: type, skip: tuple[str, ...]) -> ClassSpec:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        tp = hints[f.name]
        specs.append(FieldSpec(f.name, _converter(tp), required, _holds_record(tp),
                               _plain_types(tp)))
    return ClassSpec(cls, tuple(specs), any(s.nested for s in specs))


_PLAIN = (type(None), bool, int, str, bytes)


def _plain_types(tp: Any) -> frozenset[type]:
    """The value types a field of type ``tp`` accepts exactly as they come.

    float is left out: an int must still be turned into a float.
    """
    if tp in _PLAIN:
        return frozenset((tp,))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return frozenset(a for a in typing.get_args(tp) if a in _PLAIN)
    return frozenset()


def _holds_record(tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, Record):
        return True
    return any(_holds_record(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _fail(path: str, expected: str, value: Any) -> MalformedMessage:
    return MalformedMessage(f"{path}: expected {expected}, got {type(value).__name__}")


def _converter(tp: Any) -> Converter:
    """Build a function that checks (and normalises) one value of type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return lambda v, path: v
    if tp is type(None):
        def none(v: Any, path: str) -> None:
            if v is not None:
                raise _fail(path, "nil", v)
            return None
        return none
    if tp is bool:
        def boolean(v: Any, path: str) -> bool:
            if v is True or v is False:
                return v
            raise _fail(path, "bool", v)
        return boolean
    if tp is int:
        def integer(v: Any, path: str) -> int:
            if type(v) is int:
                return v
            raise _fail(path, "int", v)
        return integer
    if tp is float:
        def real(v: Any, path: str) -> float:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _fail(path, "float", v)
        return real
    if tp is str:
        def text(v: Any, path: str) -> str:
            if type(v) is str:
                return v
            raise _fail(path, "str", v)
        return text
    if tp is bytes:
        def binary(v: Any, path: str) -> bytes:
            if type(v) is bytes:
                return v
            raise _fail(path, "bytes", v)
        return binary
    if origin is Literal:
        allowed = frozenset(args)

        def literal(v: Any, path: str) -> Any:
            if type(v) in (str, int) and v in allowed:
                return v
            raise MalformedMessage(f"{path}: {v!r} is not one of {sorted(map(str, allowed))}")
        return literal
    if origin in (typing.Union, types.UnionType):
        alternatives = [_converter(a) for a in args]
        # Most values are a plain type the union names outright (None above
        # all): look it up instead of trying each alternative in turn.
        exact = {a: c for a, c in zip(args, alternatives)
                 if a in (type(None), bool, int, float, str, bytes)}

        def union(v: Any, path: str) -> Any:
            conv = exact.get(type(v))
            if conv is not None:
                return v
            for conv in alternatives:
                try:
                    return conv(v, path)
                except MalformedMessage:
                    continue
            raise _fail(path, " or ".join(_type_name(a) for a in args), v)
        return union
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {tp}")
        item = _converter(args[0])

        def sequence(v: Any, path: str) -> tuple[Any, ...]:
            if not isinstance(v, (list, tuple)):
                raise _fail(path, "array", v)
            return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(v))
        return sequence
    if origin is dict:
        key, val = (_converter(a) for a in args)

        def mapping(v: Any, path: str) -> dict[Any, Any]:
            if not isinstance(v, dict):
                raise _fail(path, "map", v)
            return {key(k, f"{path} key"): val(x, f"{path}.{k}") for k, x in v.items()}
        return mapping
    if isinstance(tp, type) and issubclass(tp, Record):
        def nested(v: Any, path: str) -> Record:
            if isinstance(v, tp):
                return v
            if not isinstance(v, dict):
                raise _fail(path, tp.__name__, v)
            return build(_RECORD_SPECS[tp], v, path)
        return nested
    raise TypeError(f"unsupported field type {tp!r}")


def _type_name(tp: Any) -> str:
    return "nil" if tp is type(None) else getattr(tp, "__name__", str(tp))


def build(spec: ClassSpec, body: dict[str, Any], path: str, **extra: Any) -> Any:
    """Check ``body`` against ``spec`` and construct the dataclass.

    Keys the class does not declare are ignored, so a newer peer may add
    optional fields without a protocol version bump.
    """
    kwargs = extra
    for name, convert, required, plain in _DECODING[spec.cls]:
        value = body.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise MalformedMessage(f"{path}.{name}: missing")
        elif type(value) in plain:
            kwargs[name] = value  # the common case: no conversion, no path string
        else:
            kwargs[name] = convert(value, f"{path}.{name}")
    try:
        return spec.cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks
        raise MalformedMessage(f"{path}: {exc}") from None


def to_plain(spec: ClassSpec, obj: Any) -> dict[str, Any]:
    """The field map of a message or record, records turned into maps."""
    if not spec.nested:
        return {f.name: getattr(obj, f.name) for f in spec.fields}
    return {f.name: _plain_value(getattr(obj, f.name)) if f.nested else getattr(obj, f.name)
            for f in spec.fields}


def _plain_value(v: Any) -> Any:
    if isinstance(v, Record):
        return to_plain(_RECORD_SPECS[type(v)], v)
    if isinstance(v, (tuple, list)):
        return [_plain_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain_value(x) for k, x in v.items()}
    return v


def record_to_dict(obj: Record) -> dict[str, Any]:
    """A record as a plain dict (for JSON APIs and templates)."""
    return to_plain(_RECORD_SPECS[type(obj)], obj)
