"""The records of the local audit log: entries and their typed fields.

Each entry (``AuditEntry``, wire type 0x00C0) is ``index || time || kind ||
fields``, where ``fields`` is a complete wire record whose type the kind fixes
(:data:`KINDS`). Every record is decoded strictly and re-checked by its
dataclass, so a stored entry either parses to exactly one value or is refused
with :class:`~securechan.errors.MalformedInput`.

What an entry may hold is deliberately narrow: names, fingerprints, random
ids, sequence numbers, hashes, relay URLs and origins, error class names and
messages. Never a plaintext, a file's content or a secret. Text that a peer
can influence (an error message naming a file) is stored without control
characters, so ``log show`` cannot be made to write terminal escapes.

``docs/AUDIT.md`` lists the byte layouts; this module is their code.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Self

from securechan import wire
from securechan.audit.note import is_valid_key_name
from securechan.errors import BadSignature, MalformedInput
from securechan.identity.keys import PUBLIC_IDENTITY, Fingerprint, PublicIdentity, check_name
from securechan.primitives import HYBRID_SIGNATURE_SIZE, sha256
from securechan.protocol.group import MAX_MEMBERS
from securechan.protocol.handshake import CONVERSATION_ID_SIZE

__all__ = [
    "CONTEXT_CHECKPOINT",
    "CONTEXT_ENTRY",
    "GROUP_ACTIONS",
    "INTERNAL_KINDS",
    "KINDS",
    "AuditEntry",
    "EntryFields",
    "GroupChangeEvent",
    "GroupMessageEvent",
    "LogCheckpoint",
    "LogSigner",
    "MessageEvent",
    "PartyEvent",
    "PrekeysRotated",
    "Rejection",
    "RelayCheckpointSeen",
    "SessionEvent",
    "clean_detail",
    "entry_hash",
]

CONTEXT_ENTRY = b"securechan/v1/audit-entry"
CONTEXT_CHECKPOINT = b"securechan/v1/audit-checkpoint"

MAX_DETAIL = 500  # characters of a rejection's message
_MAX_FIELDS = 16 * 1024
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_ROLES = ("initiator", "responder")


def entry_hash(prev: bytes, entry: bytes) -> bytes:
    """``SHA-256("securechan/v1/audit-entry" || prev || entry)``.

    The context and ``prev`` have fixed lengths, so the input splits one way.
    """
    return sha256(CONTEXT_ENTRY + prev + entry)


# Characters that change how a terminal shows text: C0 and C1 controls, line
# and paragraph separators, and the bidirectional formatting characters
# ("Trojan Source", CVE-2021-42574). A fixed list, not Unicode categories,
# so that every version of Python's Unicode tables accepts the same entries.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def clean_detail(text: str) -> str:
    """``text`` made storable: NFC, control characters as spaces, at most
    :data:`MAX_DETAIL` characters (an ellipsis marks a cut)."""
    if not isinstance(text, str):
        raise TypeError("a detail is str")
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text))
    cut = MAX_DETAIL - 1
    while len(text) > MAX_DETAIL:
        # A prefix of NFC text need not be NFC: normalise again after cutting.
        text = unicodedata.normalize("NFC", text[:cut]) + "\u2026"
        cut -= 1
    return text


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _fp(value: bytes | None) -> str | None:
    return str(Fingerprint(value)) if value is not None else None


class _Fields(wire.Record):
    """Shared behaviour of the field records: each is a ``@wire.record``
    whose dataclass fields are its wire fields."""

    __slots__ = ()

    @classmethod
    def wire_schema(cls) -> wire.Schema:
        """The record's schema (its type id is what an entry's kind fixes)."""
        return wire.schema_of(cls)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode strictly; raise :class:`MalformedInput`."""
        try:
            return wire.decode_record(cls, data)
        except (ValueError, TypeError) as e:  # a value the dataclass refuses
            raise MalformedInput(f"{cls.wire_schema().name}: {e}") from None

    def _check(self) -> None:
        """Raise ``ValueError``/``TypeError`` unless the values fit the schema."""
        self.to_bytes()

    def describe(self) -> dict[str, Any]:
        """The fields for people (``log show``): hex, fingerprints, text."""
        raise NotImplementedError


@wire.record(0x00C1, "AuditParty")
@dataclass(frozen=True, slots=True, kw_only=True)
class PartyEvent(_Fields):
    """An identity or contact event: whose name, which key (and which before)."""

    name: Annotated[str, wire.text(1, max_len=64)]
    fingerprint: Annotated[bytes, wire.bytes_(2, size=32)]
    old_fingerprint: Annotated[bytes | None, wire.bytes_(3, size=32)] = None

    def __post_init__(self) -> None:
        self._check()
        try:
            check_name(self.name)
        except MalformedInput as e:
            raise ValueError(str(e)) from None

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        out = {"name": self.name, "fingerprint": _fp(self.fingerprint)}
        if self.old_fingerprint is not None:
            out["old_fingerprint"] = _fp(self.old_fingerprint)
        return out


@wire.record(0x00C2, "AuditSession")
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEvent(_Fields):
    """A session started: conversation id, the peer's key, our role."""

    conversation: Annotated[bytes, wire.bytes_(1, size=CONVERSATION_ID_SIZE)]
    peer: Annotated[bytes, wire.bytes_(2, size=32)]
    role: Annotated[str, wire.text(3, max_len=16)]

    def __post_init__(self) -> None:
        self._check()
        if self.role not in _ROLES:
            raise ValueError("role is 'initiator' or 'responder'")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {"conversation": _hex(self.conversation), "peer": _fp(self.peer), "role": self.role}


@wire.record(0x00C3, "AuditMessage")
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent(_Fields):
    """A message sent or received (the kind says which): conversation,
    sequence number, SHA-256 of the signed payload record, the peer's key."""

    conversation: Annotated[bytes, wire.bytes_(1, size=CONVERSATION_ID_SIZE)]
    seq: Annotated[int, wire.uint(2)]
    payload_hash: Annotated[bytes, wire.bytes_(3, size=32)]
    peer: Annotated[bytes, wire.bytes_(4, size=32)]

    def __post_init__(self) -> None:
        self._check()

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {
            "conversation": _hex(self.conversation),
            "seq": self.seq,
            "payload_hash": _hex(self.payload_hash),
            "peer": _fp(self.peer),
        }


@wire.record(0x00C4, "AuditRejection")
@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection(_Fields):
    """Something refused: the error class, its message, and whom it concerns."""

    reason: Annotated[str, wire.text(1, max_len=64)]
    detail: Annotated[str, wire.text(2, max_len=4 * MAX_DETAIL)]
    conversation: Annotated[bytes | None, wire.bytes_(3, size=CONVERSATION_ID_SIZE)] = None
    peer: Annotated[bytes | None, wire.bytes_(4, size=32)] = None

    def __post_init__(self) -> None:
        self._check()
        if not _REASON.fullmatch(self.reason):
            raise ValueError(
                "a reason is a code (letters, digits, '_', '.', '-'); see errors.Reason"
            )
        if len(self.detail) > MAX_DETAIL or _has_control(self.detail):
            raise ValueError("a detail is at most 500 characters, without control characters")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        out: dict[str, Any] = {"reason": self.reason, "detail": self.detail}
        if self.conversation is not None:
            out["conversation"] = _hex(self.conversation)
        if self.peer is not None:
            out["peer"] = _fp(self.peer)
        return out


@wire.record(0x00C5, "AuditRelayCheckpoint")
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCheckpointSeen(_Fields):
    """A relay transparency-log checkpoint we verified: origin, size, root."""

    origin: Annotated[str, wire.text(1, max_len=255)]
    size: Annotated[int, wire.uint(2)]
    root_hash: Annotated[bytes, wire.bytes_(3, size=32)]

    def __post_init__(self) -> None:
        self._check()
        if not is_valid_key_name(self.origin):
            raise ValueError("an origin is a valid note key name")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {"origin": self.origin, "size": self.size, "root_hash": _hex(self.root_hash)}


@wire.record(0x00C6, "AuditPrekeys")
@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeysRotated(_Fields):
    """Prekeys published at a relay (how many one-time keys)."""

    relay: Annotated[str, wire.text(1, max_len=512)]
    count: Annotated[int, wire.uint(2)]

    def __post_init__(self) -> None:
        self._check()
        if not self.relay or _has_control(self.relay) or " " in self.relay:
            raise ValueError("a relay is a URL without spaces or control characters")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {"relay": self.relay, "count": self.count}


@wire.record(0x00C7, "AuditLogSigner")
@dataclass(frozen=True, slots=True, kw_only=True)
class LogSigner(_Fields):
    """Introduces the public identity whose key signs the checkpoints after it."""

    identity: Annotated[PublicIdentity, wire.nested(1, max_len=8192, of=PUBLIC_IDENTITY)]

    def __post_init__(self) -> None:
        if not isinstance(self.identity, PublicIdentity):
            raise TypeError("identity is a PublicIdentity")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode strictly and check the identity's self-signature."""
        try:
            return wire.decode_record(cls, data)
        except (BadSignature, ValueError, TypeError):
            raise MalformedInput("AuditLogSigner: not a valid public identity") from None

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {"name": self.identity.name, "fingerprint": str(self.identity.fingerprint)}


@wire.record(0x00C8, "AuditCheckpointBody")
@dataclass(frozen=True, slots=True, kw_only=True)
class _CheckpointBody(wire.Record):
    # What a LogCheckpoint's signature covers.
    count: Annotated[int, wire.uint(1)]
    head: Annotated[bytes, wire.bytes_(2, size=32)]
    time: Annotated[int, wire.uint(3)]
    signer: Annotated[bytes, wire.bytes_(4, size=32)]


@wire.record(0x00C9, "AuditCheckpoint")
@dataclass(frozen=True, slots=True, kw_only=True)
class _CheckpointRecord(wire.Record):
    body: Annotated[_CheckpointBody, wire.nested(1, max_len=256)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogCheckpoint(_Fields):
    """The log signed by its owner: ``count`` entries before this one, the
    hash of the last of them (``head``), the time, the signer's fingerprint,
    and the composite signature over the encoded body (context
    ``securechan/v1/audit-checkpoint``). ``audit.head`` holds the same bytes.
    On the wire the first four are a nested, signed ``AuditCheckpointBody``.
    """

    count: int
    head: bytes
    time: int
    signer: bytes
    signature: bytes

    def __post_init__(self) -> None:
        self.to_bytes()

    @classmethod
    def wire_schema(cls) -> wire.Schema:
        """See :meth:`_Fields.wire_schema`."""
        return wire.schema_of(_CheckpointRecord)

    @staticmethod
    def body_for(*, count: int, head: bytes, time: int, signer: bytes) -> bytes:
        """The signed bytes for these values."""
        return _CheckpointBody(count=count, head=head, time=time, signer=signer).to_bytes()

    def _body(self) -> _CheckpointBody:
        return _CheckpointBody(count=self.count, head=self.head, time=self.time, signer=self.signer)

    def body_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return self._body().to_bytes()

    def to_bytes(self) -> bytes:
        """The canonical wire encoding."""
        return _CheckpointRecord(body=self._body(), signature=self.signature).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode strictly (the signature is not checked here)."""
        rec = _CheckpointRecord.from_bytes(data)
        body = rec.body
        return cls(
            count=body.count,
            head=body.head,
            time=body.time,
            signer=body.signer,
            signature=rec.signature,
        )

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        return {"count": self.count, "head": _hex(self.head), "signer": _fp(self.signer)}


@wire.record(0x00CA, "AuditGroupMessage")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMessageEvent(_Fields):
    """A group message (the kind says sent or received): the group, the
    epoch and stream position its record was read at, the sender's key and
    group sequence number, SHA-256 of the SignedGroupPayload (the hash
    bundles, statements and ``history --group`` ids use) and, when the
    relay's receipt gave it, the stream item's index in the relay's log."""

    group: Annotated[bytes, wire.bytes_(1, size=32)]
    epoch: Annotated[int, wire.uint(2)]
    position: Annotated[int, wire.uint(3)]
    sender: Annotated[bytes, wire.bytes_(4, size=32)]
    seq: Annotated[int, wire.uint(5)]
    payload_hash: Annotated[bytes, wire.bytes_(6, size=32)]
    log_index: Annotated[int | None, wire.uint(7)] = None

    def __post_init__(self) -> None:
        self._check()
        if self.position < 1 or self.seq < 1:
            raise ValueError("a group message has a stream position and a sequence number from 1")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        out: dict[str, Any] = {
            "group": _hex(self.group),
            "epoch": self.epoch,
            "position": self.position,
            "sender": _fp(self.sender),
            "seq": self.seq,
            "payload_hash": _hex(self.payload_hash),
        }
        if self.log_index is not None:
            out["log_index"] = self.log_index
        return out


GROUP_ACTIONS = ("create", "add", "remove", "leave", "admin", "rename", "rekey", "change")
"""What a group change did (``AuditGroupChange.action``, docs/AUDIT.md)."""


@wire.record(0x00CB, "AuditGroupChange")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupChangeEvent(_Fields):
    """A membership change accepted: the group, the epoch it opens, where we
    read it (stream position of epoch ``epoch - 1``; 0: we were welcomed by
    it, never read it), its author's key, SHA-256 of the GroupChange (the
    record hash of bundles), the new state's hash and member count, what it
    did (:data:`GROUP_ACTIONS`), and the relay log index when known."""

    group: Annotated[bytes, wire.bytes_(1, size=32)]
    epoch: Annotated[int, wire.uint(2)]
    position: Annotated[int, wire.uint(3)]
    author: Annotated[bytes, wire.bytes_(4, size=32)]
    change_hash: Annotated[bytes, wire.bytes_(5, size=32)]
    state_hash: Annotated[bytes, wire.bytes_(6, size=32)]
    members: Annotated[int, wire.uint(7)]
    action: Annotated[str, wire.text(8, max_len=16)]
    log_index: Annotated[int | None, wire.uint(9)] = None

    def __post_init__(self) -> None:
        self._check()
        if self.action not in GROUP_ACTIONS:
            raise ValueError(f"a group change's action is one of {', '.join(GROUP_ACTIONS)}")
        if (self.epoch == 0) != (self.action == "create"):
            raise ValueError("a creation, and only a creation, opens epoch 0")
        if self.epoch == 0 and self.position == 0:
            raise ValueError("a group's creation is read in its first stream, never welcomed")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ValueError(f"a group has 1 to {MAX_MEMBERS} members")

    def describe(self) -> dict[str, Any]:
        """See :meth:`_Fields.describe`."""
        out: dict[str, Any] = {
            "group": _hex(self.group),
            "epoch": self.epoch,
            "position": self.position,
            "author": _fp(self.author),
            "action": self.action,
            "members": self.members,
            "change_hash": _hex(self.change_hash),
            "state_hash": _hex(self.state_hash),
        }
        if self.log_index is not None:
            out["log_index"] = self.log_index
        return out


PARTY = wire.schema_of(PartyEvent)
SESSION = wire.schema_of(SessionEvent)
MESSAGE = wire.schema_of(MessageEvent)
REJECTION = wire.schema_of(Rejection)
RELAY_CHECKPOINT = wire.schema_of(RelayCheckpointSeen)
PREKEYS = wire.schema_of(PrekeysRotated)
SIGNER = wire.schema_of(LogSigner)
CHECKPOINT_BODY = wire.schema_of(_CheckpointBody)
CHECKPOINT = wire.schema_of(_CheckpointRecord)
GROUP_MESSAGE = wire.schema_of(GroupMessageEvent)
GROUP_CHANGE = wire.schema_of(GroupChangeEvent)


EntryFields = (
    PartyEvent
    | SessionEvent
    | MessageEvent
    | Rejection
    | RelayCheckpointSeen
    | PrekeysRotated
    | LogSigner
    | LogCheckpoint
    | GroupMessageEvent
    | GroupChangeEvent
)

KINDS: dict[str, type[EntryFields]] = {
    # The identity layer's events (securechan.identity.events.EventKind values).
    "identity-created": PartyEvent,
    "identity-replaced": PartyEvent,
    "contact-added": PartyEvent,
    "contact-verified": PartyEvent,
    "contact-verify-failed": PartyEvent,
    "contact-key-changed": PartyEvent,
    "contact-key-change-refused": PartyEvent,
    "contact-removed": PartyEvent,
    # Sessions and messages.
    "session-started": SessionEvent,
    "message-sent": MessageEvent,
    "message-received": MessageEvent,
    "rejected": Rejection,
    "prekeys-rotated": PrekeysRotated,
    "relay-checkpoint-seen": RelayCheckpointSeen,
    # Groups (docs/PROTOCOL.md §20): read from the group's stream and accepted.
    "group-message-sent": GroupMessageEvent,
    "group-message-received": GroupMessageEvent,
    "group-change": GroupChangeEvent,
    # Written only by the log itself.
    "log-signer": LogSigner,
    "log-checkpoint": LogCheckpoint,
}
"""Every entry kind and the record type of its fields."""

INTERNAL_KINDS = frozenset({"log-signer", "log-checkpoint"})


@wire.record(0x00C0, "AuditEntry")
@dataclass(frozen=True, slots=True, kw_only=True)
class _EntryRecord(wire.Record):
    # AuditEntry's wire form: the fields as the bytes of their own record.
    index: Annotated[int, wire.uint(1)]
    time: Annotated[int, wire.uint(2)]
    kind: Annotated[str, wire.text(3, max_len=32)]
    fields: Annotated[bytes, wire.bytes_(4, max_len=_MAX_FIELDS)]


ENTRY = wire.schema_of(_EntryRecord)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One entry: its position, Unix time, kind, and the kind's fields."""

    index: int
    time: int
    kind: str
    fields: EntryFields

    def __post_init__(self) -> None:
        expected = KINDS.get(self.kind)
        if expected is None:
            raise ValueError(f"unknown entry kind {self.kind!r}")
        if type(self.fields) is not expected:
            raise TypeError(f"a {self.kind} entry holds {expected.__name__} fields")
        for name in ("index", "time"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 2**63:
                raise ValueError(f"{name} is an integer in 0 .. 2**63 - 1")

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x00C0): what the hash covers."""
        return _EntryRecord(
            index=self.index, time=self.time, kind=self.kind, fields=self.fields.to_bytes()
        ).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditEntry:
        """Decode strictly, fields included; raise :class:`MalformedInput`."""
        rec = _EntryRecord.from_bytes(data)
        record_type = KINDS.get(rec.kind)
        if record_type is None:
            raise MalformedInput("AuditEntry: unknown kind")
        if wire.peek_type(rec.fields) != record_type.wire_schema().type_id:
            raise MalformedInput("AuditEntry: the fields do not match the kind")
        fields_value = record_type.from_bytes(rec.fields)
        try:
            entry = cls(index=rec.index, time=rec.time, kind=rec.kind, fields=fields_value)
        except (ValueError, TypeError) as e:
            raise MalformedInput(f"AuditEntry: {e}") from None
        # wire's decoding is canonical (encode(decode(b)) == b), so the hash
        # over the stored bytes and over the parsed entry are the same thing.
        return entry

    def describe(self) -> dict[str, Any]:
        """Index, time, kind and the described fields (for ``log show``)."""
        return {
            "index": self.index,
            "time": self.time,
            "kind": self.kind,
            "fields": self.fields.describe(),
        }
