"""The group kinds of the local audit log (issue 17; docs/AUDIT.md, kinds
``group-message-sent``, ``group-message-received``, ``group-change``): their
records decoded strictly (hypothesis-fuzzed as the other entry records),
what a change is called, ``log show`` (plain and ``--json``, against the
schema) and ``log verify`` over them. The end-to-end tests (real relay,
members' homes) are tests/test_groups_audit.py."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan import wire
from securechan.audit.log import AuditLog
from securechan.audit.log_events import group_action
from securechan.audit.log_records import (
    GROUP_ACTIONS,
    KINDS,
    AuditEntry,
    GroupChangeEvent,
    GroupMessageEvent,
)
from securechan.cli import cli
from securechan.errors import MalformedInput
from securechan.identity import Identity
from securechan.protocol.group import (
    ZERO,
    GroupChange,
    GroupMember,
    GroupPayload,
    GroupState,
    SignedGroupPayload,
    stream_commitment,
)
from tests.cli_schema import validate
from tests.conftest import NOW, fixed_identity

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GID = bytes(range(32))


def _state(members: dict[bytes, bool], *, epoch: int = 0, name: str = "talks") -> GroupState:
    return GroupState(
        group_id=GID,
        epoch=epoch,
        name=name,
        members=tuple(GroupMember(fingerprint=f, admin=a) for f, a in sorted(members.items())),
        previous=ZERO if epoch == 0 else bytes([epoch]) * 32,
    )


def _signed(who: Identity, state: GroupState, seq: int) -> SignedGroupPayload:
    me = who.fingerprint.digest
    payload = GroupPayload(
        group_id=GID,
        state_hash=state.hash,
        sender=me,
        seq=seq,
        head=ZERO,
        commitment=bytes([seq]) * 32,
        sent_at=NOW,
    )
    return SignedGroupPayload.sign(who, payload)


def group_records(
    me: Identity, peer: Identity
) -> tuple[GroupChange, SignedGroupPayload, SignedGroupPayload]:
    """A creation by ``me`` (with ``peer``) and one message of each."""
    state = _state({me.fingerprint.digest: True, peer.fingerprint.digest: False})
    change = GroupChange.sign(me, state, next_stream=stream_commitment(bytes(32)), head=ZERO)
    return change, _signed(me, state, 1), _signed(peer, state, 1)


def _message(**kw: Any) -> GroupMessageEvent:
    base: dict[str, Any] = {
        "group": GID,
        "epoch": 2,
        "position": 5,
        "sender": b"\x11" * 32,
        "seq": 3,
        "payload_hash": b"\x22" * 32,
        "log_index": 41,
    }
    return GroupMessageEvent(**(base | kw))


def _change(**kw: Any) -> GroupChangeEvent:
    base: dict[str, Any] = {
        "group": GID,
        "epoch": 1,
        "position": 4,
        "author": b"\x11" * 32,
        "change_hash": b"\x33" * 32,
        "state_hash": b"\x44" * 32,
        "members": 4,
        "action": "add",
        "log_index": 40,
    }
    return GroupChangeEvent(**(base | kw))


# --- the records ------------------------------------------------------------------------


def test_kinds_are_registered_with_their_records() -> None:
    assert KINDS["group-message-sent"] is GroupMessageEvent
    assert KINDS["group-message-received"] is GroupMessageEvent
    assert KINDS["group-change"] is GroupChangeEvent
    assert GroupMessageEvent.wire_schema().type_id == 0x00CA
    assert GroupChangeEvent.wire_schema().type_id == 0x00CB
    # Fixed-size digests and numbers only: no name, no text a peer chose.
    for record in (GroupMessageEvent, GroupChangeEvent):
        for f in record.wire_schema().fields:
            assert f.kind is not wire.Kind.TEXT or f.name == "action", f


def test_round_trip_and_layout() -> None:
    m, c = _message(), _change()
    assert GroupMessageEvent.from_bytes(m.to_bytes()) == m
    assert GroupChangeEvent.from_bytes(c.to_bytes()) == c
    without = _message(log_index=None)
    assert GroupMessageEvent.from_bytes(without.to_bytes()) == without
    assert len(without.to_bytes()) == len(m.to_bytes()) - 13  # tag, length, 8 bytes
    # The documented layout (docs/AUDIT.md, Records): version, type, then tags 1..7.
    data = m.to_bytes()
    assert data[:3] == bytes.fromhex("0100ca")
    assert data[3:8] == bytes.fromhex("0100000020") and data[8:40] == GID
    entry = AuditEntry(index=3, time=NOW, kind="group-message-received", fields=m)
    assert AuditEntry.from_bytes(entry.to_bytes()) == entry


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: _message(position=0), "position"),
        (lambda: _message(seq=0), "sequence"),
        (lambda: _message(sender=b"\x11" * 31), "size|32"),
        (lambda: _message(payload_hash=b""), "size|32"),
        (lambda: _change(action="promote"), "action"),
        (lambda: _change(action="create"), "epoch 0"),
        (lambda: _change(epoch=0, action="add"), "epoch 0"),
        (lambda: _change(epoch=0, action="create", position=0), "welcomed"),
        (lambda: _change(members=0), "members"),
        (lambda: _change(members=21), "members"),
        (lambda: _change(state_hash=b"\x44" * 33), "size|32"),
    ],
)
def test_values_that_do_not_fit_are_refused(make: Any, why: str) -> None:
    with pytest.raises((ValueError, TypeError), match=why):
        make()


def test_strict_decoding() -> None:
    data = _change().to_bytes()
    for bad in (data + b"\x00", data[:-1], data[:3] + b"\x09" + data[4:]):
        with pytest.raises(MalformedInput):
            GroupChangeEvent.from_bytes(bad)
    # A message record under a change kind, and an action outside the list
    # written by hand (the encoder would refuse it).
    entry = AuditEntry(index=0, time=NOW, kind="group-message-sent", fields=_message())
    swapped = entry.to_bytes().replace(
        b"group-message-sent", b"group-change\x00\x00\x00\x00\x00\x00"
    )
    with pytest.raises(MalformedInput):
        AuditEntry.from_bytes(swapped)
    forged = data.replace(b"add", b"pop")
    with pytest.raises(MalformedInput, match="action"):
        GroupChangeEvent.from_bytes(forged)


@FUZZ
@given(
    epoch=st.integers(0, 2**64 - 1),
    position=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    log_index=st.none() | st.integers(0, 2**64 - 1),
    digests=st.lists(st.binary(min_size=30, max_size=34), min_size=3, max_size=3),
)
def test_message_fields_round_trip_or_are_refused(
    epoch: int, position: int, seq: int, log_index: int | None, digests: list[bytes]
) -> None:
    try:
        m = GroupMessageEvent(
            group=digests[0],
            epoch=epoch,
            position=position,
            sender=digests[1],
            seq=seq,
            payload_hash=digests[2],
            log_index=log_index,
        )
    except (ValueError, TypeError):
        assert position == 0 or seq == 0 or any(len(d) != 32 for d in digests)
        return
    assert GroupMessageEvent.from_bytes(m.to_bytes()) == m


@FUZZ
@given(
    epoch=st.integers(0, 3),
    position=st.integers(0, 3),
    members=st.integers(0, 25),
    action=st.sampled_from([*GROUP_ACTIONS, "", "Add", "join", "add\x1b[2J"]),
)
def test_change_fields_round_trip_or_are_refused(
    epoch: int, position: int, members: int, action: str
) -> None:
    try:
        c = _change(epoch=epoch, position=position, members=members, action=action)
    except (ValueError, TypeError):
        return
    assert action in GROUP_ACTIONS and 1 <= members <= 20
    assert (epoch == 0) == (action == "create") and not (epoch == 0 and position == 0)
    assert GroupChangeEvent.from_bytes(c.to_bytes()) == c


@FUZZ
@given(
    which=st.sampled_from(["message", "change"]),
    offset=st.integers(0, 400),
    xor=st.integers(1, 255),
    cut=st.integers(0, 400),
)
def test_mutated_records_parse_to_one_value_or_are_refused(
    which: str, offset: int, xor: int, cut: int
) -> None:
    """Every byte changed, and every cut, is refused or decodes to a value
    whose encoding is exactly the bytes given (no second reading)."""
    record: type[GroupMessageEvent | GroupChangeEvent]
    record, data = (
        (GroupMessageEvent, _message().to_bytes())
        if which == "message"
        else (GroupChangeEvent, _change().to_bytes())
    )
    mutated = bytearray(data)
    mutated[offset % len(data)] ^= xor
    for candidate in (bytes(mutated), data[: cut % len(data)]):
        try:
            value = record.from_bytes(candidate)
        except MalformedInput:
            continue
        assert value.to_bytes() == candidate


@FUZZ
@given(blob=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoders(blob: bytes) -> None:
    for record in (GroupMessageEvent, GroupChangeEvent):
        head = bytes.fromhex("0100ca" if record is GroupMessageEvent else "0100cb")
        with contextlib.suppress(MalformedInput):
            record.from_bytes(head + blob)


# --- what a change is called -------------------------------------------------------------


def test_group_action_names_every_kind_of_change() -> None:
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    old = _state({a: True, b: False}, epoch=1)
    assert group_action(None, old, a) == "create"
    assert group_action(old, _state({a: True, b: False, c: False}, epoch=2), a) == "add"
    assert group_action(old, _state({a: True}, epoch=2), a) == "remove"
    assert group_action(old, _state({a: True}, epoch=2), b) == "leave"
    assert group_action(old, _state({a: True, b: True}, epoch=2), a) == "admin"
    assert group_action(old, _state({a: True, b: False}, epoch=2, name="x"), a) == "rename"
    assert group_action(old, _state({a: True, b: False}, epoch=2), a) == "rekey"
    assert group_action(old, _state({a: True, c: False}, epoch=2), a) == "change"
    # An admin who leaves and renames on the way out did more than leave.
    assert group_action(old, _state({b: True}, epoch=2, name="y"), a) == "change"


# --- log show and log verify over group entries ------------------------------------------


Records = tuple[GroupChange, SignedGroupPayload, SignedGroupPayload]


def _log_with_group_entries(home: Path) -> tuple[Identity, Identity, Records]:
    """A creation and one message each way (the composite signatures are
    randomised: the records are returned)."""
    me, peer = fixed_identity("tehran"), fixed_identity("washington")
    change, signed, theirs = records = group_records(me, peer)
    with AuditLog.open(home, me, checkpoint_every=4) as log:
        log.group_change(change, None, position=1, log_index=7)
        log.group_message("group-message-sent", signed, epoch=0, position=2, log_index=8)
        log.group_message("group-message-received", theirs, epoch=0, position=3)
        log.checkpoint()
    return me, peer, records


def test_log_show_and_verify(tmp_path: Path) -> None:
    home = tmp_path / "home"
    me, peer, (change, _, theirs) = _log_with_group_entries(home)
    runner = CliRunner()
    shown = runner.invoke(cli, ["--home", str(home), "log", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(x) for x in shown.output.splitlines()]
    kinds = [x["kind"] for x in lines]
    assert kinds[:3] == ["group-change", "group-message-sent", "group-message-received"]
    for x in lines:
        validate(x, "LogEntry")
    assert lines[0]["fields"] == {
        "group": GID.hex(),
        "epoch": 0,
        "position": 1,
        "author": str(me.fingerprint),
        "action": "create",
        "members": 2,
        "change_hash": change.hash.hex(),
        "state_hash": change.state.hash.hex(),
        "log_index": 7,
    }
    assert lines[2]["fields"] == {
        "group": GID.hex(),
        "epoch": 0,
        "position": 3,
        "sender": str(peer.fingerprint),
        "seq": 1,
        "payload_hash": theirs.hash.hex(),
    }
    plain = runner.invoke(cli, ["--home", str(home), "log", "show"])
    assert plain.exit_code == 0
    assert (
        "group-message-received" in plain.output
        and f"payload_hash={theirs.hash.hex()}" in plain.output
    )
    assert all(ch == "\n" or ch.isprintable() for ch in plain.output)


def test_the_schema_refuses_a_group_entry_without_its_fields() -> None:
    line = {
        "index": 0,
        "time": "2026-09-21T14:13:20Z",
        "kind": "group-message-sent",
        "fields": {"group": GID.hex(), "epoch": 0},
    }
    with pytest.raises(AssertionError):
        validate(line, "LogEntry")
    line["kind"] = "group-change"
    with pytest.raises(AssertionError):
        validate(line, "LogEntry")


@pytest.mark.parametrize("how", ["byte", "remove", "reorder"])
def test_a_group_entry_edited_removed_or_reordered_fails_verify(tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    me, _, _ = _log_with_group_entries(home)
    key = tmp_path / "tehran.pub"
    key.write_text(me.public.to_text())
    runner = CliRunner()
    ok = runner.invoke(cli, ["--home", str(home), "log", "verify", "--key", str(key)])
    assert ok.exit_code == 0, ok.output
    db = sqlite3.connect(home / "audit.db")
    rows = db.execute("SELECT idx, kind, entry FROM entries ORDER BY idx").fetchall()
    assert [r[1] for r in rows[:3]] == [
        "group-change",
        "group-message-sent",
        "group-message-received",
    ]
    if how == "byte":
        blob = bytearray(rows[2][2])
        blob[-5] ^= 0x01  # inside the payload hash
        db.execute("UPDATE entries SET entry = ? WHERE idx = 2", (bytes(blob),))
    elif how == "remove":
        db.execute("DELETE FROM entries WHERE idx = 1")
    else:
        db.execute("UPDATE entries SET entry = ? WHERE idx = 1", (rows[2][2],))
        db.execute("UPDATE entries SET entry = ? WHERE idx = 2", (rows[1][2],))
    db.commit()
    db.close()
    bad = runner.invoke(cli, ["--home", str(home), "log", "verify", "--key", str(key)])
    assert bad.exit_code == 1, bad.output
    assert "entry 1" in bad.output or "entry 2" in bad.output, bad.output


def test_newest_reads_one_kind_back_to_a_time(tmp_path: Path) -> None:
    """``AuditLog.newest``: what the group reader looks a lost join entry up
    with (client/group_audit.py)."""
    me, peer = fixed_identity("tehran"), fixed_identity("washington")
    change, signed, _ = group_records(me, peer)
    with AuditLog.open(tmp_path / "home", me, checkpoint_every=3) as log:
        for at in (NOW, NOW + 5, NOW + 9):
            log.group_change(change, None, position=1, at=at)
            log.group_message("group-message-sent", signed, epoch=0, position=2, at=at)
        assert [e.time for e in log.newest("group-change", since=NOW + 5)] == [NOW + 9, NOW + 5]
        assert [e.time for e in log.newest("group-change", since=0)] == [NOW + 9, NOW + 5, NOW]
        assert log.newest("group-change", since=NOW + 10) == []
        assert all(e.kind == "group-change" for e in log.newest("group-change", since=0))
        with pytest.raises(ValueError, match="unknown"):
            log.newest("no-such-kind", since=0)


def test_group_statement_completes_group_message_ids(tmp_path: Path) -> None:
    """``group statement`` completes the ids of the group-message entries
    (newest first); ``statement export`` keeps completing direct ones only."""
    import click

    from securechan.cli.completion import complete_group_message_id, complete_message_id

    home = tmp_path / "home"
    _, peer, (_, signed, theirs) = _log_with_group_entries(home)
    with AuditLog.open(home) as log:
        log.message(
            "message-sent",
            conversation=bytes(16),
            seq=4,
            payload_hash=b"\x77" * 32,
            peer=peer.fingerprint,
        )
    ctx = click.Context(cli)
    ctx.params = {"home": str(home)}
    param = click.Argument(["message_id"])
    got = complete_group_message_id(ctx, param, "")
    assert [(i.value, i.help) for i in got] == [
        (theirs.hash.hex()[:16], "group received #1"),
        (signed.hash.hex()[:16], "group sent #1"),
    ]
    assert [i.value for i in complete_group_message_id(ctx, param, theirs.hash.hex()[:5])] == [
        theirs.hash.hex()[:16]
    ]
    assert [i.value for i in complete_message_id(ctx, param, "")] == ["77" * 8]
    ctx.params = {"home": str(tmp_path / "none")}
    assert complete_group_message_id(ctx, param, "") == []
