"""What the commands print with ``--json``, one type per kind of result.

The client's own results (a received message, a refused envelope, a send,
a history row, the status) are in :mod:`securechan.client.results`; these are
the rest: identities, contacts, document signatures, the audit log,
statement verification, witnesses, policies, the demo. Each is built from the library's
objects (``of``) and has ``to_json()``, the one place its JSON is made, with
the fields listed in ``JSON_FIELDS`` (those in ``JSON_OPTIONAL`` only when
they apply), as docs/CLI.md, "JSON output", documents them; a test holds the
three together. Times are :func:`~securechan.timestamps.iso_utc` strings.

This module imports nothing heavy at start-up: the library types it reads
are only named for type checking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from securechan.cli.transcript_results import TranscriptVerified
from securechan.timestamps import iso_utc

if TYPE_CHECKING:
    from securechan.audit.checkpoint import Cosignature
    from securechan.audit.log_records import AuditEntry
    from securechan.audit.statement import VerifiedStatement

__all__ = [
    "CosignRound",
    "DemoReport",
    "DocumentSigned",
    "DocumentVerified",
    "IdentityCreated",
    "IdentityInfo",
    "LogEntry",
    "LogVerified",
    "PolicyInfo",
    "Registered",
    "StatementVerified",
    "TranscriptVerified",
    "WitnessKeyInfo",
]

_NONE: frozenset[str] = frozenset()


def _cosigned_by(cosignatures: Iterable[Cosignature]) -> list[dict[str, Any]]:
    return [{"witness": c.cosigner.name, "at": iso_utc(c.timestamp)} for c in cosignatures]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityCreated:
    """``init``: the new identity."""

    name: str
    fingerprint: str
    home: str

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("name", "fingerprint", "home")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "home": self.home}


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityInfo:
    """``id show``: your identity."""

    name: str
    fingerprint: str
    created: int | None
    home: str

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("name", "fingerprint", "created", "home")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "created": iso_utc(self.created),
            "home": self.home,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentSigned:
    """``sign``: where the signature went."""

    signature: str
    size: int
    signer: str

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("signature", "size", "signer")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "size": self.size, "signer": self.signer}


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentVerified:
    """``verify``: a good signature (a bad one is an error, exit 1).
    ``contact_verified`` is ``None`` with ``--key``."""

    signer: str
    fingerprint: str
    created: int
    comment: str | None
    contact_verified: bool | None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "valid",
        "signer",
        "fingerprint",
        "created",
        "comment",
        "contact_verified",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "signer": self.signer,
            "fingerprint": self.fingerprint,
            "created": iso_utc(self.created),
            "comment": self.comment,
            "contact_verified": self.contact_verified,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    """``register``: the relays on your contact card and their pinned keys."""

    relays: tuple[str, ...]
    relay_fingerprints: Mapping[str, str | None]

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("relays", "relay_fingerprints")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {"relays": list(self.relays), "relay_fingerprints": dict(self.relay_fingerprints)}


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """``log show``: one audit log entry, as stored (old entries' reasons are
    class names, new ones' codes: docs/ERRORS.md)."""

    index: int
    time: int
    kind: str
    fields: Mapping[str, Any]

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("index", "time", "kind", "fields")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    @classmethod
    def of(cls, entry: AuditEntry) -> LogEntry:
        return cls(
            index=entry.index, time=entry.time, kind=entry.kind, fields=entry.fields.describe()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": iso_utc(self.time),
            "kind": self.kind,
            "fields": dict(self.fields),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LogVerified:
    """``log verify``: an intact log (a broken one is an error, exit 1)."""

    entries: int
    checkpoints: int
    last_checkpoint: int | None
    unsigned: int
    head_checkpoint: int | None
    identity: str
    fingerprint: str

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "intact",
        "entries",
        "checkpoints",
        "last_checkpoint",
        "unsigned",
        "head_checkpoint",
        "identity",
        "fingerprint",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": True,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "unsigned": self.unsigned,
            "head_checkpoint": self.head_checkpoint,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementVerified:
    """``statement verify``: a valid statement and which claims it proves.
    ``sender``/``recipient`` print as ``from``/``to``: name, fingerprint and
    role (``initiator`` or ``responder``); ``log`` and ``delivery`` are
    ``null`` when not proven."""

    message_id: str
    sender: Mapping[str, str]
    recipient: Mapping[str, str]
    conversation: str
    transcript_hash: str
    seq: int
    sent_at: int
    content_type: str
    content: str
    payload_sha256: str
    prev_hash: str
    log: Mapping[str, Any] | None
    delivery: Mapping[str, Any] | None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "valid",
        "proves",
        "message_id",
        "from",
        "to",
        "conversation",
        "transcript_hash",
        "seq",
        "sent_at",
        "content_type",
        "content",
        "payload_sha256",
        "prev_hash",
        "log",
        "delivery",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    @classmethod
    def of(cls, v: VerifiedStatement) -> StatementVerified:
        roles = {
            str(v.session.initiator.fingerprint): "initiator",
            str(v.session.responder.fingerprint): "responder",
        }

        def party(p: Any) -> dict[str, str]:
            fp = str(p.fingerprint)
            return {"name": p.name, "fingerprint": fp, "role": roles[fp]}

        p, log, d = v.payload, v.log, v.delivery
        return cls(
            message_id=v.message_id,
            sender=party(v.sender),
            recipient=party(v.recipient),
            conversation=p.conversation.hex(),
            transcript_hash=v.session.transcript_hash.hex(),
            seq=p.seq,
            sent_at=p.sent_at,
            content_type=p.content_type.name.lower(),
            content=v.summary(),
            payload_sha256=v.payload_hash.hex(),
            prev_hash=p.prev_hash.hex(),
            log=None
            if log is None
            else {
                "origin": log.checkpoint.origin,
                "relay_key_trusted": log.trusted,
                "leaf_index": log.leaf_index,
                "tree_size": log.checkpoint.size,
                "root_hash": log.checkpoint.root_hash.hex(),
                "cosigned_by": _cosigned_by(log.cosignatures),
            },
            delivery=None
            if d is None
            else {
                "receipt_id": d.receipt_id,
                "up_to_seq": d.up_to_seq,
                "signed_at": iso_utc(d.signed_at),
            },
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "proves": {
                "authorship": True,
                "logged": self.log is not None,
                "delivery": self.delivery is not None,
            },
            "message_id": self.message_id,
            "from": dict(self.sender),
            "to": dict(self.recipient),
            "conversation": self.conversation,
            "transcript_hash": self.transcript_hash,
            "seq": self.seq,
            "sent_at": iso_utc(self.sent_at),
            "content_type": self.content_type,
            "content": self.content,
            "payload_sha256": self.payload_sha256,
            "prev_hash": self.prev_hash,
            "log": None if self.log is None else dict(self.log),
            "delivery": None if self.delivery is None else dict(self.delivery),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessKeyInfo:
    """``witness init``, ``witness key``: the witness's verifier key line."""

    name: str
    verifier_key: str

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("name", "verifier_key")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verifier_key": self.verifier_key}


@dataclass(frozen=True, slots=True, kw_only=True)
class CosignRound:
    """``witness cosign``: one round (one line of JSON per round).
    ``timestamp`` is when the cosignature was made (``null`` if none)."""

    origin: str
    size: int
    root: str  # base64, as in the checkpoint note
    old_size: int
    status: str
    timestamp: int | None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "origin",
        "size",
        "root",
        "old_size",
        "status",
        "timestamp",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "old_size": self.old_size,
            "status": self.status,
            "timestamp": iso_utc(self.timestamp),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyInfo:
    """``policy set``, ``policy show``: a relay's witness policy; ``show``
    adds the newest witnessed checkpoint (``witnessed_size``,
    ``cosigned_by``) or the relay's ``error``."""

    relay: str
    witnesses: tuple[str, ...] = ()
    required: int = 0
    error: str | None = None
    witnessed_size: int | None = None
    cosigned_by: tuple[Cosignature, ...] = ()

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "relay",
        "witnesses",
        "required",
        "error",
        "witnessed_size",
        "cosigned_by",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset({"error", "witnessed_size", "cosigned_by"})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "relay": self.relay,
            "witnesses": list(self.witnesses),
            "required": self.required if self.witnesses else 0,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.witnessed_size is not None:
            out["witnessed_size"] = self.witnessed_size
            out["cosigned_by"] = _cosigned_by(self.cosigned_by)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoReport:
    """``demo``: whether every step held, how long it took, each step
    (``id``, ``title``, ``ok``, ``attack``, ``details``)."""

    ok: bool
    seconds: float
    steps: tuple[Mapping[str, Any], ...]

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("ok", "seconds", "steps")
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": self.seconds, "steps": [dict(s) for s in self.steps]}
