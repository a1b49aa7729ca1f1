"""Groups played as the attacker, end to end at the protocol level: the
members' views (``GroupView``) fed from sealed group streams
(``group_stream``) the way GROUPS-SPEC §3 says a client feeds them, a relay
that serves each member what it likes, and hostile members with real
pairwise sessions. Issue 17's "Must show" list, where
tests/test_group_protocol.py and tests/test_group_stream.py do not already
show it (docs/THREAT-MODEL.md, Groups, maps each attack to its test):

- a sender equivocating between members (pairwise content that differs from
  the record; a second signed payload for one number);
- the relay reordering, dropping or withholding stream items for one member,
  or moving one across a change;
- a removed member posting and trying to read later records;
- a forged or unauthorised membership change, two concurrent changes;
- a member replaying an old membership state;
- a stream item moved between epochs, streams or groups, or duplicated.

Every refusal leaves the member's view as it was, and members who were
shown the same records hold the same head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from securechan.errors import GroupEquivocation, GroupForked, GroupRejected, MalformedInput
from securechan.identity import Identity, PublicIdentity
from securechan.protocol import MessageReceived, PrekeyStore, ReplayGuard, Session
from securechan.protocol.group import GroupChange, GroupView, SignedGroupPayload, check_content
from securechan.protocol.group_stream import (
    KIND_TEXT,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    check_leave,
    leave_secret,
    open_record,
    seal_record,
)
from securechan.protocol.payload import ContentType, SignedPayload
from tests.test_group_protocol import (
    ENVOY,
    GID,
    MUSCAT,
    NOW,
    TEHRAN,
    WASHINGTON,
    _fp,
    _message,
    _next,
    _refused,
    _sign,
    _state,
)

EVERYONE = (MUSCAT, TEHRAN, WASHINGTON, ENVOY)
PUBLIC: dict[bytes, PublicIdentity] = {_fp(i): i.public for i in EVERYONE}
SECRETS = [bytes([40 + e]) * 32 for e in range(4)]  # epoch -> its secret
KEYS = [StreamKeys.from_secret(s) for s in SECRETS]


# --- the honest client's stream reading (GROUPS-SPEC §3, Receive) ------------


@dataclass
class Member:
    """One member's client: its view, the stream it follows, the epoch
    secrets it got pairwise, and what it refused (with the reason)."""

    me: Identity
    view: GroupView
    secrets: dict[int, bytes]
    cursor: int = 0  # items read in the current stream
    refused: list[str] = field(default_factory=list)
    applied: list[bytes] = field(default_factory=list)  # record hashes, in order

    @property
    def keys(self) -> StreamKeys:
        return StreamKeys.from_secret(self.secrets[self.view.state.epoch])

    def read(self, items: Sequence[bytes]) -> None:
        """Apply the items of the current stream from the cursor on; stop
        after a change (the member then follows the next epoch's stream)."""
        while self.cursor < len(items):
            blob = items[self.cursor]
            self.cursor += 1
            try:
                record = open_record(self.keys, blob)
                before = self.view
                if record.change is not None:
                    author = PUBLIC[record.change.author]
                    self.view = self.view.apply_change(record.change, author)
                else:
                    assert record.message is not None
                    sender = PUBLIC[record.message.payload.sender]
                    self.view = self.view.accept_record(record.message, sender)
            except (MalformedInput, GroupRejected) as e:
                self.refused.append(f"{type(e).__name__}: {e}")
                continue
            self.applied.append(record.hash)
            if record.change is not None and self.view is not before:
                self.cursor = 0
                return


class Relay:
    """The relay's group streams: blobs in arrival order per stream id. As
    an adversary it serves a member another list (``show``)."""

    def __init__(self) -> None:
        self.streams: dict[bytes, list[bytes]] = {}
        self.shown: dict[tuple[bytes, bytes], list[bytes]] = {}

    def post(self, stream_id: bytes, blob: bytes) -> int:
        self.streams.setdefault(stream_id, []).append(blob)
        return len(self.streams[stream_id])

    def items(self, stream_id: bytes, member: Identity) -> list[bytes]:
        honest = self.streams.get(stream_id, [])
        return self.shown.get((stream_id, _fp(member)), honest)

    def show(self, stream_id: bytes, member: Identity, items: list[bytes]) -> None:
        self.shown[(stream_id, _fp(member))] = items


def sync(relay: Relay, *members: Member) -> None:
    """Each member reads its streams until it has read all it is shown."""
    for m in members:
        while True:
            epoch = m.view.state.epoch
            if epoch not in m.secrets:
                break  # no welcome for this epoch: nothing it can read
            m.read(relay.items(m.keys.stream_id, m.me))
            if m.view.state.epoch == epoch:
                break


def post(relay: Relay, epoch: int, record: GroupRecord) -> bytes:
    blob = seal_record(KEYS[epoch], record)
    relay.post(KEYS[epoch].stream_id, blob)
    return blob


def group(*names: Identity) -> tuple[Relay, list[Member], GroupChange]:
    """A group made by Muscat (the mediator, admin) with Tehran and
    Washington; its creation is the first item of stream 0."""
    creation = _sign(MUSCAT, _state({MUSCAT: True, TEHRAN: False, WASHINGTON: False}))
    relay = Relay()
    post(relay, 0, GroupRecord(change=creation))
    view = GroupView.create(creation, MUSCAT.public)
    members = [Member(me=n, view=view, secrets={0: SECRETS[0]}) for n in names]
    for m in members:  # each starts from the creation in the stream
        m.view = view
        m.cursor = 1
        m.applied.append(creation.hash)
    return relay, members, creation


def say(member: Member, relay: Relay, text: bytes, *, seq: int) -> SignedGroupPayload:
    """``member`` posts a message record on its current view."""
    signed = _message(member.view, member.me, seq, text)
    post(relay, member.view.state.epoch, GroupRecord(message=signed))
    return signed


def heads(*members: Member) -> set[bytes]:
    return {m.view.head for m in members}


def pairwise(me: Identity, peer: Identity) -> tuple[Session, Session]:
    store = PrekeyStore.new(peer).rotate(peer, now=NOW).add_one_time(peer, 1, now=NOW)
    mine, first = Session.initiate(me, peer.public, store.bundle(NOW), now=NOW)
    theirs, _, _, events = Session.accept(
        peer, store, ReplayGuard(), first, contact=lambda fp: me.public, now=NOW
    )
    assert isinstance(events[0], MessageReceived)
    return mine, theirs


def carry(pair: tuple[Session, Session], delivery: GroupDelivery) -> MessageReceived:
    """A GroupDelivery through a real pairwise session (what a member gets)."""
    out = pair[0].send_group(ContentType.GROUP_MESSAGE, delivery.to_bytes(), now=NOW)
    event = pair[1].receive(out.envelope, now=NOW)[0]
    assert isinstance(event, MessageReceived)
    return event


# --- a sender equivocating between members -----------------------------------


def test_a_sender_showing_one_member_other_content_is_caught_by_that_member() -> None:
    """Tehran posts one record and delivers it pairwise with the signed
    content to Muscat but other content to Washington. Both apply the same
    record (one transcript); Washington's check_content refuses its content,
    and the pairwise message it holds is Tehran's own signature over the
    record and the other content: evidence a third party can check."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    said, lied = b"We accept the draft.", b"We reject the draft."
    signed = say(tehran, relay, said, seq=1)
    to_muscat = carry(pairwise(TEHRAN, MUSCAT), GroupDelivery(signed=signed, kind=1, content=said))
    to_wash = carry(
        pairwise(TEHRAN, WASHINGTON), GroupDelivery(signed=signed, kind=1, content=lied)
    )
    sync(relay, muscat, tehran, washington)
    assert len(heads(muscat, tehran, washington)) == 1 and not washington.refused
    for event, ok in ((to_muscat, True), (to_wash, False)):
        delivery = event.content
        assert isinstance(delivery, GroupDelivery) and delivery.signed == signed
        if ok:
            check_content(delivery.signed, delivery.content)
        else:
            with pytest.raises(GroupRejected, match="not the one the sender signed"):
                check_content(delivery.signed, delivery.content)
    # The evidence: the pairwise payload verifies under Tehran's key and
    # carries the stream's record with the content it does not commit to.
    evidence = SignedPayload.from_bytes_unverified(to_wash.signed)
    evidence.verify(TEHRAN.public)
    carried = evidence.payload.content()
    assert isinstance(carried, GroupDelivery)
    assert carried.signed.hash == signed.hash and carried.content == lied


def test_a_second_signed_payload_for_one_number_is_two_signatures_of_the_sender() -> None:
    """Tehran signs a second payload for seq 1 (other content) and sends it
    pairwise to Washington only. It matches no stream record: Washington
    checks the content it got against the record the stream shows and
    refuses it; it holds two payloads Tehran signed for one number. If
    Tehran posts the second one too, every member refuses it as
    GroupEquivocation with both hashes, and the heads stay equal."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    first = say(tehran, relay, b"version A", seq=1)
    second = _message(tehran.view, TEHRAN, 1, b"version B")
    event = carry(
        pairwise(TEHRAN, WASHINGTON),
        GroupDelivery(signed=second, kind=KIND_TEXT, content=b"version B"),
    )
    sync(relay, muscat, washington)
    delivery = event.content
    assert isinstance(delivery, GroupDelivery)
    record_seq, record_hash = washington.view.last[_fp(TEHRAN)]
    assert record_seq == delivery.signed.payload.seq and record_hash != delivery.signed.hash
    with pytest.raises(GroupRejected):
        check_content(first, delivery.content)  # the content is not the record's
    delivery.signed.verify(TEHRAN.public)
    first.verify(TEHRAN.public)  # both signed by Tehran for seq 1

    post(relay, 0, GroupRecord(message=second))
    before = heads(muscat, washington)
    views = [m.view for m in (muscat, washington)]
    for view in views:
        error = _refused(view, lambda v=view: v.accept_record(second, TEHRAN.public))
        assert isinstance(error, GroupEquivocation)
        assert error.evidence == (first.hash, second.hash)
    sync(relay, muscat, washington)
    assert heads(muscat, washington) == before and len(before) == 1
    assert all("GroupEquivocation" in m.refused[-1] for m in (muscat, washington))


# --- the relay reordering, dropping, withholding ------------------------------


def test_members_shown_one_order_agree_and_one_shown_another_is_caught_next() -> None:
    """Tehran and Washington speak at once (both on the creation's head).
    The relay shows Washington the two in the other order. Each order is
    acceptable on its own, so the members apply them without complaint,
    but their heads differ; the first message naming a head after the two
    (Muscat's) is refused by Washington as GroupForked, while a message made
    before them (naming an older head) is not: a fork is found by the first
    message that crosses it."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    early = _message(muscat.view, MUSCAT, 1, b"made before either")
    say(tehran, relay, b"Tehran first", seq=1)
    say(washington, relay, b"Washington first", seq=1)
    stream0 = KEYS[0].stream_id
    honest = relay.items(stream0, MUSCAT)
    relay.show(stream0, WASHINGTON, [honest[0], honest[2], honest[1]])
    sync(relay, muscat, tehran, washington)
    assert muscat.view.head == tehran.view.head != washington.view.head
    assert not washington.refused  # nothing looked wrong yet
    # The message made before the fork is accepted by both sides.
    for m in (muscat, washington):
        m.view.accept_record(early, MUSCAT.public)
    crossing = say(muscat, relay, b"after both", seq=1)
    relay.show(stream0, WASHINGTON, [honest[0], honest[2], honest[1], relay.streams[stream0][3]])
    sync(relay, muscat, tehran, washington)
    assert muscat.view.head == tehran.view.head
    assert washington.refused and washington.refused[-1].startswith("GroupForked")
    _refused(
        washington.view,
        lambda: washington.view.accept_record(crossing, MUSCAT.public),
        GroupForked,
    )


def test_a_message_moved_across_a_change_for_one_member_is_caught() -> None:
    """Washington speaks on epoch 0 while Muscat adds Envoy. The stream puts
    the change first, so the message (made for the old member list) is
    refused by everyone shown that order; the relay shows Tehran the message
    before the change, which Tehran accepts. Tehran's head now differs, and
    the next message of epoch 1 is refused by Tehran as a fork."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    grown = _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    post(relay, 0, GroupRecord(change=_sign(MUSCAT, grown)))
    say(washington, relay, b"on the old list", seq=1)
    stream0 = KEYS[0].stream_id
    items = relay.items(stream0, MUSCAT)
    relay.show(stream0, TEHRAN, [items[0], items[2], items[1]])
    for m in (muscat, tehran, washington):
        m.secrets[1] = SECRETS[1]  # the welcome of epoch 1, pairwise
    sync(relay, muscat, tehran, washington)
    assert muscat.view.state.epoch == tehran.view.state.epoch == 1
    assert muscat.view.head == washington.view.head != tehran.view.head
    assert _fp(WASHINGTON) in tehran.view.last and _fp(WASHINGTON) not in muscat.view.last
    say(muscat, relay, b"welcome, envoy", seq=1)
    sync(relay, muscat, tehran, washington)
    assert muscat.view.head == washington.view.head
    assert tehran.refused[-1].startswith("GroupForked")


def test_the_relay_dropping_an_item_for_one_member() -> None:
    """The relay drops Washington's message for Tehran only. Tehran has its
    content pairwise but no record: Washington's sequence shows it withheld
    (the client reports "the relay withholds group records"). Tehran's next
    reads refuse what depends on it: Washington's seq 2 and Muscat's message
    both name a head after it (a fork; a sender naming an older head would
    show the gap in Washington's numbers, tests/test_group_protocol.py).
    Members shown everything agree."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    w1 = say(washington, relay, b"one", seq=1)
    stream0 = KEYS[0].stream_id
    withheld = [relay.items(stream0, MUSCAT)[0]]
    relay.show(stream0, TEHRAN, withheld)
    sync(relay, muscat, tehran, washington)
    # The pairwise delivery arrived; the stream has not shown its record.
    assert w1.payload.seq > tehran.view.last.get(_fp(WASHINGTON), (0, b""))[0]
    w2 = say(washington, relay, b"two", seq=2)
    m1 = say(muscat, relay, b"noted", seq=1)
    relay.show(stream0, TEHRAN, [*withheld, *relay.streams[stream0][2:]])
    sync(relay, muscat, tehran, washington)
    assert muscat.view.head == washington.view.head
    assert tehran.view.head != muscat.view.head
    # Both name a head after the withheld record: a fork, before any gap.
    assert len(tehran.refused) == 2
    assert all(r.startswith("GroupForked") for r in tehran.refused)
    assert {w2.hash, m1.hash}.isdisjoint(tehran.applied)


def test_a_member_the_relay_keeps_from_a_change_reads_nothing_of_the_new_epoch() -> None:
    """The relay hides the change that opens epoch 1 from Washington, who
    got the epoch's secret pairwise. Washington's view stays at epoch 0 and
    refuses every epoch-1 record as made for another member list; the
    welcome carries the change, and applying it brings Washington to the
    others' head."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    head_before = muscat.view.head
    change = _sign(
        MUSCAT,
        _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False}),
    )
    post(relay, 0, GroupRecord(change=change))
    relay.show(KEYS[0].stream_id, WASHINGTON, relay.items(KEYS[0].stream_id, MUSCAT)[:1])
    for m in (muscat, tehran, washington):
        m.secrets[1] = SECRETS[1]
    sync(relay, muscat, tehran, washington)
    m1 = say(muscat, relay, b"epoch one", seq=1)
    sync(relay, muscat, tehran)
    view = washington.view
    assert view.state.epoch == 0
    error = _refused(view, lambda: view.accept_record(m1, MUSCAT.public))
    assert "another member list" in str(error)
    welcome = GroupWelcome(
        change=change,
        epoch_secret=SECRETS[1],
        head_before=head_before,
        stream_of_change=KEYS[0].stream_id,
        previous=view.state,
    )
    assert welcome.head_before == view.head  # nothing else was hidden
    caught_up = view.apply_change(welcome.change, MUSCAT.public).accept_record(m1, MUSCAT.public)
    assert caught_up.head == muscat.view.head


# --- a removed member -----------------------------------------------------------


def test_a_removed_member_can_neither_post_nor_read_the_next_epoch() -> None:
    """Muscat removes Washington (epoch 1, whose secret goes only to Muscat
    and Tehran). Washington keeps epoch 0's secret: what it posts to stream
    0 after the change is never read (the others follow stream 1) and would
    be refused anyway; stream 1's id and items are out of its reach (a
    colluding relay may tell it the id, but its blobs do not open under
    epoch 1's key, and epoch 1's do not open under epoch 0's); a change it
    signs to put itself back is refused. The others agree throughout."""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    removed = _next(muscat.view, {MUSCAT: True, TEHRAN: False})
    post(relay, 0, GroupRecord(change=_sign(MUSCAT, removed)))
    for m in (muscat, tehran):
        m.secrets[1] = SECRETS[1]
    sync(relay, muscat, tehran, washington)
    assert muscat.view.state == tehran.view.state == removed
    assert washington.view.state.epoch == 1 and 1 not in washington.secrets

    # Posting on the old stream, signed on the state it was removed from.
    stale = _message(washington.view, WASHINGTON, 1, b"still here")
    post(relay, 0, GroupRecord(message=stale))
    secret = _message(muscat.view, MUSCAT, 1, b"after the removal")
    post(relay, 1, GroupRecord(message=secret))
    sync(relay, muscat, tehran)
    assert muscat.view.head == tehran.view.head and not muscat.refused
    view = muscat.view
    error = _refused(view, lambda: view.accept_record(stale, WASHINGTON.public))
    assert "not a member" in str(error)

    # Reading: epoch 1's items do not open with what Washington has.
    for blob in relay.streams[KEYS[1].stream_id]:
        with pytest.raises(MalformedInput):
            open_record(KEYS[0], blob)
        with pytest.raises(MalformedInput):  # nor with the id it was told
            open_record(StreamKeys(stream_id=KEYS[1].stream_id, key=KEYS[0].key), blob)
    assert KEYS[1].stream_id not in (KEYS[0].stream_id, KEYS[0].key)

    # Posting on the new stream (the id from a colluding relay): skipped by all.
    relay.post(
        KEYS[1].stream_id,
        seal_record(StreamKeys(KEYS[1].stream_id, KEYS[0].key), GroupRecord(message=stale)),
    )
    back = replace(
        _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: True}), name="talks"
    )
    forged_back = _sign(WASHINGTON, back)
    post(relay, 1, GroupRecord(change=forged_back))  # as if it held the key
    before = heads(muscat, tehran)
    sync(relay, muscat, tehran)
    assert heads(muscat, tehran) == before and len(before) == 1
    for m in (muscat, tehran):
        assert m.refused[-2].startswith("MalformedInput")  # does not open
        assert "not a member" in m.refused[-1]


# --- forged, unauthorised, concurrent and replayed changes ------------------------


def test_an_unauthorised_change_in_the_stream_is_refused_by_every_member_alike() -> None:
    """Tehran (not an admin) posts a change adding Envoy, and another making
    itself admin while leaving nothing else changed; a third names Tehran as
    author with Muscat's signature bytes. Every member refuses all three at
    the same place, the transcript does not move, and the admin's change
    that follows is applied by all."""
    relay, members, _ = group(MUSCAT, TEHRAN, WASHINGTON)
    muscat = members[0]
    view = muscat.view
    grown = _next(view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    promoted = _next(view, {MUSCAT: True, TEHRAN: True, WASHINGTON: False})
    by_muscat = _sign(MUSCAT, grown)
    post(relay, 0, GroupRecord(change=_sign(TEHRAN, grown)))
    post(relay, 0, GroupRecord(change=_sign(TEHRAN, promoted)))
    post(relay, 0, GroupRecord(change=replace(by_muscat, author=_fp(TEHRAN))))
    post(relay, 0, GroupRecord(change=by_muscat))
    for m in members:
        m.secrets[1] = SECRETS[1]
    sync(relay, *members)
    assert len(heads(*members)) == 1 and all(m.view.state == grown for m in members)
    assert all(len(m.refused) == 3 for m in members)
    assert len({tuple(m.refused) for m in members}) == 1  # the same reasons everywhere
    assert all(m.applied[-1] == by_muscat.hash for m in members)


def test_two_concurrent_changes_the_stream_order_decides() -> None:
    """Two admins change the group at once, both on epoch 0. The stream
    puts Muscat's first: every member applies it and refuses Washington's
    (it does not follow the current state); Washington makes its change
    again on epoch 1. No member ends on Washington's first change."""
    relay, members, _ = group(MUSCAT, TEHRAN, WASHINGTON)
    muscat = members[0]
    two_admins = _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: True})
    post(relay, 0, GroupRecord(change=_sign(MUSCAT, two_admins)))
    for m in members:
        m.secrets[1] = SECRETS[1]
        m.secrets[2] = SECRETS[2]
    sync(relay, *members)
    view1 = muscat.view
    add_envoy = _next(view1, {MUSCAT: True, TEHRAN: False, WASHINGTON: True, ENVOY: False})
    drop_tehran = _next(view1, {MUSCAT: True, WASHINGTON: True})
    mine = _sign(MUSCAT, add_envoy)
    theirs = _sign(WASHINGTON, drop_tehran)
    post(relay, 1, GroupRecord(change=mine))
    post(relay, 1, GroupRecord(change=theirs))
    sync(relay, *members)
    assert len(heads(*members)) == 1 and all(m.view.state == add_envoy for m in members)
    # Washington's change was never read (it followed the change in stream
    # 1: items after a change are made for the old state); fed to a view it
    # is refused.
    view = muscat.view
    _refused(view, lambda: view.apply_change(theirs, WASHINGTON.public))
    again = _sign(WASHINGTON, _next(view, {MUSCAT: True, WASHINGTON: True, ENVOY: False}))
    assert view.apply_change(again, WASHINGTON.public).state.member(_fp(TEHRAN)) is None


def test_a_member_replaying_an_old_membership_state_is_refused() -> None:
    """After epoch 1 (Envoy added) and epoch 2 (Washington removed), old
    changes come back: Washington replays epoch 1's change (a list it is
    in) into stream 1 (whose key it has), and Tehran re-seals the creation
    and epoch 1's change into stream 2. Every one is refused as not
    following the current state; a relay duplicating epoch 2's change in
    stream 2 is refused alike. The members agree throughout."""
    relay, members, creation = group(MUSCAT, TEHRAN, WASHINGTON)
    muscat, tehran, _ = members
    for m in members:
        m.secrets[1] = SECRETS[1]
    c1 = _sign(
        MUSCAT, _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    )
    post(relay, 0, GroupRecord(change=c1))
    sync(relay, *members)
    c2 = _sign(MUSCAT, _next(muscat.view, {MUSCAT: True, TEHRAN: False, ENVOY: False}))
    post(relay, 1, GroupRecord(change=c2))
    for m in (muscat, tehran):
        m.secrets[2] = SECRETS[2]
    sync(relay, *members)
    stayed = (muscat, tehran)
    assert muscat.view.state.epoch == 2 and len(heads(*stayed)) == 1

    post(relay, 1, GroupRecord(change=c1))  # Washington, in the stream it still has
    for old in (creation, c1, c2):
        post(relay, 2, GroupRecord(change=old))  # Tehran re-seals; the relay repeats c2
    before = heads(*stayed)
    sync(relay, *stayed)
    assert heads(*stayed) == before
    for m in stayed:
        assert len(m.refused) == 3
        assert all("does not follow the current state" in r for r in m.refused)
    view = muscat.view
    for old in (creation, c1, c2):
        _refused(view, lambda o=old: view.apply_change(o, MUSCAT.public))


def test_a_forged_change_for_another_group_or_without_an_admin() -> None:
    """A change naming another group id, or signed over bytes that are not
    its state, is refused; a state without an admin cannot be encoded or
    decoded at all (so no signed change can carry one)."""
    relay, members, _ = group(MUSCAT, TEHRAN)
    view = members[0].view
    other = replace(_next(view, {MUSCAT: True, TEHRAN: False}), group_id=bytes(32))
    _refused(view, lambda: view.apply_change(_sign(MUSCAT, other), MUSCAT.public))
    good = _sign(MUSCAT, _next(view, {MUSCAT: True, TEHRAN: True}))
    swapped = replace(good, state=_next(view, {MUSCAT: True, TEHRAN: False, ENVOY: True}))
    _refused(view, lambda: view.apply_change(swapped, MUSCAT.public))
    with pytest.raises(MalformedInput):
        _next(view, {MUSCAT: False, TEHRAN: False})
    del relay


# --- a stream item moved between epochs, streams or groups ----------------------


def test_a_stream_item_moved_between_epochs_streams_or_groups() -> None:
    """The relay copies a blob of stream 0 into stream 1 (it does not open:
    another key and another stream id as associated data); a member re-seals
    an epoch-0 message under epoch 1's key (made for another member list);
    a record of another group re-sealed into this one's stream (for another
    group); the relay serving one blob twice (a replay). Each is refused by
    every member alike and moves nobody's head."""
    relay, members, _ = group(MUSCAT, TEHRAN, WASHINGTON)
    muscat, tehran, _ = members
    old = say(tehran, relay, b"epoch zero", seq=1)
    stream0 = KEYS[0].stream_id
    relay.post(stream0, relay.streams[stream0][-1])  # the relay duplicates it
    change = _sign(MUSCAT, _next(muscat.view, dict.fromkeys(EVERYONE[:3], True)))
    for m in members:
        m.secrets[1] = SECRETS[1]
    post(relay, 0, GroupRecord(change=change))
    sync(relay, *members)
    assert all(m.refused == [m.refused[0]] and "replayed" in m.refused[0] for m in members)

    stream1 = KEYS[1].stream_id
    relay.post(stream1, relay.streams[stream0][1])  # moved blob
    post(relay, 1, GroupRecord(message=old))  # re-sealed by a member
    elsewhere = replace(_state({MUSCAT: True, TEHRAN: False}), group_id=bytes([9]) * 32)
    other_view = GroupView.create(_sign(MUSCAT, elsewhere), MUSCAT.public)
    post(relay, 1, GroupRecord(message=_message(other_view, TEHRAN, 2, b"other group")))
    before = heads(*members)
    sync(relay, *members)
    assert heads(*members) == before and len(before) == 1
    for m in members:
        moved, resealed, foreign = m.refused[1:]
        assert moved.startswith("MalformedInput")
        assert "another member list" in resealed
        assert "another group" in foreign
    assert elsewhere.group_id != GID


def test_a_cached_encoding_never_outlives_the_values_it_encodes() -> None:
    """Group records keep their encoding once made (a send encodes a state
    or a signed payload several times); a record made from another by
    ``replace`` (an attacker's edit, or the next state) is encoded afresh,
    so nothing is signed or hashed over another record's bytes."""
    from securechan import wire

    state = _state({MUSCAT: True, TEHRAN: False})
    first = state.hash
    edited = replace(state, name="other talks")
    assert edited.hash != first and edited.to_bytes() == wire.encode_record(edited)
    change = _sign(MUSCAT, edited)
    assert GroupChange.from_bytes(change.to_bytes()) == change
    GroupView.create(change, MUSCAT.public)  # verifies over the edited state's bytes
    forged = replace(change, state=state)  # the signature over the edited state
    with pytest.raises(GroupRejected):
        GroupView.create(forged, MUSCAT.public)


def test_an_admin_cannot_give_members_different_epoch_secrets() -> None:
    """Muscat adds Envoy and tries to give Tehran and Washington different
    secrets for epoch 1, so that each reads its own stream (a split group).
    The change, ordered in the stream and signed, commits to epoch 1's
    stream (``next_stream``): a welcome whose secret gives another stream
    cannot be made, and one edited on the wire does not decode, so every
    member follows the one stream the change announced. (On main's code,
    before the commitment, both welcomes were accepted: the group split.)"""
    relay, (muscat, tehran, washington), _ = group(MUSCAT, TEHRAN, WASHINGTON)
    grown = _next(muscat.view, {MUSCAT: True, TEHRAN: False, WASHINGTON: False, ENVOY: False})
    change = _sign(MUSCAT, grown)
    post(relay, 0, GroupRecord(change=change))
    other = bytes([99]) * 32

    def welcome(secret: bytes) -> GroupWelcome:
        return GroupWelcome(
            change=change,
            epoch_secret=secret,
            head_before=muscat.view.head,
            stream_of_change=KEYS[0].stream_id,
            previous=muscat.view.state,
        )

    good = welcome(SECRETS[1]).to_bytes()
    with pytest.raises(MalformedInput, match="commits to"):
        welcome(other)
    # The hostile admin edits an honest welcome's secret in the encoding.
    assert good.count(SECRETS[1]) == 1
    with pytest.raises(MalformedInput, match="commits to"):
        GroupWelcome.from_bytes(good.replace(SECRETS[1], other))
    # And a change edited to commit to the other stream fails its signature.
    edited = replace(change, next_stream=StreamKeys.from_secret(other).commitment)
    with pytest.raises(GroupRejected, match="signature"):
        muscat.view.apply_change(edited, MUSCAT.public)
    assert GroupWelcome.from_bytes(good).epoch_secret == SECRETS[1]
    del tehran, washington, relay


def test_two_admins_rekeying_a_quiet_epoch_at_once_converge() -> None:
    """Washington leaves; its leave commits to the epoch derived from epoch
    1's secret (no welcome: every member derives it). A hostile Tehran
    posts a message into that quiet epoch: refused by all (Washington knows
    its secret). Muscat and Tehran, both admins, each post a rekey in the
    quiet stream at once: the stream's order decides; the first is applied
    by every member, the second no longer follows the current state and is
    refused by all; everyone holds one epoch and one head."""
    relay, (muscat, tehran), _ = group(MUSCAT, TEHRAN)
    promote = _sign(MUSCAT, _next(muscat.view, {MUSCAT: True, TEHRAN: True, WASHINGTON: False}))
    post(relay, 0, GroupRecord(change=promote))
    for m in (muscat, tehran):
        m.secrets[1] = SECRETS[1]
    sync(relay, muscat, tehran)
    state2 = _next(muscat.view, {MUSCAT: True, TEHRAN: True})
    derived = leave_secret(SECRETS[1], state2)
    quiet_keys = StreamKeys.from_secret(derived)
    leave = GroupChange.sign(WASHINGTON, state2, next_stream=quiet_keys.commitment)
    check_leave(leave, SECRETS[1])  # what every member checks on reading it
    with pytest.raises(GroupRejected):  # a leave naming another stream
        check_leave(_sign(WASHINGTON, state2), SECRETS[1])
    post(relay, 1, GroupRecord(change=leave))
    for m in (muscat, tehran):
        m.secrets[2] = derived
    sync(relay, muscat, tehran)
    assert muscat.view.quiet and tehran.view.quiet
    noise = _message(tehran.view, TEHRAN, 1, b"into the quiet epoch")
    relay.post(quiet_keys.stream_id, seal_record(quiet_keys, GroupRecord(message=noise)))
    fresh = {MUSCAT: bytes([71]) * 32, TEHRAN: bytes([72]) * 32}
    rekeys = {
        who: GroupChange.sign(
            who,
            _next(muscat.view, {MUSCAT: True, TEHRAN: True}),
            next_stream=StreamKeys.from_secret(fresh[who]).commitment,
        )
        for who in (MUSCAT, TEHRAN)
    }
    for who in (TEHRAN, MUSCAT):  # Tehran's reaches the relay first
        relay.post(quiet_keys.stream_id, seal_record(quiet_keys, GroupRecord(change=rekeys[who])))
    for m in (muscat, tehran):
        m.secrets[3] = fresh[TEHRAN]  # the winner's welcome
    sync(relay, muscat, tehran)
    for m in (muscat, tehran):
        assert m.view.state.epoch == 3 and not m.view.quiet
        assert rekeys[TEHRAN].hash in m.applied and rekeys[MUSCAT].hash not in m.applied
        assert any("member who left" in r for r in m.refused)
    assert heads(muscat, tehran) == {muscat.view.head}
    # The loser's rekey, read after the winner's by anyone who did: refused.
    _refused(muscat.view, lambda: muscat.view.apply_change(rekeys[MUSCAT], MUSCAT.public))
