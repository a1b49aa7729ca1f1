"""The codec of securechan's binary encoding: schemas (:class:`Schema`,
:class:`Field`, :class:`Kind`) and the dict API (:func:`encode`,
:func:`decode`, :func:`peek_type`) that typed records run on.

The format is specified in :mod:`securechan.wire` (and ``docs/PROTOCOL.md``
§2); import from there. This module exists so that the typed record layer
(:mod:`securechan.wire_records`) and the codec do not import each other.
"""

from __future__ import annotations

import enum
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from securechan.errors import MalformedInput, UnsupportedVersion

__all__ = [
    "WIRE_VERSION",
    "Field",
    "Kind",
    "Schema",
    "decode",
    "encode",
    "peek_type",
]

WIRE_VERSION = 1

_HEADER = struct.Struct(">BH")
_FIELD_HEADER = struct.Struct(">BI")
_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64_END = 2**64

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
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "_names", frozenset(names))


def encode(schema: Schema, values: Mapping[str, Any], *, check_nested: bool = True) -> bytes:
    """Encode ``values`` (field name to value) as a record of ``schema``.

    Optional fields whose value is ``None`` or absent are omitted. Raises
    ``ValueError``/``TypeError`` when a value does not fit its field. Nested
    records given as bytes are checked by decoding them, unless
    ``check_nested`` is false (only for bytes this process just encoded).
    """
    if not schema._names.issuperset(values):
        unknown = set(values) - schema._names
        raise ValueError(f"{schema.name}: unknown fields {sorted(unknown)}")
    out = bytearray(_HEADER.pack(WIRE_VERSION, schema.type_id))
    for f in schema.fields:
        value = values.get(f.name)
        if value is None:
            if f.optional:
                continue
            raise ValueError(f"{schema.name}.{f.name} is required")
        # The two commonest cases inline (a hot path of every send and
        # receive), with _encode_value's checks; anything else, or a value
        # these checks refuse, goes through it (and its error messages).
        kind = f.kind
        if (
            kind is Kind.BYTES
            and type(value) is bytes
            and (len(value) == f.size if f.size is not None else len(value) <= f.max_len)
        ):
            raw = value
        elif kind is Kind.UINT and type(value) is int and 0 <= value < _U64_END:
            raw = _U64.pack(value)
        else:
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
