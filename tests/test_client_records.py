"""The client's stored records (client/stored.py) give the same schema and
the same bytes as the hand-written schemas they replaced in
client/channel.py (main at 2dec72b, copied verbatim below): a client.db
written before the split reads back unchanged, and what is written now
reads back on the old code."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan import wire
from securechan.client.stored import Registration, Registrations, StoredHandshake, StoredRecord
from securechan.errors import MalformedInput

_REG = wire.Schema(
    0x00B0,
    "Registration",
    (
        wire.Field(1, "relay", wire.Kind.TEXT, max_len=512),
        wire.Field(2, "relay_key", wire.Kind.BYTES, size=32),
        wire.Field(3, "rid", wire.Kind.BYTES, size=16),
        wire.Field(4, "sid", wire.Kind.BYTES, size=16),
        wire.Field(5, "recipient_seed", wire.Kind.BYTES, size=32),
        wire.Field(6, "address_key", wire.Kind.BYTES, size=32),
    ),
)
_REGS = wire.Schema(
    0x00B1,
    "Registrations",
    (wire.Field(1, "items", wire.Kind.LIST, max_len=64 * 400, schema=_REG, max_items=64),),
)
_RECORD = wire.Schema(
    0x00B2,
    "StoredRecord",
    (
        wire.Field(1, "signed", wire.Kind.BYTES, max_len=1 << 17),
        wire.Field(2, "contact", wire.Kind.TEXT, max_len=64),
        wire.Field(3, "envelope", wire.Kind.BYTES, max_len=(1 << 20) + 65536, optional=True),
        wire.Field(4, "key", wire.Kind.BYTES, size=32, optional=True),
        wire.Field(5, "ad", wire.Kind.BYTES, size=32, optional=True),
        wire.Field(6, "relay", wire.Kind.TEXT, max_len=2048, optional=True),
    ),
)
_HANDSHAKE = wire.Schema(
    0x00B3,
    "StoredHandshake",
    (
        wire.Field(1, "transcript", wire.Kind.BYTES, max_len=8192),
        wire.Field(2, "signature", wire.Kind.BYTES, max_len=8192),
    ),
)

LEGACY: list[tuple[type, wire.Schema]] = [
    (Registration, _REG),
    (Registrations, _REGS),
    (StoredRecord, _RECORD),
    (StoredHandshake, _HANDSHAKE),
]


@pytest.mark.parametrize(("cls", "old"), LEGACY, ids=[s.name for _, s in LEGACY])
def test_derived_schema_equals_the_hand_written_one(cls: type, old: wire.Schema) -> None:
    assert wire.schema_of(cls) == old


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30
).filter(lambda t: __import__("unicodedata").is_normalized("NFC", t))


def _value(f: wire.Field) -> st.SearchStrategy[Any]:
    if f.kind is wire.Kind.BYTES:
        if f.size is not None:
            return st.binary(min_size=f.size, max_size=f.size)
        return st.binary(max_size=64)
    if f.kind is wire.Kind.TEXT:
        return _TEXT
    sub = f.schema
    assert sub is not None
    return st.lists(_values(sub).map(lambda v: wire.encode(sub, v)), max_size=3)


def _values(schema: wire.Schema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            f.name: (st.one_of(st.none(), _value(f)) if f.optional else _value(f))
            for f in schema.fields
        }
    )


def _typed(cls: type, values: dict[str, Any]) -> Any:
    if cls is Registrations:
        return Registrations(items=tuple(Registration.from_bytes(x) for x in values["items"]))
    return cls(**values)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[type, wire.Schema, dict[str, Any]]:
    cls, old = draw(st.sampled_from(LEGACY))
    return cls, old, draw(_values(old))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_cases(), st.data())
def test_same_bytes_both_ways(
    case: tuple[type, wire.Schema, dict[str, Any]], data: st.DataObject
) -> None:
    cls, old, values = case
    expected = wire.encode(old, values)
    obj = _typed(cls, values)
    assert obj.to_bytes() == expected
    assert cls.from_bytes(expected) == obj  # type: ignore[attr-defined]
    # A mutation is refused by both decoders, or read the same by both.
    pos = data.draw(st.integers(0, len(expected)))
    junk = data.draw(st.binary(max_size=4))
    mutated = expected[:pos] + junk + expected[pos + data.draw(st.integers(0, 4)) :]
    try:
        old_value: Any = _typed(cls, wire.decode(old, mutated))
    except MalformedInput:
        old_value = MalformedInput
    try:
        new_value: Any = cls.from_bytes(mutated)  # type: ignore[attr-defined]
    except MalformedInput:
        new_value = MalformedInput
    assert new_value == old_value
