"""The group protocol's sans-I/O core (securechan/protocol/group.py), played
as the hostile member and the malicious relay would play it: a sender who
shows members different content or signs two messages for one number, a
forged, unauthorised or replayed membership change, a removed member who
posts, a relay that reorders, drops or forks the transcript."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.errors import GroupEquivocation, GroupForked, GroupRejected, MalformedInput
from securechan.identity import Identity
from securechan.protocol.group import (
    MAX_MEMBERS,
    ZERO,
    GroupChange,
    GroupMember,
    GroupPayload,
    GroupState,
    GroupView,
    SignedGroupPayload,
    commit_content,
)
from securechan.protocol.group_stream import GroupWelcome, StreamKeys
from tests.conftest import fixed_identity

GID = bytes(range(32))
NOW = 1_790_000_000

TEHRAN = fixed_identity("tehran")
WASHINGTON = fixed_identity("washington")
MUSCAT = fixed_identity("muscat")  # the mediator, creator and admin
ENVOY = fixed_identity("envoy")


def _fp(who: Identity) -> bytes:
    return who.fingerprint.digest


def _state(
    members: dict[Identity, bool], *, epoch: int = 0, previous: bytes = ZERO, name: str = "talks"
) -> GroupState:
    ms = sorted(
        (GroupMember(fingerprint=_fp(m), admin=a) for m, a in members.items()),
        key=lambda m: m.fingerprint,
    )
    return GroupState(group_id=GID, epoch=epoch, name=name, members=tuple(ms), previous=previous)


def _secret(epoch: int) -> bytes:
    """The tests' secret of an epoch (as tests/test_group_attacks.py reads them)."""
    return bytes([40 + epoch]) * 32


def _sign(author: Identity, state: GroupState, head: bytes | None = None) -> GroupChange:
    """A change committing to the stream of the epoch it opens (here the
    tests' secret of that epoch); bound to ``head`` if given (the client
    always gives it: a joiner needs it)."""
    commitment = StreamKeys.from_secret(_secret(state.epoch)).commitment
    return GroupChange.sign(author, state, next_stream=commitment, head=head)


def _genesis() -> tuple[GroupView, GroupChange]:
    state = _state({MUSCAT: True, TEHRAN: False, WASHINGTON: False})
    change = _sign(MUSCAT, state)
    return GroupView.create(change, MUSCAT.public), change


def _next(view: GroupView, members: dict[Identity, bool], **kw: object) -> GroupState:
    return _state(members, epoch=view.state.epoch + 1, previous=view.state.hash, **kw)  # type: ignore[arg-type]


def _message(
    view: GroupView, sender: Identity, seq: int, content: bytes, *, head: bytes | None = None
) -> SignedGroupPayload:
    payload = GroupPayload(
        group_id=view.state.group_id,
        state_hash=view.state.hash,
        sender=_fp(sender),
        seq=seq,
        head=view.head if head is None else head,
        commitment=commit_content(view.state.group_id, _fp(sender), seq, content),
        sent_at=NOW,
    )
    return SignedGroupPayload.sign(sender, payload)


def _refused(view: GroupView, call: object, error: type[Exception] = GroupRejected) -> Exception:
    before = (view.state, view.head, dict(view.last), view.heads)
    with pytest.raises(error) as info:
        call()  # type: ignore[operator]
    assert (view.state, view.head, dict(view.last), view.heads) == before  # immutable: unchanged
    return info.value


def test_a_conversation_two_members_agree_on_one_transcript() -> None:
    a, creation = _genesis()
    b = GroupView.create(creation, MUSCAT.public)
    assert a.head == b.head
    m1 = _message(a, TEHRAN, 1, b"We accept the draft.")
    m2 = _message(a, WASHINGTON, 1, b"So do we.")  # sent before it saw m1: an older head
    for msg, content, who in (
        (m1, b"We accept the draft.", TEHRAN),
        (m2, b"So do we.", WASHINGTON),
    ):
        a = a.accept_message(msg, content, who.public)
        b = b.accept_message(msg, content, who.public)
    assert a.head == b.head and a.last == b.last and a.head != creation.hash


def test_a_sender_showing_members_different_content_is_caught() -> None:
    """The signed payload commits to one content: the member given other
    content refuses it; the one given the signed content accepts it."""
    view, _ = _genesis()
    signed = _message(view, TEHRAN, 1, b"We accept the draft.")
    view.accept_message(signed, b"We accept the draft.", TEHRAN.public)
    _refused(view, lambda: view.accept_message(signed, b"We reject the draft.", TEHRAN.public))


def test_two_messages_for_one_number_are_equivocation_with_evidence() -> None:
    view, _ = _genesis()
    first = _message(view, TEHRAN, 1, b"version A")
    view = view.accept_message(first, b"version A", TEHRAN.public)
    second = _message(replace(view, head=view.heads[-2]), TEHRAN, 1, b"version B")
    error = _refused(
        view, lambda: view.accept_message(second, b"version B", TEHRAN.public), GroupEquivocation
    )
    assert isinstance(error, GroupEquivocation)
    assert error.evidence == (first.hash, second.hash)
    # The same message again is a plain replay.
    _refused(view, lambda: view.accept_message(first, b"version A", TEHRAN.public))


def test_a_dropped_message_is_a_gap_and_a_reordered_one_refused() -> None:
    view, _ = _genesis()
    m1 = _message(view, TEHRAN, 1, b"one")
    m2 = _message(view, TEHRAN, 2, b"two")
    # The relay withholds m1 from this member: m2 alone is refused as a gap.
    error = _refused(view, lambda: view.accept_message(m2, b"two", TEHRAN.public))
    assert "1..1" in str(error)
    view = view.accept_message(m1, b"one", TEHRAN.public)
    view = view.accept_message(m2, b"two", TEHRAN.public)
    assert view.last[_fp(TEHRAN)][0] == 2


def test_a_forked_transcript_is_caught_by_the_head_a_sender_names() -> None:
    """The relay shows member B a transcript without Washington's message:
    Tehran's next message names a head B never had."""
    a, creation = _genesis()
    b = GroupView.create(creation, MUSCAT.public)
    w1 = _message(a, WASHINGTON, 1, b"only some see this")
    a = a.accept_message(w1, b"only some see this", WASHINGTON.public)
    t1 = _message(a, TEHRAN, 1, b"after it")
    a.accept_message(t1, b"after it", TEHRAN.public)
    _refused(b, lambda: b.accept_message(t1, b"after it", TEHRAN.public), GroupForked)


def test_forged_unauthorised_and_replayed_membership_changes() -> None:
    view, creation = _genesis()
    grown = _next(view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    # A member who is not an admin may not add anyone.
    by_tehran = _sign(TEHRAN, grown)
    _refused(view, lambda: view.apply_change(by_tehran, TEHRAN.public))
    # A change whose signature is not its named author's.
    forged = replace(_sign(TEHRAN, grown), author=_fp(MUSCAT))
    _refused(view, lambda: view.apply_change(forged, MUSCAT.public))
    # An outsider cannot sign one at all.
    by_envoy = _sign(ENVOY, grown)
    _refused(view, lambda: view.apply_change(by_envoy, ENVOY.public))
    # The admin can; replaying the creation (an old state) afterwards cannot.
    view = view.apply_change(_sign(MUSCAT, grown), MUSCAT.public)
    assert view.state.member(_fp(ENVOY)) is not None
    _refused(view, lambda: view.apply_change(creation, MUSCAT.public))
    # Nor a change made on a state we do not hold (skipping an epoch).
    skipped = _state(
        {MUSCAT: True, TEHRAN: False}, epoch=view.state.epoch + 2, previous=view.state.hash
    )
    _refused(view, lambda: view.apply_change(_sign(MUSCAT, skipped), MUSCAT.public))


def test_a_removed_member_cannot_post_and_old_member_lists_are_refused() -> None:
    view, _ = _genesis()
    before = view
    removed = _next(view, {MUSCAT: True, TEHRAN: False})
    view = view.apply_change(_sign(MUSCAT, removed), MUSCAT.public)
    # Washington, removed, signs a message on the current state: not a member.
    post = _message(view, WASHINGTON, 1, b"still here?")
    _refused(view, lambda: view.accept_message(post, b"still here?", WASHINGTON.public))
    # A message made for the old member list is refused after the change.
    stale = _message(before, TEHRAN, 1, b"made before the change")
    _refused(view, lambda: view.accept_message(stale, b"made before the change", TEHRAN.public))


def test_a_member_may_leave_but_not_change_anything_else() -> None:
    view, _ = _genesis()
    leave = _next(view, {MUSCAT: True, WASHINGTON: False})
    after = view.apply_change(_sign(TEHRAN, leave), TEHRAN.public)
    assert after.state.member(_fp(TEHRAN)) is None
    # Leaving while making itself admin, or removing another, is refused.
    grab = _next(view, {MUSCAT: True, WASHINGTON: True})
    _refused(view, lambda: view.apply_change(_sign(TEHRAN, grab), TEHRAN.public))


def test_state_rules_are_checked_when_decoding() -> None:
    good = _state({MUSCAT: True, TEHRAN: False})
    data = good.to_bytes()
    assert GroupState.from_bytes(data) == good
    with pytest.raises(MalformedInput):
        _state({MUSCAT: False, TEHRAN: False})  # no admin
    with pytest.raises(MalformedInput):
        replace(good, members=tuple(reversed(good.members)))  # not sorted
    with pytest.raises(MalformedInput):
        replace(good, previous=b"\x01" * 32)  # epoch 0 with a previous state
    many = {fixed_identity(f"m{i}"): i == 0 for i in range(MAX_MEMBERS + 1)}
    with pytest.raises(MalformedInput):
        _state(many)


def test_a_group_message_edited_in_one_byte_is_refused() -> None:
    view, _ = _genesis()
    signed = _message(view, TEHRAN, 1, b"statement")
    data = bytearray(signed.to_bytes())
    for pos in (10, 60, len(data) - 5):
        edited = bytearray(data)
        edited[pos] ^= 1
        try:
            decoded = SignedGroupPayload.from_bytes(bytes(edited))
        except MalformedInput:
            continue
        _refused(view, lambda d=decoded: view.accept_message(d, b"statement", TEHRAN.public))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_refuse_junk_cleanly(data: bytes) -> None:
    for cls in (GroupState, GroupChange, SignedGroupPayload):
        with contextlib.suppress(MalformedInput):
            cls.from_bytes(data)


def test_a_change_whose_epoch_commitment_is_edited_fails_its_signature() -> None:
    """The stream a change opens is bound into its signature: an attacker
    (the relay, a member) who points the change at another stream, in one
    byte or whole, or strips the commitment, is refused by every member."""
    view, _ = _genesis()
    change = _sign(MUSCAT, _next(view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False}))
    assert change.next_stream is not None
    elsewhere = StreamKeys.from_secret(bytes([99]) * 32).commitment
    flipped = bytes([change.next_stream[0] ^ 1]) + change.next_stream[1:]
    for forged in (replace(change, next_stream=elsewhere), replace(change, next_stream=flipped)):
        again = type(change).from_bytes(forged.to_bytes())
        _refused(view, lambda f=again: view.apply_change(f, MUSCAT.public))  # type: ignore[misc]
    stripped = replace(change, next_stream=None)
    _refused(view, lambda: view.apply_change(stripped, MUSCAT.public))
    assert view.apply_change(change, MUSCAT.public).state == change.state


def test_a_leave_opens_a_quiet_epoch_until_a_remaining_admin_changes_the_group() -> None:
    """No message is accepted in the epoch a leave opens (the leaver knows
    its secret), from any member; an admin's rekey (same members) ends it.
    A leave that changes anything else, an admin's too, is refused."""
    view, _ = _genesis()
    view = view.apply_change(
        _sign(MUSCAT, _next(view, {MUSCAT: True, TEHRAN: True, WASHINGTON: False})),
        MUSCAT.public,
    )
    leave = _sign(WASHINGTON, _next(view, {MUSCAT: True, TEHRAN: True}))
    quiet = view.apply_change(leave, WASHINGTON.public)
    assert quiet.quiet and not view.quiet
    said = _message(quiet, TEHRAN, 1, b"into the quiet epoch")
    err = _refused(
        quiet, lambda: quiet.accept_message(said, b"into the quiet epoch", TEHRAN.public)
    )
    assert "member who left" in str(err)
    # Tehran (an admin) leaves and promotes Washington in one change: refused.
    grab = _sign(TEHRAN, _next(view, {MUSCAT: True, WASHINGTON: True}))
    _refused(view, lambda: view.apply_change(grab, TEHRAN.public))
    rekey = _sign(MUSCAT, _next(quiet, {MUSCAT: True, TEHRAN: True}))
    fresh = quiet.apply_change(rekey, MUSCAT.public)
    assert not fresh.quiet and fresh.state.members == quiet.state.members
    said = _message(fresh, TEHRAN, 1, b"now")
    assert fresh.accept_message(said, b"now", TEHRAN.public).last[_fp(TEHRAN)][0] == 1
    # A joiner is never welcomed by a leave.
    with pytest.raises(GroupRejected, match="leave welcomes no one"):
        GroupView.join(leave, WASHINGTON.public, view.state, view.head)


def test_a_change_encoded_before_the_commitment_still_decodes_but_never_verifies() -> None:
    """client.db rows written before fields 4 and 5 (transcript records,
    welcomes) hold changes without them: they still decode (the rows read,
    and a welcome's secret is found), but such a change is never applied,
    joined by or accepted in a bundle (it would carry no commitment)."""
    view, creation = _genesis()
    old_style = GroupChange(
        state=creation.state, author=creation.author, signature=creation.signature
    )
    data = old_style.to_bytes()
    assert GroupChange.from_bytes(data) == old_style and old_style.next_stream is None
    assert len(data) < len(creation.to_bytes())
    with pytest.raises(GroupRejected, match="without a commitment"):
        GroupView.create(GroupChange.from_bytes(data), MUSCAT.public)
    welcome = GroupWelcome(
        change=old_style, epoch_secret=_secret(0), head_before=ZERO, stream_of_change=ZERO
    )
    assert GroupWelcome.from_bytes(welcome.to_bytes()).epoch_secret == _secret(0)
    del view
