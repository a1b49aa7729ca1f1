"""Group events in every member's local audit log, end to end (issue 17,
Deliver 3; docs/AUDIT.md, kinds ``group-message-sent``,
``group-message-received``, ``group-change``): a real relay process on
127.0.0.1, real homes on disk, the library's Channel; the audit logs read
back from their files, checked with ``securechan log verify`` run as a
subprocess. Members act as the attacker would where a test says so.

Each test fails on the code before the group kinds (main at aa316a6): no
such entries were written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from securechan.audit.log import AuditLog
from securechan.audit.log_records import AuditEntry, GroupChangeEvent, GroupMessageEvent
from securechan.client.channel import Channel
from securechan.client.group_record import group_statement_bundle
from securechan.protocol.group import GroupState
from securechan.protocol.group_stream import GroupRecord
from securechan.protocol.payload import TextBody
from tests.cli_schema import validate
from tests.group_world import NAMES, Member, copy_members, make_pristine, mesh, pump, run
from tests.test_groups_client import _deliver, _post_as, _signed
from tests.test_relay_crash import running_relay

GROUP_KINDS = ("group-message-sent", "group-message-received", "group-change")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def _log(home: Path, kinds: tuple[str, ...] = GROUP_KINDS) -> list[AuditEntry]:
    with AuditLog.open(home, read_only=True) as log:
        return [e for e in log.entries() if e.kind in kinds]


def _messages(home: Path, kind: str) -> list[GroupMessageEvent]:
    out = [e.fields for e in _log(home, (kind,))]
    assert all(isinstance(f, GroupMessageEvent) for f in out)
    return out  # type: ignore[return-value]


def _changes(home: Path) -> list[GroupChangeEvent]:
    out = [e.fields for e in _log(home, ("group-change",))]
    assert all(isinstance(f, GroupChangeEvent) for f in out)
    return out  # type: ignore[return-value]


def _row(ch: Channel, record_hash: bytes) -> tuple[int, int, int]:
    """(epoch, position, log index) of a record in ``ch``'s transcript."""
    gid = ch.group_client.row("talks").group_id
    [t] = ch.db.transcript(gid, record_hash=record_hash, limit=1)
    return t.epoch, t.position, t.log_index


def _check_message(ch: Channel, f: GroupMessageEvent, sender: Channel, seq: int) -> None:
    """An entry's fields are the transcript row's (the same record hash)."""
    epoch, position, log_index = _row(ch, f.payload_hash)
    assert (f.epoch, f.position, f.log_index) == (epoch, position, log_index)
    assert (f.sender, f.seq) == (sender.identity.fingerprint.digest, seq)
    assert f.group == ch.group_client.row("talks").group_id


def _check_change(ch: Channel, f: GroupChangeEvent, author: Channel, action: str) -> None:
    gid = ch.group_client.row("talks").group_id
    [t] = ch.db.transcript(gid, record_hash=f.change_hash, limit=1)
    change = GroupRecord.from_bytes(t.record).change
    assert change is not None
    assert (f.group, f.action, f.author) == (gid, action, author.identity.fingerprint.digest)
    assert (f.epoch, f.state_hash, f.members) == (
        change.state.epoch,
        change.state.hash,
        len(change.state.members),
    )
    assert f.position == t.position and f.log_index == (t.log_index if t.log_index >= 0 else None)


def _hash(ch: Channel, entry_id: str) -> bytes:
    gid = ch.group_client.row("talks").group_id
    return next(
        t.record_hash
        for t in ch.group_client.reader.all_rows(gid)
        if t.record_hash.hex().startswith(entry_id)
    )


def _count(home: Path, record_hash: bytes) -> int:
    """Message entries of ``home`` for a record."""
    return sum(
        1
        for e in _log(home)
        if isinstance(e.fields, GroupMessageEvent) and e.fields.payload_hash == record_hash
    )


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securechan", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"NO_COLOR": "1"},
        check=False,
    )


def test_group_messages_are_audit_entries_on_every_member(pristine: Path, tmp_path: Path) -> None:
    """Sent and received entries with the transcript's fields; the payload
    hash is the one a statement of the message proves; a second receive
    pass adds nothing; an item the group's rules refuse is a rejection and
    no message entry; the logs verify, and a group entry edited in one byte
    makes ``log verify`` fail."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            s1 = await a.send_group("talks", text="opening statement")
            await pump(chs)
            s2 = await b.send_group("talks", text="bravo replies")
            await pump(chs)
            for n, ch in chs.items():
                home = m[n].home
                [create] = _changes(home)
                _check_change(ch, create, a, "create")
                assert (create.epoch, create.position, create.members) == (0, 1, 3)
                sent = _messages(home, "group-message-sent")
                got = _messages(home, "group-message-received")
                mine = {"alpha": [(s1, a)], "bravo": [(s2, b)], "charlie": []}[n]
                theirs = [(s, w) for s, w in ((s1, a), (s2, b)) if w is not ch]
                assert [f.payload_hash.hex()[:16] for f in sent] == [s.id for s, _ in mine], n
                assert [f.payload_hash.hex()[:16] for f in got] == [s.id for s, _ in theirs], n
                for f, (s, who) in zip(sent + got, mine + theirs, strict=True):
                    _check_message(ch, f, who, s.seq)
                    assert (f.position, f.log_index) == (s.position, s.log_index)
            # The hash a statement of the message proves (and its placement).
            _, verified, _ = await group_statement_bundle(c, s1.id)
            got = _messages(m["charlie"].home, "group-message-received")
            [f] = [g for g in got if g.payload_hash.hex()[:16] == s1.id]
            said = verified.statement().message
            assert said.message_id == f.payload_hash.hex()[:16]
            assert (said.epoch, said.position, said.log_index, said.seq) == (
                f.epoch,
                f.position,
                f.log_index,
                f.seq,
            )
            assert said.author is not None and said.author.fingerprint.digest == f.sender
            # A receive pass run again (twice) adds nothing.
            before = {n: len(_log(p.home)) for n, p in m.items()}
            await pump(chs)
            assert {n: len(_log(p.home)) for n, p in m.items()} == before
            # charlie, a hostile member, posts alpha's first message again
            # (a replay the rules refuse): a rejection at every member,
            # and still one entry for that message.
            gid = a.group_client.row("talks").group_id
            [t] = a.db.transcript(gid, record_hash=_hash(a, s1.id), limit=1)
            await _post_as(c, "talks", GroupRecord.from_bytes(t.record))
            rejected = {n: len(_log(p.home, ("rejected",))) for n, p in m.items()}
            counts = {n: _count(p.home, t.record_hash) for n, p in m.items()}
            assert set(counts.values()) == {1}
            await pump(chs)
            for n, p in m.items():
                assert len(_log(p.home, ("rejected",))) == rejected[n] + 1, n
                assert _count(p.home, t.record_hash) == 1, n
            # charlie's record whose content it never sends: accepted in the
            # stream (charlie's sent entry), received by no one (no entry).
            forged, _ = _signed(c, "talks", "never delivered")
            await _post_as(c, "talks", GroupRecord(message=forged))
            await pump(chs)
            assert _count(m["charlie"].home, forged.hash) == 1
            assert _count(m["alpha"].home, forged.hash) == _count(m["bravo"].home, forged.hash) == 0
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))
    # Every member's log verifies (the channels signed it when they closed);
    # log show --json gives each group entry in the documented schema.
    for p in m.values():
        ok = _cli(p.home, "log", "verify")
        assert ok.returncode == 0, ok.stderr
        lines = [json.loads(x) for x in _cli(p.home, "log", "show", "--json").stdout.splitlines()]
        assert {x["kind"] for x in lines} >= {"group-change", "group-message-received"}
        for x in lines:
            validate(x, "LogEntry")
    # One byte of charlie's received-message entry changed: log verify fails there.
    home = m["charlie"].home
    entry = _log(home, ("group-message-received",))[0]
    db = sqlite3.connect(home / "audit.db")
    (blob,) = db.execute("SELECT entry FROM entries WHERE idx = ?", (entry.index,)).fetchone()
    edited = bytearray(blob)
    edited[-3] ^= 0x01
    db.execute("UPDATE entries SET entry = ? WHERE idx = ?", (bytes(edited), entry.index))
    db.commit()
    db.close()
    bad = _cli(home, "log", "verify")
    assert bad.returncode == 1 and f"entry {entry.index}" in bad.stderr + bad.stdout, bad


def test_every_member_records_every_change(pristine: Path, tmp_path: Path) -> None:
    """Create, add (the joiner records the change it joined by, once),
    remove (the removed member too) and leave: a change entry on every
    member, with the state hash of the new member list."""
    m: dict[str, Member] = copy_members(pristine, tmp_path)

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c, d = (chs[n] for n in NAMES)
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            await a.group_add("talks", ["delta"])
            await pump(chs)
            await pump(chs)  # the joiner's entry is written once
            for n in NAMES:
                actions = [(f.action, f.epoch) for f in _changes(m[n].home)]
                want = [("add", 1)] if n == "delta" else [("create", 0), ("add", 1)]
                assert actions == want, n
            [joined] = _changes(m["delta"].home)
            [added] = _changes(m["alpha"].home)[1:]
            assert joined.position == 0 and added.position >= 1
            assert (joined.change_hash, joined.state_hash) == (added.change_hash, added.state_hash)
            for n in ("alpha", "bravo", "charlie"):
                _check_change(chs[n], _changes(m[n].home)[1], a, "add")
            await a.group_remove("talks", ["charlie"])
            await pump(chs)
            await b.group_leave("talks")
            await pump(chs)
            await pump(chs)  # alpha, the admin left, rekeys the leave's quiet epoch
            gid = a.group_client.row("talks").group_id
            final = GroupState.from_bytes(a.group_client.row("talks").state)
            for n in NAMES:
                actions = [f.action for f in _changes(m[n].home)]
                want = {
                    "alpha": ["create", "add", "remove", "leave", "rekey"],
                    "bravo": ["create", "add", "remove", "leave"],  # it reads no later epoch
                    "charlie": ["create", "add", "remove"],  # it reads no later epoch
                    "delta": ["add", "remove", "leave", "rekey"],
                }[n]
                assert actions == want, n
                assert all(f.group == gid for f in _changes(m[n].home))
            for n in ("alpha", "delta"):
                *_, left, rekeyed = _changes(m[n].home)
                assert (left.members, left.epoch) == (2, 3)
                assert left.author == b.identity.fingerprint.digest
                assert (rekeyed.state_hash, rekeyed.members, rekeyed.epoch) == (final.hash, 2, 4)
                assert rekeyed.author == a.identity.fingerprint.digest
            _check_change(c, _changes(m["charlie"].home)[-1], a, "remove")
            _check_change(d, _changes(m["delta"].home)[-2], b, "leave")
            _check_change(d, _changes(m["delta"].home)[-1], a, "rekey")
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))
    for p in m.values():
        ok = _cli(p.home, "log", "verify")
        assert ok.returncode == 0, ok.stderr


def test_content_after_its_record(pristine: Path, tmp_path: Path) -> None:
    """A record read before its content: no entry until the content comes;
    then ``group-message-received`` if it matches the commitment, or a
    ``group-equivocation`` rejection (as when the content comes first) and
    no message entry if the sender showed this member other content."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            gid = a.group_client.row("talks").group_id

            async def read_streams() -> None:
                for ch in chs.values():
                    await ch.group_client.reader.sync(gid)

            s1, honest = _signed(a, "talks", "first point")
            await _post_as(a, "talks", GroupRecord(message=s1))
            await read_streams()
            for n in ("bravo", "charlie"):
                assert _count(m[n].home, s1.hash) == 0, n  # content pending
            await _deliver(a, "bravo", s1, honest)
            await _deliver(a, "charlie", s1, honest)
            await pump(chs)
            for n, ch in (("bravo", b), ("charlie", c)):
                [f] = [g for g in _messages(m[n].home, "group-message-received")]
                assert f.payload_hash == s1.hash, n
                _check_message(ch, f, a, 1)
            # The same, but bravo is shown another content under the record.
            s2, honest = _signed(a, "talks", "second point")
            await _post_as(a, "talks", GroupRecord(message=s2))
            await read_streams()
            before = len(_log(m["bravo"].home, ("rejected",)))
            await _deliver(a, "charlie", s2, honest)
            await _deliver(a, "bravo", s2, TextBody(text="a different second point").to_bytes())
            await pump(chs)
            assert _count(m["charlie"].home, s2.hash) == 1
            assert _count(m["bravo"].home, s2.hash) == 0
            new = _log(m["bravo"].home, ("rejected",))[before:]
            assert [e.fields.reason for e in new] == ["group-equivocation"]  # type: ignore[union-attr]
            assert [h.status for h in b.group_history("talks") if h.seq == 2] == ["equivocation"]
            # alpha's own two records, accepted by the stream: sent entries.
            sent = _messages(m["alpha"].home, "group-message-sent")
            assert [f.payload_hash for f in sent] == [s1.hash, s2.hash]
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))
