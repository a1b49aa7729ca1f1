"""One canonical, versioned, strict binary encoding for everything securechan
signs, hashes, stores or sends.

The layout (``docs/PROTOCOL.md`` §2 is the normative text)::

    record = version:u8 || type:u16be || field*
    field  = tag:u8 || length:u32be || value[length]

* ``version`` is :data:`WIRE_VERSION` (1). Any other value is refused with
  :class:`~securechan.errors.UnsupportedVersion`.
* ``type`` names the schema (a registry of type ids lives in PROTOCOL.md).
* Fields appear in strictly increasing tag order, each at most once; every
  required field is present; no unknown tag; no byte after the last field.
  Together with the fixed encodings below this makes the encoding of a value
  unique, so ``encode(decode(b)) == b`` for every accepted ``b``.

Value encodings by :class:`Kind`:

* ``BYTES``: the bytes. ``TEXT``: UTF-8, in Unicode NFC form, no NUL.
* ``UINT``: exactly 8 bytes, big-endian, unsigned.
* ``BOOL``: exactly one byte, 0x00 or 0x01.
* ``RECORD``: a complete nested record of the field's schema.
* ``LIST``: zero or more items, each ``length:u32be || record``.

Record types are declared as annotated frozen dataclasses with
:func:`record` (see "Typed records" below); the :class:`Schema` is derived
from them and the dict API (:func:`encode`, :func:`decode`) is what both
run. Every field declares a maximum length, checked before the value is sliced or
parsed, so a hostile length prefix cannot make the decoder allocate or loop.
Decoding raises only :class:`~securechan.errors.MalformedInput` (or its
subclass ``UnsupportedVersion``) on bad input; encoding raises ``ValueError``
or ``TypeError`` on values that do not fit the schema (a bug in the caller).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import types
import typing
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from securechan.errors import MalformedInput, UnsupportedVersion

__all__ = [
    "WIRE_VERSION",
    "Field",
    "Kind",
    "Record",
    "Schema",
    "Spec",
    "boolean",
    "bytes_",
    "decode",
    "decode_record",
    "encode",
    "encode_record",
    "list_",
    "nested",
    "peek_type",
    "record",
    "schema_of",
    "text",
    "uint",
]

WIRE_VERSION = 1

_HEADER = struct.Struct(">BH")
_FIELD_HEADER = struct.Struct(">BI")
_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# A field's value may never exceed this, whatever its schema says: it keeps
# every record well under the 4 GiB a u32 length could claim.
MAX_FIELD_LEN = 64 * 1024 * 1024


class Kind(enum.Enum):
    """How a field's value is encoded."""

    BYTES = "bytes"
    TEXT = "text"
    UINT = "uint"
    BOOL = "bool"
    RECORD = "record"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a schema.

    ``size`` is the exact length a ``BYTES`` value must have (``None`` for
    variable length up to ``max_len``). For ``LIST``, ``max_len`` bounds the
    whole encoded list and ``max_items`` the number of items.
    """

    tag: int
    name: str
    kind: Kind
    max_len: int = 0
    size: int | None = None
    optional: bool = False
    schema: Schema | None = None
    max_items: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.tag <= 255:
            raise ValueError("field tags are 1..255")
        if self.kind in (Kind.RECORD, Kind.LIST) and self.schema is None:
            raise ValueError(f"field {self.name}: {self.kind.value} needs a schema")
        if self.kind in (Kind.BYTES, Kind.TEXT, Kind.RECORD, Kind.LIST):
            limit = self.size if self.size is not None else self.max_len
            if not 0 < limit <= MAX_FIELD_LEN:
                raise ValueError(f"field {self.name}: give max_len or size")
        if self.kind is Kind.LIST and self.max_items <= 0:
            raise ValueError(f"field {self.name}: a list needs max_items")

    @property
    def limit(self) -> int:
        """The largest encoded value this field accepts."""
        if self.kind is Kind.UINT:
            return 8
        if self.kind is Kind.BOOL:
            return 1
        return self.size if self.size is not None else self.max_len


@dataclass(frozen=True, slots=True)
class Schema:
    """A record type: its registered type id and its fields by tag."""

    type_id: int
    name: str
    fields: tuple[Field, ...]
    _by_tag: dict[int, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.type_id <= 0xFFFF:
            raise ValueError("type ids are u16")
        tags = [f.tag for f in self.fields]
        if tags != sorted(set(tags)):
            raise ValueError(f"schema {self.name}: tags must be unique and ascending")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"schema {self.name}: duplicate field name")
        object.__setattr__(self, "_by_tag", {f.tag: f for f in self.fields})


def encode(schema: Schema, values: Mapping[str, Any], *, check_nested: bool = True) -> bytes:
    """Encode ``values`` (field name to value) as a record of ``schema``.

    Optional fields whose value is ``None`` or absent are omitted. Raises
    ``ValueError``/``TypeError`` when a value does not fit its field. Nested
    records given as bytes are checked by decoding them, unless
    ``check_nested`` is false (only for bytes this process just encoded).
    """
    unknown = set(values) - {f.name for f in schema.fields}
    if unknown:
        raise ValueError(f"{schema.name}: unknown fields {sorted(unknown)}")
    out = bytearray(_HEADER.pack(WIRE_VERSION, schema.type_id))
    for f in schema.fields:
        value = values.get(f.name)
        if value is None:
            if f.optional:
                continue
            raise ValueError(f"{schema.name}.{f.name} is required")
        raw = _encode_value(schema, f, value, check_nested)
        out += _FIELD_HEADER.pack(f.tag, len(raw))
        out += raw
    return bytes(out)


def _encode_value(schema: Schema, f: Field, value: Any, check_nested: bool = True) -> bytes:
    where = f"{schema.name}.{f.name}"
    raw: bytes
    if f.kind is Kind.BYTES:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"{where} must be bytes")
        raw = bytes(value)
    elif f.kind is Kind.TEXT:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be str")
        if "\x00" in value or not unicodedata.is_normalized("NFC", value):
            raise ValueError(f"{where} must be NFC text without NUL")
        raw = value.encode("utf-8")
    elif f.kind is Kind.UINT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be int")
        if not 0 <= value < 2**64:
            raise ValueError(f"{where} must fit in 64 unsigned bits")
        raw = _U64.pack(value)
    elif f.kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be bool")
        raw = b"\x01" if value else b"\x00"
    elif f.kind is Kind.RECORD:
        raw = _encode_nested(f, value, where, check_nested)
    else:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{where} must be a list")
        if len(value) > f.max_items:
            raise ValueError(f"{where} has more than {f.max_items} items")
        parts = []
        for item in value:
            item_raw = _encode_nested(f, item, where)
            parts.append(_LEN.pack(len(item_raw)) + item_raw)
        raw = b"".join(parts)
    if f.size is not None and len(raw) != f.size:
        raise ValueError(f"{where} must be exactly {f.size} bytes")
    if len(raw) > f.limit:
        raise ValueError(f"{where} is longer than {f.limit} bytes")
    return raw


def _encode_nested(f: Field, value: Any, where: str, check: bool = True) -> bytes:
    if isinstance(value, bytes) and not check:
        return value
    if isinstance(value, bytes):
        # Already encoded by the nested type's own to_bytes(); check it. A bad
        # encoding here is the caller's bug, hence ValueError.
        try:
            decode(_nested(f), value)
        except MalformedInput as e:
            raise ValueError(f"{where}: {e}") from None
        return value
    if isinstance(value, Mapping):
        return encode(_nested(f), value)
    raise TypeError(f"{where} must be an encoded record or a mapping")


def _nested(f: Field) -> Schema:
    if f.schema is None:  # Field.__post_init__ makes this unreachable
        raise TypeError(f"field {f.name} has no schema")
    return f.schema


def peek_type(data: bytes) -> int:
    """Return the type id of an encoded record, checking only its header."""
    if len(data) < _HEADER.size:
        raise MalformedInput("record too short")
    version, type_id = _HEADER.unpack_from(data, 0)
    if version != WIRE_VERSION:
        raise UnsupportedVersion(f"unsupported wire version {version}")
    return int(type_id)


def decode(
    schema: Schema, data: bytes | bytearray | memoryview, *, check_nested: bool = True
) -> dict[str, Any]:
    """Decode a record of ``schema`` strictly; return field name to value.

    Absent optional fields map to ``None``. Nested records and list items are
    returned as their exact bytes, for the nested type's ``from_bytes``; they
    are fully checked here too unless ``check_nested`` is false, which only a
    caller that decodes every nested record strictly right away may pass
    (their header and type are still checked).
    Raises :class:`MalformedInput` (or :class:`UnsupportedVersion`) on any
    deviation from the one canonical encoding.
    """
    view = memoryview(bytes(data) if not isinstance(data, bytes) else data)
    if peek_type(bytes(view[: _HEADER.size])) != schema.type_id:
        raise MalformedInput(f"not a {schema.name} record")
    pos = _HEADER.size
    end = len(view)
    last_tag = 0
    result: dict[str, Any] = {}
    while pos < end:
        if end - pos < _FIELD_HEADER.size:
            raise MalformedInput(f"{schema.name}: truncated field header")
        tag, length = _FIELD_HEADER.unpack_from(view, pos)
        pos += _FIELD_HEADER.size
        if tag <= last_tag:
            raise MalformedInput(f"{schema.name}: fields out of order or repeated")
        last_tag = tag
        f = schema._by_tag.get(tag)
        if f is None:
            raise MalformedInput(f"{schema.name}: unknown field tag {tag}")
        if length > f.limit:
            raise MalformedInput(f"{schema.name}.{f.name}: too long")
        if length > end - pos:
            raise MalformedInput(f"{schema.name}.{f.name}: truncated")
        result[f.name] = _decode_value(schema, f, view[pos : pos + length], check_nested)
        pos += length
    for f in schema.fields:
        if f.name not in result:
            if not f.optional:
                raise MalformedInput(f"{schema.name}: missing field {f.name}")
            result[f.name] = None
    return result


def _decode_value(schema: Schema, f: Field, raw: memoryview, check_nested: bool = True) -> Any:
    where = f"{schema.name}.{f.name}"
    if f.size is not None and len(raw) != f.size:
        raise MalformedInput(f"{where}: must be {f.size} bytes")
    if f.kind is Kind.BYTES:
        return bytes(raw)
    if f.kind is Kind.TEXT:
        try:
            text = bytes(raw).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise MalformedInput(f"{where}: not UTF-8") from None
        if "\x00" in text or not unicodedata.is_normalized("NFC", text):
            raise MalformedInput(f"{where}: not NFC text without NUL")
        return text
    if f.kind is Kind.UINT:
        if len(raw) != 8:
            raise MalformedInput(f"{where}: integers are 8 bytes")
        return _U64.unpack(raw)[0]
    if f.kind is Kind.BOOL:
        if len(raw) != 1 or raw[0] > 1:
            raise MalformedInput(f"{where}: booleans are one byte, 0 or 1")
        return raw[0] == 1
    if f.kind is Kind.RECORD:
        item = bytes(raw)
        if check_nested:
            decode(_nested(f), item)
        elif peek_type(item) != _nested(f).type_id:
            raise MalformedInput(f"{where}: not a {_nested(f).name} record")
        return item
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if len(items) >= f.max_items:
            raise MalformedInput(f"{where}: more than {f.max_items} items")
        if len(raw) - pos < _LEN.size:
            raise MalformedInput(f"{where}: truncated item length")
        (length,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        if length > len(raw) - pos:
            raise MalformedInput(f"{where}: truncated item")
        item = bytes(raw[pos : pos + length])
        decode(_nested(f), item)
        items.append(item)
        pos += length
    return items


# --- Typed records: one dataclass gives the schema and both directions -----
#
# A record type is a frozen dataclass whose wire fields are annotated with
# their tag, kind and limits::
#
#     @wire.record(0x0060, "RatchetHeader")
#     @dataclass(frozen=True, slots=True, kw_only=True)
#     class RatchetHeader:
#         dh: Annotated[bytes, wire.bytes_(1, size=32)]
#         n: Annotated[int, wire.uint(5)]
#         epoch_ct: Annotated[bytes | None, wire.bytes_(6, size=1088)] = None
#
# The Schema is derived once, when the class is decorated (schema_of(cls)),
# and encode_record/decode_record run the very same strict encode/decode as
# the dict API above, so the bytes cannot differ. A field typed ``X | None``
# is optional (its default, if any, is None). A nested record is annotated with
# its class (decoded to an instance) or with ``bytes`` and ``of=Class`` (kept
# as its exact, checked bytes: for records whose bytes are signed), or with
# any class that has to_bytes/from_bytes and ``of=SCHEMA``; a list of
# records is ``tuple[Class, ...]`` (or ``tuple[bytes, ...]`` with ``of=``).
# Dataclass fields without a wire annotation are not on the wire; they must
# have a default (decode_record passes them only through ``extra``).

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
    cls: type | None  # the nested record class when values are instances


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
                if tp is not _PLAIN[spec.kind]:
                    raise TypeError(
                        f"{name}.{dc_field.name}: {spec.kind.value} needs {_PLAIN[spec.kind]}"
                    )
                sub = None
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
            bindings.append(_Binding(dc_field.name, spec.kind, item_cls))
        order = sorted(range(len(fields)), key=lambda i: fields[i].tag)
        schema = Schema(type_id, name, tuple(fields[i] for i in order))
        setattr(cls, _SCHEMA_ATTR, (schema, tuple(bindings[i] for i in order)))
        return cls

    return derive


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
            if b.kind is Kind.RECORD:
                value = _encode_instance(b.cls, value, where)
            else:
                if not isinstance(value, tuple | list):
                    raise TypeError(f"{where} must be a tuple")
                value = [_encode_instance(b.cls, v, where) for v in value]
        elif b.kind is Kind.RECORD and isinstance(value, bytes):
            # Bytes from the caller: checked, as encode() checks them.
            try:
                decode(_nested(schema_field(schema, b.name)), value)
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
            if b.kind is Kind.RECORD:
                value = _decode_instance(b.cls, value)
            else:
                value = tuple(_decode_instance(b.cls, v) for v in value)
        elif b.kind is Kind.RECORD and value is not None:
            decode(_nested(schema_field(schema, b.name)), value)
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
