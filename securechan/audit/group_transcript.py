"""Group transcripts: a group's records, proven to a third party offline.

``docs/AUDIT.md`` ("Group transcripts") is the normative text; the group
protocol is ``docs/PROTOCOL.md`` §20 and the design ``GROUPS-SPEC`` §4.

A **bundle** (wire type 0x011B, one binary file) holds, for one group:

- the exporter's start: either nothing (its first record is the group's
  creation, item 1 of epoch 0's stream) or a **join** (0x011A): the change
  that made the exporter a member, the state it replaces and the transcript
  head just before it, as the exporter's welcome gave them;
- the **epoch secrets** (0x0118) of every epoch whose stream the bundle
  reads: each gives that stream's id and sealing key
  (:class:`~securechan.protocol.group_stream.StreamKeys`);
- the **items** (0x0119), in transcript order, every item of each stream
  read from position 1 (or the start) up to the change that closes it, with
  no gap: stream id, position, the blob exactly as the relay stores it, its
  leaf index in the relay's transparency log, the RFC 9162 inclusion proof
  of its leaf against the bundle's checkpoint and, for a message whose
  content the exporter discloses, that content (the TextBody or FileChunk
  encoding its commitment covers);
- one **checkpoint** of the relay's log, carrying only the log's Ed25519
  signature line;
- the self-signed **public identities** of every author of a record, sorted
  by fingerprint, each once, none unused.

:func:`verify_transcript` checks all of it against the relay key the caller
pins and replays :class:`~securechan.protocol.group.GroupView` over the
records, as every member does; :class:`VerifiedTranscript` says what is
proven. A **statement** of one group message is the same bundle ending at
that message with only its content disclosed (:meth:`VerifiedTranscript.statement`).

Assumption shared with the relay (``docs/RELAY.md``, group streams): a
stream item is logged as an envelope is, leaf data
``"securechan/v1/envelope" || SHA-256(blob)``
(:func:`~securechan.audit.receipt.envelope_leaf_hash`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated

from securechan import wire
from securechan.audit.merkle import MAX_PROOF_HASHES
from securechan.audit.note import (
    MAX_NOTE_BYTES,
    VerifierKey,
    keep_signatures,
)
from securechan.errors import (
    GroupRejected,
    MalformedInput,
)
from securechan.identity.keys import PUBLIC_IDENTITY, PublicIdentity
from securechan.protocol.group import (
    MAX_MEMBERS,
    ZERO,
    GroupChange,
    GroupState,
    GroupView,
)
from securechan.protocol.group_stream import (
    MAX_BLOB,
    MAX_CONTENT,
    GroupRecord,
    GroupSenderMark,
    StreamKeys,
    open_record,
)

__all__ = [
    "MAX_ITEMS",
    "GroupTranscript",
    "TranscriptEpoch",
    "TranscriptItem",
    "TranscriptJoin",
]

MAX_ITEMS = 10_000  # records one bundle holds (about 60 MB at most)
_MAX_EPOCHS = 4096
_MAX_IDENTITY = 16384


@wire.record(0x0118, "TranscriptEpoch")
@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptEpoch(wire.Record):
    """An epoch's secret (its stream id and key derive from it)."""

    epoch: Annotated[int, wire.uint(1)]
    secret: Annotated[bytes, wire.bytes_(2, size=32)]


@wire.record(0x0119, "TranscriptItem")
@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptItem(wire.Record):
    """One stream item, where the log holds it, and maybe its content."""

    stream_id: Annotated[bytes, wire.bytes_(1, size=32)]
    position: Annotated[int, wire.uint(2)]
    blob: Annotated[bytes, wire.bytes_(3, max_len=MAX_BLOB)]
    log_index: Annotated[int, wire.uint(4)]
    # RFC 9162 inclusion proof, hashes leaf side first, concatenated.
    inclusion_proof: Annotated[bytes, wire.bytes_(5, max_len=MAX_PROOF_HASHES * 32)]
    content: Annotated[bytes | None, wire.bytes_(6, max_len=MAX_CONTENT)] = None

    def __post_init__(self) -> None:
        if len(self.inclusion_proof) % 32:
            raise MalformedInput("an inclusion proof is a whole number of hashes")
        if self.position < 1:
            raise MalformedInput("stream positions start at 1")

    @property
    def proof_hashes(self) -> tuple[bytes, ...]:
        p = self.inclusion_proof
        return tuple(p[i : i + 32] for i in range(0, len(p), 32))


@wire.record(0x011A, "TranscriptJoin")
@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptJoin(wire.Record):
    """A joiner's start, from its welcome (``GroupView.join``)."""

    change: Annotated[GroupChange, wire.nested(1, max_len=8192)]
    previous: Annotated[GroupState, wire.nested(2, max_len=4096)]
    head_before: Annotated[bytes, wire.bytes_(3, size=32)]
    # Each sender's last number at ``head_before`` (the welcome's marks).
    senders: Annotated[
        tuple[GroupSenderMark, ...] | None,
        wire.list_(4, max_len=MAX_MEMBERS * 96, max_items=MAX_MEMBERS),
    ] = None

    def last(self) -> dict[bytes, tuple[int, bytes]]:
        """The marks as ``GroupView.join`` takes them."""
        return {m.fingerprint: (m.seq, m.hash) for m in self.senders or ()}


def _accepted_senders(
    join: TranscriptJoin, records: Iterable[GroupRecord], by_fp: Mapping[bytes, PublicIdentity]
) -> set[bytes]:
    """The senders of the messages a joiner's replay accepts (the builder's
    light replay: which of the welcome's marks the bundle confirms)."""
    try:
        author = by_fp[join.change.author]
        view = GroupView.join(join.change, author, join.previous, join.head_before, join.last())
    except (KeyError, GroupRejected):
        return set()
    spoke: set[bytes] = set()
    for record in records:
        try:
            if record.change is not None:
                view = view.apply_change(record.change, by_fp[record.change.author])
            elif record.message is not None:
                sender = record.message.payload.sender
                view = view.accept_record(record.message, by_fp[sender])
                spoke.add(sender)
        except (KeyError, GroupRejected):
            continue
    return spoke


@wire.record(0x011B, "GroupTranscript")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupTranscript(wire.Record):
    """A group transcript bundle, as exported (unverified until
    :func:`verify_transcript`)."""

    group_id: Annotated[bytes, wire.bytes_(1, size=32)]
    epochs: Annotated[
        tuple[TranscriptEpoch, ...],
        wire.list_(2, max_len=_MAX_EPOCHS * 64, max_items=_MAX_EPOCHS),
    ]
    identities: Annotated[
        tuple[bytes, ...],
        wire.list_(3, max_len=64 * _MAX_IDENTITY, max_items=64, of=PUBLIC_IDENTITY),
    ]
    checkpoint: Annotated[str, wire.text(4, max_len=MAX_NOTE_BYTES)]
    items: Annotated[
        tuple[TranscriptItem, ...],
        wire.list_(5, max_len=wire.MAX_FIELD_LEN, max_items=MAX_ITEMS),
    ]
    join: Annotated[TranscriptJoin | None, wire.nested(6, max_len=16384)] = None

    def __post_init__(self) -> None:
        # Strict shape, so that one bundle has one encoding and nothing
        # unused rides along (an unused field would be a place to edit).
        numbers = [e.epoch for e in self.epochs]
        if not numbers or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise MalformedInput("a bundle's epochs are consecutive, each once")
        if not self.items:
            raise MalformedInput("a bundle holds at least one record")

    @classmethod
    def build(
        cls,
        *,
        group_id: bytes,
        items: Iterable[TranscriptItem],
        epoch_secrets: Mapping[int, bytes],
        identities: Iterable[PublicIdentity],
        checkpoint: str,
        log_key: VerifierKey,
        join: TranscriptJoin | None = None,
    ) -> GroupTranscript:
        """The canonical bundle from in-memory parts (the client's store).

        ``items`` are in transcript order; contents set only on the messages
        to disclose. Keeps only the epoch secrets the items' streams need
        (``ValueError`` if one is missing), the identities of the records'
        authors among ``identities`` (a missing member's makes the bundle
        fail verification; a stranger's record needs none), and only the
        log's Ed25519 line of ``checkpoint`` (``ValueError`` if it has none).
        Nothing is verified here: :func:`verify_transcript` does."""
        items = tuple(items)
        keys = {StreamKeys.from_secret(s).stream_id: (e, s) for e, s in epoch_secrets.items()}
        used: dict[int, bytes] = {}
        authors: set[bytes] = set()
        if join is not None:
            authors.add(join.change.author)
        records: list[GroupRecord] = []
        for item in items:
            if item.stream_id not in keys:
                raise ValueError("an item of a stream whose epoch secret is not given")
            epoch, secret = keys[item.stream_id]
            used[epoch] = secret
            try:
                record = open_record(StreamKeys.from_secret(secret), item.blob)
            except MalformedInput:
                continue  # noise: every member skips it; no author to show
            if record.change is not None:
                authors.add(record.change.author)
            elif record.message is not None:
                authors.add(record.message.payload.sender)
            records.append(record)
        by_fp = {i.fingerprint.digest: i for i in identities}
        if join is not None and join.senders:
            # Keep the marks of senders with an accepted message in the
            # bundle, numbers only (the verifier checks each against it).
            spoke = _accepted_senders(join, records, by_fp)
            marks = tuple(replace(m, hash=ZERO) for m in join.senders if m.fingerprint in spoke)
            join = replace(join, senders=marks or None)
        # An author no member list names (a stranger's record, refused by
        # every member) needs no identity: the replay refuses it unsigned.
        known = sorted(fp for fp in authors if fp in by_fp)
        note = keep_signatures(checkpoint, [log_key])
        if note is None:
            raise ValueError("the checkpoint carries no signature by the log key")
        return cls(
            group_id=group_id,
            epochs=tuple(TranscriptEpoch(epoch=e, secret=used[e]) for e in sorted(used)),
            identities=tuple(by_fp[fp].to_bytes() for fp in known),
            checkpoint=note,
            items=items,
            join=join,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupTranscript:
        """Decode strictly (``MalformedInput``): the wire rules, then the
        shape (identities sorted and unique; epochs consecutive)."""
        bundle = wire.decode_record(cls, data)
        prints = [PublicIdentity.from_bytes(i).fingerprint.digest for i in bundle.identities]
        if prints != sorted(set(prints)):
            raise MalformedInput("a bundle's identities are sorted by fingerprint, each once")
        return bundle
