"""Verifying a group transcript bundle offline (docs/AUDIT.md, "Group
transcripts"): :func:`verify_transcript` replays every record of a
:class:`~securechan.audit.group_transcript.GroupTranscript` with
``GroupView`` and checks its place in the relay's log; what it proves is a
:class:`VerifiedTranscript` (or, for one disclosed message, a
:class:`VerifiedGroupStatement`). The bundle's records and builder are in
``audit/group_transcript.py``."""

from __future__ import annotations

from dataclasses import dataclass

from securechan import wire
from securechan.audit.checkpoint import Checkpoint, open_checkpoint
from securechan.audit.group_transcript import (
    GroupTranscript,
    TranscriptItem,
)
from securechan.audit.merkle import verify_inclusion
from securechan.audit.note import (
    SignedNote,
    VerifierKey,
    open_note,
)
from securechan.audit.receipt import envelope_leaf_hash
from securechan.audit.statement import message_id
from securechan.errors import (
    GroupEquivocation,
    GroupRejected,
    MalformedInput,
    UntrustedKey,
    VerificationFailed,
)
from securechan.identity.keys import PublicIdentity
from securechan.protocol.group import (
    ZERO,
    GroupState,
    GroupView,
    check_content,
)
from securechan.protocol.group_stream import (
    StreamKeys,
    check_leave,
    open_record,
)
from securechan.protocol.payload import FileChunk, TextBody

__all__ = [
    "TranscriptEntry",
    "VerifiedGroupStatement",
    "VerifiedTranscript",
    "verify_transcript",
]

_TEXT_TYPE = 0x0072  # TextBody
_FILE_TYPE = 0x0073  # FileChunk


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptEntry:
    """One item of a verified transcript, in order.

    ``status``: ``created``/``joined``/``changed`` (a membership record
    applied), ``message`` (a message record applied), ``refused`` (a record
    every member refuses, with ``reason``), ``unreadable`` (a blob that does
    not open under its epoch's key: skipped by every member)."""

    number: int  # 1, 2, ... over the applied records from the exporter's start
    status: str
    epoch: int  # the stream's epoch
    position: int | None  # None for a joiner's start (not in a stream it reads)
    log_index: int | None
    author: PublicIdentity | None = None
    seq: int | None = None  # a message's sender sequence number
    sent_at: int | None = None  # the sender's clock, as signed
    message_id: str | None = None  # first 16 hex of SHA-256(signed payload)
    content: TextBody | FileChunk | None = None  # None: not disclosed
    state: GroupState | None = None  # a change's new state; a message's member list
    reason: str | None = None
    evidence: tuple[bytes, bytes] | None = None  # equivocation: both payload hashes
    head: bytes = b""  # the transcript head after this entry


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedTranscript:
    """What a verified bundle proves (``docs/AUDIT.md``, Group transcripts)."""

    group_id: bytes
    joined: bool  # the exporter's start is a join, not the creation
    entries: tuple[TranscriptEntry, ...]
    states: tuple[GroupState, ...]  # every member list, oldest first
    final_state: GroupState
    final_head: bytes
    checkpoint: Checkpoint
    log_key: VerifierKey

    @property
    def disclosed(self) -> tuple[TranscriptEntry, ...]:
        return tuple(e for e in self.entries if e.content is not None)

    def statement(self) -> VerifiedGroupStatement:
        """The bundle read as a statement of its one disclosed message, the
        transcript's last applied record; ``VerificationFailed`` otherwise."""
        shown = self.disclosed
        if len(shown) != 1:
            raise VerificationFailed("a statement discloses exactly one message")
        applied = [e for e in self.entries if e.status != "refused" and e.status != "unreadable"]
        if applied[-1] is not shown[0]:
            raise VerificationFailed("a statement ends at the message it discloses")
        return VerifiedGroupStatement(message=shown[0], transcript=self)

    def statement_or_none(self) -> VerifiedGroupStatement | None:
        """:meth:`statement`, or None when the bundle is not one."""
        try:
            return self.statement()
        except VerificationFailed:
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedGroupStatement:
    """One group message, proven: its sender signed it with this content
    (the commitment), under ``message.state`` (the member list then in
    force in the transcript), as applied record ``message.number`` from the
    exporter's start, at ``message.position`` of its epoch's stream and
    leaf ``message.log_index`` of the relay log. Not proven: that any
    member received or read it, or anything after it."""

    message: TranscriptEntry
    transcript: VerifiedTranscript


def _pinned_checkpoint(note: str, relay_key: VerifierKey) -> Checkpoint:
    lines = SignedNote.from_text_unverified(note).signatures
    if not any((sig.name, sig.key_id) == (relay_key.name, relay_key.key_id) for sig in lines):
        raise UntrustedKey("the checkpoint is not signed by the relay key you pinned")
    opened = open_note(note, [relay_key])  # BadSignature: the pinned key's line is forged
    if opened.unverified:
        # An unknown line would be ignored and so editable unnoticed.
        raise VerificationFailed("the checkpoint has a signature line by another key")
    return open_checkpoint(note, relay_key)


def _content(data: bytes) -> TextBody | FileChunk:
    kind = wire.peek_type(data)
    if kind == _TEXT_TYPE:
        return TextBody.from_bytes(data)
    if kind == _FILE_TYPE:
        return FileChunk.from_bytes(data)
    raise MalformedInput("a group message's content is a text or a file chunk")


class _Replay:
    """The verifier's walk over the items (one per bundle)."""

    def __init__(self, bundle: GroupTranscript, checkpoint: Checkpoint) -> None:
        self.bundle = bundle
        self.checkpoint = checkpoint
        self.keys = {e.epoch: StreamKeys.from_secret(e.secret) for e in bundle.epochs}
        self.secrets = {e.epoch: e.secret for e in bundle.epochs}
        # epoch -> the stream commitment of the change that opened it: the
        # bundle's secret of that epoch must give that stream (a chain of
        # streams, each announced in a signed change).
        self.committed: dict[int, bytes | None] = {}
        self.ids = {PublicIdentity.from_bytes(i) for i in bundle.identities}
        self.by_fp = {i.fingerprint.digest: i for i in self.ids}
        self.used: set[bytes] = set()
        self.epochs_used: set[int] = set()
        self.entries: list[TranscriptEntry] = []
        self.states: list[GroupState] = []
        self.number = 0

    def identity(self, fp: bytes, state: GroupState | None) -> PublicIdentity | None:
        who = self.by_fp.get(fp)
        if who is not None:
            self.used.add(fp)
            return who
        if state is not None and state.member(fp) is None:
            return None  # a stranger: refused by every member, unsigned or not
        raise VerificationFailed(
            f"the bundle lacks the public identity of the author {fp.hex()[:16]}"
        )

    def start(self) -> GroupView | None:
        join = self.bundle.join
        if join is None:
            return None
        if join.change.state.group_id != self.bundle.group_id:
            raise VerificationFailed("the join is for another group")
        author = self.identity(join.change.author, join.previous)
        if author is None:
            raise VerificationFailed("the join's author is not a member of the state it changes")
        if any(m.hash != ZERO for m in join.senders or ()):
            # Only the numbers are checked (by the sender's next message);
            # the hash a member holds is not the bundle's to claim.
            raise VerificationFailed("a sender mark in a bundle carries no hash")
        try:
            view = GroupView.join(join.change, author, join.previous, join.head_before, join.last())
        except GroupRejected as e:
            raise VerificationFailed(f"the join does not verify: {e}") from None
        self.committed[view.state.epoch] = join.change.next_stream
        self.add("joined", view, view.state.epoch, None, None, author=author, state=view.state)
        return view

    def add(
        self,
        status: str,
        view: GroupView | None,
        epoch: int,
        pos: int | None,
        index: int | None,
        **kw: object,
    ) -> None:
        applied = status not in ("refused", "unreadable")
        if applied:
            self.number += 1
        if status in ("created", "joined", "changed") and view is not None:
            self.states.append(view.state)
        head = view.head if view is not None else b""
        self.entries.append(
            TranscriptEntry(
                number=self.number,
                status=status,
                epoch=epoch,
                position=pos,
                log_index=index,
                head=head,
                **kw,  # type: ignore[arg-type]
            )
        )

    def logged(self, item: TranscriptItem) -> None:
        verify_inclusion(
            envelope_leaf_hash(item.blob),
            item.log_index,
            self.checkpoint.size,
            item.proof_hashes,
            self.checkpoint.root_hash,
        )

    def run(self) -> GroupView:
        view = self.start()
        epoch = view.state.epoch if view is not None else 0
        position = 0
        for item in self.bundle.items:
            keys = self.keys.get(epoch)
            if keys is None:
                raise VerificationFailed(f"the bundle lacks the secret of epoch {epoch}")
            self.epochs_used.add(epoch)
            committed = self.committed.get(epoch)
            if committed is not None and keys.commitment != committed:
                raise VerificationFailed(
                    f"the stream of epoch {epoch} is not the one the change that opened it "
                    "committed to (a stream swapped)"
                )
            if item.stream_id != keys.stream_id:
                raise VerificationFailed(
                    f"an item of another stream than epoch {epoch}'s (dropped, reordered, "
                    "or read past the change that closed it)"
                )
            if item.position != position + 1:
                raise VerificationFailed(
                    f"epoch {epoch}'s stream jumps from position {position} to "
                    f"{item.position} (a record dropped or reordered)"
                )
            position = item.position
            self.logged(item)
            view = self.step(view, item, keys, epoch)
            if view.state.epoch != epoch:
                epoch, position = view.state.epoch, 0
        if view is None:  # pragma: no cover - the first item made or refused one
            raise VerificationFailed("the bundle holds no group")
        return view

    def step(
        self, view: GroupView | None, item: TranscriptItem, keys: StreamKeys, epoch: int
    ) -> GroupView:
        where = (epoch, item.position, item.log_index)
        try:
            record = open_record(keys, item.blob)
        except MalformedInput:
            if view is None:
                raise VerificationFailed("the first item of epoch 0 is not the creation") from None
            self.no_content(item)
            self.add("unreadable", view, *where)
            return view
        state = view.state if view is not None else None
        if record.change is not None:
            change = record.change
            author = self.identity(change.author, state)
            if view is None:
                if author is None or change.state.group_id != self.bundle.group_id:
                    raise VerificationFailed(
                        "the first item of epoch 0 is not this group's creation"
                    )
                try:
                    new = GroupView.create(change, author)
                except GroupRejected as e:
                    raise VerificationFailed(f"the creation does not verify: {e}") from None
                if keys.commitment != change.next_stream:
                    raise VerificationFailed(
                        "the stream of epoch 0 is not the one the creation committed to"
                    )
                self.no_content(item)
                self.add("created", new, *where, author=author, state=new.state)
                return new
            self.no_content(item)
            try:
                if author is None:
                    raise GroupRejected("the change's author is not a member")
                new = view.apply_change(change, author)
                check_leave(change, self.secrets[epoch])
            except GroupRejected as e:
                self.add("refused", view, *where, author=author, reason=str(e))
                return view
            self.committed[new.state.epoch] = change.next_stream
            self.add("changed", new, *where, author=author, state=new.state)
            return new
        signed = record.message
        if view is None or signed is None:
            raise VerificationFailed("the first item of epoch 0 is not the creation")
        sender = self.identity(signed.payload.sender, state)
        try:
            if sender is None:
                raise GroupRejected("the sender is not a member of the group")
            new = view.accept_record(signed, sender)
        except GroupRejected as e:
            self.no_content(item)
            evidence = e.evidence if isinstance(e, GroupEquivocation) else None
            self.add("refused", view, *where, author=sender, reason=str(e), evidence=evidence)
            return view
        content = None
        if item.content is not None:
            try:
                check_content(signed, item.content)
            except GroupRejected:
                raise VerificationFailed(
                    f"the content given for message {message_id(signed.to_bytes())} is not "
                    "the one its sender signed"
                ) from None
            content = _content(item.content)
        p = signed.payload
        self.add(
            "message",
            new,
            *where,
            author=sender,
            seq=p.seq,
            sent_at=p.sent_at,
            message_id=message_id(signed.to_bytes()),
            content=content,
            state=view.state,
        )
        return new

    @staticmethod
    def no_content(item: TranscriptItem) -> None:
        if item.content is not None:
            raise VerificationFailed("a content given for a record that is no applied message")


def verify_transcript(bundle: GroupTranscript, *, relay_key: VerifierKey) -> VerifiedTranscript:
    """Check everything a bundle claims; return what it proves.

    Steps: (1) the checkpoint is signed by ``relay_key`` (the relay's log
    key, which the caller pins; ``UntrustedKey`` otherwise) and by no other
    key; (2) the start: the creation as item 1 of epoch 0's stream, or a
    join that ``GroupView.join`` accepts; (3) for each item in order: it is
    in the stream of the current epoch (the secret's stream id), at the next
    position (1 after each change), its leaf is in the log under the
    checkpoint (RFC 9162 §2.1.3.2), and its blob opens under the epoch's key
    (else it is shown unreadable, as every member skips it); the record is
    replayed with ``GroupView`` (a refused one shown with its reason, as
    members record it); a disclosed content must match its message's
    commitment; (4) every identity and epoch secret in the bundle is used.
    A bundle that claims anything it cannot show is refused, not
    downgraded. Raises :class:`MalformedInput`, :class:`UntrustedKey`,
    :class:`ProofFailed` or :class:`VerificationFailed`.
    """
    checkpoint = _pinned_checkpoint(bundle.checkpoint, relay_key)
    replay = _Replay(bundle, checkpoint)
    view = replay.run()
    if replay.used != set(replay.by_fp):
        raise VerificationFailed("the bundle carries an identity no record needs")
    if replay.epochs_used != set(replay.keys):
        raise VerificationFailed("the bundle carries an epoch secret no item needs")
    # A joiner's sender marks are its welcome's word: each must be confirmed
    # by a later message of its sender the replay accepted (a wrong number
    # would have refused it), so none rides unchecked.
    if bundle.join is not None:
        spoke = {
            e.author.fingerprint.digest
            for e in replay.entries
            if e.status == "message" and e.author is not None
        }
        if any(m.fingerprint not in spoke for m in bundle.join.senders or ()):
            raise VerificationFailed("the join carries a sender mark no later message confirms")
    return VerifiedTranscript(
        group_id=bundle.group_id,
        joined=bundle.join is not None,
        entries=tuple(replay.entries),
        states=tuple(replay.states),
        final_state=view.state,
        final_head=view.head,
        checkpoint=checkpoint,
        log_key=relay_key,
    )
