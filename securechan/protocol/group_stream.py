"""Group streams: the one order of a group's records, and their pairwise carriage.

A group's records (membership changes and signed message payloads,
``protocol/group.py``) are ordered by one sequencer: the relay's *group
stream* of the epoch (docs/PROTOCOL.md §20, RFC 9750's strongly consistent
model). The relay must learn nothing, so what it stores is a sealed blob:

- every epoch has a 32-byte random **epoch secret**, chosen by the author of
  the change that opens it (the creator for epoch 0) and sent to the
  members of that epoch pairwise, in a :class:`GroupWelcome`; the change
  commits to it (``GroupChange.next_stream``, ``StreamKeys.commitment``),
  and a welcome whose secret does not match its change is refused. A leave
  chooses none: its epoch's secret is :func:`leave_secret` of the current
  one (so no member depends on the leaver's welcome, and the leaver learns
  nothing it did not hold); that epoch is *quiet* (no message is accepted)
  until a remaining admin's change opens a fresh one (docs/PROTOCOL.md
  §20.4);
- ``stream_id = HKDF-SHA256(secret, "", "securechan/v1/group-stream-id")``
  names the stream at the relay; ``stream_key`` (info
  ``securechan/v1/group-stream-key``) seals each :class:`GroupRecord` with
  XChaCha20-Poly1305 over its Padmé-padded encoding, the stream id as
  associated data (a blob moved to another stream does not open).

A blob that does not open is skipped by every member alike (whoever knows a
stream id may post to it: the relay, a removed member); it never moves the
transcript. The content of a group message never enters the stream: it
travels in each member's pairwise session beside the signed payload, in a
:class:`GroupDelivery`, and is checked against the payload's commitment.

Pure functions and records only (sans-I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from securechan import wire
from securechan.errors import GroupRejected, MalformedInput, VerificationFailed
from securechan.primitives import aead_decrypt, aead_encrypt, constant_time_equal, hkdf_sha256
from securechan.protocol.group import (
    MAX_MEMBERS,
    GroupChange,
    GroupState,
    SignedGroupPayload,
    stream_commitment,
)
from securechan.protocol.padding import pad, unpad

__all__ = [
    "GROUP_CHUNK_SIZE",
    "MAX_BLOB",
    "MAX_CONTENT",
    "GroupDelivery",
    "GroupRecord",
    "GroupSenderMark",
    "GroupWelcome",
    "StreamKeys",
    "check_leave",
    "leave_secret",
    "open_record",
    "seal_record",
]

_ID_INFO = b"securechan/v1/group-stream-id"
_KEY_INFO = b"securechan/v1/group-stream-key"
_LEAVE_INFO = b"securechan/v1/group-leave-secret"
# The largest blob a relay takes on a group stream (a change of 20 members
# is about 4.3 KiB sealed; a message record about 3.9 KiB).
MAX_BLOB = 16 * 1024
_MAX_RECORD = 8 * 1024
# The largest content one group message carries (its TextBody or FileChunk
# encoding): a pairwise payload's body holds it and the signed group payload
# (about 3.5 KiB), so group files go in chunks of GROUP_CHUNK_SIZE.
MAX_CONTENT = 32 * 1024
GROUP_CHUNK_SIZE = 24 * 1024
# What a GroupDelivery's content is (the exact bytes the commitment covers).
KIND_TEXT = 1
KIND_FILE = 2


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """The stream id (public to the relay) and sealing key of one epoch."""

    stream_id: bytes
    key: bytes

    @classmethod
    def from_secret(cls, epoch_secret: bytes) -> StreamKeys:
        if len(epoch_secret) != 32:
            raise ValueError("an epoch secret is 32 bytes")
        return cls(
            stream_id=hkdf_sha256(epoch_secret, salt=b"", info=_ID_INFO, length=32),
            key=hkdf_sha256(epoch_secret, salt=b"", info=_KEY_INFO, length=32),
        )

    @property
    def commitment(self) -> bytes:
        """What a change opening this epoch binds (``GroupChange.next_stream``)."""
        return stream_commitment(self.stream_id)


def leave_secret(epoch_secret: bytes, state: GroupState) -> bytes:
    """The secret of the epoch a leave opens: ``HKDF-SHA256(current secret,
    salt = SHA-256 name of the new state, info = "securechan/v1/group-leave-secret")``.
    Every member of the current epoch (the leaver too) can derive it: a leave
    adds no secret, and the epoch it opens is quiet until an admin's rekey."""
    if len(epoch_secret) != 32:
        raise ValueError("an epoch secret is 32 bytes")
    return hkdf_sha256(epoch_secret, salt=state.hash, info=_LEAVE_INFO, length=32)


def check_leave(change: GroupChange, epoch_secret: bytes) -> None:
    """Raise :class:`GroupRejected` unless a leave ``change`` read in the
    stream whose secret is ``epoch_secret`` commits to the derived stream
    (:func:`leave_secret`). Nothing for other changes (their author chose a
    fresh secret and welcomes the members with it)."""
    if not change.leaves() or change.next_stream is None:
        return
    derived = StreamKeys.from_secret(leave_secret(epoch_secret, change.state))
    if not constant_time_equal(derived.commitment, change.next_stream):
        raise GroupRejected("a leave that does not open the epoch derived from the current one")


@wire.record(0x0115, "GroupRecord")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRecord:
    """What one stream item seals: exactly one change or one message."""

    change: Annotated[GroupChange | None, wire.nested(1, max_len=_MAX_RECORD)] = None
    message: Annotated[SignedGroupPayload | None, wire.nested(2, max_len=_MAX_RECORD)] = None

    def __post_init__(self) -> None:
        if (self.change is None) == (self.message is None):
            raise MalformedInput("a group record is exactly one change or one message")

    @property
    def hash(self) -> bytes:
        """The hash the transcript chains: the change's or the signed payload's."""
        if self.change is not None:
            return self.change.hash
        if self.message is not None:
            return self.message.hash
        raise MalformedInput("a group record is exactly one change or one message")

    def to_bytes(self) -> bytes:
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupRecord:
        return wire.decode_record(cls, data)


def seal_record(keys: StreamKeys, record: GroupRecord) -> bytes:
    """The blob to post on the epoch's stream."""
    blob = aead_encrypt(keys.key, pad(record.to_bytes()), keys.stream_id)
    if len(blob) > MAX_BLOB:
        raise ValueError("a group record larger than a stream item")
    return blob


def open_record(keys: StreamKeys, blob: bytes) -> GroupRecord:
    """Open a stream item; raise :class:`MalformedInput` for anything that is
    not a record sealed under this epoch's key (skip it: every member does)."""
    if len(blob) > MAX_BLOB:
        raise MalformedInput("a stream item larger than the limit")
    try:
        padded = aead_decrypt(keys.key, blob, keys.stream_id)
    except VerificationFailed:
        raise MalformedInput("a stream item that does not open under the epoch's key") from None
    return GroupRecord.from_bytes(unpad(padded))


@wire.record(0x011C, "GroupSenderMark")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSenderMark:
    """One sender's last group sequence number and signed-payload hash at
    the head a welcome starts a joiner from."""

    fingerprint: Annotated[bytes, wire.bytes_(1, size=32)]
    seq: Annotated[int, wire.uint(2)]
    hash: Annotated[bytes, wire.bytes_(3, size=32)]


@wire.record(0x0116, "GroupWelcome")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupWelcome:
    """Sent pairwise to every member of a new state, once its change is in
    the stream: the change, the new epoch's secret, the transcript head just
    before the change (zeros for a creation), the stream the change was
    posted in, and the state the change replaces (absent for a creation):
    what a joiner needs to start its view (``GroupView.join``)."""

    change: Annotated[GroupChange, wire.nested(1, max_len=_MAX_RECORD)]
    epoch_secret: Annotated[bytes, wire.bytes_(2, size=32)]
    head_before: Annotated[bytes, wire.bytes_(3, size=32)]
    stream_of_change: Annotated[bytes, wire.bytes_(4, size=32)]
    previous: Annotated[GroupState | None, wire.nested(5, max_len=4096)] = None
    # Each sender's last sequence number at ``head_before`` (sorted by
    # fingerprint, each once; absent when none): a joiner's baseline.
    senders: Annotated[
        tuple[GroupSenderMark, ...] | None,
        wire.list_(6, max_len=MAX_MEMBERS * 96, max_items=MAX_MEMBERS),
    ] = None

    def __post_init__(self) -> None:
        committed = self.change.next_stream
        if committed is not None and not constant_time_equal(
            StreamKeys.from_secret(self.epoch_secret).commitment, committed
        ):
            # The secret must open the stream the author signed for (a
            # welcome cannot lead a member to another stream than the one
            # the change, ordered in the stream, announced).
            raise MalformedInput("a welcome's epoch secret is not the one its change commits to")
        if self.senders is not None:
            prints = [m.fingerprint for m in self.senders]
            if not prints or prints != sorted(set(prints)):
                raise MalformedInput(
                    "a welcome's sender marks are sorted, each once, absent when none"
                )
            if self.previous is None:
                raise MalformedInput("a creation's welcome has no sender marks")

    def last(self) -> dict[bytes, tuple[int, bytes]]:
        """The marks as ``GroupView.join`` takes them."""
        return {m.fingerprint: (m.seq, m.hash) for m in self.senders or ()}

    @staticmethod
    def marks(last: Mapping[bytes, tuple[int, bytes]]) -> tuple[GroupSenderMark, ...] | None:
        """A view's ``last`` as a welcome carries it."""
        out = tuple(
            GroupSenderMark(fingerprint=f, seq=seq, hash=h) for f, (seq, h) in sorted(last.items())
        )
        return out or None

    def to_bytes(self) -> bytes:
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupWelcome:
        return wire.decode_record(cls, data)


@wire.record(0x0117, "GroupDelivery")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDelivery:
    """A group message's content, sent pairwise beside its signed payload."""

    signed: Annotated[SignedGroupPayload, wire.nested(1, max_len=_MAX_RECORD)]
    kind: Annotated[int, wire.uint(2)]
    content: Annotated[bytes, wire.bytes_(3, max_len=MAX_CONTENT)]

    def __post_init__(self) -> None:
        if self.kind not in (KIND_TEXT, KIND_FILE):
            raise MalformedInput("a group delivery carries text (1) or a file chunk (2)")

    def to_bytes(self) -> bytes:
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupDelivery:
        return wire.decode_record(cls, data)
