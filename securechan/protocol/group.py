"""Groups of up to 20 members: explicit signed state, one transcript (sans-I/O).

Design (issue 17; docs/PROTOCOL.md, Groups): a group message is signed once
and sent through each member's pairwise session (pairwise fan-out over the
post-quantum sessions: for 20 members MLS's tree saves nothing that matters,
and no post-quantum MLS is usable from Python). What makes it a *group*, and
a record a fact-checker can use, is explicit state:

- **GroupState** (0x0110): the group id (32 random bytes chosen by its
  creator), an epoch (0 at creation, +1 per change), a name, the members
  (1..20, each a fingerprint and an admin flag, sorted by fingerprint, no
  repeats, at least one admin) and ``previous``, the hash of the state it
  replaces (zeros at epoch 0). Its hash names it.
- **GroupChange** (0x0112): a new state signed by its author (composite
  ML-DSA-65 + Ed25519, context ``securechan/v1/group-change``) with a
  commitment to the stream of the epoch it opens (``next_stream``,
  :func:`stream_commitment` of that stream's id: a welcome's secret and a
  bundle's next stream are checked against it) and the transcript head it
  was made on (``head``: applied only on that head, so a joiner's welcome
  cannot lie about the head before the change). Authorised by the previous
  state: an admin may make any change (add, remove, grant or revoke admin,
  or none: a rekey) that leaves an admin; any member may leave (the new
  state is the old one without it, nothing else changed; the last admin
  cannot). A leave opens a *quiet* epoch (its secret is derived from the
  one the leaver held, so the leaver knows it): no message is accepted in
  it until a remaining member's change (an admin's rekey) opens a fresh
  one. The creation (epoch 0) is authorised by its author being an admin
  member of it.
- **GroupPayload** (0x0113) signed in a **SignedGroupPayload** (0x0114,
  context ``securechan/v1/group-message``): group id, the hash of the state
  the sender holds, the sender, its group sequence number (1, 2, ...), the
  last transcript head it has seen, a commitment to the content and the
  time. The content travels beside it in each pairwise message; each member
  checks the commitment, so a sender who shows members different content
  signs two payloads for one sequence number: proof of equivocation, caught
  when members compare what they hold (each carries its transcript head).

**One transcript.** Records (changes and messages) are applied in one order
for every member: the relay log's order of their hashes (one sequencer,
RFC 9750's strongly consistent model); :class:`GroupView` is fed in that
order by the client. Its ``head`` chains every applied record:
``head' = SHA-256("securechan/v1/group-head" 0x00 || head || record hash)``.
A message names the head its sender had seen; a head this member never
had means the two were shown different transcripts (a forked log), refused
as :class:`GroupForked`, like a split view.

Everything here is pure: bytes in, a new immutable view or an exception
out; a refused record leaves the view as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import wire
from securechan.errors import (
    BadSignature,
    GroupEquivocation,
    GroupForked,
    GroupRejected,
    MalformedInput,
)
from securechan.identity.keys import Identity, PublicIdentity
from securechan.primitives import HYBRID_SIGNATURE_SIZE, sha256

__all__ = [
    "CONTEXT_GROUP_CHANGE",
    "CONTEXT_GROUP_MESSAGE",
    "MAX_MEMBERS",
    "GroupChange",
    "GroupMember",
    "GroupPayload",
    "GroupState",
    "GroupView",
    "SignedGroupPayload",
    "check_content",
    "commit_content",
    "stream_commitment",
]

CONTEXT_GROUP_CHANGE = b"securechan/v1/group-change"
CONTEXT_GROUP_MESSAGE = b"securechan/v1/group-message"
_STATE_LABEL = b"securechan/v1/group-state\x00"
_HEAD_LABEL = b"securechan/v1/group-head\x00"
_CONTENT_LABEL = b"securechan/v1/group-content\x00"
_STREAM_LABEL = b"securechan/v1/group-next-stream\x00"
MAX_MEMBERS = 20
MAX_NAME = 64
# Transcript heads a member remembers, to recognise the one a sender names
# (a sender is at most this many records behind).
HEADS_KEPT = 1024
ZERO = bytes(32)


def _encoded(record: GroupState | GroupChange | GroupPayload | SignedGroupPayload) -> bytes:
    """The record's canonical encoding, made once per instance: the records
    here are immutable, and a group send encodes the same state, change or
    signed payload several times (its hash, the stream record, the pairwise
    delivery or welcome). The cache is a field outside the wire schema and
    outside ``__init__``, so ``dataclasses.replace`` never copies it."""
    raw = record._raw
    if raw is None:
        raw = wire.encode_record(record)
        object.__setattr__(record, "_raw", raw)
    return raw


@wire.record(0x0111, "GroupMember")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMember:
    fingerprint: Annotated[bytes, wire.bytes_(1, size=32)]
    admin: Annotated[bool, wire.boolean(2)]


@wire.record(0x0110, "GroupState")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupState:
    group_id: Annotated[bytes, wire.bytes_(1, size=32)]
    epoch: Annotated[int, wire.uint(2)]
    name: Annotated[str, wire.text(3, max_len=MAX_NAME)]
    members: Annotated[
        tuple[GroupMember, ...], wire.list_(4, max_len=MAX_MEMBERS * 64, max_items=MAX_MEMBERS)
    ]
    previous: Annotated[bytes, wire.bytes_(5, size=32)]
    _raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        prints = [m.fingerprint for m in self.members]
        if not 1 <= len(prints) <= MAX_MEMBERS:
            raise MalformedInput(f"a group has 1 to {MAX_MEMBERS} members")
        if prints != sorted(set(prints)):
            raise MalformedInput("group members are sorted by fingerprint, each once")
        if not any(m.admin for m in self.members):
            raise MalformedInput("a group has at least one admin")
        if (self.epoch == 0) != (self.previous == ZERO):
            raise MalformedInput("only the first state of a group has no previous state")

    @property
    def hash(self) -> bytes:
        return sha256(_STATE_LABEL + self.to_bytes())

    def member(self, fingerprint: bytes) -> GroupMember | None:
        return next((m for m in self.members if m.fingerprint == fingerprint), None)

    def to_bytes(self) -> bytes:
        return _encoded(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupState:
        return wire.decode_record(cls, data)


@wire.record(0x0112, "GroupChange")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupChange:
    state: Annotated[GroupState, wire.nested(1, max_len=4096)]
    author: Annotated[bytes, wire.bytes_(2, size=32)]
    signature: Annotated[bytes, wire.bytes_(3, size=HYBRID_SIGNATURE_SIZE)]
    # stream_commitment() of the stream id of the epoch this change opens.
    # Absent only in encodings made before it existed (still decoded, so
    # old client.db rows read; never verified: see verify()).
    next_stream: Annotated[bytes | None, wire.bytes_(4, size=32)] = None
    # The transcript head the change was made on: the head just before it
    # once applied (a member applies it only on that head), so a joiner's
    # welcome cannot lie about the history before the change. Optional for
    # members (a change without it is applied on any head, as before it
    # existed); required to start a joiner's view (GroupView.join).
    head: Annotated[bytes | None, wire.bytes_(5, size=32)] = None
    _raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def sign(
        cls,
        author: Identity,
        state: GroupState,
        *,
        next_stream: bytes,
        head: bytes | None = None,
    ) -> GroupChange:
        """``next_stream``: :func:`stream_commitment` of the new epoch's
        stream id (``StreamKeys.commitment``); ``head``: the transcript head
        the author holds (the client always gives it; ZERO for a creation)."""
        if len(next_stream) != 32 or (head is not None and len(head) != 32):
            raise ValueError("a stream commitment and a head are 32 bytes")
        fp = author.fingerprint.digest
        message = _change_message(state, fp, next_stream, head)
        sig = author.sign(message, context=CONTEXT_GROUP_CHANGE)
        return cls(state=state, author=fp, signature=sig, next_stream=next_stream, head=head)

    def verify(self, author: PublicIdentity) -> None:
        """Raise :class:`GroupRejected` unless ``author`` (the named one) signed it."""
        if author.fingerprint.digest != self.author:
            raise GroupRejected("the change names another author")
        if self.next_stream is None:
            raise GroupRejected(
                "a group change without a commitment to its epoch's stream (made by a "
                "version before it was bound)"
            )
        try:
            author.verify(
                self.signature,
                _change_message(self.state, self.author, self.next_stream, self.head),
                context=CONTEXT_GROUP_CHANGE,
            )
        except Exception as e:  # BadSignature
            raise GroupRejected("the change's signature does not verify") from e

    def leaves(self) -> bool:
        """Whether the change's author is not in the state it makes (a leave)."""
        return self.state.member(self.author) is None

    @property
    def hash(self) -> bytes:
        return sha256(self.to_bytes())

    def to_bytes(self) -> bytes:
        return _encoded(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupChange:
        return wire.decode_record(cls, data)


def _change_message(
    state: GroupState, author: bytes, next_stream: bytes, head: bytes | None
) -> bytes:
    bound = b"\x00" if head is None else b"\x01" + head
    return state.to_bytes() + author + next_stream + bound


def stream_commitment(stream_id: bytes) -> bytes:
    """What a change binds of the stream its epoch uses:
    ``SHA-256("securechan/v1/group-next-stream" 0x00 || stream_id)``. Not
    the stream id itself: whoever reads the change (a member who leaves or is
    removed by it, reading the stream it is posted in) must not learn where
    the next epoch's records are (it could read their sizes and times, and
    post noise there); a third party given the next epoch's secret (a
    transcript bundle) checks it."""
    if len(stream_id) != 32:
        raise ValueError("a stream id is 32 bytes")
    return sha256(_STREAM_LABEL + stream_id)


@wire.record(0x0113, "GroupPayload")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupPayload:
    group_id: Annotated[bytes, wire.bytes_(1, size=32)]
    state_hash: Annotated[bytes, wire.bytes_(2, size=32)]
    sender: Annotated[bytes, wire.bytes_(3, size=32)]
    seq: Annotated[int, wire.uint(4)]
    head: Annotated[bytes, wire.bytes_(5, size=32)]
    commitment: Annotated[bytes, wire.bytes_(6, size=32)]
    sent_at: Annotated[int, wire.uint(7)]
    _raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        return _encoded(self)


@wire.record(0x0114, "SignedGroupPayload")
@dataclass(frozen=True, slots=True, kw_only=True)
class SignedGroupPayload:
    payload: Annotated[GroupPayload, wire.nested(1, max_len=512)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]
    _raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def sign(cls, sender: Identity, payload: GroupPayload) -> SignedGroupPayload:
        if payload.sender != sender.fingerprint.digest:
            raise ValueError("the payload names another sender")
        data = payload.to_bytes()
        return cls(payload=payload, signature=sender.sign(data, context=CONTEXT_GROUP_MESSAGE))

    def verify(self, sender: PublicIdentity) -> None:
        if sender.fingerprint.digest != self.payload.sender:
            raise GroupRejected("the message names another sender")
        try:
            sender.verify(self.signature, self.payload.to_bytes(), context=CONTEXT_GROUP_MESSAGE)
        except BadSignature:
            raise GroupRejected("the message's signature does not verify") from None

    @property
    def hash(self) -> bytes:
        return sha256(self.to_bytes())

    def to_bytes(self) -> bytes:
        return _encoded(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedGroupPayload:
        return wire.decode_record(cls, data)


def commit_content(group_id: bytes, sender: bytes, seq: int, content: bytes) -> bytes:
    """The commitment a group payload carries to its content."""
    return sha256(_CONTENT_LABEL + group_id + sender + seq.to_bytes(8, "big") + content)


def _next_head(head: bytes, record_hash: bytes) -> bytes:
    return sha256(_HEAD_LABEL + head + record_hash)


@dataclass(frozen=True, slots=True)
class GroupView:
    """One member's view of a group, fed the group's records in log order."""

    state: GroupState
    head: bytes
    # sender -> (its last sequence number, that message's signed hash)
    last: Mapping[bytes, tuple[int, bytes]] = field(default_factory=dict)  # never mutated: copied
    heads: tuple[bytes, ...] = ()  # recent heads, newest last (bounded)
    # The current epoch was opened by a leave: its secret is derived from
    # the one the leaver held (``group_stream.leave_secret``), so no message
    # is accepted in it; a remaining member's change (an admin's rekey)
    # opens a fresh epoch and ends it.
    quiet: bool = False

    @classmethod
    def create(cls, change: GroupChange, author: PublicIdentity) -> GroupView:
        """The view after a group's first record (its creation)."""
        state = change.state
        if state.epoch != 0:
            raise GroupRejected("a group starts at epoch 0")
        change.verify(author)
        if change.head not in (None, ZERO):
            raise GroupRejected("a creation follows no transcript head")
        me = state.member(change.author)
        if me is None or not me.admin:
            raise GroupRejected("the creator is not an admin member of the group it made")
        head = _next_head(ZERO, change.hash)
        return cls(state=state, head=head, heads=(ZERO, head))

    def _advance(self, record_hash: bytes, **changes: object) -> GroupView:
        head = _next_head(self.head, record_hash)
        heads = (*self.heads, head)[-HEADS_KEPT:]
        return replace(self, head=head, heads=heads, **changes)  # type: ignore[arg-type]

    def apply_change(self, change: GroupChange, author: PublicIdentity) -> GroupView:
        """The view after a membership change; raise :class:`GroupRejected`."""
        old, new = self.state, change.state
        if new.group_id != old.group_id:
            raise GroupRejected("the change is for another group")
        if new.epoch != old.epoch + 1 or new.previous != old.hash:
            # An old state replayed, or one made on a state we do not hold.
            raise GroupRejected(f"the change does not follow the current state (epoch {old.epoch})")
        if change.head is not None and change.head != self.head:
            raise GroupRejected(
                "the change was made on another transcript head (a record came first); "
                "its author makes it again"
            )
        change.verify(author)
        who = old.member(change.author)
        if who is None:
            raise GroupRejected("the change's author is not a member")
        leaving = tuple(m for m in old.members if m.fingerprint != change.author)
        if change.leaves() and (new.members != leaving or new.name != old.name):
            # A leave changes nothing else (no one joins an epoch whose
            # secret a non-member knows), an admin's as anyone's.
            raise GroupRejected("a change by a member who leaves must change nothing else")
        if not who.admin and not change.leaves():
            raise GroupRejected("only an admin may change the group; a member may only leave")
        return self._advance(change.hash, state=new, quiet=change.leaves())

    @classmethod
    def join(
        cls,
        change: GroupChange,
        author: PublicIdentity,
        previous: GroupState | None,
        head_before: bytes,
        last: Mapping[bytes, tuple[int, bytes]] | None = None,
    ) -> GroupView:
        """The view of a member who joins at ``change`` (a creation, or a
        change to a state that names it), from its welcome: ``previous`` is
        the state the change replaces (None for a creation), ``head_before``
        the transcript head before the change. The joiner checks that the
        change follows ``previous`` (named by hash in the signed state) and
        is authorised by it, and that ``head_before`` is the head the signed
        change was made on (``change.head``: every member applies the change
        only on that head). ``last`` is each sender's last sequence number
        and signed-payload hash at ``head_before`` (the author's word: a
        wrong mark makes a sender's next message a gap or a replay for this
        joiner alone), so the joiner expects the same next numbers as the
        members who were there."""
        if change.state.epoch == 0:
            if previous is not None or head_before != ZERO:
                raise GroupRejected("a creation follows no state")
            return cls.create(change, author)
        if previous is None:
            raise GroupRejected("a joiner needs the state the change replaces")
        if change.leaves():
            raise GroupRejected("a leave welcomes no one (its epoch's secret is derived)")
        if change.head is None or change.head != head_before:
            # The change names the head it was made on, signed: the welcome's
            # head before it is no longer its author's word alone.
            raise GroupRejected(
                "the welcome's head before the change is not the one it was made on"
            )
        marks = dict(last or {})
        # Marks may name former members too (one removed and added back
        # continues its numbers), never a number 0.
        if any(seq < 1 for seq, _ in marks.values()):
            raise GroupRejected("a welcome's sequence mark is not a sequence number")
        start = cls(state=previous, head=head_before, heads=(head_before,), last=marks)
        view = start.apply_change(change, author)
        return replace(view, heads=(view.head,))

    def accept_message(
        self, signed: SignedGroupPayload, content: bytes, sender: PublicIdentity
    ) -> GroupView:
        """The view after one group message whose content is at hand; raise
        :class:`GroupRejected` (or a subclass) for a message that must not
        be shown."""
        check_content(signed, content)
        return self.accept_record(signed, sender)

    def accept_record(self, signed: SignedGroupPayload, sender: PublicIdentity) -> GroupView:
        """The view after one group message record, in stream order, whether
        or not its content (which travels pairwise) has arrived: the
        transcript is the records; each member checks the content it gets
        with :func:`check_content`. Raise :class:`GroupRejected` (or a
        subclass)."""
        p = signed.payload
        if p.group_id != self.state.group_id:
            raise GroupRejected("the message is for another group")
        if self.quiet:
            raise GroupRejected(
                "a message in an epoch opened by a member who left (that member knows its "
                "secret): no message until an admin rekeys the group"
            )
        if self.state.member(p.sender) is None:
            raise GroupRejected("the sender is not a member of the group")
        if p.state_hash != self.state.hash:
            raise GroupRejected("the message was made for another member list")
        signed.verify(sender)
        if p.head not in self.heads:
            raise GroupForked(
                "the sender saw a group transcript this member never had (a forked log)"
            )
        last_seq, last_hash = self.last.get(p.sender, (0, b""))
        if p.seq <= last_seq:
            if p.seq == last_seq and signed.hash != last_hash:
                raise GroupEquivocation(
                    "the sender signed two different messages for one sequence number",
                    evidence=(last_hash, signed.hash),
                )
            raise GroupRejected("a replayed group message")
        if p.seq != last_seq + 1:
            raise GroupRejected(
                f"group messages {last_seq + 1}..{p.seq - 1} of this sender are missing"
            )
        last = dict(self.last)
        last[p.sender] = (p.seq, signed.hash)
        return self._advance(signed.hash, last=last)


def check_content(signed: SignedGroupPayload, content: bytes) -> None:
    """Raise :class:`GroupRejected` unless ``content`` is the one ``signed``
    commits to. (A content that does not match, carried in a pairwise
    message the sender signed too, is evidence of equivocation: the client
    reports it with both.)"""
    p = signed.payload
    if p.commitment != commit_content(p.group_id, p.sender, p.seq, content):
        raise GroupRejected("the content is not the one the sender signed")
