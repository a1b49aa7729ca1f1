"""What the client's operations return: a received message, a refused
envelope, the outcome of a send, a history row, the status.

These are the public result types of :class:`securechan.client.Channel`
(re-exported from ``securechan.client``); the CLI renders them. They live in
their own module so every part of the client (inbox, outbox, record) can
build them without importing the facade.

Each has ``to_json()``: the JSON ``--json`` prints for it, with the fields
listed in ``JSON_FIELDS`` (those in ``JSON_OPTIONAL`` appear only when they
apply) and documented in docs/CLI.md, "JSON output". Times are
:func:`~securechan.timestamps.iso_utc` strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from securechan.errors import Reason
from securechan.protocol.payload import ContentType, Receipt
from securechan.timestamps import iso_utc

if TYPE_CHECKING:
    from securechan.identity import Contact, SafetyNumber

__all__ = [
    "AgentStatus",
    "Cancelled",
    "ContactInfo",
    "HistoryEntry",
    "QueuedMessage",
    "Received",
    "Rejected",
    "SendResult",
    "StatementExported",
    "Status",
    "TranscriptExported",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A message that passed every check, as stored and shown."""

    contact: str
    fingerprint: str
    verified: bool
    conversation: bytes
    seq: int
    sent_at: int
    content_type: ContentType
    text: str | None = None
    file_name: str | None = None
    file_data: bytes | None = field(default=None, repr=False)
    receipt: Receipt | None = None
    receipt_matches: bool | None = None
    notes: tuple[str, ...] = ()
    hash: bytes = b""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "contact",
        "fingerprint",
        "verified",
        "seq",
        "sent_at",
        "type",
        "text",
        "file",
        "file_name",
        "receipt_matches",
        "notes",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self, *, file: str | None = None) -> dict[str, Any]:
        """``file``: where the caller saved ``file_data`` (the CLI's
        ``--download``), else ``None``."""
        return {
            "contact": self.contact,
            "fingerprint": self.fingerprint,
            "verified": self.verified,
            "seq": self.seq,
            "sent_at": iso_utc(self.sent_at),
            "type": self.content_type.name.lower(),
            "text": self.text,
            "file": file,
            "file_name": self.file_name,
            "receipt_matches": self.receipt_matches,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """An envelope that was refused, with the local reason."""

    reason: Reason
    error: str
    held: bool = False
    # For a split view: the two signed checkpoints that conflict; for a
    # rolled-back peer: the hashes of both payloads and both envelopes.
    evidence: tuple[str, ...] = ()
    # For a relay that could not be used (``reason`` relay, relay-unavailable,
    # relay-refused): its URL. Not an envelope's fault: the CLI reports it
    # once per relay and exits 3.
    relay: str | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("rejected", "error", "held", "evidence", "relay")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset({"evidence", "relay"})

    def to_json(self) -> dict[str, Any]:
        """``rejected`` is the stable reason code (docs/ERRORS.md);
        ``evidence`` and ``relay`` appear only when there are some."""
        out: dict[str, Any] = {"rejected": str(self.reason), "error": self.error, "held": self.held}
        if self.evidence:
            out["evidence"] = list(self.evidence)
        if self.relay is not None:
            out["relay"] = self.relay
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """What a send did: sequence numbers, and how many envelopes the relays
    confirmed now (the rest stay in the outbox and are retried)."""

    contact: str
    seqs: tuple[int, ...]
    delivered: int
    pending: int

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("contact", "seqs", "delivered", "pending")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "contact": self.contact,
            "seqs": list(self.seqs),
            "delivered": self.delivered,
            "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored message as :meth:`Channel.history` lists it (built from its
    tuple: ``HistoryEntry(*row)``)."""

    contact: str
    direction: str  # "in" or "out"
    seq: int
    sent_at: int
    summary: str
    id: str  # the message id (securechan.audit.statement.message_id)

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "id",
        "contact",
        "direction",
        "seq",
        "sent_at",
        "summary",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "contact": self.contact,
            "direction": self.direction,
            "seq": self.seq,
            "sent_at": iso_utc(self.sent_at),
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """What :meth:`Channel.status` reports: relays, queues, sessions, the
    outbox, held first messages, contacts whose state was rolled back."""

    identity: str
    relays: tuple[str, ...]
    queues: int
    sessions: int
    outbox: int
    held: int
    rolled_back: tuple[str, ...]
    # Relays that did not answer (the CLI's status asks each one; exit 3).
    unreachable: tuple[str, ...] = ()

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "identity",
        "relays",
        "queues",
        "sessions",
        "outbox",
        "held",
        "rolled_back",
        "unreachable",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_mapping(cls, info: Mapping[str, object]) -> Status:
        """From the mapping :meth:`Channel.status` returns."""

        def names(key: str) -> tuple[str, ...]:
            value = info[key]
            if not isinstance(value, list | tuple):
                raise TypeError(f"status {key!r} is a list")
            return tuple(str(v) for v in value)

        def count(key: str) -> int:
            value = info[key]
            if type(value) is not int:
                raise TypeError(f"status {key!r} is an int")
            return value

        return cls(
            identity=str(info["identity"]),
            relays=names("relays"),
            queues=count("queues"),
            sessions=count("sessions"),
            outbox=count("outbox"),
            held=count("held"),
            rolled_back=names("rolled_back"),
            unreachable=names("unreachable") if "unreachable" in info else (),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "relays": list(self.relays),
            "queues": self.queues,
            "sessions": self.sessions,
            "outbox": self.outbox,
            "held": self.held,
            "rolled_back": list(self.rolled_back),
            "unreachable": list(self.unreachable),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedMessage:
    """A message with envelopes still in the outbox (``Channel.queued``).

    ``id`` is what ``outbox cancel`` takes (16 hex digits); ``kind`` is
    ``text``, ``file``, ``receipt`` or ``protocol`` (a queue grant or an
    envelope queued before client.db version 8: not cancellable, no
    contact); ``size`` the text's or file's bytes; ``parts`` the outbox rows
    it was made of (each envelope once per relay) and ``posted`` how many of
    them the relays already took."""

    id: str
    contact: str | None
    kind: str
    size: int
    file_name: str | None
    seqs: tuple[int, ...]
    parts: int
    posted: int
    created: int
    relays: tuple[str, ...]

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "id",
        "contact",
        "kind",
        "size",
        "file_name",
        "seqs",
        "parts",
        "posted",
        "created",
        "relays",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "contact": self.contact,
            "kind": self.kind,
            "size": self.size,
            "file_name": self.file_name,
            "seqs": list(self.seqs),
            "parts": self.parts,
            "posted": self.posted,
            "created": iso_utc(self.created),
            "relays": list(self.relays),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled:
    """What a cancel did: ``withdrawn`` outbox rows taken out (never sent),
    ``posted`` rows the relays had already taken (those cannot be taken
    back: the contact receives them, and a file's chunks without the rest
    are kept but never shown), ``in_flight`` 1 when the cancel interrupted a
    post whose answer never came (that part may have reached the relay),
    ``retired`` whether the session was retired (the next send starts a new
    one)."""

    id: str
    contact: str
    kind: str
    parts: int
    withdrawn: int
    posted: int
    in_flight: int
    retired: bool

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "id",
        "contact",
        "kind",
        "parts",
        "withdrawn",
        "posted",
        "in_flight",
        "retired",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "contact": self.contact,
            "kind": self.kind,
            "parts": self.parts,
            "withdrawn": self.withdrawn,
            "posted": self.posted,
            "in_flight": self.in_flight,
            "retired": self.retired,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementExported:
    """``statement export`` (:func:`securechan.client.policy.export_statement`):
    the file written and what it can prove."""

    file: str
    message_id: str
    log: bool
    witnessed: bool
    delivery_receipt: bool

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "file",
        "message_id",
        "log",
        "witnessed",
        "delivery_receipt",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "message_id": self.message_id,
            "log": self.log,
            "witnessed": self.witnessed,
            "delivery_receipt": self.delivery_receipt,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """The agent's ``status`` (``securechan agent status --json``): the
    channel's status when unlocked (``None`` when locked), and with ``flush``
    the relays that did not answer (URL -> why); ``unknown_senders``: what
    its background receiving does with a first message from a sender not
    pinned (``"refuse"``, or ``"hold"`` when started with ``--unknown
    hold``). What ``AgentClient.status()`` returns."""

    home: str
    pid: int
    locked: bool
    expires_in: int
    idle_ttl: float
    max_ttl: float
    unknown_senders: str = "refuse"
    pending: int
    channel: Status | None = None
    relay_errors: dict[str, str] | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "home",
        "pid",
        "locked",
        "expires_in",
        "idle_ttl",
        "max_ttl",
        "unknown_senders",
        "pending",
        "channel",
        "relay_errors",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset({"relay_errors"})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "home": self.home,
            "pid": self.pid,
            "locked": self.locked,
            "expires_in": self.expires_in,
            "idle_ttl": self.idle_ttl,
            "max_ttl": self.max_ttl,
            "unknown_senders": self.unknown_senders,
            "pending": self.pending,
            "channel": None if self.channel is None else self.channel.to_json(),
        }
        if self.relay_errors is not None:
            out["relay_errors"] = dict(self.relay_errors)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactInfo:
    """``contact add``, ``list``, ``show``, ``verify``, ``pair`` (and the
    agent's ``pair``): one pinned contact (``show`` and ``pair`` add the
    safety number, as digits and as words)."""

    name: str
    identity_name: str
    fingerprint: str
    verified: bool
    added: int
    verified_at: int | None
    safety_number: str | None = None
    safety_words: tuple[str, ...] | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "identity_name",
        "fingerprint",
        "verified",
        "added",
        "verified_at",
        "safety_number",
        "safety_words",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset({"safety_number", "safety_words"})

    @classmethod
    def of(cls, c: Contact, sn: SafetyNumber | None = None) -> ContactInfo:
        return cls(
            name=c.name,
            identity_name=c.identity.name,
            fingerprint=str(c.fingerprint),
            verified=c.verified,
            added=c.added,
            verified_at=c.verified_at,
            safety_number=None if sn is None else str(sn),
            safety_words=None if sn is None else tuple(sn.words),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "identity_name": self.identity_name,
            "fingerprint": self.fingerprint,
            "verified": self.verified,
            "added": iso_utc(self.added),
            "verified_at": iso_utc(self.verified_at),
        }
        if self.safety_number is not None:
            data["safety_number"] = self.safety_number
            data["safety_words"] = list(self.safety_words or ())
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptExported:
    """``group export`` / ``group statement``: what was written (the file,
    the group, how many applied records and disclosed contents, the final
    transcript head, the size of the checkpoint the log proofs are against,
    and a statement's message id)."""

    file: str
    group: str
    group_id: str
    records: int
    disclosed: int
    final_head: str
    log_size: int
    message_id: str | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "file",
        "group",
        "group_id",
        "records",
        "disclosed",
        "final_head",
        "log_size",
        "message_id",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.JSON_FIELDS}
