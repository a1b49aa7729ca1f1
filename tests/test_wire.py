"""The canonical binary encoding (securechan.wire).

The module docstring of ``securechan/wire.py`` is the spec these tests hold it
to: one canonical encoding per value, strict decoding that raises only
``MalformedInput`` (or ``UnsupportedVersion``), and encoder misuse reported as
``TypeError``/``ValueError``.
"""

from __future__ import annotations

import struct
import tracemalloc
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.errors import MalformedInput, UnsupportedVersion
from securechan.wire import (
    MAX_FIELD_LEN,
    WIRE_VERSION,
    Field,
    Kind,
    Schema,
    decode,
    encode,
    peek_type,
)

# --------------------------------------------------------------------------
# Test schemas: between them every Kind, exact-size and bounded BYTES,
# optional fields, a nested RECORD and a bounded LIST.

INNER = Schema(
    0x0101,
    "Inner",
    (
        Field(1, "id", Kind.UINT),
        Field(2, "label", Kind.TEXT, max_len=32),
        Field(3, "flag", Kind.BOOL, optional=True),
    ),
)
# Largest INNER encoding: header 3 + (5 + 8) + (5 + 32) + (5 + 1).
INNER_MAX = 59

OUTER = Schema(
    0x0102,
    "Outer",
    (
        Field(1, "key", Kind.BYTES, size=32),
        Field(2, "blob", Kind.BYTES, max_len=64, optional=True),
        Field(3, "name", Kind.TEXT, max_len=48),
        Field(4, "count", Kind.UINT),
        Field(5, "ok", Kind.BOOL),
        Field(6, "inner", Kind.RECORD, schema=INNER, max_len=INNER_MAX, optional=True),
        Field(
            7,
            "items",
            Kind.LIST,
            schema=INNER,
            max_len=4 * (4 + INNER_MAX),
            max_items=4,
            optional=True,
        ),
        # Tag 8 is deliberately unused: a gap an attacker could try to fill.
        Field(9, "note", Kind.TEXT, max_len=16, optional=True),
    ),
)

# Every field required, so that no proper prefix of an encoding is valid.
STRICT = Schema(
    0x0103,
    "Strict",
    (
        Field(1, "key", Kind.BYTES, size=32),
        Field(2, "name", Kind.TEXT, max_len=48),
        Field(3, "count", Kind.UINT),
        Field(4, "inner", Kind.RECORD, schema=INNER, max_len=INNER_MAX),
        Field(5, "ok", Kind.BOOL),
    ),
)

# A field allowed the largest length the module permits, to show that a
# length prefix that is within the limit but not backed by data allocates
# nothing either.
BIG = Schema(0x0104, "Big", (Field(1, "data", Kind.BYTES, max_len=MAX_FIELD_LEN),))

# A list whose byte bound, not its item bound, is the binding limit.
TIGHT_LIST = Schema(
    0x0105,
    "TightList",
    (Field(1, "items", Kind.LIST, schema=INNER, max_len=40, max_items=10),),
)

SECRET = b"SECRET-PAYLOAD-DO-NOT-ECHO!!!!!!"  # 32 bytes, fits OUTER.key
assert len(SECRET) == 32

# --------------------------------------------------------------------------
# Helpers that spell the layout out by hand, independently of wire.encode.


def header(type_id: int, version: int = WIRE_VERSION) -> bytes:
    """``version:u8 || type:u16be``."""
    return struct.pack(">BH", version, type_id)


def fld(tag: int, value: bytes, length: int | None = None) -> bytes:
    """``tag:u8 || length:u32be || value``; ``length`` may lie."""
    return struct.pack(">BI", tag, len(value) if length is None else length) + value


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def item(record: bytes, length: int | None = None) -> bytes:
    """One list item: ``length:u32be || record``; ``length`` may lie."""
    return struct.pack(">I", len(record) if length is None else length) + record


def inner_raw(id_: int = 7, label: bytes = b"seven", flag: bytes | None = None) -> bytes:
    out = header(INNER.type_id) + fld(1, u64(id_)) + fld(2, label)
    if flag is not None:
        out += fld(3, flag)
    return out


def outer_fields() -> dict[int, bytes]:
    """Raw values of a valid OUTER record, by tag."""
    return {
        1: SECRET,
        2: b"blob",
        3: b"Tehran",
        4: u64(42),
        5: b"\x01",
        6: inner_raw(),
        7: item(inner_raw(1, b"one")) + item(inner_raw(2, b"two", b"\x00")),
        9: b"note",
    }


def outer_raw(fields: Mapping[int, bytes] | None = None) -> bytes:
    fs = outer_fields() if fields is None else fields
    return header(OUTER.type_id) + b"".join(fld(t, v) for t, v in sorted(fs.items()))


def replaced(tag: int, value: bytes) -> bytes:
    fs = outer_fields()
    fs[tag] = value
    return outer_raw(fs)


def without(tag: int) -> bytes:
    fs = outer_fields()
    del fs[tag]
    return outer_raw(fs)


def assert_decodes_to(
    schema: Schema, decoded: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """``decoded`` (from wire.decode) carries exactly ``values``.

    Nested records and list items come back as bytes; they are decoded in
    turn and compared with the mapping they were made from, so this check
    does not lean on ``encode`` for the expected value.
    """
    assert set(decoded) == {f.name for f in schema.fields}
    for f in schema.fields:
        want = values.get(f.name)
        got = decoded[f.name]
        if want is None:
            assert got is None, f.name
        elif f.kind is Kind.RECORD:
            assert f.schema is not None
            assert type(got) is bytes
            assert_decodes_to(f.schema, decode(f.schema, got), want)
        elif f.kind is Kind.LIST:
            assert f.schema is not None
            assert type(got) is list
            assert len(got) == len(want)
            for got_item, want_item in zip(got, want, strict=True):
                assert type(got_item) is bytes
                assert_decodes_to(f.schema, decode(f.schema, got_item), want_item)
        else:
            assert type(got) is type(want) or f.kind is Kind.BYTES, f.name
            assert got == want, f.name


def decode_or_refuse(schema: Schema, data: bytes) -> None:
    """Decode must refuse with MalformedInput, or accept only canonical bytes.

    Any other exception type escapes and fails the calling test.
    """
    try:
        decoded = decode(schema, data)
    except MalformedInput:
        return
    # Accepted: then this must be the one canonical encoding of its value.
    assert encode(schema, decoded) == data


# --------------------------------------------------------------------------
# Hypothesis strategies for valid values.


def nfc_text(max_bytes: int) -> st.SearchStrategy[str]:
    """NFC text without NUL whose UTF-8 form fits in ``max_bytes``."""

    def fit(s: str) -> str:
        s = unicodedata.normalize("NFC", s)
        s = s.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        return unicodedata.normalize("NFC", s)

    chars = st.characters(codec="utf-8", exclude_characters="\x00")
    return (
        st.text(alphabet=chars, max_size=max_bytes)
        .map(fit)
        .filter(lambda s: len(s.encode("utf-8")) <= max_bytes)
    )


uints = st.integers(min_value=0, max_value=2**64 - 1)

inner_values = st.fixed_dictionaries(
    {"id": uints, "label": nfc_text(32)},
    optional={"flag": st.none() | st.booleans()},
)

outer_values = st.fixed_dictionaries(
    {
        "key": st.binary(min_size=32, max_size=32),
        "name": nfc_text(48),
        "count": uints,
        "ok": st.booleans(),
    },
    optional={
        "blob": st.none() | st.binary(max_size=64),
        "inner": st.none() | inner_values,
        "items": st.none() | st.lists(inner_values, max_size=4),
        "note": st.none() | nfc_text(16),
    },
)

strict_values = st.fixed_dictionaries(
    {
        "key": st.binary(min_size=32, max_size=32),
        "name": nfc_text(48),
        "count": uints,
        "inner": inner_values,
        "ok": st.booleans(),
    }
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# Known answer: the layout byte for byte.


def test_layout_known_answer() -> None:
    # Spelled out from the module docstring, not from the encoder.
    expected = (
        b"\x01"  # version 1
        b"\x01\x01"  # type 0x0101
        b"\x01\x00\x00\x00\x08" + b"\x00\x00\x00\x00\x00\x00\x01\x00"  # id = 256
        b"\x02\x00\x00\x00\x03" + b"abc"  # label
        b"\x03\x00\x00\x00\x01" + b"\x01"  # flag = True
    )
    assert encode(INNER, {"id": 256, "label": "abc", "flag": True}) == expected
    assert decode(INNER, expected) == {"id": 256, "label": "abc", "flag": True}


def test_hand_built_outer_decodes() -> None:
    decoded = decode(OUTER, outer_raw())
    assert decoded["key"] == SECRET
    assert decoded["name"] == "Tehran"
    assert decoded["count"] == 42
    assert decoded["ok"] is True
    assert decoded["inner"] == inner_raw()
    assert decoded["items"] == [inner_raw(1, b"one"), inner_raw(2, b"two", b"\x00")]
    assert decode(INNER, decoded["items"][1])["flag"] is False
    assert encode(OUTER, decoded) == outer_raw()


def test_absent_optionals_decode_to_none_and_are_omitted() -> None:
    values = {"key": bytes(32), "name": "", "count": 0, "ok": False}
    data = encode(OUTER, values)
    # Only the four required fields are written, in tag order.
    assert data == header(OUTER.type_id) + fld(1, bytes(32)) + fld(3, b"") + fld(4, u64(0)) + fld(
        5, b"\x00"
    )
    assert decode(OUTER, data) == {
        **values,
        "blob": None,
        "inner": None,
        "items": None,
        "note": None,
    }
    # An explicit None is the same as absence.
    assert encode(OUTER, {**values, "blob": None, "note": None}) == data


def test_empty_values_are_distinct_from_absent() -> None:
    base = {"key": bytes(32), "name": "n", "count": 0, "ok": False}
    with_empty = encode(OUTER, {**base, "blob": b"", "items": [], "note": ""})
    decoded = decode(OUTER, with_empty)
    assert decoded["blob"] == b""
    assert decoded["items"] == []
    assert decoded["note"] == ""
    assert with_empty != encode(OUTER, base)


def test_boundaries_are_accepted() -> None:
    values = {
        "key": b"\xff" * 32,
        "blob": b"b" * 64,  # exactly max_len
        "name": "\u00e9" * 24,  # 48 UTF-8 bytes, exactly max_len
        "count": 2**64 - 1,
        "ok": True,
        "items": [{"id": 0, "label": "x" * 32, "flag": True}] * 4,  # exactly max_items
    }
    decoded = decode(OUTER, encode(OUTER, values))
    assert_decodes_to(OUTER, decoded, values)
    assert encode(OUTER, decoded) == encode(OUTER, values)


def test_nested_given_as_bytes_or_mapping_encode_the_same() -> None:
    inner = {"id": 5, "label": "five"}
    as_map = encode(OUTER, {**_base(), "inner": inner, "items": [inner, inner]})
    pre = encode(INNER, inner)
    as_bytes = encode(OUTER, {**_base(), "inner": pre, "items": [pre, inner]})
    assert as_map == as_bytes


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = outer_raw()
    expected = decode(OUTER, data)
    assert decode(OUTER, bytearray(data)) == expected
    assert decode(OUTER, memoryview(data)) == expected


def test_peek_type() -> None:
    assert peek_type(outer_raw()) == OUTER.type_id
    assert peek_type(header(0xFFFF)) == 0xFFFF
    with pytest.raises(MalformedInput):
        peek_type(b"\x01\x00")  # shorter than the 3-byte header
    with pytest.raises(UnsupportedVersion):
        peek_type(header(OUTER.type_id, version=2))


def _base() -> dict[str, Any]:
    return {"key": bytes(32), "name": "n", "count": 1, "ok": True}


# --------------------------------------------------------------------------
# Round trips.


@settings(max_examples=200, deadline=None)
@given(outer_values)
def test_roundtrip_outer(values: dict[str, Any]) -> None:
    data = encode(OUTER, values)
    decoded = decode(OUTER, data)
    assert_decodes_to(OUTER, decoded, values)
    # Canonical: the decoded value (nested parts as bytes) re-encodes exactly.
    assert encode(OUTER, decoded) == data
    assert peek_type(data) == OUTER.type_id


@settings(max_examples=100, deadline=None)
@given(inner_values)
def test_roundtrip_inner(values: dict[str, Any]) -> None:
    data = encode(INNER, values)
    decoded = decode(INNER, data)
    assert decoded == {"flag": None, **values}
    assert encode(INNER, decoded) == data


# --------------------------------------------------------------------------
# Hostile input: only MalformedInput, and whatever is accepted is canonical.


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_malformed(data: bytes) -> None:
    decode_or_refuse(OUTER, data)
    decode_or_refuse(INNER, data)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_header_only_malformed(tail: bytes) -> None:
    # Past the header so the field parser itself is exercised.
    decode_or_refuse(OUTER, header(OUTER.type_id) + tail)
    decode_or_refuse(INNER, header(INNER.type_id) + tail)


# Raw values by tag that are plausible for OUTER, valid or subtly not, so the
# fuzzer reaches deep into the value checks instead of dying at the first tag.
PLAUSIBLE: dict[int, list[bytes]] = {
    1: [SECRET, bytes(32), SECRET[:31]],
    2: [b"", b"blob", b"b" * 64, b"b" * 65],
    3: [b"", b"Tehran", "\u00e9".encode(), "e\u0301".encode(), b"a\x00", b"\xc3"],
    4: [u64(0), u64(2**64 - 1), u64(1)[1:]],
    5: [b"\x00", b"\x01", b"\x02"],
    6: [inner_raw(), inner_raw(flag=b"\x01"), inner_raw(flag=b"\x02"), inner_raw()[:-1]],
    7: [
        b"",
        item(inner_raw()),
        item(inner_raw()) * 4,
        item(inner_raw()) * 5,
        item(inner_raw())[:-1],
        item(inner_raw(), 0xFFFFFFFF),
    ],
    8: [b"x"],
    9: [b"", b"note", b"n" * 17],
    255: [b""],
}


# Hypothesis favours small integers, so odds are spelled out as samples.
ONE_IN_FOUR = st.sampled_from([False, False, False, True])
ONE_IN_EIGHT = st.sampled_from([False] * 7 + [True])


@st.composite
def field_soup(draw: st.DrawFn) -> bytes:
    """Framed fields: mostly ascending known tags with plausible values, plus
    random tags, payloads, duplicates and lying lengths."""
    tags = sorted({1, 3, 4, 5} | draw(st.sets(st.sampled_from(sorted(PLAUSIBLE)))))
    if draw(ONE_IN_FOUR):
        # Now and then a required field goes missing.
        tags.remove(draw(st.sampled_from([1, 3, 4, 5])))
    if draw(ONE_IN_FOUR):
        # Now and then a repeated or misplaced field.
        tags.insert(draw(st.integers(0, len(tags))), draw(st.sampled_from(tags)))
    out = bytearray(header(OUTER.type_id))
    for tag in tags:
        # Mostly plausible values with honest lengths (one in eight lies), so
        # that a fair share of soups decode and the canonical check runs.
        if not draw(ONE_IN_EIGHT):
            payload = draw(st.sampled_from(PLAUSIBLE[tag]))
        else:
            payload = draw(st.binary(max_size=40))
        length = len(payload)
        if draw(ONE_IN_EIGHT):
            length = draw(st.integers(0, 100) | st.sampled_from([0xFFFFFFFF, MAX_FIELD_LEN]))
        out += fld(tag, payload, length)
    return bytes(out)


@FUZZ
@given(field_soup())
def test_field_soup_only_malformed(data: bytes) -> None:
    decode_or_refuse(OUTER, data)


@st.composite
def mutated_encoding(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data = bytearray(encode(OUTER, draw(outer_values)))
    original = bytes(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "append", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return original, bytes(data)


@FUZZ
@given(mutated_encoding())
def test_mutations_refused_or_canonical(pair: tuple[bytes, bytes]) -> None:
    _original, data = pair
    decode_or_refuse(OUTER, data)


@settings(max_examples=50, deadline=None)
@given(strict_values)
def test_every_proper_prefix_is_refused(values: dict[str, Any]) -> None:
    # All fields are required, so a record cut anywhere is incomplete: a
    # truncation must never be mistaken for a shorter valid message.
    data = encode(STRICT, values)
    for cut in range(len(data)):
        with pytest.raises(MalformedInput):
            decode(STRICT, data[:cut])


@settings(max_examples=50, deadline=None)
@given(strict_values, st.binary(min_size=1, max_size=16))
def test_every_extension_is_refused(values: dict[str, Any], extra: bytes) -> None:
    # The last field is tag 5 and every tag above it is unknown, so bytes
    # appended after a complete record are always refused.
    data = encode(STRICT, values)
    with pytest.raises(MalformedInput):
        decode(STRICT, data + extra)


def test_every_header_byte_change_is_refused() -> None:
    data = outer_raw()
    for pos in range(3):
        for value in range(256):
            if value == data[pos]:
                continue
            bad = data[:pos] + bytes([value]) + data[pos + 1 :]
            with pytest.raises(MalformedInput) as info:
                decode(OUTER, bad)
            # Byte 0 is the version: a different version is "unsupported";
            # bytes 1-2 are the type: a different type is plain malformed.
            assert isinstance(info.value, UnsupportedVersion) == (pos == 0)


# --------------------------------------------------------------------------
# Explicit refusals. Each case: schema, bytes, and why they are bad.

BAD: list[tuple[str, Schema, bytes]] = [
    # Nothing, or less than a header, is not a record.
    ("empty", OUTER, b""),
    ("short-header", OUTER, header(OUTER.type_id)[:2]),
    # Bytes after the last field would make two encodings of one value.
    ("trailing-byte", OUTER, outer_raw() + b"\x00"),
    ("trailing-field-header", OUTER, outer_raw() + fld(10, b"")[:3]),
    # A record of another type must not be read as this one (type confusion).
    ("wrong-type-id", OUTER, header(INNER.type_id) + outer_raw()[3:]),
    ("other-record", OUTER, inner_raw()),
    # A repeated field: which copy wins would be ambiguous.
    (
        "duplicate-field",
        OUTER,
        header(OUTER.type_id) + fld(1, SECRET) + fld(1, SECRET) + outer_raw()[3 + 37 :],
    ),
    # Fields must be in ascending tag order: otherwise many encodings per value.
    (
        "out-of-order",
        OUTER,
        header(OUTER.type_id)
        + fld(3, b"Tehran")
        + fld(1, SECRET)
        + outer_raw({k: v for k, v in outer_fields().items() if k > 3})[3:],
    ),
    # Unknown tags (in a gap, or past the end) carry unauthenticated meaning.
    ("unknown-tag-gap", OUTER, outer_raw({**outer_fields(), 8: b"x"})),
    ("unknown-tag-255", OUTER, outer_raw({**outer_fields(), 255: b"x"})),
    # A required field left out.
    ("missing-required", OUTER, without(4)),
    ("missing-first", OUTER, without(1)),
    ("header-only", OUTER, header(OUTER.type_id)),
    # A value longer than the field's max_len.
    ("oversize-bytes", OUTER, replaced(2, b"b" * 65)),
    ("oversize-text", OUTER, replaced(9, b"n" * 17)),
    # A length prefix larger than the limit, with no data behind it: must be
    # refused from the prefix alone.
    (
        "huge-length",
        OUTER,
        header(OUTER.type_id) + fld(1, SECRET) + fld(2, b"", 0xFFFFFFFF),
    ),
    ("huge-length-uint", OUTER, header(OUTER.type_id) + fld(1, SECRET) + fld(4, b"", 0xFFFFFFFF)),
    # A length within the limit but past the end of the input.
    ("truncated-value", OUTER, header(OUTER.type_id) + fld(1, SECRET) + fld(2, b"abc", 10)),
    # One byte short at the very end: the last (optional) field must not be
    # read as a shorter value.
    ("truncated-last-byte", OUTER, outer_raw()[:-1]),
    ("truncated-field-header", OUTER, outer_raw()[:-7]),
    # Exact-size BYTES: a key of the wrong size is not a key.
    ("bytes-size-short", OUTER, replaced(1, SECRET[:31])),
    ("bytes-size-long", OUTER, replaced(1, SECRET + b"!")),
    ("bytes-size-empty", OUTER, replaced(1, b"")),
    # UINT is exactly 8 bytes: shorter/longer forms would be non-canonical.
    ("uint-7-bytes", OUTER, replaced(4, u64(42)[1:])),
    ("uint-9-bytes", OUTER, replaced(4, b"\x00" + u64(42))),
    ("uint-empty", OUTER, replaced(4, b"")),
    # BOOL is exactly one byte 0 or 1: anything else is a second "true".
    ("bool-2", OUTER, replaced(5, b"\x02")),
    ("bool-ff", OUTER, replaced(5, b"\xff")),
    ("bool-empty", OUTER, replaced(5, b"")),
    ("bool-2-bytes", OUTER, replaced(5, b"\x00\x01")),
    # TEXT must be valid UTF-8 (no overlong forms, surrogates, cut sequences).
    ("utf8-invalid-byte", OUTER, replaced(3, b"\xff")),
    ("utf8-overlong-slash", OUTER, replaced(3, b"\xc0\xaf")),
    ("utf8-overlong-nul", OUTER, replaced(3, b"a\xc0\x80b")),
    ("utf8-surrogate", OUTER, replaced(3, b"\xed\xa0\x80")),
    ("utf8-truncated", OUTER, replaced(3, b"\xe2\x82")),
    ("utf8-beyond-unicode", OUTER, replaced(3, b"\xf4\x90\x80\x80")),
    # TEXT must be NFC: "e" + combining acute looks like "é" but differs.
    ("text-not-nfc", OUTER, replaced(3, "Te\u0301hran".encode())),
    ("text-not-nfc-singleton", OUTER, replaced(3, "\u212b".encode())),  # Angstrom sign
    # NUL in text truncates it in C-string consumers: a display spoofing aid.
    ("text-nul", OUTER, replaced(3, b"Teh\x00ran")),
    ("text-only-nul", OUTER, replaced(3, b"\x00")),
    # A LIST bounds its item count.
    ("list-too-many-items", OUTER, replaced(7, item(inner_raw()) * 5)),
    # List framing: item length cut short, or pointing past the list.
    ("list-truncated-item", OUTER, replaced(7, item(inner_raw(), len(inner_raw()) + 1))),
    ("list-truncated-length", OUTER, replaced(7, item(inner_raw()) + b"\x00\x00")),
    ("list-item-huge-length", OUTER, replaced(7, item(b"", 0xFFFFFFFF))),
    # A LIST bounds its total encoded length too.
    ("list-over-max-len", TIGHT_LIST, header(TIGHT_LIST.type_id) + fld(1, item(inner_raw()) * 2)),
    # Nested records and list items are checked all the way down.
    ("nested-bool-2", OUTER, replaced(6, inner_raw(flag=b"\x02"))),
    ("nested-wrong-type", OUTER, replaced(6, header(OUTER.type_id) + inner_raw()[3:])),
    ("nested-bad-version", OUTER, replaced(6, header(INNER.type_id, version=2) + inner_raw()[3:])),
    ("nested-trailing", OUTER, replaced(6, inner_raw() + b"\x00")),
    ("nested-empty", OUTER, replaced(6, b"")),
    ("nested-missing-field", OUTER, replaced(6, header(INNER.type_id) + fld(1, u64(1)))),
    ("list-item-invalid", OUTER, replaced(7, item(inner_raw()) + item(inner_raw(label=b"\xff")))),
    ("list-item-empty", OUTER, replaced(7, item(b""))),
    ("list-item-trailing", OUTER, replaced(7, item(inner_raw() + b"\x00"))),
]


def test_bad_cases_differ_from_the_valid_record() -> None:
    # Guard against a helper silently producing the valid record itself.
    good = outer_raw()
    assert decode(OUTER, good)
    for name, _schema, data in BAD:
        assert data != good, name


@pytest.mark.parametrize(("name", "schema", "data"), BAD, ids=[n for n, _, _ in BAD])
def test_refused(name: str, schema: Schema, data: bytes) -> None:
    with pytest.raises(MalformedInput) as info:
        decode(schema, data)
    # Only a version byte may be reported as "unsupported"; every other defect
    # is plain malformed input.
    if "version" not in name:
        assert not isinstance(info.value, UnsupportedVersion)
    # Error messages never echo the bytes that failed.
    message = str(info.value)
    assert "SECRET" not in message
    assert len(message) < 200


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_unknown_version_is_unsupported(version: int) -> None:
    data = header(OUTER.type_id, version=version) + outer_raw()[3:]
    with pytest.raises(UnsupportedVersion):
        decode(OUTER, data)


def test_huge_length_prefixes_allocate_nothing() -> None:
    # A hostile u32 length must be judged from the prefix alone: if the
    # decoder allocated or copied "length" bytes first, memory would blow up.
    cases = [
        (OUTER, header(OUTER.type_id) + fld(1, SECRET) + fld(2, b"", 0xFFFFFFFF)),
        (BIG, header(BIG.type_id) + fld(1, b"x" * 10, MAX_FIELD_LEN)),
        (BIG, header(BIG.type_id) + fld(1, b"", 0xFFFFFFFF)),
        (OUTER, replaced(7, item(b"", 0xFFFFFFFF))),
    ]
    for schema, data in cases:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedInput):
                decode(schema, data)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, (schema.name, peak)


# --------------------------------------------------------------------------
# Encoder misuse: a bug in the caller, so TypeError/ValueError.

MISUSE: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("bytes-given-str", {"key": "x" * 32}, TypeError),
    ("bytes-given-int", {"key": 0}, TypeError),
    ("bytes-wrong-size", {"key": bytes(31)}, ValueError),
    ("bytes-too-long", {"blob": bytes(65)}, ValueError),
    ("text-given-bytes", {"name": b"Tehran"}, TypeError),
    ("text-too-long-in-utf8", {"note": "\u00e9" * 9}, ValueError),  # 9 chars, 18 bytes
    ("text-not-nfc", {"name": "e\u0301"}, ValueError),
    ("text-nul", {"name": "a\x00b"}, ValueError),
    ("text-lone-surrogate", {"name": "\ud800"}, ValueError),
    ("uint-given-bool", {"count": True}, TypeError),
    ("uint-given-float", {"count": 1.0}, TypeError),
    ("uint-given-str", {"count": "1"}, TypeError),
    ("uint-negative", {"count": -1}, ValueError),
    ("uint-too-big", {"count": 2**64}, ValueError),
    ("bool-given-int", {"ok": 1}, TypeError),
    ("bool-given-str", {"ok": "true"}, TypeError),
    ("record-given-str", {"inner": "x"}, TypeError),
    ("record-given-int", {"inner": 3}, TypeError),
    ("record-bad-inner-value", {"inner": {"id": -1, "label": "x"}}, ValueError),
    ("record-missing-inner-field", {"inner": {"id": 1}}, ValueError),
    ("list-given-dict", {"items": {"id": 1, "label": "x"}}, TypeError),
    ("list-given-str", {"items": "abc"}, TypeError),
    ("list-too-many", {"items": [{"id": 1, "label": "x"}] * 5}, ValueError),
    ("list-item-given-int", {"items": [1]}, TypeError),
    ("missing-required", {"count": None}, ValueError),
    ("unknown-field", {"colour": "red"}, ValueError),
]


@pytest.mark.parametrize(
    ("change", "error"), [(c, e) for _, c, e in MISUSE], ids=[n for n, _, _ in MISUSE]
)
def test_encoder_misuse(change: dict[str, Any], error: type[Exception]) -> None:
    values = {**_base(), **change}
    with pytest.raises(error):
        encode(OUTER, values)


def test_encoder_missing_required_when_absent() -> None:
    values = _base()
    del values["key"]
    with pytest.raises(ValueError, match="required"):
        encode(OUTER, values)


def test_encoder_list_over_byte_limit() -> None:
    # Two items fit max_items=10 but not max_len=40.
    with pytest.raises(ValueError, match="longer than"):
        encode(TIGHT_LIST, {"items": [{"id": 1, "label": "x"}] * 2})


@pytest.mark.parametrize(
    "nested",
    [
        pytest.param(b"", id="empty"),
        pytest.param(inner_raw(flag=b"\x02"), id="bool-2"),
        pytest.param(encode(OUTER, _base()), id="wrong-type"),
    ],
)
def test_encoder_refuses_invalid_preencoded_nested_with_value_error(nested: bytes) -> None:
    # The module docstring: "encoding raises ValueError or TypeError on values
    # that do not fit the schema (a bug in the caller)". Invalid pre-encoded
    # nested bytes are such a value; MalformedInput would misreport a caller
    # bug as hostile input.
    with pytest.raises((ValueError, TypeError)):
        encode(OUTER, {**_base(), "inner": nested})
    with pytest.raises((ValueError, TypeError)):
        encode(OUTER, {**_base(), "items": [nested]})


# --------------------------------------------------------------------------
# Schema construction errors.

SCHEMA_ERRORS: list[tuple[str, Callable[[], object], str]] = [
    (
        "tags-not-ascending",
        lambda: Schema(1, "S", (Field(2, "a", Kind.UINT), Field(1, "b", Kind.UINT))),
        "ascending",
    ),
    (
        "duplicate-tags",
        lambda: Schema(1, "S", (Field(1, "a", Kind.UINT), Field(1, "b", Kind.UINT))),
        "unique",
    ),
    (
        "duplicate-names",
        lambda: Schema(1, "S", (Field(1, "a", Kind.UINT), Field(2, "a", Kind.BOOL))),
        "duplicate field name",
    ),
    ("type-id-negative", lambda: Schema(-1, "S", ()), "u16"),
    ("type-id-over-u16", lambda: Schema(0x10000, "S", ()), "u16"),
    ("record-without-schema", lambda: Field(1, "r", Kind.RECORD, max_len=10), "needs a schema"),
    (
        "list-without-schema",
        lambda: Field(1, "l", Kind.LIST, max_len=10, max_items=1),
        "needs a schema",
    ),
    (
        "list-without-max-items",
        lambda: Field(1, "l", Kind.LIST, schema=INNER, max_len=10),
        "max_items",
    ),
    ("bytes-without-limit", lambda: Field(1, "b", Kind.BYTES), "max_len or size"),
    ("text-without-limit", lambda: Field(1, "t", Kind.TEXT), "max_len or size"),
    (
        "bytes-over-global-limit",
        lambda: Field(1, "b", Kind.BYTES, max_len=MAX_FIELD_LEN + 1),
        "max_len or size",
    ),
    ("bytes-size-zero", lambda: Field(1, "b", Kind.BYTES, size=0), "max_len or size"),
    ("tag-zero", lambda: Field(0, "u", Kind.UINT), "1..255"),
    ("tag-256", lambda: Field(256, "u", Kind.UINT), "1..255"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in SCHEMA_ERRORS], ids=[n for n, _, _ in SCHEMA_ERRORS]
)
def test_schema_construction_errors(make: Callable[[], object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        make()


def test_schema_construction_accepts_valid_edges() -> None:
    # The same constructors succeed at the edges, so the refusals above are
    # about the defect and not about the constructor failing on everything.
    Schema(0, "S", ())
    Schema(0xFFFF, "S", (Field(1, "a", Kind.UINT), Field(255, "b", Kind.BOOL)))
    Field(1, "b", Kind.BYTES, max_len=MAX_FIELD_LEN)
    Field(1, "b", Kind.BYTES, size=1)
    Field(1, "r", Kind.RECORD, schema=INNER, max_len=10)
    Field(1, "l", Kind.LIST, schema=INNER, max_len=10, max_items=1)


def test_every_record_type_id_is_unique() -> None:
    """Two schemas with one type id would let one record pass for another:
    import every module and check the registry (docs/PROTOCOL.md §2)."""
    import importlib
    import pkgutil

    import securechan

    found: dict[int, Schema] = {}
    for mod in pkgutil.walk_packages(securechan.__path__, "securechan."):
        if mod.name.split(".")[-1] in {"cli", "__main__"}:
            continue
        module = importlib.import_module(mod.name)
        found.update({id(o): o for o in vars(module).values() if isinstance(o, Schema)})
    schemas = found.values()
    seen: dict[int, str] = {}
    for schema in schemas:
        other = seen.setdefault(schema.type_id, schema.name)
        assert other == schema.name, f"type 0x{schema.type_id:04X}: {other} and {schema.name}"
    assert len(seen) >= 40
