"""atheris harness: every binary record decoder of securechan.

The input is one wire record. Its type id (bytes 1-2) picks the decoder, so
the fuzzer learns the types from the seed corpus (one valid record of each,
written by ``make_corpus.py``) and mutates within each. For every input:

1. the generic ``wire.decode`` of that type's schema raises only
   ``MalformedInput``, and anything it accepts re-encodes to the same bytes;
2. the typed decoder (``from_bytes`` and friends) raises only
   ``SecurechanError`` subclasses, and anything it accepts re-encodes to the
   same bytes where the type has an encoder.

Any other exception, or a broken invariant (``AssertionError``), is a crash.

    python fuzz/fuzz_wire.py -max_total_time=600 fuzz/corpus/wire fuzz/seeds/wire
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

from _fixtures import BOB, check, run

from securechan import documents, wire
from securechan.client import channel
from securechan.errors import MalformedInput, SecurechanError
from securechan.identity import contacts, keys, keystore
from securechan.identity.contacts import Contact
from securechan.identity.keys import Identity, PublicIdentity
from securechan.protocol import (
    address,
    handshake,
    payload,
    prekeys,
    ratchet,
    sealed,
    session,
)
from securechan.protocol.address import ContactAddress, ContactCard, QueueGrant
from securechan.protocol.handshake import FirstMessage, ReplayGuard
from securechan.protocol.payload import FileChunk, Payload, Receipt, SignedPayload
from securechan.protocol.prekeys import Prekey, PrekeyBundle, PrekeyStore
from securechan.protocol.ratchet import RatchetHeader, state_from_bytes, state_to_bytes
from securechan.protocol.sealed import open_state
from securechan.protocol.session import Session, message_chain

_MODULES: tuple[types.ModuleType, ...] = (
    keys,
    keystore,
    contacts,
    documents,
    prekeys,
    handshake,
    ratchet,
    session,
    sealed,
    address,
    payload,
    channel,
)


def _schemas() -> dict[int, wire.Schema]:
    """Every wire schema the package defines, by type id."""
    found: dict[int, wire.Schema] = {}
    for module in _MODULES:
        for value in vars(module).values():
            if isinstance(value, wire.Schema):
                found[value.type_id] = value
    return found


SCHEMAS = _schemas()
STORAGE_KEY = BOB.storage_key()


def _to_bytes(value: Any) -> bytes:
    encoded: bytes = value.to_bytes()
    return encoded


def _payload_bytes(p: Payload) -> bytes:
    # Re-encode from the fields, not from the cached raw input.
    return dataclasses.replace(p, raw=None, parsed=None).to_bytes()


def _signed_payload_bytes(s: SignedPayload) -> bytes:
    return wire.encode(
        payload.SIGNED_PAYLOAD, {"payload": _payload_bytes(s.payload), "signature": s.signature}
    )


def _header_bytes(h: RatchetHeader) -> bytes:
    return dataclasses.replace(h, raw=None).to_bytes()


def _contacts_file(data: bytes) -> None:
    # What Contacts._load does with the file's bytes.
    for item in wire.decode(contacts.CONTACTS, data)["contacts"]:
        Contact.from_bytes(item)


def _open_sealed(data: bytes) -> None:
    open_state(STORAGE_KEY, data, kind="session", object_id=b"fuzz", min_generation=1)


def _message_chain(data: bytes) -> None:
    # Never raises: None for anything that is not a message.
    message_chain(data)


Decoder = Callable[[bytes], Any]
Encoder = Callable[[Any], bytes]

# type id -> (typed decoder, encoder of what it returns or None)
TYPED: dict[int, tuple[Decoder, Encoder | None]] = {
    0x0002: (PublicIdentity.from_bytes, _to_bytes),
    0x0003: (Identity.from_secret_bytes, lambda v: v.secret_bytes()),
    0x0020: (Contact.from_bytes, _to_bytes),
    0x0021: (_contacts_file, None),
    0x0030: (documents.DocumentStatement.from_bytes, _to_bytes),
    0x0031: (documents.DocumentSignature.from_bytes_unverified, _to_bytes),
    0x0041: (Prekey.from_bytes, _to_bytes),
    0x0042: (PrekeyBundle.from_bytes, _to_bytes),
    0x0044: (PrekeyStore.from_bytes, _to_bytes),
    0x0052: (FirstMessage.from_bytes, _to_bytes),
    0x0053: (ReplayGuard.from_bytes, _to_bytes),
    0x0060: (RatchetHeader.from_bytes, _header_bytes),
    0x0061: (state_from_bytes, state_to_bytes),
    0x0062: (_message_chain, None),
    0x0070: (Payload.from_bytes, _payload_bytes),
    0x0071: (SignedPayload.from_bytes_unverified, _signed_payload_bytes),
    0x0073: (FileChunk.from_bytes, _to_bytes),
    0x0074: (Receipt.from_bytes, _to_bytes),
    0x0080: (lambda d: Session.from_bytes(BOB, d), _to_bytes),
    0x0091: (_open_sealed, None),
    0x00A0: (ContactAddress.from_bytes, _to_bytes),
    0x00A2: (ContactCard.from_bytes, _to_bytes),
    0x00A3: (QueueGrant.from_bytes, _to_bytes),
}


def test_one_input(data: bytes) -> None:
    try:
        type_id = wire.peek_type(data)
    except MalformedInput:
        return
    schema = SCHEMAS.get(type_id)
    if schema is None:
        return
    try:
        decoded = wire.decode(schema, data)
    except MalformedInput:
        pass
    else:
        check(wire.encode(schema, decoded) == data, f"{schema.name}: accepted a non-canonical form")
    typed = TYPED.get(type_id)
    if typed is None:
        return
    decoder, encoder = typed
    try:
        value = decoder(data)
    except SecurechanError:
        return
    if encoder is not None:
        check(encoder(value) == data, f"{schema.name}: typed decoder accepted a non-canonical form")


if __name__ == "__main__":
    run(test_one_input)
