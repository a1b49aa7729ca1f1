"""Typed wire records: one annotated dataclass gives a record's
:class:`~securechan.wire.Schema` and both directions of its encoding.

A record type is a frozen dataclass whose wire fields are annotated with
their tag, kind and limits::

    @wire.record(0x0060, "RatchetHeader")
    @dataclass(frozen=True, slots=True, kw_only=True)
    class RatchetHeader(wire.Record):
        dh: Annotated[bytes, wire.bytes_(1, size=32)]
        n: Annotated[int, wire.uint(5)]
        epoch_ct: Annotated[bytes | None, wire.bytes_(6, size=1088)] = None

The Schema is derived once, when the class is decorated (:func:`schema_of`),
and :func:`encode_record` / :func:`decode_record` run the very same strict
``wire.encode`` / ``wire.decode`` as the dict API, so the bytes cannot
differ; what this adds is that ``mypy --strict`` sees every field by name and
type (a misspelt field is a type error, ``tests/test_wire_typing.py``).

A field typed ``X | None`` is optional (its default, if any, is None). A
nested record is annotated with its class (decoded to an instance) or with
``bytes`` and ``of=Class`` (kept as its exact, checked bytes: for records
whose bytes are signed), or with any class that has to_bytes/from_bytes and
``of=SCHEMA``; a list of records is ``tuple[Class, ...]`` (or
``tuple[bytes, ...]`` with ``of=``). A ``bytes_`` field may be annotated
with a small value class that defines ``__bytes__`` and is built from those
bytes (``Fingerprint``). Dataclass fields without a wire
annotation are not on the wire; they must have a default (decode_record
passes them only through ``extra``). ``docs/PROTOCOL.md`` §2 is the
normative text.

Everything here is re-exported by :mod:`securechan.wire` (``wire.record``,
``wire.uint``...), which is how record types use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, SupportsBytes, TypeVar

from securechan.errors import MalformedInput
from securechan.wire_codec import Field, Kind, Schema, decode, encode

__all__ = [
    "Record",
    "Spec",
    "boolean",
    "bytes_",
    "decode_record",
    "encode_record",
    "list_",
    "nested",
    "record",
    "schema_field",
    "schema_of",
    "text",
    "uint",
]

_T = TypeVar("_T")
_SCHEMA_ATTR = "__wire_schema__"


@dataclass(frozen=True, slots=True)
class Spec:
    """The wire half of one record field (see :func:`record`)."""

    tag: int
    kind: Kind
    max_len: int = 0
    size: int | None = None
    max_items: int = 0
    of: type | Schema | None = None


def bytes_(tag: int, *, size: int | None = None, max_len: int = 0) -> Spec:
    """A ``BYTES`` field: exactly ``size`` bytes, or at most ``max_len``."""
    return Spec(tag, Kind.BYTES, max_len=max_len, size=size)


def text(tag: int, *, max_len: int) -> Spec:
    """A ``TEXT`` field (NFC UTF-8, no NUL) of at most ``max_len`` bytes."""
    return Spec(tag, Kind.TEXT, max_len=max_len)


def uint(tag: int) -> Spec:
    """A ``UINT`` field (8 bytes big-endian)."""
    return Spec(tag, Kind.UINT)


def boolean(tag: int) -> Spec:
    """A ``BOOL`` field (one byte, 0 or 1)."""
    return Spec(tag, Kind.BOOL)


def nested(tag: int, *, max_len: int, of: type | Schema | None = None) -> Spec:
    """A ``RECORD`` field; the record class comes from the annotation or
    from ``of``, a record class or a :class:`Schema` (then the annotation is
    ``bytes``: the value stays encoded, checked in both directions)."""
    return Spec(tag, Kind.RECORD, max_len=max_len, of=of)


def list_(tag: int, *, max_len: int, max_items: int, of: type | Schema | None = None) -> Spec:
    """A ``LIST`` of records (``tuple[Class, ...]`` or ``tuple[bytes, ...]``
    with ``of=Class``)."""
    return Spec(tag, Kind.LIST, max_len=max_len, max_items=max_items, of=of)


@dataclass(frozen=True, slots=True)
class _Binding:
    """How one dataclass field maps to its schema field."""

    name: str
    kind: Kind
    cls: type | None  # the nested record (or bytes value) class of instances
    sub: Schema | None  # the nested records' schema (RECORD and LIST)

    def nested_schema(self) -> Schema:
        if self.sub is None:  # record() sets it for every RECORD and LIST
            raise TypeError(f"field {self.name} has no schema")
        return self.sub


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == len(typing.get_args(tp)) - 1 and len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union {tp!r}")
    return tp, False


_PLAIN: dict[Kind, type] = {Kind.BYTES: bytes, Kind.TEXT: str, Kind.UINT: int, Kind.BOOL: bool}


def record(type_id: int, name: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: derive the record's :class:`Schema` from its
    annotated dataclass fields (apply it above ``@dataclass``)."""

    def derive(cls: type[_T]) -> type[_T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{name}: apply @wire.record above @dataclass")
        hints = typing.get_type_hints(cls, include_extras=True)
        fields: list[Field] = []
        bindings: list[_Binding] = []
        for dc_field in dataclasses.fields(cls):
            hint = hints[dc_field.name]
            specs = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Spec)]
            has_default = (
                dc_field.default is not dataclasses.MISSING
                or dc_field.default_factory is not dataclasses.MISSING
            )
            if not specs:
                if not has_default:
                    raise TypeError(f"{name}.{dc_field.name}: not on the wire, needs a default")
                continue
            (spec,) = specs
            tp, optional = _strip_optional(typing.get_args(hint)[0])
            if optional and dc_field.default not in (None, dataclasses.MISSING):
                raise TypeError(f"{name}.{dc_field.name}: an optional field defaults to None")
            item_cls: type | None = None
            if spec.kind is Kind.LIST:
                if typing.get_origin(tp) is not tuple:
                    raise TypeError(f"{name}.{dc_field.name}: a list is tuple[X, ...]")
                tp = typing.get_args(tp)[0]
            if spec.kind in (Kind.RECORD, Kind.LIST):
                if spec.of is not None:
                    sub = spec.of if isinstance(spec.of, Schema) else schema_of(spec.of)
                    if tp is not bytes:
                        # A class that is not a @wire.record but encodes as
                        # one: its own to_bytes/from_bytes convert.
                        if not (hasattr(tp, "to_bytes") and hasattr(tp, "from_bytes")):
                            raise TypeError(f"{name}.{dc_field.name}: {tp!r} cannot convert")
                        item_cls = tp
                else:
                    sub = schema_of(tp)
                    item_cls = tp
            else:
                sub = None
                if spec.kind is Kind.BYTES and tp is not bytes and _is_bytes_value(tp):
                    item_cls = tp  # a bytes value class: bytes(value) out, tp(raw) in
                elif tp is not _PLAIN[spec.kind]:
                    raise TypeError(
                        f"{name}.{dc_field.name}: {spec.kind.value} needs {_PLAIN[spec.kind]}"
                    )
            fields.append(
                Field(
                    spec.tag,
                    dc_field.name,
                    spec.kind,
                    max_len=spec.max_len,
                    size=spec.size,
                    optional=optional,
                    schema=sub,
                    max_items=spec.max_items,
                )
            )
            bindings.append(_Binding(dc_field.name, spec.kind, item_cls, sub))
        order = sorted(range(len(fields)), key=lambda i: fields[i].tag)
        schema = Schema(type_id, name, tuple(fields[i] for i in order))
        setattr(cls, _SCHEMA_ATTR, (schema, tuple(bindings[i] for i in order)))
        return cls

    return derive


def _is_bytes_value(tp: Any) -> bool:
    # A small value class over bytes (a fingerprint): __bytes__ gives its
    # encoding and its constructor takes it back.
    return isinstance(tp, type) and "__bytes__" in vars(tp)


def _binding(cls: type) -> tuple[Schema, tuple[_Binding, ...]]:
    bound = getattr(cls, _SCHEMA_ATTR, None)
    if bound is None:
        raise TypeError(f"{cls.__name__} is not a @wire.record")
    schema, bindings = bound
    return schema, bindings


def schema_of(cls: type) -> Schema:
    """The :class:`Schema` derived from a ``@wire.record`` class."""
    return _binding(cls)[0]


def encode_record(obj: object) -> bytes:
    """The canonical encoding of a ``@wire.record`` instance: the same bytes
    as :func:`encode` with the same values, with the same checks."""
    schema, bindings = _binding(type(obj))
    values: dict[str, Any] = {}
    for b in bindings:
        value = getattr(obj, b.name)
        where = f"{schema.name}.{b.name}"
        if b.cls is not None and value is not None:
            # Encoded just now by the nested type itself: not decoded again.
            if b.kind is Kind.BYTES:
                if not isinstance(value, b.cls) or not isinstance(value, SupportsBytes):
                    raise TypeError(f"{where} must be a {b.cls.__name__}")
                value = bytes(value)
            elif b.kind is Kind.RECORD:
                value = _encode_instance(b.cls, value, where)
            else:
                if not isinstance(value, tuple | list):
                    raise TypeError(f"{where} must be a tuple")
                value = [_encode_instance(b.cls, v, where) for v in value]
        elif b.kind is Kind.RECORD and isinstance(value, bytes):
            # Bytes from the caller: checked, as encode() checks them.
            try:
                decode(b.nested_schema(), value)
            except MalformedInput as e:
                raise ValueError(f"{where}: {e}") from None
        values[b.name] = value
    # Lists of bytes are checked item by item by encode() itself.
    return encode(schema, values, check_nested=False)


def _encode_instance(cls: type, value: object, where: str) -> bytes:
    if not isinstance(value, cls):
        raise TypeError(f"{where} must be a {cls.__name__}")
    to_bytes = getattr(value, "to_bytes", None)
    return to_bytes() if callable(to_bytes) else encode_record(value)


def decode_record(cls: type[_T], data: bytes | bytearray | memoryview, **extra: Any) -> _T:
    """Decode a record of ``cls`` strictly (exactly as :func:`decode`) and
    build the instance; nested records become instances of their class
    (decoded by their own ``from_bytes`` when they have one, so their extra
    checks run). ``extra`` fills non-wire fields."""
    schema, bindings = _binding(cls)
    rec = decode(schema, data, check_nested=False)
    values: dict[str, Any] = {}
    for b in bindings:
        value = rec[b.name]
        if b.cls is not None and value is not None:
            if b.kind is Kind.BYTES:
                try:
                    value = b.cls(value)
                except ValueError:
                    raise MalformedInput(f"{schema.name}.{b.name}: not a valid value") from None
            elif b.kind is Kind.RECORD:
                value = _decode_instance(b.cls, value)
            else:
                value = tuple(_decode_instance(b.cls, v) for v in value)
        elif b.kind is Kind.RECORD and value is not None:
            decode(b.nested_schema(), value)
        elif b.kind is Kind.LIST:
            value = tuple(value) if value is not None else None
        values[b.name] = value
    return cls(**values, **extra)


def schema_field(schema: Schema, name: str) -> Field:
    """The field of ``schema`` called ``name``."""
    for f in schema.fields:
        if f.name == name:
            return f
    raise KeyError(name)


def _decode_instance(cls: type, raw: bytes) -> object:
    from_bytes = getattr(cls, "from_bytes", None)
    if callable(from_bytes):
        return from_bytes(raw)
    return decode_record(cls, raw)


class Record:
    """An optional base for ``@wire.record`` classes: typed ``to_bytes`` and
    ``from_bytes`` (a class with extra checks overrides ``from_bytes``)."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        """The canonical wire encoding."""
        return encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode strictly."""
        return decode_record(cls, data)
