"""Contact addresses, contact cards, sealed prekey blobs and queue grants.

A **contact address** is where strangers' first messages go: a relay URL, the
send id of a public queue, and a 32-byte *address key*. The owner seals its
prekeys under the address key before publishing them, so the relay stores
blobs it cannot read or link to an identity (its database holds no
fingerprints), while anyone given the address can open them and verify the
prekeys against the owner's pinned identity.

A **contact card** is a public identity with its addresses, signed by the
identity (context ``securechan/v1/contact-card``): the one file a delegation
hands to another.

A **queue grant** gives the peer the right to send to a private queue: relay
URL, send id, and the Ed25519 seed of the queue's sender key. It only travels
inside end-to-end encrypted, signed payloads (content type ``QUEUE``).
``docs/PROTOCOL.md`` §18 is the normative text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from securechan import armor, wire
from securechan.errors import BadSignature, MalformedInput, VerificationFailed
from securechan.identity.keys import PUBLIC_IDENTITY, Identity, PublicIdentity
from securechan.primitives import HYBRID_SIGNATURE_SIZE, aead_decrypt, aead_encrypt

__all__ = [
    "ContactAddress",
    "ContactCard",
    "QueueGrant",
    "open_prekey_blob",
    "seal_prekey_blob",
]

CONTEXT_CARD = b"securechan/v1/contact-card"
_BLOB_AAD = b"securechan/v1/prekey-blob"
MAX_ADDRESSES = 8
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]{1,255}(/[A-Za-z0-9._~\-/]{0,200})?")


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not _URL.fullmatch(url):
        raise MalformedInput("a relay URL is http(s)://host[:port][/path]")
    return url


@wire.record(0x00A0, "ContactAddress")
@dataclass(frozen=True, slots=True, kw_only=True)
class ContactAddress(wire.Record):
    """A public queue for first messages, with the key that seals prekeys."""

    relay: Annotated[str, wire.text(1, max_len=512)]
    sid: Annotated[bytes, wire.bytes_(2, size=16)]
    key: Annotated[bytes, wire.bytes_(3, size=32)]

    def __post_init__(self) -> None:
        _check_url(self.relay)


@wire.record(0x00A1, "ContactCardBody")
@dataclass(frozen=True, slots=True, kw_only=True)
class _CardBody(wire.Record):
    # What the identity signs.
    identity: Annotated[PublicIdentity, wire.nested(1, max_len=8192, of=PUBLIC_IDENTITY)]
    created: Annotated[int, wire.uint(2)]
    addresses: Annotated[
        tuple[ContactAddress, ...],
        wire.list_(3, max_len=MAX_ADDRESSES * 700, max_items=MAX_ADDRESSES),
    ]


@wire.record(0x00A2, "ContactCard")
@dataclass(frozen=True, slots=True, kw_only=True)
class _CardRecord(wire.Record):
    # The body stays as its exact bytes: they are what is signed.
    body: Annotated[bytes, wire.nested(1, max_len=16384, of=_CardBody)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactCard:
    """A public identity and its contact addresses, signed by the identity."""

    identity: PublicIdentity
    created: int
    addresses: tuple[ContactAddress, ...]
    signature: bytes

    @classmethod
    def make(
        cls, identity: Identity, addresses: tuple[ContactAddress, ...], *, now: int
    ) -> ContactCard:
        """Sign a card for ``identity``."""
        unsigned = cls(identity=identity.public, created=now, addresses=addresses, signature=b"")
        sig = identity.sign(unsigned._body(), context=CONTEXT_CARD)
        return cls(identity=identity.public, created=now, addresses=addresses, signature=sig)

    def _body(self) -> bytes:
        return _CardBody(
            identity=self.identity, created=self.created, addresses=self.addresses
        ).to_bytes()

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x00A2)."""
        return _CardRecord(body=self._body(), signature=self.signature).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ContactCard:
        """Decode and verify the identity's signature over the card."""
        rec = _CardRecord.from_bytes(data)
        body = _CardBody.from_bytes(rec.body)
        card = cls(
            identity=body.identity,
            created=body.created,
            addresses=body.addresses,
            signature=rec.signature,
        )
        try:
            card.identity.verify(card.signature, rec.body, context=CONTEXT_CARD)
        except BadSignature:
            raise BadSignature("the contact card's signature does not verify") from None
        return card

    def to_text(self) -> str:
        """Armoured text (label ``CONTACT CARD``)."""
        return armor.armor(
            "CONTACT CARD",
            self.to_bytes(),
            [("Name", self.identity.name), ("Fingerprint", str(self.identity.fingerprint))],
        )

    @classmethod
    def from_text(cls, text: str) -> ContactCard:
        """Parse and verify an armoured card; headers must match the body."""
        block = armor.dearmor(
            text, "CONTACT CARD", allowed_headers=frozenset({"Name", "Fingerprint"})
        )
        card = cls.from_bytes(block.body)
        if block.headers.get("Name", card.identity.name) != card.identity.name:
            raise MalformedInput("the Name header does not match the card")
        fp = block.headers.get("Fingerprint")
        if fp is not None and fp != str(card.identity.fingerprint):
            raise MalformedInput("the Fingerprint header does not match the card")
        return card


@wire.record(0x00A3, "QueueGrant")
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueGrant(wire.Record):
    """The right to send to a private queue (travels end-to-end encrypted)."""

    relay: Annotated[str, wire.text(1, max_len=512)]
    sid: Annotated[bytes, wire.bytes_(2, size=16)]
    sender_seed: Annotated[bytes, wire.bytes_(3, size=32)]

    def __post_init__(self) -> None:
        _check_url(self.relay)


ADDRESS = wire.schema_of(ContactAddress)
CARD_BODY = wire.schema_of(_CardBody)
CARD = wire.schema_of(_CardRecord)
GRANT = wire.schema_of(QueueGrant)


def seal_prekey_blob(address_key: bytes, record: bytes) -> bytes:
    """Seal a prekey record for publication at a contact address."""
    return aead_encrypt(address_key, record, _BLOB_AAD)


def open_prekey_blob(address_key: bytes, blob: bytes) -> bytes:
    """Open a published prekey blob; raise :class:`VerificationFailed`."""
    try:
        return aead_decrypt(address_key, blob, _BLOB_AAD)
    except VerificationFailed:
        raise VerificationFailed("the relay served a prekey blob that is not the owner's") from None
