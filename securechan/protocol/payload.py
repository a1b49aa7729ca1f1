"""Signed payloads: what a message says, who says it, to whom, and in what order.

Every message is signed, then encrypted (``docs/PROTOCOL.md`` §14). The
signed part names the sender, the recipient, the conversation, the sender's
sequence number, the sender's clock, the content type, the body, and the hash
of the sender's previous message, so that a message cannot be forwarded to
someone else, moved to another conversation, replayed, reordered or silently
dropped without the receiver noticing. This is the opposite of Signal's
deniability, on purpose: diplomacy wants a provable record.

Content types and their bodies:

* ``TEXT`` (1): UTF-8 text (NFC, no NUL), the body record ``TextBody``.
* ``FILE`` (2): one chunk of a file, ``FileChunk`` (name, total size, SHA-512
  of the whole file, chunk index and count, data); files are split into
  :data:`CHUNK_SIZE` chunks.
* ``RECEIPT`` (3): ``Receipt``: "I have every message of yours up to
  ``up_to_seq``, and the last one hashes to ``chain_hash``".
* ``HELLO`` (4): empty; the first message of a session when the initiator has
  nothing to say yet.
* ``QUEUE`` (5): a ``QueueGrant``: "send to me at this private queue from now
  on" (``address.py``).
* ``GROUP_MESSAGE`` (6): a ``GroupDelivery``: one group message's signed
  payload and content (``group_stream.py``, docs/PROTOCOL.md §20).
* ``GROUP_WELCOME`` (7): a ``GroupWelcome``: a membership change and the new
  epoch's secret, for a member of the new state.

Any payload may also carry ``checkpoints``: the newest relay log checkpoints
the sender has verified (C2SP signed notes, opaque text at this layer), so
that the recipient can check them against its own view of the same logs and
catch a relay that shows the two parties different histories
(``docs/AUDIT.md``, Split views).
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import wire
from securechan.errors import MalformedInput
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity
from securechan.primitives import HYBRID_SIGNATURE_SIZE, sha256
from securechan.protocol.address import QueueGrant
from securechan.protocol.group_stream import GroupDelivery, GroupWelcome

__all__ = [
    "CHUNK_SIZE",
    "CONTEXT_MESSAGE",
    "MAX_TEXT_BYTES",
    "Content",
    "ContentType",
    "FileChunk",
    "Payload",
    "Receipt",
    "SignedPayload",
    "message_text",
]

CONTEXT_MESSAGE = b"securechan/v1/message"
CHUNK_SIZE = 32 * 1024
MAX_BODY = CHUNK_SIZE + 4096
# The longest text one TEXT message carries, in bytes of UTF-8 (TextBody's limit).
MAX_TEXT_BYTES = MAX_BODY - 64
MAX_FILE_SIZE = 1 << 32
ZERO_HASH = bytes(32)
# At most this many checkpoints ride in one payload (one per relay the
# message is posted to), each a signed note of at most MAX_CHECKPOINT_TEXT.
MAX_CHECKPOINTS = 4
MAX_CHECKPOINT_TEXT = 8192


class ContentType(enum.IntEnum):
    """What the body of a payload is."""

    TEXT = 1
    FILE = 2
    RECEIPT = 3
    HELLO = 4
    QUEUE = 5
    GROUP_MESSAGE = 6
    GROUP_WELCOME = 7


@wire.record(0x0075, "CarriedCheckpoint")
@dataclass(frozen=True, slots=True, kw_only=True)
class CarriedCheckpoint(wire.Record):
    """One relay checkpoint (a signed note) a payload carries."""

    note: Annotated[str, wire.text(1, max_len=MAX_CHECKPOINT_TEXT)]


@wire.record(0x0072, "TextBody")
@dataclass(frozen=True, slots=True, kw_only=True)
class TextBody(wire.Record):
    """The body of a ``TEXT`` payload."""

    text: Annotated[str, wire.text(1, max_len=MAX_TEXT_BYTES)]


@wire.record(0x0073, "FileChunk")
@dataclass(frozen=True, slots=True, kw_only=True)
class FileChunk:
    """One chunk of a file."""

    file_id: Annotated[bytes, wire.bytes_(1, size=16)]
    name: Annotated[str, wire.text(2, max_len=255)]
    size: Annotated[int, wire.uint(3)]
    sha512: Annotated[bytes, wire.bytes_(4, size=64)]
    index: Annotated[int, wire.uint(5)]
    count: Annotated[int, wire.uint(6)]
    data: Annotated[bytes, wire.bytes_(7, max_len=CHUNK_SIZE)]

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0073)."""
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> FileChunk:
        """Decode strictly; index, count and size must be consistent."""
        chunk = wire.decode_record(cls, data)
        expected = max(1, -(-chunk.size // CHUNK_SIZE))
        if chunk.size > MAX_FILE_SIZE or chunk.count != expected or chunk.index >= chunk.count:
            raise MalformedInput("inconsistent file chunk numbering")
        last = chunk.size - (chunk.count - 1) * CHUNK_SIZE
        if len(chunk.data) != (last if chunk.index == chunk.count - 1 else CHUNK_SIZE):
            raise MalformedInput("file chunk has the wrong length")
        if not chunk.name or "/" in chunk.name or chunk.name in (".", ".."):
            raise MalformedInput("a file name is one path component")
        return chunk


@wire.record(0x0074, "Receipt")
@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """The recipient's statement of what it has received so far."""

    up_to_seq: Annotated[int, wire.uint(1)]
    chain_hash: Annotated[bytes, wire.bytes_(2, size=32)]

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0074)."""
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """Decode strictly."""
        return wire.decode_record(cls, data)


# What a payload's body decodes to (``Payload.content``).
Content = str | FileChunk | Receipt | QueueGrant | GroupDelivery | GroupWelcome | None


CHECKPOINT_REF = wire.schema_of(CarriedCheckpoint)
TEXT_BODY = wire.schema_of(TextBody)
FILE_CHUNK = wire.schema_of(FileChunk)
RECEIPT = wire.schema_of(Receipt)
_MAX_PAYLOAD = MAX_BODY + 512 + MAX_CHECKPOINTS * (MAX_CHECKPOINT_TEXT + 64)


@wire.record(0x0070, "Payload")
@dataclass(frozen=True, slots=True, kw_only=True)
class _PayloadRecord(wire.Record):
    # The wire form of Payload (fingerprints as digests, the type as a number).
    sender: Annotated[bytes, wire.bytes_(1, size=32)]
    recipient: Annotated[bytes, wire.bytes_(2, size=32)]
    conversation: Annotated[bytes, wire.bytes_(3, size=16)]
    seq: Annotated[int, wire.uint(4)]
    sent_at: Annotated[int, wire.uint(5)]
    content_type: Annotated[int, wire.uint(6)]
    body: Annotated[bytes, wire.bytes_(7, max_len=MAX_BODY)]
    prev_hash: Annotated[bytes, wire.bytes_(8, size=32)]
    checkpoints: Annotated[
        tuple[CarriedCheckpoint, ...] | None,
        wire.list_(
            9,
            max_len=MAX_CHECKPOINTS * (MAX_CHECKPOINT_TEXT + 64),
            max_items=MAX_CHECKPOINTS,
        ),
    ] = None


PAYLOAD = wire.schema_of(_PayloadRecord)


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """The signed content of one message."""

    sender: Fingerprint
    recipient: Fingerprint
    conversation: bytes
    seq: int
    sent_at: int
    content_type: ContentType
    body: bytes
    prev_hash: bytes
    # Relay checkpoints the sender vouches for having verified (signed notes).
    checkpoints: tuple[str, ...] = ()
    # The encoding and the decoded body, once computed (optimisations only:
    # never part of equality).
    raw: bytes | None = field(default=None, compare=False, repr=False)
    parsed: Content = field(default=None, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0070): the signed bytes."""
        if self.raw is not None:
            return self.raw
        return _PayloadRecord(
            sender=self.sender.digest,
            recipient=self.recipient.digest,
            conversation=self.conversation,
            seq=self.seq,
            sent_at=self.sent_at,
            content_type=int(self.content_type),
            body=self.body,
            prev_hash=self.prev_hash,
            # Absent when empty: one encoding per value.
            checkpoints=tuple(CarriedCheckpoint(note=n) for n in self.checkpoints) or None,
        ).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        """Decode strictly, body included (checked against its content type)."""
        rec = _PayloadRecord.from_bytes(data)
        try:
            content_type = ContentType(rec.content_type)
        except ValueError:
            raise MalformedInput("unknown content type") from None
        if rec.checkpoints is not None and not rec.checkpoints:
            raise MalformedInput("an empty checkpoint list is encoded as no field")
        payload = cls(
            sender=Fingerprint(rec.sender),
            recipient=Fingerprint(rec.recipient),
            conversation=rec.conversation,
            seq=rec.seq,
            sent_at=rec.sent_at,
            content_type=content_type,
            body=rec.body,
            prev_hash=rec.prev_hash,
            checkpoints=tuple(c.note for c in rec.checkpoints or ()),
            raw=bytes(data),
        )
        # The body must parse as its type; keep the result.
        object.__setattr__(payload, "parsed", payload._parse_content())
        return payload

    def content(self) -> Content:
        """The decoded body: text, a file chunk, a receipt, a queue grant, or
        None (hello)."""
        if self.parsed is not None:
            return self.parsed
        return self._parse_content()

    def _parse_content(self) -> Content:
        if self.content_type is ContentType.TEXT:
            return TextBody.from_bytes(self.body).text
        if self.content_type is ContentType.FILE:
            return FileChunk.from_bytes(self.body)
        if self.content_type is ContentType.RECEIPT:
            return Receipt.from_bytes(self.body)
        if self.content_type is ContentType.QUEUE:
            return QueueGrant.from_bytes(self.body)
        if self.content_type is ContentType.GROUP_MESSAGE:
            return GroupDelivery.from_bytes(self.body)
        if self.content_type is ContentType.GROUP_WELCOME:
            return GroupWelcome.from_bytes(self.body)
        if self.body:
            raise MalformedInput("a hello has an empty body")
        return None


@wire.record(0x0071, "SignedPayload")
@dataclass(frozen=True, slots=True, kw_only=True)
class SignedPayload:
    """A payload and its sender's composite signature."""

    payload: Annotated[Payload, wire.nested(1, max_len=_MAX_PAYLOAD, of=PAYLOAD)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def sign(cls, identity: Identity, payload: Payload) -> SignedPayload:
        """Sign ``payload`` as ``identity`` (context ``securechan/v1/message``)."""
        if payload.sender != identity.fingerprint:
            raise ValueError("the payload names another sender")
        payload_bytes = payload.to_bytes()
        sig = identity.sign(payload_bytes, context=CONTEXT_MESSAGE)
        # Keep the encoding just made, so it is not made again below.
        unsigned = cls(payload=replace(payload, raw=payload_bytes), signature=sig)
        return replace(unsigned, raw=unsigned.to_bytes())

    def verify(self, sender: PublicIdentity) -> None:
        """Raise :class:`BadSignature` unless ``sender`` signed this payload."""
        sender.verify(self.signature, self.payload.to_bytes(), context=CONTEXT_MESSAGE)

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0071)."""
        if self.raw is not None:
            return self.raw
        return wire.encode_record(self)

    @classmethod
    def from_bytes_unverified(cls, data: bytes) -> SignedPayload:
        """Decode strictly, without checking the signature (the nested
        payload is decoded by Payload.from_bytes, body included)."""
        return wire.decode_record(cls, data, raw=bytes(data))

    @property
    def hash(self) -> bytes:
        """SHA-256 of the signed record: the link of the sender's hash chain."""
        return sha256(self.to_bytes())


SIGNED_PAYLOAD = wire.schema_of(SignedPayload)


def message_text(text: str) -> str:
    """The text a user gave, as a TEXT payload carries it: in Unicode NFC
    (canonically equivalent, so nothing a reader sees changes), with no NUL,
    at most :data:`MAX_TEXT_BYTES` in UTF-8.

    Raises :class:`MalformedInput` (a usage error, before any key is used)
    instead of letting the encoder's ``ValueError`` escape as a crash.
    """
    text = unicodedata.normalize("NFC", text)
    if "\x00" in text:
        raise MalformedInput("a text message cannot contain a NUL character")
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise MalformedInput(
            f"the text is {size} bytes of UTF-8; a message holds at most {MAX_TEXT_BYTES} "
            "(send longer text as a file: send CONTACT --file F)"
        )
    return text


def text_body(text: str) -> bytes:
    """The body of a ``TEXT`` payload."""
    return TextBody(text=text).to_bytes()
