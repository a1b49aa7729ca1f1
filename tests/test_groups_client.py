"""The group client end to end (issue 17; GROUPS-SPEC §2-§3): real relay
process on 127.0.0.1, real homes on disk, real SQLite, the library's
Channel. Members act as the attacker would where a test says so."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from securechan.client.channel import Channel
from securechan.client.group_carriage import view_of
from securechan.client.group_results import GROUP_STATUSES, GroupSent
from securechan.client.unshown import unshown
from securechan.errors import RelayError, UsageError
from securechan.protocol.group import (
    GroupChange,
    GroupMember,
    GroupPayload,
    GroupState,
    SignedGroupPayload,
    commit_content,
)
from securechan.protocol.group_stream import (
    GROUP_CHUNK_SIZE,
    KIND_TEXT,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    seal_record,
)
from securechan.protocol.payload import ContentType, TextBody
from securechan.testing.malicious_relay import Exchange, MaliciousRelay
from tests.group_world import (
    NAMES,
    copy_members,
    entries,
    make_pristine,
    mesh,
    pairwise_kinds,
    pump,
    run,
    shown,
)
from tests.test_relay_crash import RelayProcess, running_relay


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def test_three_members_see_one_transcript(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            info = await a.group_create("talks", ["bravo", "charlie"])
            assert info.epoch == 0 and len(info.members) == 3 and info.records == 1
            got = await pump(chs)
            for n in ("bravo", "charlie"):
                [g] = chs[n].groups()
                assert (g.name, g.group_id, g.head) == ("talks", info.group_id, info.head)
                assert [e.status for e in entries(got[n])] == ["change"]
            sent = await a.send_group("talks", text="opening statement")
            assert (sent.seq, sent.pending) == (1, ())
            assert set(sent.delivered) == {"bravo", "charlie"}
            await pump(chs)
            await b.send_group("talks", text="bravo replies")
            await pump(chs)
            await c.send_group("talks", text="charlie mediates")
            await a.send_group("talks", text="alpha again")
            await pump(chs)
            want = [
                ("alpha", "opening statement"),
                ("bravo", "bravo replies"),
                ("charlie", "charlie mediates"),
                ("alpha", "alpha again"),
            ]
            for n, ch in chs.items():
                assert shown(ch, "talks") == want, n
                assert all(e.status in GROUP_STATUSES for e in ch.group_history("talks"))
            heads = {ch.group_show("talks").head for ch in chs.values()}
            assert len(heads) == 1
            # Group carriage is not listed as direct messages, nor rebuilt
            # as one by the shown cursor (what receive shows after a crash).
            for ch in chs.values():
                assert not [h for h in ch.history() if "opening" in h[4]]
                again = unshown(ch.db, ch.keystore.contacts.find, 0)
                carriage = {ContentType.HELLO, ContentType.GROUP_MESSAGE, ContentType.GROUP_WELCOME}
                assert not [x for x in again if getattr(x, "content_type", None) in carriage]
            # A file: one record per GROUP_CHUNK_SIZE chunk, whole again at each member.
            data = os.urandom(2 * GROUP_CHUNK_SIZE + 1000)
            (tmp_path / "annex.pdf").write_bytes(data)
            sent = await b.send_group("talks", path=str(tmp_path / "annex.pdf"))
            assert sent.seq == 4 and set(sent.delivered) == {"alpha", "charlie"}  # 2, 3, 4
            got = await pump(chs)
            for n in ("alpha", "charlie"):
                parts = [e for e in entries(got[n]) if e.file_name == "annex.pdf"]
                assert [e.status for e in parts] == ["shown"] * 3, n
                assert chs[n].group_file("talks", parts[0].id) == ("annex.pdf", data)
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def _fp(ch: Channel, contact: str) -> bytes:
    return ch.keystore.contacts.get(contact).fingerprint.digest


def _group_messages(ch: Channel) -> int:
    return pairwise_kinds(ch).count(int(ContentType.GROUP_MESSAGE))


async def _post_as(ch: Channel, group: str, record: GroupRecord, epoch: int | None = None) -> None:
    """A hostile member posts a record of its choosing, sealed under an epoch
    key it holds (the current one, or ``epoch``'s)."""
    g = ch.group_client
    row = g.row(group)
    if epoch is not None:
        welcome = next(w for e, _, w in ch.db.welcomes(row.group_id) if e == epoch)
        keys = StreamKeys.from_secret(GroupWelcome.from_bytes(welcome).epoch_secret)
    else:
        keys = g._keys(row)
    relay = await ch.relay(row.relay)
    await relay.post_stream_item(keys.stream_id, seal_record(keys, record))


def _signed(
    ch: Channel, group: str, text: str, *, seq: int | None = None
) -> tuple[SignedGroupPayload, bytes]:
    """A message signed by ``ch`` on the view it holds (a test double's)."""
    row = ch.group_client.row(group)
    view = view_of(row)
    me = ch.identity.fingerprint.digest
    n = seq if seq is not None else view.last.get(me, (0, b""))[0] + 1
    content = TextBody(text=text).to_bytes()
    payload = GroupPayload(
        group_id=row.group_id,
        state_hash=view.state.hash,
        sender=me,
        seq=n,
        head=view.head,
        commitment=commit_content(row.group_id, me, n, content),
        sent_at=ch.now(),
    )
    return SignedGroupPayload.sign(ch.identity, payload), content


async def _deliver(ch: Channel, to: str, signed: SignedGroupPayload, content: bytes) -> None:
    """Send a GroupDelivery pairwise through the real session with ``to``."""
    fp = ch.keystore.contacts.get(to).fingerprint.digest
    body = GroupDelivery(signed=signed, kind=KIND_TEXT, content=content).to_bytes()
    delivered, _ = await ch.group_client._pairwise([fp], ContentType.GROUP_MESSAGE, body)
    assert delivered == [to]


def test_add_and_remove(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path)

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c, d = (chs[n] for n in NAMES)
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            await a.send_group("talks", text="before delta")
            await pump(chs)
            info = await a.group_add("talks", ["delta"])
            assert info.epoch == 1 and len(info.members) == 4
            await pump(chs)
            [g] = d.groups()
            assert (g.epoch, g.head) == (1, info.head)
            await d.send_group("talks", text="delta joins in")
            await pump(chs)
            for n in ("alpha", "bravo", "charlie"):
                assert shown(chs[n], "talks") == [
                    ("alpha", "before delta"),
                    ("delta", "delta joins in"),
                ], n
            # The joiner starts at its change: it never reads earlier records.
            assert shown(d, "talks") == [("delta", "delta joins in")]

            before = _group_messages(c)
            info = await a.group_remove("talks", ["charlie"])
            assert info.epoch == 2 and "charlie" not in {x.name for x in info.members}
            got = await pump(chs)
            assert c.group_show("talks").left
            assert [e.status for e in entries(got["charlie"])] == ["change"]
            await a.send_group("talks", text="after charlie left")
            await b.send_group("talks", text="bravo too")
            await pump(chs)
            # No later content reaches the removed member, not even pairwise.
            assert _group_messages(c) == before
            assert ("alpha", "after charlie left") not in shown(c, "talks")
            with pytest.raises(UsageError):
                await c.send_group("talks", text="let me in")
            # The removed member posts anyway, as an attacker would: on the
            # stream it knows (after the removal) and pairwise to alpha.
            signed, content = _signed(c, "talks", "I am still here")
            await _post_as(c, "talks", GroupRecord(message=signed), epoch=1)
            await _deliver(c, "alpha", signed, content)
            await pump(chs)
            want = [
                ("alpha", "before delta"),
                ("delta", "delta joins in"),
                ("alpha", "after charlie left"),
                ("bravo", "bravo too"),
            ]
            for n in ("alpha", "bravo"):
                assert shown(chs[n], "talks") == want, n
            assert shown(d, "talks") == want[1:], [
                (e.epoch, e.position, e.status, e.summary) for e in d.group_history("talks")
            ]
            heads = {chs[n].group_show("talks").head for n in ("alpha", "bravo", "delta")}
            assert len(heads) == 1
            assert all("still here" not in (e.text or "") for e in a.group_history("talks"))
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_leave(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            with pytest.raises(UsageError):
                await a.group_leave("talks")  # the last admin cannot
            before = _group_messages(b)
            info = await b.group_leave("talks")
            assert info.left and info.epoch == 1
            await pump(chs)
            for n in ("alpha", "charlie"):
                # Epoch 1 (the leave's) is quiet: alpha, the admin, rekeyed
                # as soon as it read the leave (tests/test_group_rekey.py
                # plays the leaver as the attacker).
                g = chs[n].group_show("talks")
                assert g.epoch == 2 and "bravo" not in {x.name for x in g.members}
            await c.send_group("talks", text="without bravo")
            await pump(chs)
            assert shown(a, "talks") == [("charlie", "without bravo")]
            assert _group_messages(b) == before
            assert a.group_show("talks").head == c.group_show("talks").head
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_equivocating_sender_is_caught(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            # alpha, a test double, posts one signed record for everyone but
            # shows bravo another text: (1) under a second signed payload for
            # the same number, (2) under the same payload (its commitment).
            s1, honest = _signed(a, "talks", "we accept")
            s2, lie = _signed(a, "talks", "we refuse", seq=s1.payload.seq)
            await _post_as(a, "talks", GroupRecord(message=s1))
            await _deliver(a, "charlie", s1, honest)
            await _deliver(a, "bravo", s2, lie)
            got = await pump(chs)
            [eb] = [e for e in entries(got["bravo"]) if e.seq == 1]
            assert eb.status == "equivocation", eb
            [ec] = [e for e in entries(got["charlie"]) if e.seq == 1]
            assert (ec.status, ec.text) == ("shown", "we accept")
            await a.group_client.reader.sync(a.group_client.row("talks").group_id)
            s3, honest = _signed(a, "talks", "second point")
            await _post_as(a, "talks", GroupRecord(message=s3))
            await _deliver(a, "charlie", s3, honest)
            await _deliver(a, "bravo", s3, TextBody(text="a different second point").to_bytes())
            got = await pump(chs)
            [eb] = [e for e in entries(got["bravo"]) if e.seq == 2]
            assert eb.status == "equivocation" and eb.text is None, eb
            assert [e.text for e in entries(got["charlie"]) if e.seq == 2] == ["second point"]
            # The evidence is kept: the pairwise payload signed by alpha.
            gid = b.group_client.row("talks").group_id
            kept = b.db.deliveries(gid, sender=a.identity.fingerprint.digest)
            assert {d.record_hash for d in kept} >= {s2.hash, s3.hash}
            assert all(d.pairwise for d in kept)
            # The transcript itself (the records) stays one for everyone.
            assert len({ch.group_show("talks").head for ch in (b, c)}) == 1
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_replayed_old_state_and_unauthorised_change_are_refused(
    pristine: Path, tmp_path: Path
) -> None:
    m = copy_members(pristine, tmp_path)

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b = chs["alpha"], chs["bravo"]
            await a.group_create("talks", ["bravo", "charlie", "delta"])
            await pump(chs)
            await a.group_remove("talks", ["delta"])
            await pump(chs)
            # alpha replays the creation (delta still in it) and the old
            # change's state into the current stream.
            gid = a.group_client.row("talks").group_id
            creation = GroupRecord.from_bytes(
                a.db.transcript(gid, status="change", limit=1)[0].record
            )
            await _post_as(a, "talks", creation)
            got = await pump(chs)
            for n in ("alpha", "bravo", "charlie"):
                [e] = entries(got[n])
                assert e.status == "refused" and "does not follow" in e.summary, e
            # bravo, not an admin, signs a change that adds delta back.
            old = view_of(b.group_client.row("talks")).state
            forged = GroupState(
                group_id=old.group_id,
                epoch=old.epoch + 1,
                name=old.name,
                members=tuple(
                    sorted(
                        (*old.members, GroupMember(fingerprint=_fp(b, "delta"), admin=True)),
                        key=lambda x: x.fingerprint,
                    )
                ),
                previous=old.hash,
            )
            await _post_as(
                b,
                "talks",
                GroupRecord(change=GroupChange.sign(b.identity, forged, next_stream=bytes(32))),
            )
            got = await pump(chs)
            for n in ("alpha", "bravo", "charlie"):
                [e] = entries(got[n])
                assert e.status == "refused" and "only an admin" in e.summary, e
            await b.send_group("talks", text="still three of us")
            await pump(chs)
            heads = {chs[n].group_show("talks").head for n in ("alpha", "bravo", "charlie")}
            assert len(heads) == 1
            assert chs["charlie"].group_show("talks").epoch == 1
            assert shown(chs["charlie"], "talks") == [("bravo", "still three of us")]
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_relay_withholding_from_one_member_is_reported(pristine: Path, tmp_path: Path) -> None:
    """charlie reaches the relay through a proxy that, as a malicious relay
    would, leaves a group record out of charlie's stream pages: first the
    newest one (charlie gets its content pairwise: withheld), then one in the
    middle (the page has a gap: forked, a split view)."""
    m = copy_members(pristine, tmp_path, NAMES[:3])
    withhold: set[int] = set()

    def hide(x: Exchange, status: int, body: bytes) -> tuple[int, bytes]:
        if x.method != "GET" or "/v1/streams/" not in x.path or status != 200 or not withhold:
            return status, body
        page = json.loads(body)
        page["items"] = [i for i in page["items"] if i["position"] not in withhold]
        return status, json.dumps(page).encode()

    async def go(url: str, proxy: MaliciousRelay) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url, {"charlie": proxy.url})
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            assert c.group_client.row("talks").relay == proxy.url
            proxy.on_response("other", hide)
            sent = await a.send_group("talks", text="the offer")
            withhold.add(sent.position)
            got = await pump(chs)
            assert [e.status for e in entries(got["charlie"])] == ["withheld"]
            assert [e.text for e in entries(got["bravo"])] == ["the offer"]
            await b.send_group("talks", text="the answer")
            got = await pump(chs)
            assert "forked" in [e.status for e in entries(got["charlie"])]
            assert not [e for e in entries(got["charlie"]) if e.status == "shown"]
            # The relay stops withholding: charlie catches up, in order.
            withhold.clear()
            await pump(chs)
            assert shown(c, "talks") == [("alpha", "the offer"), ("bravo", "the answer")]
            assert len({ch.group_show("talks").head for ch in chs.values()}) == 1
        finally:
            for ch in chs.values():
                await ch.close()

    with (
        running_relay(tmp_path) as relay,
        MaliciousRelay(relay.url, relay.data, tmp_path / "proxy") as proxy,
    ):
        run(go(relay.url, proxy))


def test_concurrent_change_and_message(pristine: Path, tmp_path: Path) -> None:
    """bravo sends while alpha removes charlie: whichever the stream orders
    first, the content goes only to the members of the state its record was
    accepted under, so charlie never gets a message made after its removal."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            for i in range(3):
                if i:
                    await a.group_add("talks", ["charlie"])
                    await pump(chs)
                results = await asyncio.gather(
                    a.group_remove("talks", ["charlie"]),
                    b.send_group("talks", text=f"during change {i}"),
                    return_exceptions=True,
                )
                await pump(chs)
                # The send went out whichever came first (if the change did:
                # after a receive pass that read the welcome of the new epoch,
                # its results kept for the next receive, on the new state).
                assert isinstance(results[1], GroupSent), results
                assert not isinstance(results[0], BaseException), results
            gid = c.group_client.row("talks").group_id
            me = c.identity.fingerprint.digest
            states = {}
            for t in c.db.transcript(gid, status="change"):
                change = GroupRecord.from_bytes(t.record).change
                assert change is not None
                states[change.state.hash] = change.state
            for d in c.db.deliveries(gid):
                signed = GroupDelivery.from_bytes(d.delivery).signed
                state = states[signed.payload.state_hash]
                assert state.member(me) is not None
            for n in ("alpha", "bravo"):
                texts = [t for _, t in shown(chs[n], "talks")]
                assert texts == [f"during change {i}" for i in range(3)], n
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_a_member_added_back_speaks_and_hears(pristine: Path, tmp_path: Path) -> None:
    """charlie spoke, was removed and added back: its next number follows its
    last one (not 1: that would read as a replay or an equivocation), and it
    takes the others' next numbers though it missed what they said meanwhile."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            await c.send_group("talks", text="charlie's first")
            await b.send_group("talks", text="bravo's first")
            await pump(chs)
            await a.group_remove("talks", ["charlie"])
            await pump(chs)
            await b.send_group("talks", text="while charlie is out")
            await pump(chs)
            await a.group_add("talks", ["charlie"])
            await pump(chs)
            assert not c.group_show("talks").left
            sent = await c.send_group("talks", text="charlie is back")
            assert sent.seq == 2
            await b.send_group("talks", text="welcome back")
            await pump(chs)
            for n in ("alpha", "bravo"):
                assert shown(chs[n], "talks")[-2:] == [
                    ("charlie", "charlie is back"),
                    ("bravo", "welcome back"),
                ], n
            assert shown(c, "talks")[-2:] == [
                ("charlie", "charlie is back"),
                ("bravo", "welcome back"),
            ]
            assert ("bravo", "while charlie is out") not in shown(c, "talks")
            assert len({ch.group_show("talks").head for ch in chs.values()}) == 1
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_a_creation_the_relay_never_took_leaves_nothing(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES[:2])

    async def go(relay: RelayProcess) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, relay.url)
            relay.stop()
            with pytest.raises(RelayError):
                await chs["alpha"].group_create("talks", ["bravo"])
            assert chs["alpha"].groups() == []
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay))


def test_a_welcome_that_could_not_be_queued_is_sent_later(pristine: Path, tmp_path: Path) -> None:
    """bravo's relay is down when alpha creates the group and alpha has no
    session with bravo yet (its prekeys are out of reach): the welcome is
    owed, and goes out after alpha's next receive once the relay is back."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(one: RelayProcess, two: RelayProcess) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, one.url, {"bravo": two.url})
            two.stop()
            info = await chs["alpha"].group_create("talks", ["bravo", "charlie"])
            assert info.records == 1
            assert chs["alpha"].group_client.row("talks").owed
            two.start()
            await chs["alpha"].receive()  # pays what it owes
            assert not chs["alpha"].group_client.row("talks").owed
            await pump(chs)
            assert chs["bravo"].group_show("talks").head == info.head
        finally:
            for ch in chs.values():
                await ch.close()

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with running_relay(tmp_path / "one") as one, running_relay(tmp_path / "two") as two:
        run(go(one, two))


def test_a_group_message_whose_post_answer_was_lost(pristine: Path, tmp_path: Path) -> None:
    """The relay stores alpha's record but its answers are lost: the send
    fails, yet the record is in the stream, so its content is owed to the
    members and goes out after alpha's next receive shows the record."""
    m = copy_members(pristine, tmp_path, NAMES[:2])
    lose = [0]

    def lost(x: Exchange, status: int, body: bytes) -> tuple[int, bytes]:
        if x.method == "POST" and "/v1/streams/" in x.path and lose[0] > 0:
            lose[0] -= 1
            return 502, b'{"error": "bad gateway"}'
        return status, body

    async def go(url: str, proxy: MaliciousRelay) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url, {"alpha": proxy.url})
            a = chs["alpha"]
            await a.group_create("talks", ["bravo"])
            await pump(chs)
            proxy.on_response("other", lost)
            lose[0] = 10
            with pytest.raises(RelayError):
                await a.send_group("talks", text="did it go?")
            assert lose[0] < 10 and a.group_client.row("talks").owed
            lose[0] = 0
            got = await pump(chs, rounds=3)
            assert [e.text for e in entries(got["bravo"]) if e.status == "shown"] == ["did it go?"]
            assert not a.group_client.row("talks").owed
        finally:
            for ch in chs.values():
                await ch.close()

    with (
        running_relay(tmp_path) as relay,
        MaliciousRelay(relay.url, relay.data, tmp_path / "proxy") as proxy,
    ):
        run(go(relay.url, proxy))
