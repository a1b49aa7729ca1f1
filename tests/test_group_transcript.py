"""Group transcript bundles (securechan/audit/group_transcript.py), played as
the parties who would lie with one: an exporter who edits, drops, reorders
or swaps records and contents, a relay that never logged a blob or signs
with another key, a member who forges a membership change or equivocates,
and a statement that places a message under another epoch's member list.

Everything is real: identities, signed group records sealed on their
epoch's stream, an RFC 6962 tree of the relay's log (with other envelopes
between the group's items) and a checkpoint signed by the relay's key."""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.audit.checkpoint import Checkpoint, sign_checkpoint
from securechan.audit.group_transcript import (
    GroupTranscript,
    TranscriptEpoch,
    TranscriptItem,
    TranscriptJoin,
)
from securechan.audit.group_transcript_verify import VerifiedTranscript, verify_transcript
from securechan.audit.merkle import MemoryTree
from securechan.audit.note import SIG_ED25519, VerifierKey
from securechan.audit.receipt import envelope_leaf_hash
from securechan.errors import (
    BadSignature,
    MalformedInput,
    ProofFailed,
    SecurechanError,
    UntrustedKey,
    VerificationFailed,
)
from securechan.identity import Identity, PublicIdentity
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.group import GroupChange, GroupState, GroupView
from securechan.protocol.group_stream import (
    GroupRecord,
    GroupSenderMark,
    GroupWelcome,
    StreamKeys,
    open_record,
    seal_record,
)
from securechan.protocol.payload import TextBody
from tests.test_group_protocol import (
    ENVOY,
    MUSCAT,
    TEHRAN,
    WASHINGTON,
    _genesis,
    _message,
    _next,
    _secret,
    _sign,
)

# PUBLIC TEST DATA: the relay's log key is derived from a public string.
LOG_SK = Ed25519SigningKey(hashlib.sha256(b"securechan test group relay log").digest())
ORIGIN = "relay.example/log"
LOG = VerifierKey(name=ORIGIN, sig_type=SIG_ED25519, public_key=LOG_SK.public)
OTHER_SK = Ed25519SigningKey(hashlib.sha256(b"securechan test another relay").digest())
SECRETS = {e: _secret(e) for e in range(4)}  # as _genesis's creation commits


IDS = [MUSCAT.public, TEHRAN.public, WASHINGTON.public, ENVOY.public]
REFUSALS = (MalformedInput, VerificationFailed, UntrustedKey)  # ProofFailed, BadSignature inside


def _text(s: str) -> bytes:
    return TextBody(text=s).to_bytes()


@dataclass
class Relay:
    """The relay's log and streams, as the real one keeps them (a stream
    item's leaf is logged as an envelope's)."""

    tree: MemoryTree = field(default_factory=MemoryTree)
    streams: dict[bytes, list[tuple[bytes, int]]] = field(default_factory=lambda: defaultdict(list))
    leaves: list[bytes] = field(default_factory=list)

    def copy(self, upto: int) -> Relay:
        """The same log, and the streams as they were after the talks' item
        ``upto``, to post more after it (blobs are randomised: a second run
        of the talks would make other ones)."""
        streams: dict[bytes, list[tuple[bytes, int]]] = defaultdict(list)
        for it in TALKS.items[: upto + 1]:
            streams[it.stream_id] = self.streams[it.stream_id][: it.position]
        return Relay(MemoryTree(self.leaves), streams, list(self.leaves))

    def _log(self, leaf: bytes) -> int:
        self.leaves.append(leaf)
        return self.tree.append_leaf_hash(leaf)

    def post(self, epoch: int, record: GroupRecord | bytes) -> TranscriptItem:
        keys = StreamKeys.from_secret(SECRETS[epoch])
        blob = record if isinstance(record, bytes) else seal_record(keys, record)
        self._log(envelope_leaf_hash(b"someone else's envelope %d" % self.tree.size))
        index = self._log(envelope_leaf_hash(blob))
        self.streams[keys.stream_id].append((blob, index))
        pos = len(self.streams[keys.stream_id])
        return TranscriptItem(
            stream_id=keys.stream_id, position=pos, blob=blob, log_index=index, inclusion_proof=b""
        )

    def checkpoint(self, key: Ed25519SigningKey = LOG_SK) -> str:
        cp = Checkpoint(origin=ORIGIN, size=self.tree.size, root_hash=self.tree.root())
        return sign_checkpoint(key, ORIGIN, cp)

    def proven(self, item: TranscriptItem, content: bytes | None = None) -> TranscriptItem:
        proof = self.tree.inclusion_proof(item.log_index, self.tree.size)
        return replace(item, inclusion_proof=b"".join(proof), content=content)


@dataclass
class Talks:
    """A group's life: Muscat creates it with Tehran and Washington; both
    speak; the relay posts noise; Muscat adds the envoy (epoch 1); the
    envoy and Tehran speak; Washington posts a message made for the old
    member list (refused); Muscat removes Washington (epoch 2); Tehran
    speaks. ``items`` are every member's reading order; ``contents`` the
    content of each message item."""

    relay: Relay
    items: list[TranscriptItem]
    contents: dict[int, bytes]
    views: list[GroupView]  # the view after each item (as any member holds it)
    join_change: GroupChange
    state0: GroupState
    head_before_join: bytes
    epoch1_change_at: int  # the index of the change that opens epoch 1


def _talks() -> Talks:
    relay = Relay()
    items: list[TranscriptItem] = []
    contents: dict[int, bytes] = {}
    views: list[GroupView] = []
    view, creation = _genesis()

    def post(
        epoch: int, record: GroupRecord | bytes, new: GroupView, content: bytes | None = None
    ) -> None:
        items.append(relay.post(epoch, record))
        if content is not None:
            contents[len(items) - 1] = content
        views.append(new)

    post(0, GroupRecord(change=creation), view)
    for sender, seq, text in (
        (TEHRAN, 1, "we propose a freeze"),
        (WASHINGTON, 1, "we need verification"),
    ):
        m = _message(view, sender, seq, _text(text))
        view = view.accept_message(m, _text(text), sender.public)
        post(0, GroupRecord(message=m), view, _text(text))
    post(0, b"relay noise that opens under no key" * 3, view)
    state0, head_before = view.state, view.head
    add = _sign(
        MUSCAT,
        _next(view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False}),
        head=view.head,  # a joiner's welcome starts from it: the head is bound
    )
    stale = _message(view, WASHINGTON, 2, _text("made for epoch 0"))
    view = view.apply_change(add, MUSCAT.public)
    post(0, GroupRecord(change=add), view)
    at = len(items) - 1
    relay.post(0, GroupRecord(message=stale))  # after the change: never read
    for sender, seq, text in ((ENVOY, 1, "the envoy is here"), (TEHRAN, 2, "welcome")):
        m = _message(view, sender, seq, _text(text))
        view = view.accept_message(m, _text(text), sender.public)
        post(1, GroupRecord(message=m), view, _text(text))
    post(1, GroupRecord(message=stale), view)  # refused: another member list
    remove = _sign(MUSCAT, _next(view, {MUSCAT: True, TEHRAN: False, ENVOY: False}))
    view = view.apply_change(remove, MUSCAT.public)
    post(1, GroupRecord(change=remove), view)
    m = _message(view, TEHRAN, 3, _text("agreed, without Washington"))
    view = view.accept_message(m, _text("agreed, without Washington"), TEHRAN.public)
    post(2, GroupRecord(message=m), view, _text("agreed, without Washington"))
    return Talks(relay, items, contents, views, add, state0, head_before, at)


TALKS = _talks()


def _bundle(
    talks: Talks = TALKS,
    *,
    upto: int | None = None,
    disclose: set[int] | None = None,
    start: int = 0,
    join: TranscriptJoin | None = None,
    items: list[TranscriptItem] | None = None,
) -> GroupTranscript:
    last = len(talks.items) if upto is None else upto + 1
    chosen = range(start, last)
    shown = set(talks.contents) if disclose is None else disclose
    proven = items or [
        talks.relay.proven(talks.items[i], talks.contents.get(i) if i in shown else None)
        for i in chosen
    ]
    return GroupTranscript.build(
        group_id=talks.views[0].state.group_id,
        items=proven,
        epoch_secrets=SECRETS,
        identities=IDS,
        checkpoint=talks.relay.checkpoint(),
        log_key=LOG,
        join=join,
    )


def _joiner(**kw: object) -> GroupTranscript:
    join = TranscriptJoin(
        change=TALKS.join_change,
        previous=TALKS.state0,
        head_before=TALKS.head_before_join,
        senders=GroupWelcome.marks(TALKS.views[TALKS.epoch1_change_at - 1].last),
    )
    return _bundle(start=TALKS.epoch1_change_at + 1, join=join, **kw)  # type: ignore[arg-type]


WHOLE = _bundle()
WHOLE_BYTES = WHOLE.to_bytes()


def _verify(data: bytes | GroupTranscript) -> VerifiedTranscript:
    bundle = data if isinstance(data, GroupTranscript) else GroupTranscript.from_bytes(data)
    return verify_transcript(bundle, relay_key=LOG)


def test_a_whole_transcript_shows_epochs_members_and_who_said_what_in_order() -> None:
    v = _verify(WHOLE_BYTES)
    assert [e.status for e in v.entries] == [
        "created", "message", "message", "unreadable", "changed",
        "message", "message", "refused", "changed", "message",
    ]  # fmt: skip
    assert [s.epoch for s in v.states] == [0, 1, 2]
    assert v.final_head == TALKS.views[-1].head  # the head every member holds
    assert v.final_state.member(WASHINGTON.fingerprint.digest) is None
    said = [(e.author.name, e.seq, e.content.text) for e in v.entries if e.status == "message"]  # type: ignore[union-attr]
    assert said == [
        ("tehran", 1, "we propose a freeze"),
        ("washington", 1, "we need verification"),
        ("envoy", 1, "the envoy is here"),
        ("tehran", 2, "welcome"),
        ("tehran", 3, "agreed, without Washington"),
    ]
    refused = v.entries[7]
    assert refused.author == WASHINGTON.public and "another member list" in (refused.reason or "")
    # Each message names the member list it was accepted under.
    assert v.entries[5].state is not None and v.entries[5].state.epoch == 1
    assert [e.number for e in v.entries][-1] == 8  # applied records (noise, refusals not counted)
    # One bundle, one encoding.
    assert GroupTranscript.from_bytes(WHOLE_BYTES).to_bytes() == WHOLE_BYTES


def test_contents_not_disclosed_are_shown_as_such_and_a_statement_proves_one_message() -> None:
    v = _verify(_bundle(disclose=set()))
    assert all(e.content is None for e in v.entries)
    with pytest.raises(VerificationFailed):
        v.statement()
    # The statement of Tehran's "welcome" (item 6): the bundle ends there, one content.
    s = _verify(_bundle(upto=6, disclose={6})).statement()
    assert s.message.author == TEHRAN.public and s.message.content == TextBody(text="welcome")
    assert s.message.state is not None and s.message.state.epoch == 1
    assert {m.fingerprint for m in s.message.state.members} == {
        p.fingerprint.digest for p in (MUSCAT, TEHRAN, WASHINGTON, ENVOY)
    }
    assert (s.message.epoch, s.message.position, s.message.number) == (1, 2, 6)
    assert s.message.log_index == TALKS.items[6].log_index
    # A bundle that discloses a message and goes on past it is no statement of it.
    with pytest.raises(VerificationFailed):
        _verify(_bundle(upto=8, disclose={6})).statement()


def test_a_joiner_exports_from_its_join() -> None:
    v = _verify(_joiner(disclose={5}).to_bytes())
    assert v.joined and v.entries[0].status == "joined" and v.entries[0].position is None
    assert v.entries[0].state is not None and v.entries[0].state.epoch == 1
    envoy = v.entries[1]
    assert envoy.status == "message" and envoy.author == ENVOY.public and envoy.number == 2
    assert [e.status for e in v.entries][3:5] == ["refused", "changed"]
    assert v.final_state == TALKS.views[-1].state


def test_a_joiner_accepts_the_next_message_of_a_member_who_spoke_before_it_joined() -> None:
    v = _verify(_joiner(disclose={5}).to_bytes())
    assert [e.status for e in v.entries][1:] == [
        "message", "message", "refused", "changed", "message",
    ]  # fmt: skip
    assert v.final_head == TALKS.views[-1].head


def _swap(bundle: GroupTranscript, i: int, item: TranscriptItem) -> GroupTranscript:
    items = list(bundle.items)
    items[i] = item
    return replace(bundle, items=tuple(items))


def test_a_swapped_content_is_refused() -> None:
    b = _swap(WHOLE, 1, replace(WHOLE.items[1], content=_text("we propose war")))
    with pytest.raises(VerificationFailed, match="not the one its sender signed"):
        _verify(b)
    # Another message's content, genuine but not this one's.
    b = _swap(WHOLE, 1, replace(WHOLE.items[1], content=WHOLE.items[2].content))
    with pytest.raises(VerificationFailed):
        _verify(b)
    # A content pinned on the noise, the refused record or a change.
    for i in (0, 3, 4, 7):
        with pytest.raises(VerificationFailed, match="no applied message"):
            _verify(_swap(WHOLE, i, replace(WHOLE.items[i], content=_text("x"))))


@pytest.mark.parametrize("dropped", range(1, 10))
def test_a_dropped_record_is_refused(dropped: int) -> None:
    items = [it for i, it in enumerate(WHOLE.items) if i != dropped]
    with pytest.raises(REFUSALS):
        _verify(replace(WHOLE, items=tuple(items)))


@pytest.mark.parametrize("i", range(0, 9))
def test_two_records_swapped_are_refused(i: int) -> None:
    items = list(WHOLE.items)
    items[i], items[i + 1] = items[i + 1], items[i]
    with pytest.raises(REFUSALS):
        _verify(replace(WHOLE, items=tuple(items)))


def test_renumbered_positions_to_hide_a_drop_are_refused_by_the_log() -> None:
    # Drop Washington's message and renumber the rest of epoch 0's stream:
    # positions now follow, but the inclusion proofs do not (same blobs).
    items = [WHOLE.items[0], WHOLE.items[1]] + [
        replace(it, position=it.position - 1) for it in WHOLE.items[3:5]
    ]
    b = replace(WHOLE, items=(*items, *WHOLE.items[5:]))
    # Positions are not in the log: the drop is caught by the replay
    # (Tehran's next message names a head this transcript never had) or the
    # dropped sender's missing sequence numbers: never a clean transcript.
    try:
        v = _verify(b)
    except REFUSALS:
        return
    assert v.final_head != TALKS.views[-1].head
    assert any(e.status == "refused" for e in v.entries[4:7])


def test_a_blob_the_log_does_not_hold_is_refused() -> None:
    # The exporter reseals a record (same content, another blob): not logged.
    keys = StreamKeys.from_secret(SECRETS[0])
    m = _message(TALKS.views[0], TEHRAN, 1, _text("we propose a freeze"))
    fresh = seal_record(keys, GroupRecord(message=m))
    with pytest.raises(ProofFailed):
        _verify(_swap(WHOLE, 1, replace(WHOLE.items[1], blob=fresh)))
    # A record the relay logged after the checkpoint, with a proof of another leaf.
    with pytest.raises(ProofFailed):
        _verify(_swap(WHOLE, 1, replace(WHOLE.items[1], log_index=WHOLE.items[2].log_index)))


def test_a_wrong_relay_key_or_a_checkpoint_by_another_key_is_refused() -> None:
    other = VerifierKey(name=ORIGIN, sig_type=SIG_ED25519, public_key=OTHER_SK.public)
    with pytest.raises(UntrustedKey):
        verify_transcript(WHOLE, relay_key=other)
    # The same tree signed by another key, pinned key unchanged.
    forged = replace(WHOLE, checkpoint=TALKS.relay.checkpoint(OTHER_SK))
    with pytest.raises(UntrustedKey):
        _verify(forged)
    # An extra signature line (would be ignored, so editable): refused.
    from securechan.audit.note import NoteSigner, add_signatures

    extra = add_signatures(
        WHOLE.checkpoint, [NoteSigner("witness.example", OTHER_SK).sign(WHOLE.checkpoint)]
    )
    with pytest.raises(VerificationFailed, match="another key"):
        _verify(replace(WHOLE, checkpoint=extra))


def test_a_forged_membership_change_shows_refused_and_changes_nothing() -> None:
    # Tehran (no admin) signs a state that makes it admin and drops Washington;
    # the relay logs it in epoch 1's stream before Muscat's removal.
    relay = TALKS.relay.copy(6)
    view = TALKS.views[6]
    coup = _sign(TEHRAN, _next(view, {MUSCAT: False, TEHRAN: True, ENVOY: False}))
    items = [relay.proven(it, TALKS.contents.get(i)) for i, it in enumerate(TALKS.items[:7])]
    items.append(relay.proven(relay.post(1, GroupRecord(change=coup))))
    b = _bundle(items=items)
    b = replace(b, checkpoint=relay.checkpoint(), items=tuple(
        relay.proven(it, it.content) for it in b.items
    ))  # fmt: skip
    v = _verify(b)
    assert v.entries[-1].status == "refused" and "only an admin" in (v.entries[-1].reason or "")
    assert v.final_state == view.state
    # A change whose signature names another author than the one who signed it.
    fake = replace(coup, author=MUSCAT.fingerprint.digest)
    rec = relay.proven(relay.post(1, GroupRecord(change=fake)))
    b2 = replace(b, checkpoint=relay.checkpoint(), items=tuple(
        relay.proven(it, it.content) for it in (*b.items, rec)
    ))  # fmt: skip
    v2 = _verify(b2)
    assert v2.entries[-1].status == "refused" and "signature" in (v2.entries[-1].reason or "")


def test_an_equivocating_sender_second_version_is_refused_with_evidence() -> None:
    relay = TALKS.relay.copy(2)
    view = TALKS.views[0]
    second = _message(view, TEHRAN, 1, _text("we propose nothing"))  # another payload, seq 1
    items = [relay.proven(it, TALKS.contents.get(i)) for i, it in enumerate(TALKS.items[:3])]
    items.append(relay.post(0, GroupRecord(message=second)))
    b = _bundle(items=items)
    b = replace(b, checkpoint=relay.checkpoint(), items=tuple(
        relay.proven(it, it.content) for it in b.items
    ))  # fmt: skip
    v = _verify(b)
    last = v.entries[-1]
    assert last.status == "refused" and last.evidence is not None
    assert last.evidence == (_first_hash(), second.hash)
    # Its content cannot be disclosed on the stream's record of seq 1 (the
    # commitment is the first version's), nor on the refused second.
    with pytest.raises(VerificationFailed):
        _verify(_swap(b, 1, replace(b.items[1], content=_text("we propose nothing"))))
    with pytest.raises(VerificationFailed):
        _verify(_swap(b, 3, replace(b.items[3], content=_text("we propose nothing"))))


def _first_hash() -> bytes:
    rec = open_record(StreamKeys.from_secret(SECRETS[0]), TALKS.items[1].blob)
    assert rec.message is not None
    return rec.message.hash


def test_a_statement_cannot_place_a_message_under_another_epochs_member_list() -> None:
    # The envoy's first message (epoch 1), resealed by an exporter who knows
    # epoch 0's secret and logged on epoch 0's stream after the change,
    # presented with the change dropped: refused.
    relay = TALKS.relay.copy(4)
    keys1 = StreamKeys.from_secret(SECRETS[1])
    rec = open_record(keys1, TALKS.items[5].blob)
    moved = relay.post(0, rec)  # logged, in epoch 0's stream, where the change was
    items = [relay.proven(it) for it in TALKS.items[:4]]
    items.append(relay.proven(moved, TALKS.contents[5]))
    b = replace(_bundle(items=items), checkpoint=relay.checkpoint())
    with pytest.raises(REFUSALS):
        _verify(b)
    # Without the moved record, the same items verify at epoch 0.
    items = [relay.proven(it) for it in TALKS.items[:4]]
    v = _verify(replace(_bundle(items=items), checkpoint=relay.checkpoint()))
    assert v.final_state.epoch == 0
    # The statement for the true record names epoch 1's list, not epoch 0's.
    s = _verify(_bundle(upto=5, disclose={5})).statement()
    assert s.message.state is not None and s.message.state.epoch == 1


def test_unused_identities_and_secrets_are_refused() -> None:
    stranger = Identity.generate("stranger", now=1).public
    ids = sorted(
        (*(PublicIdentity.from_bytes(i) for i in WHOLE.identities), stranger),
        key=lambda i: i.fingerprint.digest,
    )
    extra = replace(WHOLE, identities=tuple(i.to_bytes() for i in ids))
    with pytest.raises(VerificationFailed, match="identity no record needs"):
        _verify(extra.to_bytes())
    # Sorted otherwise, or twice: refused when decoding.
    with pytest.raises(MalformedInput):
        GroupTranscript.from_bytes(replace(WHOLE, identities=WHOLE.identities[::-1]).to_bytes())
    with pytest.raises(MalformedInput):
        GroupTranscript.from_bytes(replace(WHOLE, identities=WHOLE.identities[:1] * 2).to_bytes())
    short = _bundle(upto=2)
    assert [e.epoch for e in short.epochs] == [0]
    more = replace(short, epochs=(*short.epochs, TranscriptEpoch(epoch=1, secret=SECRETS[1])))
    with pytest.raises(VerificationFailed, match="no item needs"):
        _verify(more)


def test_an_item_of_another_stream_cannot_pass_as_noise() -> None:
    # Epoch 1's "welcome" (position 2 of its stream) where epoch 0's stream
    # has its position 2: it opens under no epoch 0 key, so without the
    # stream check it would be shown as noise, not refused.
    b = replace(WHOLE, items=(WHOLE.items[0], replace(WHOLE.items[6], content=None)))
    with pytest.raises(VerificationFailed, match="another stream"):
        _verify(b)


def test_the_builder_refuses_a_stream_without_its_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        GroupTranscript.build(
            group_id=WHOLE.group_id,
            items=WHOLE.items,
            epoch_secrets={0: SECRETS[0]},
            identities=IDS,
            checkpoint=WHOLE.checkpoint,
            log_key=LOG,
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(WHOLE_BYTES) - 1), st.integers(1, 255))
def test_any_single_byte_edit_of_a_bundle_is_refused(pos: int, delta: int) -> None:
    data = bytearray(WHOLE_BYTES)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises((MalformedInput, VerificationFailed, UntrustedKey)):
        _verify(bytes(data))


JOIN_STATEMENT = _joiner(upto=5, disclose={5}).to_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(JOIN_STATEMENT) - 1), st.integers(1, 255))
def test_any_single_byte_edit_of_a_joiners_statement_is_refused(pos: int, delta: int) -> None:
    data = bytearray(JOIN_STATEMENT)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises((MalformedInput, VerificationFailed, UntrustedKey)):
        _verify(bytes(data))


def test_every_byte_of_the_join_and_head_is_covered() -> None:
    # Hypothesis samples; the join's head_before is the one field only later
    # records bind (GroupView.join takes the author's word): check all of it.
    b = GroupTranscript.from_bytes(JOIN_STATEMENT)
    assert b.join is not None
    for i in range(32):
        head = bytearray(b.join.head_before)
        head[i] ^= 1
        with pytest.raises(VerificationFailed):
            _verify(replace(b, join=replace(b.join, head_before=bytes(head))))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_the_decoder_refuses_junk_cleanly(data: bytes) -> None:
    with contextlib.suppress(MalformedInput, BadSignature):
        GroupTranscript.from_bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_decoder_refuses_cut_and_spliced_bundles_cleanly(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(WHOLE_BYTES)))
    junk = data.draw(st.binary(max_size=64))
    mangled = WHOLE_BYTES[:cut] + junk + WHOLE_BYTES[cut + len(junk) :]
    try:
        bundle = GroupTranscript.from_bytes(mangled)
    except (MalformedInput, BadSignature):
        return
    if mangled != WHOLE_BYTES:
        with pytest.raises(SecurechanError):
            verify_transcript(bundle, relay_key=LOG)


def test_a_joiners_sender_marks_are_each_confirmed_by_a_later_message() -> None:
    b = _joiner()
    # Tehran's mark only: it speaks after the join; Washington's one message
    # after it is refused (made for the old member list), so its mark goes.
    assert b.join is not None and b.join.senders
    assert [m.fingerprint for m in b.join.senders] == [TEHRAN.fingerprint.digest]
    assert GroupTranscript.from_bytes(b.to_bytes()) == b
    assert _verify(b).entries
    assert all(m.hash == bytes(32) for m in b.join.senders)  # numbers only
    (mark,) = b.join.senders
    for seq in (mark.seq - 1, mark.seq + 1):
        edited = replace(b.join, senders=(replace(mark, seq=seq),))
        with pytest.raises(VerificationFailed):
            _verify(replace(b, join=edited))
    with pytest.raises(VerificationFailed, match="carries no hash"):
        _verify(replace(b, join=replace(b.join, senders=(replace(mark, hash=bytes([1]) * 32),))))
    # A mark for a sender who never speaks in the bundle rides unchecked: refused.
    wash = GroupSenderMark(fingerprint=WASHINGTON.fingerprint.digest, seq=1, hash=bytes(32))
    marks = tuple(sorted((mark, wash), key=lambda m: m.fingerprint))
    with pytest.raises(VerificationFailed, match="no later message confirms"):
        _verify(replace(b, join=replace(b.join, senders=marks)))


def test_a_bundle_whose_next_stream_is_swapped_is_refused() -> None:
    """Muscat (who holds every secret) exports the talks but swaps epoch 1's
    stream for one of its own making: the same signed records of epoch 1,
    sealed under another secret and posted to another stream (so every item
    is logged, in order, and opens). The change that opened epoch 1 is
    signed with a commitment to the real stream: the bundle is refused. On
    main's code (no commitment) it verified: a bundle could not prove that
    the next stream was the one the change announced."""
    other = bytes([0x77]) * 32
    keys = StreamKeys.from_secret(other)
    relay = TALKS.relay.copy(TALKS.epoch1_change_at)
    items = [relay.proven(TALKS.items[i]) for i in range(TALKS.epoch1_change_at + 1)]
    real = StreamKeys.from_secret(SECRETS[1])
    for pos, it in enumerate(TALKS.items[TALKS.epoch1_change_at + 1 : -2], start=1):
        blob = seal_record(keys, open_record(real, it.blob))
        relay._log(envelope_leaf_hash(b"someone else's envelope %d" % relay.tree.size))
        index = relay._log(envelope_leaf_hash(blob))
        items.append(
            TranscriptItem(
                stream_id=keys.stream_id,
                position=pos,
                blob=blob,
                log_index=index,
                inclusion_proof=b"",
            )
        )
    items = [relay.proven(i) for i in items]
    swapped = GroupTranscript.build(
        group_id=TALKS.views[0].state.group_id,
        items=items,
        epoch_secrets={0: SECRETS[0], 1: other},
        identities=IDS,
        checkpoint=relay.checkpoint(),
        log_key=LOG,
    )
    with pytest.raises(VerificationFailed, match="committed to"):
        _verify(swapped.to_bytes())
    # The honest bundle up to the same point verifies.
    honest = _bundle(upto=len(TALKS.items) - 3, disclose=set())
    assert [e.status for e in _verify(honest).entries][-1] == "refused"


def test_a_joiners_bundle_with_another_head_before_the_join_is_refused_at_the_join() -> None:
    """The change a joiner joined by signs the head it was made on: a bundle
    whose join names another head before it is refused at once (before, the
    head was its author's word, and the lie showed only as forks on the
    later messages)."""
    good = _joiner()
    assert good.join is not None
    _verify(good)
    lied = replace(good, join=replace(good.join, head_before=bytes([1]) * 32))
    with pytest.raises(VerificationFailed, match="head before the change"):
        _verify(lied.to_bytes())
