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
:func:`record` (:mod:`securechan.wire_records`, re-exported here, as is
the codec, :mod:`securechan.wire_codec`); the
:class:`Schema` is derived from them and the dict API (:func:`encode`,
:func:`decode`) is what both run. Every field declares a maximum length,
checked before the value is sliced or parsed, so a hostile length prefix
cannot make the decoder allocate or loop.
Decoding raises only :class:`~securechan.errors.MalformedInput` (or its
subclass ``UnsupportedVersion``) on bad input; encoding raises ``ValueError``
or ``TypeError`` on values that do not fit the schema (a bug in the caller).
"""

from __future__ import annotations

from securechan.wire_codec import (
    MAX_FIELD_LEN,
    WIRE_VERSION,
    Field,
    Kind,
    Schema,
    decode,
    encode,
    peek_type,
)
from securechan.wire_records import (
    Record,
    Spec,
    boolean,
    bytes_,
    decode_record,
    encode_record,
    list_,
    nested,
    record,
    schema_field,
    schema_of,
    text,
    uint,
)

__all__ = [
    "MAX_FIELD_LEN",
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
    "schema_field",
    "schema_of",
    "text",
    "uint",
]
