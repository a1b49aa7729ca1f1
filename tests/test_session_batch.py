"""The batch send (``Session.send_group_batch``, docs/PROTOCOL.md §20.8).

A group fan-out signs every pairwise copy first and ratchet-encrypts them
after. What it must keep, tested as the members and a failing signer see it:

* every member opens its copy through its ordinary ``receive``, with the
  sender's verified signature over that member's own payload, and the
  group delivery inside is the one sent;
* the wire form is the single send's (the receiver's strict decoder accepts
  it; the signed record re-encodes to the same bytes);
* the pairwise chains continue: later single sends both ways, and a second
  batch, are received in order with the right sequence numbers and hashes;
* all or nothing: a failure at any step of any copy (a signing error part
  way through, a session whose state cannot send, a body the encoder
  refuses, a session given twice) raises and leaves every session's stored
  encoding byte for byte as it was, and the sessions send normally after.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from securechan.identity import Identity
from securechan.primitives import HybridSigningKey
from securechan.protocol import (
    ContentType,
    MessageReceived,
    PrekeyStore,
    ReplayGuard,
    Session,
)
from securechan.protocol.group import GroupPayload, SignedGroupPayload, commit_content
from securechan.protocol.group_stream import KIND_TEXT, GroupDelivery
from securechan.protocol.payload import MAX_BODY, SignedPayload, TextBody

NOW = 1_790_000_000
MEMBERS = 4


class FailingSigner(Identity):
    """An identity whose signing fails from the ``fail_at``-th call on (a
    key on a token pulled out part way through a fan-out)."""

    fail_at: int | None = None
    calls = 0

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("the signing key is gone")
        return super().sign(message, context=context)


def identity(name: str) -> FailingSigner:
    return FailingSigner(name=name, created=NOW, key=HybridSigningKey.generate())


def pair(me: Identity, peer: Identity) -> tuple[Session, Session]:
    store = PrekeyStore.new(peer).rotate(peer, now=NOW).add_one_time(peer, 1, now=NOW)
    mine, first = Session.initiate(me, peer.public, store.bundle(NOW), now=NOW)
    theirs, _, _, events = Session.accept(
        peer,
        store,
        ReplayGuard(),
        first,
        contact=lambda fp: me.public if fp == me.fingerprint else None,
        now=NOW,
    )
    assert isinstance(events[0], MessageReceived)
    # The peer answers, so the next send of ours starts a new chain.
    mine.receive(theirs.send_text("hello", now=NOW).envelope, now=NOW)
    return mine, theirs


@pytest.fixture(scope="module")
def people() -> tuple[FailingSigner, list[FailingSigner]]:
    return identity("mediator"), [identity(f"member-{i}") for i in range(MEMBERS)]


@pytest.fixture
def group(
    people: tuple[FailingSigner, list[FailingSigner]],
) -> tuple[FailingSigner, list[Session], list[Session]]:
    me, others = people
    me.fail_at, me.calls = None, 0
    pairs = [pair(me, o) for o in others]
    return me, [p[0] for p in pairs], [p[1] for p in pairs]


def delivery(me: Identity, seq: int, text: str) -> bytes:
    content = TextBody(text=text).to_bytes()
    gid = bytes(range(32))
    payload = GroupPayload(
        group_id=gid,
        state_hash=bytes(32),
        sender=me.fingerprint.digest,
        seq=seq,
        head=bytes(32),
        commitment=commit_content(gid, me.fingerprint.digest, seq, content),
        sent_at=NOW,
    )
    signed = SignedGroupPayload.sign(me, payload)
    return GroupDelivery(signed=signed, kind=KIND_TEXT, content=content).to_bytes()


def stored(sessions: list[Session]) -> list[bytes]:
    return [s.to_bytes(now=NOW) for s in sessions]


def received(session: Session, envelope: bytes) -> MessageReceived:
    events = session.receive(envelope, now=NOW)
    assert isinstance(events[0], MessageReceived)
    return events[0]


def test_every_member_opens_and_verifies_its_copy(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, theirs = group
    body = delivery(me, 1, "the inspection schedule is acceptable")
    before = [s.sent_count for s in mine]
    me.calls = 0
    outs = Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    assert me.calls == MEMBERS  # one pairwise signature per copy (§14)
    hashes = set()
    for s, peer, out, n in zip(mine, theirs, outs, before, strict=True):
        assert out.seq == n + 1 == s.sent_count
        event = received(peer, out.envelope)
        assert event.seq == out.seq
        assert event.content_type is ContentType.GROUP_MESSAGE
        assert isinstance(event.content, GroupDelivery)
        assert event.content.to_bytes() == body
        # The single send's wire form: the strict decoder took it, and the
        # signed record re-encodes to the very bytes sent and kept.
        assert event.signed == out.record
        signed = SignedPayload.from_bytes_unverified(out.record)
        assert replace(signed, raw=None).to_bytes() == out.record
        assert replace(signed.payload, raw=None).to_bytes() == signed.payload.to_bytes()
        signed.verify(me.public)
        assert signed.payload.recipient == s.peer.fingerprint
        assert signed.payload.sender == peer.peer.fingerprint == me.fingerprint
        assert signed.payload.conversation == peer.conversation == s.conversation
        hashes.add(event.hash)
    assert len(hashes) == MEMBERS  # each copy signed for its own member


def test_chains_continue_both_ways_after_a_batch(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, theirs = group
    for round_ in (1, 2):
        body = delivery(me, round_, f"round {round_}")
        outs = Session.send_group_batch(
            [(s, ContentType.GROUP_MESSAGE, body) for s in mine],
            now=NOW,
        )
        for peer, out in zip(theirs, outs, strict=True):
            received(peer, out.envelope)
        for s, peer in zip(mine, theirs, strict=True):
            # A single send each way, then a receipt that must match our chain.
            got = received(s, peer.send_text(f"ack {round_}", now=NOW).envelope)
            assert got.content == f"ack {round_}"
            got = received(peer, s.send_text(f"more {round_}", now=NOW).envelope)
            assert got.seq == s.sent_count
            checked = s.receive(peer.send_receipt(now=NOW).envelope, now=NOW)
            assert [e.matches for e in checked if hasattr(e, "matches")] == [True]


def test_a_signing_error_part_way_leaves_every_session_as_it_was(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, theirs = group
    body = delivery(me, 1, "never sent")
    before = stored(mine)
    me.calls, me.fail_at = 0, MEMBERS - 1  # the third of four signatures fails
    with pytest.raises(RuntimeError, match="signing key is gone"):
        Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    assert me.calls == MEMBERS - 1
    assert stored(mine) == before
    me.fail_at = None
    # Nothing was used up: the next batch is the next message on every chain.
    outs = Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    for peer, out in zip(theirs, outs, strict=True):
        assert received(peer, out.envelope).seq == 2


def test_a_session_that_cannot_send_leaves_every_session_as_it_was(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, theirs = group
    # The last session's state is corrupt: its ratchet lost the peer's keys
    # (it cannot encrypt); found only after every copy was signed and the
    # others encrypted.
    bad = mine[-1]
    st = bad._st
    bad._st = replace(st, ratchet=replace(st.ratchet, dh_remote=None, cks=None))
    before = stored(mine)
    body = delivery(me, 1, "never sent")
    me.calls = 0
    with pytest.raises(ValueError, match="cannot send"):
        Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    assert me.calls == MEMBERS  # all signed, then the fourth seal failed
    assert stored(mine) == before
    bad._st = st
    outs = Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    for peer, out in zip(theirs, outs, strict=True):
        assert received(peer, out.envelope).seq == 2


def test_a_refused_body_or_a_repeated_session_changes_nothing(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, _ = group
    body = delivery(me, 1, "x")
    before = stored(mine)
    sends = [(s, ContentType.GROUP_MESSAGE, body) for s in mine]
    with pytest.raises(ValueError, match="body"):  # the encoder refuses the last body
        Session.send_group_batch(
            [*sends[:-1], (mine[-1], ContentType.GROUP_MESSAGE, bytes(MAX_BODY + 1))], now=NOW
        )
    with pytest.raises(ValueError, match="twice"):
        Session.send_group_batch([*sends, sends[0]], now=NOW)
    with pytest.raises(ValueError, match="GROUP_MESSAGE or GROUP_WELCOME"):
        Session.send_group_batch([*sends[:-1], (mine[-1], ContentType.TEXT, body)], now=NOW)
    assert stored(mine) == before


def test_checkpoints_are_carried_as_by_a_single_send(
    group: tuple[FailingSigner, list[Session], list[Session]],
) -> None:
    me, mine, theirs = group
    note = "relay.example\n1\nAAAA\n\n\u2014 relay.example AAAA\n"
    for s in mine:
        s.checkpoints = (note,)
    body = delivery(me, 1, "with checkpoints")
    outs = Session.send_group_batch([(s, ContentType.GROUP_MESSAGE, body) for s in mine], now=NOW)
    for peer, out in zip(theirs, outs, strict=True):
        assert received(peer, out.envelope).checkpoints == (note,)
