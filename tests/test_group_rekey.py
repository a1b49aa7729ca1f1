"""A member who leaves never knows the secret of an epoch the others talk
in (issue 17; docs/PROTOCOL.md §20.4), end to end: a real relay process on
127.0.0.1, real homes on disk, the library's Channel. The leaver plays the
attacker with everything its home holds and everything the protocol lets
it derive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from securechan.client.channel import Channel
from securechan.client.group_carriage import view_of
from securechan.errors import GroupRejected, MalformedInput, UsageError
from securechan.primitives import hkdf_sha256, random_bytes
from securechan.protocol.group import GroupMember, GroupState
from securechan.protocol.group_stream import (
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    open_record,
    seal_record,
)
from tests.group_world import NAMES, copy_members, entries, make_pristine, mesh, pump, run, shown
from tests.test_groups_client import _group_messages, _signed
from tests.test_relay_crash import running_relay


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def _known_secrets(ch: Channel, group: str) -> list[bytes]:
    """Every epoch secret the home ``ch`` holds for ``group``, and every one
    it can derive from them as a leave's (the attacker's knowledge)."""
    row = ch.group_client.row(group)
    held = [GroupWelcome.from_bytes(w).epoch_secret for _, _, w in ch.db.welcomes(row.group_id)]
    state = GroupState.from_bytes(row.state)  # the state its leave made
    info = b"securechan/v1/group-leave-secret"
    derived = [hkdf_sha256(s, salt=state.hash, info=info, length=32) for s in held]
    return held + derived


def test_a_member_who_leaves_cannot_read_or_post_into_the_next_epoch(
    pristine: Path, tmp_path: Path
) -> None:
    """Bravo leaves. Charlie (no admin) has read the leave before any admin:
    its send is refused with one line that says what to do, and nothing is
    posted or sent. Alpha (the admin) rekeys as soon as its client reads the
    leave; charlie then talks in epoch 2. Bravo tries every secret it holds
    or can derive on every item of the stream charlie's message is in: none
    opens, and none of the streams it can name is that stream, so it can
    neither read nor post there. On main's code the leaver chose the next
    epoch's secret and the others talked in that epoch: it opened charlie's
    record (and charlie's send went through at once)."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            before = _group_messages(b)
            info = await b.group_leave("talks")
            assert info.left and info.epoch == 1
            got = await c.receive()
            assert [e.summary for e in entries(got)][-1].startswith("epoch 1: removed")
            assert c.group_show("talks").epoch == 1
            with pytest.raises(UsageError, match="securechan group rekey talks"):
                await c.send_group("talks", text="too early")
            assert "too early" not in str(c.group_history("talks"))
            # A hostile charlie posting into the quiet epoch by hand: refused
            # by every member (the leaver knows that epoch's secret).
            quiet_row = c.group_client.row("talks")
            quiet_keys = c.group_client._keys(quiet_row)
            signed, _ = _signed(c, "talks", "into the quiet epoch")
            relay_c = await c.relay(quiet_row.relay)
            await relay_c.post_stream_item(
                quiet_keys.stream_id,
                seal_record(quiet_keys, GroupRecord(message=signed)),
            )
            got = await pump({"alpha": a, "charlie": c})  # alpha reads the leave: rekeys
            for n, ch in (("alpha", a), ("charlie", c)):
                g = ch.group_show("talks")
                assert g.epoch == 2 and "bravo" not in {x.name for x in g.members}, n
                quiet = [e for e in ch.group_history("talks") if e.epoch == 1]
                assert [e.status for e in quiet][:1] == ["refused"], n
                assert "member who left" in quiet[0].summary, n
            assert a.group_show("talks").head == c.group_show("talks").head
            sent = await c.send_group("talks", text="without bravo")
            await pump({"alpha": a, "charlie": c})
            assert shown(a, "talks") == [("charlie", "without bravo")]
            assert _group_messages(b) == before  # no content went to bravo
            # Bravo, the attacker: the stream charlie talked in.
            gid = c.group_client.row("talks").group_id
            [t] = [
                r
                for r in c.group_client.reader.all_rows(gid)
                if r.record_hash.hex().startswith(sent.id)
            ]
            assert t.epoch == 2
            secrets = _known_secrets(b, "talks")
            assert t.stream_id not in {StreamKeys.from_secret(s).stream_id for s in secrets}
            relay_b = await b.relay(b.group_client.row("talks").relay)
            items, _ = await relay_b.fetch_stream(t.stream_id, 0, 200)
            assert items  # the relay serves whoever names the stream
            for item in items:
                for s in secrets:
                    with pytest.raises(MalformedInput):
                        open_record(StreamKeys.from_secret(s), bytes(item.blob))
            # What bravo can read of epoch 1 (it derives that secret): the
            # rekey, with only a commitment to epoch 2's stream, not its id.
            keys1 = StreamKeys.from_secret(secrets[-1])
            first, _ = await relay_b.fetch_stream(keys1.stream_id, 0, 200)
            opened = [open_record(keys1, bytes(i.blob)) for i in first]
            rekeys = [r.change for r in opened if r.change is not None]
            assert len(rekeys) == 1 and rekeys[0].state.epoch == 2
            assert rekeys[0].next_stream != t.stream_id
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))


def test_two_admins_rekeying_at_once_converge(pristine: Path, tmp_path: Path) -> None:
    """Alpha makes bravo an admin; delta leaves; alpha and bravo both read
    the leave and rekey at the same moment. The stream's order decides: the
    first rekey is applied by every member, the second no longer follows
    the current state and is refused by all (its author is told and sent
    nothing pairwise); everyone ends in one epoch with one head, and talks."""
    m = copy_members(pristine, tmp_path, NAMES[:4])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c, d = (chs[n] for n in NAMES[:4])
            await a.group_create("talks", ["bravo", "charlie", "delta"])
            await pump(chs)
            bravo = b.identity.fingerprint.digest

            def promote(old: GroupState) -> tuple[GroupMember, ...]:
                return tuple(
                    GroupMember(fingerprint=x.fingerprint, admin=x.admin or x.fingerprint == bravo)
                    for x in old.members
                )

            await a.group_client._change("talks", promote)
            await pump(chs)
            assert b.group_show("talks").epoch == 1
            await d.group_leave("talks")
            # Both admins apply the leave (a plain read: no automatic rekey).
            for ch in (a, b):
                await ch.group_client.reader.sync(ch.group_client.row("talks").group_id)
                assert view_of(ch.group_client.row("talks")).quiet
            results = await asyncio.gather(
                a.group_rekey("talks"), b.group_rekey("talks"), return_exceptions=True
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert won and all(isinstance(e, GroupRejected) for e in lost), results
            three = {"alpha": a, "bravo": b, "charlie": c}
            await pump(three)
            epochs = {ch.group_show("talks").epoch for ch in three.values()}
            heads = {ch.group_show("talks").head for ch in three.values()}
            assert len(epochs) == 1 and len(heads) == 1 and epochs.pop() >= 3
            await c.send_group("talks", text=random_bytes(4).hex())
            await pump(three)
            assert len(shown(a, "talks")) == len(shown(b, "talks")) == 1
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))
