"""Group streams (securechan/protocol/group_stream.py): the sealed records the
relay orders, the joiner's start, and the pairwise carriage, played as the
relay (which sees only blobs and may post its own), a removed member (who
keeps an old epoch's secret) and a hostile admin (who lies to a joiner)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.errors import GroupRejected, MalformedInput
from securechan.protocol.group import ZERO, GroupChange, GroupView, check_content
from securechan.protocol.group_stream import (
    KIND_TEXT,
    MAX_BLOB,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    open_record,
    seal_record,
)
from securechan.protocol.payload import ContentType, Payload, TextBody
from tests.test_group_protocol import (
    ENVOY,
    MUSCAT,
    TEHRAN,
    WASHINGTON,
    _fp,
    _genesis,
    _message,
    _next,
)

SECRET0 = bytes([7]) * 32
SECRET1 = bytes([8]) * 32


def test_a_sealed_record_opens_under_its_epoch_only_and_hides_its_size_class() -> None:
    view, creation = _genesis()
    keys = StreamKeys.from_secret(SECRET0)
    blob = seal_record(keys, GroupRecord(change=creation))
    assert open_record(keys, blob) == GroupRecord(change=creation)
    assert GroupRecord(change=creation).hash == creation.hash
    # Another epoch's key, or the same blob posted on another stream id: refused.
    other = StreamKeys.from_secret(SECRET1)
    for wrong in (other, StreamKeys(stream_id=other.stream_id, key=keys.key)):
        with pytest.raises(MalformedInput):
            open_record(wrong, blob)
    # The stream id is not the key and reveals nothing of the group id.
    assert keys.stream_id != keys.key and view.state.group_id not in blob
    msg = _message(view, TEHRAN, 1, b"short")
    long_msg = _message(view, TEHRAN, 1, b"x" * 5000)  # the content is not in the record
    assert len(seal_record(keys, GroupRecord(message=msg))) == len(
        seal_record(keys, GroupRecord(message=long_msg))
    )


def test_a_record_is_exactly_one_change_or_one_message() -> None:
    view, creation = _genesis()
    msg = _message(view, TEHRAN, 1, b"x")
    with pytest.raises(MalformedInput):
        GroupRecord()
    with pytest.raises(MalformedInput):
        GroupRecord(change=creation, message=msg)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=MAX_BLOB + 64))
def test_a_relay_posting_garbage_gets_a_clear_refusal(blob: bytes) -> None:
    with pytest.raises(MalformedInput):
        open_record(StreamKeys.from_secret(SECRET0), blob)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_records_and_carriage_decode_strictly(data: bytes) -> None:
    for cls in (GroupRecord, GroupWelcome, GroupDelivery):
        try:
            decoded = cls.from_bytes(data)  # type: ignore[attr-defined]
        except MalformedInput:
            continue
        assert decoded.to_bytes() == data


def test_a_joiner_starts_from_its_welcome_and_agrees_with_the_old_members() -> None:
    muscat, _creation = _genesis()
    muscat = muscat.accept_message(_message(muscat, TEHRAN, 1, b"hello"), b"hello", TEHRAN.public)
    state1 = _next(muscat, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    change = GroupChange.sign(
        MUSCAT, state1, next_stream=StreamKeys.from_secret(SECRET1).commitment, head=muscat.head
    )
    welcome = GroupWelcome(
        change=change,
        epoch_secret=SECRET1,
        head_before=muscat.head,
        stream_of_change=StreamKeys.from_secret(SECRET0).stream_id,
        previous=muscat.state,
    )
    assert GroupWelcome.from_bytes(welcome.to_bytes()) == welcome
    envoy = GroupView.join(welcome.change, MUSCAT.public, welcome.previous, welcome.head_before)
    muscat = muscat.apply_change(change, MUSCAT.public)
    assert envoy.head == muscat.head and envoy.state == muscat.state
    m = _message(muscat, WASHINGTON, 1, b"welcome")
    assert (
        envoy.accept_record(m, WASHINGTON.public).head
        == muscat.accept_record(m, WASHINGTON.public).head
    )


def test_a_joiner_lied_to_about_the_head_refuses_the_welcome() -> None:
    """The change signs the head it was made on (every member applies it
    only there): a welcome naming another head before it is refused at
    once. Without that head in the change (a change as made before it was
    bound) a joiner cannot start at all; on main's code the lie was found
    only at the next message, as a fork."""
    muscat, _ = _genesis()
    state1 = _next(muscat, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    change = GroupChange.sign(
        MUSCAT, state1, next_stream=StreamKeys.from_secret(SECRET1).commitment, head=muscat.head
    )
    with pytest.raises(GroupRejected, match="head before the change"):
        GroupView.join(change, MUSCAT.public, muscat.state, bytes([1]) * 32)
    unbound = GroupChange.sign(
        MUSCAT, state1, next_stream=StreamKeys.from_secret(SECRET1).commitment
    )
    with pytest.raises(GroupRejected, match="head before the change"):
        GroupView.join(unbound, MUSCAT.public, muscat.state, muscat.head)
    envoy = GroupView.join(change, MUSCAT.public, muscat.state, muscat.head)
    assert envoy.head == muscat.apply_change(change, MUSCAT.public).head


def test_a_change_made_on_another_head_is_refused_and_made_again() -> None:
    """Muscat makes a change on its head; Tehran's message is ordered first.
    Every member refuses the change (it names a head they passed): applied
    on another head, a joiner's welcome could not name the head before it.
    Made again on the new head, it is applied."""
    muscat, _ = _genesis()
    state1 = _next(muscat, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    commitment = StreamKeys.from_secret(SECRET1).commitment
    early = GroupChange.sign(MUSCAT, state1, next_stream=commitment, head=muscat.head)
    moved = muscat.accept_message(_message(muscat, TEHRAN, 1, b"first"), b"first", TEHRAN.public)
    with pytest.raises(GroupRejected, match="another transcript head"):
        moved.apply_change(early, MUSCAT.public)
    again = GroupChange.sign(MUSCAT, state1, next_stream=commitment, head=moved.head)
    assert moved.apply_change(again, MUSCAT.public).state == state1


def test_a_joiner_refuses_a_change_its_previous_state_does_not_authorise() -> None:
    muscat, _ = _genesis()
    # Tehran (not an admin) "adds" an envoy; a welcome from it is refused.
    state1 = _next(muscat, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    forged = GroupChange.sign(
        TEHRAN, state1, next_stream=StreamKeys.from_secret(SECRET1).commitment
    )
    with pytest.raises(GroupRejected):
        GroupView.join(forged, TEHRAN.public, muscat.state, muscat.head)
    with pytest.raises(GroupRejected):
        GroupView.join(forged, TEHRAN.public, None, muscat.head)


def test_the_record_is_accepted_before_its_content_and_content_is_checked_apart() -> None:
    view, _ = _genesis()
    msg = _message(view, TEHRAN, 1, b"we accept")
    after = view.accept_record(msg, TEHRAN.public)
    assert after.last[_fp(TEHRAN)][0] == 1
    check_content(msg, b"we accept")
    with pytest.raises(GroupRejected):
        check_content(msg, b"we refuse")  # what an equivocating sender showed another member


def test_a_group_delivery_rides_in_a_signed_pairwise_payload() -> None:
    view, _ = _genesis()
    content = TextBody(text="we accept").to_bytes()
    msg = _message(view, TEHRAN, 1, content)
    delivery = GroupDelivery(signed=msg, kind=KIND_TEXT, content=content)
    payload = Payload(
        sender=TEHRAN.fingerprint,
        recipient=MUSCAT.fingerprint,
        conversation=bytes(16),
        seq=1,
        sent_at=1,
        content_type=ContentType.GROUP_MESSAGE,
        body=delivery.to_bytes(),
        prev_hash=ZERO,
    )
    again = Payload.from_bytes(payload.to_bytes())
    assert again.content() == delivery
    with pytest.raises(MalformedInput):
        GroupDelivery(signed=msg, kind=9, content=content)


def test_a_joiner_expects_the_next_numbers_of_members_who_spoke_before() -> None:
    muscat, _ = _genesis()
    for seq in (1, 2):
        m = _message(muscat, TEHRAN, seq, b"x")
        muscat = muscat.accept_message(m, b"x", TEHRAN.public)
    state1 = _next(muscat, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    change = GroupChange.sign(
        MUSCAT, state1, next_stream=StreamKeys.from_secret(SECRET1).commitment, head=muscat.head
    )
    welcome = GroupWelcome(
        change=change,
        epoch_secret=SECRET1,
        head_before=muscat.head,
        stream_of_change=StreamKeys.from_secret(SECRET0).stream_id,
        previous=muscat.state,
        senders=GroupWelcome.marks(muscat.last),
    )
    welcome = GroupWelcome.from_bytes(welcome.to_bytes())
    envoy = GroupView.join(change, MUSCAT.public, welcome.previous, muscat.head, welcome.last())
    muscat = muscat.apply_change(change, MUSCAT.public)
    third = _message(muscat, TEHRAN, 3, b"y")
    assert (
        envoy.accept_record(third, TEHRAN.public).head
        == muscat.accept_record(third, TEHRAN.public).head
    )
    # Without the marks the joiner would see a gap; a mark of number 0 is refused.
    bare = GroupView.join(change, MUSCAT.public, welcome.previous, welcome.head_before)
    with pytest.raises(GroupRejected, match="missing"):
        bare.accept_record(third, TEHRAN.public)
    with pytest.raises(GroupRejected, match="not a sequence number"):
        GroupView.join(
            change, MUSCAT.public, welcome.previous, welcome.head_before, {_fp(ENVOY): (0, ZERO)}
        )
    with pytest.raises(MalformedInput):
        GroupWelcome(
            change=change,
            epoch_secret=SECRET1,
            head_before=ZERO,
            stream_of_change=ZERO,
            previous=welcome.previous,
            senders=(),
        )
