"""Typed wire records (issue 12, item 3): a ``@wire.record`` dataclass gives
the same schema, field by field, as the hand-written one it replaced, and the
same bytes in both directions.

``LEGACY`` below is a verbatim copy of the hand-written schemas from before
the conversion (main at 31ad03f). It is the reference: a derived schema must
equal it (tag, name, kind, limits, optional, nested schema), and for any
values hypothesis draws, ``encode_record`` and the old ``wire.encode`` give
the same bytes, ``decode_record`` reads them back to the same values, and
both decoders refuse the same mutated inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan import wire
from securechan.errors import MalformedInput
from securechan.primitives import (
    MESSAGE_REUSE_GUARD_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
)
from securechan.protocol import payload, ratchet
from securechan.protocol.payload import CHUNK_SIZE, MAX_CHECKPOINT_TEXT, MAX_TEXT_BYTES

# --- the hand-written schemas, as they were ---------------------------------

_LEGACY_HEADER = wire.Schema(
    0x0060,
    "RatchetHeader",
    (
        wire.Field(1, "dh", wire.Kind.BYTES, size=X25519_KEY_SIZE),
        wire.Field(2, "kem_pub", wire.Kind.BYTES, size=MLKEM768_PUBLIC_KEY_SIZE),
        wire.Field(3, "root_ct", wire.Kind.BYTES, size=MLKEM768_CIPHERTEXT_SIZE),
        wire.Field(4, "pn", wire.Kind.UINT),
        wire.Field(5, "n", wire.Kind.UINT),
        wire.Field(6, "epoch_ct", wire.Kind.BYTES, size=MLKEM768_CIPHERTEXT_SIZE, optional=True),
        wire.Field(7, "guard", wire.Kind.BYTES, size=MESSAGE_REUSE_GUARD_SIZE),
    ),
)
_LEGACY_CHECKPOINT_REF = wire.Schema(
    0x0075,
    "CarriedCheckpoint",
    (wire.Field(1, "note", wire.Kind.TEXT, max_len=MAX_CHECKPOINT_TEXT),),
)
_LEGACY_TEXT_BODY = wire.Schema(
    0x0072, "TextBody", (wire.Field(1, "text", wire.Kind.TEXT, max_len=MAX_TEXT_BYTES),)
)
_LEGACY_FILE_CHUNK = wire.Schema(
    0x0073,
    "FileChunk",
    (
        wire.Field(1, "file_id", wire.Kind.BYTES, size=16),
        wire.Field(2, "name", wire.Kind.TEXT, max_len=255),
        wire.Field(3, "size", wire.Kind.UINT),
        wire.Field(4, "sha512", wire.Kind.BYTES, size=64),
        wire.Field(5, "index", wire.Kind.UINT),
        wire.Field(6, "count", wire.Kind.UINT),
        wire.Field(7, "data", wire.Kind.BYTES, max_len=CHUNK_SIZE),
    ),
)
_LEGACY_RECEIPT = wire.Schema(
    0x0074,
    "Receipt",
    (
        wire.Field(1, "up_to_seq", wire.Kind.UINT),
        wire.Field(2, "chain_hash", wire.Kind.BYTES, size=32),
    ),
)

# (record class, the hand-written schema it replaced)
LEGACY: list[tuple[type, wire.Schema]] = [
    (ratchet.RatchetHeader, _LEGACY_HEADER),
    (payload.CarriedCheckpoint, _LEGACY_CHECKPOINT_REF),
    (payload.TextBody, _LEGACY_TEXT_BODY),
    (payload.FileChunk, _LEGACY_FILE_CHUNK),
    (payload.Receipt, _LEGACY_RECEIPT),
]
_IDS = [s.name for _, s in LEGACY]


@pytest.mark.parametrize(("cls", "old"), LEGACY, ids=_IDS)
def test_derived_schema_equals_the_hand_written_one(cls: type, old: wire.Schema) -> None:
    new = wire.schema_of(cls)
    assert (new.type_id, new.name) == (old.type_id, old.name)
    assert [f.tag for f in new.fields] == [f.tag for f in old.fields]
    for a, b in zip(new.fields, old.fields, strict=True):
        # Field by field so a failure names the field; then the whole thing
        # (nested schemas compare recursively).
        assert (a.tag, a.name, a.kind) == (b.tag, b.name, b.kind)
        assert (a.max_len, a.size, a.optional, a.max_items) == (
            b.max_len,
            b.size,
            b.optional,
            b.max_items,
        ), f"{old.name}.{b.name}"
        assert a.schema == b.schema, f"{old.name}.{b.name}"
    assert new == old


# --- values drawn from the old schema ----------------------------------------

_NFC_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40
).filter(lambda t: __import__("unicodedata").is_normalized("NFC", t))


def _value(f: wire.Field) -> st.SearchStrategy[Any]:
    if f.kind is wire.Kind.BYTES:
        if f.size is not None:
            return st.binary(min_size=f.size, max_size=f.size)
        return st.binary(max_size=min(f.max_len, 64))
    if f.kind is wire.Kind.TEXT:
        return _NFC_TEXT
    if f.kind is wire.Kind.UINT:
        return st.integers(0, 2**64 - 1)
    if f.kind is wire.Kind.BOOL:
        return st.booleans()
    raise AssertionError(f"no strategy for {f.kind}")  # nested kinds: converted below


def _values(schema: wire.Schema) -> st.SearchStrategy[dict[str, Any]]:
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in schema.fields:
        s = _value(f)
        parts[f.name] = st.one_of(st.none(), s) if f.optional else s
    return st.fixed_dictionaries(parts)


def _case(draw: st.DrawFn) -> tuple[type, wire.Schema, dict[str, Any]]:
    cls, old = draw(st.sampled_from(LEGACY))
    return cls, old, draw(_values(old))


cases = st.composite(_case)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.data())
def test_both_paths_give_the_same_bytes(
    case: tuple[type, wire.Schema, dict[str, Any]], data: st.DataObject
) -> None:
    cls, old, values = case
    expected = wire.encode(old, values)
    obj = cls(**values)
    assert wire.encode_record(obj) == expected
    back: object = wire.decode_record(cls, expected)
    assert back == obj
    assert wire.decode(wire.schema_of(cls), expected) == wire.decode(old, expected)
    # Any mutation: both decoders agree on refusing it (or on what it says).
    pos = data.draw(st.integers(0, len(expected)))
    junk = data.draw(st.binary(min_size=0, max_size=4))
    cut = data.draw(st.integers(0, 4))
    mutated = expected[:pos] + junk + expected[pos + cut :]
    try:
        old_result: Any = wire.decode(old, mutated)
    except MalformedInput:
        old_result = MalformedInput
    try:
        new_result: Any = wire.decode_record(cls, mutated)
    except MalformedInput:
        new_result = MalformedInput
    if old_result is MalformedInput:
        assert new_result is MalformedInput
    else:
        assert new_result == cls(**old_result)


# --- the declaration rules ---------------------------------------------------


@wire.record(0x7F00, "Inner")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Inner(wire.Record):
    x: Annotated[int, wire.uint(1)]


@wire.record(0x7F01, "Outer")
@dataclass(frozen=True, slots=True, kw_only=True)
class _Outer(wire.Record):
    name: Annotated[str, wire.text(1, max_len=16)]
    inner: Annotated[_Inner, wire.nested(2, max_len=64)]
    items: Annotated[tuple[_Inner, ...], wire.list_(3, max_len=256, max_items=3)]
    raw_inner: Annotated[bytes | None, wire.nested(4, max_len=64, of=_Inner)] = None
    flag: Annotated[bool, wire.boolean(5)] = False


def test_nested_records_and_lists_round_trip_like_the_dict_api() -> None:
    inner = _Inner(x=7)
    outer = _Outer(name="é", inner=inner, items=(inner, _Inner(x=8)), raw_inner=inner.to_bytes())
    data = outer.to_bytes()
    assert data == wire.encode(
        wire.schema_of(_Outer),
        {
            "name": "é",
            "inner": {"x": 7},
            "items": [{"x": 7}, {"x": 8}],
            "raw_inner": {"x": 7},
            "flag": False,
        },
    )
    assert _Outer.from_bytes(data) == outer
    with pytest.raises(MalformedInput):
        _Outer.from_bytes(data + b"\x00")
    with pytest.raises(TypeError):
        _Outer(name="a", inner=b"", items=()).to_bytes()  # type: ignore[arg-type]


def test_a_bad_declaration_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="needs a default"):

        @wire.record(0x7F02, "NoWire")
        @dataclass(frozen=True)
        class _NoWire:
            x: int

    with pytest.raises(TypeError, match="optional field defaults to None"):

        @wire.record(0x7F03, "BadOptional")
        @dataclass(frozen=True)
        class _BadOptional:
            x: Annotated[int | None, wire.uint(1)] = 0

    with pytest.raises(ValueError, match="ascending"):

        @wire.record(0x7F04, "SameTag")
        @dataclass(frozen=True)
        class _SameTag:
            x: Annotated[int, wire.uint(1)]
            y: Annotated[int, wire.uint(1)]

    with pytest.raises(TypeError, match="uint needs"):

        @wire.record(0x7F05, "WrongType")
        @dataclass(frozen=True)
        class _WrongType:
            x: Annotated[str, wire.uint(1)]
