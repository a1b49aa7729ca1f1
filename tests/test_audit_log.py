"""The local audit log (securechan.audit.log) on real files.

One real log is built per module: a fixed identity (public test data, see
conftest.fixed_identity), entries of every kind, automatic and on-demand
checkpoints, and a few entries after the last checkpoint. Every tampering test
works on a copy of its two files, changes the copy the way an attacker with
write access but no key would, and checks that ``verify`` names the first
entry where the log stops verifying. Hashes in the tampering helpers are
computed here with hashlib from the layout in docs/AUDIT.md, not with the
production code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.audit import log as log_module
from securechan.audit.log import AuditLog, VerifyReport
from securechan.audit.log_records import (
    INTERNAL_KINDS,
    KINDS,
    AuditEntry,
    LogCheckpoint,
    MessageEvent,
    PartyEvent,
    Rejection,
    clean_detail,
)
from securechan.cli import cli
from securechan.errors import (
    AuditLogBroken,
    MalformedInput,
    SecurechanError,
    StorageError,
)
from securechan.identity import Identity, Keystore
from securechan.identity.events import EventKind, SecurityEvent
from securechan.sqlite_schema import SCHEMA_ROOT
from tests.conftest import NOW, fixed_identity
from tests.ndjson import ndjson, one

CTX_ENTRY = b"securechan/v1/audit-entry"
CTX_CHECKPOINT = b"securechan/v1/audit-checkpoint"
ZERO = bytes(32)
EVERY = 8
CONV = bytes(range(16))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Clock:
    """A deterministic clock: one second per reading."""

    def __init__(self, start: int = NOW) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1
        return self.now


@dataclass
class Built:
    home: Path
    me: Identity
    entries: list[AuditEntry]
    checkpoints: list[int]


def _fill(log: AuditLog, me: Identity, peer: Identity, clock: Clock, rounds: int = 4) -> None:
    """Entries of every appendable kind, via the typed helpers and record()."""
    for kind in EventKind:
        log.record(
            SecurityEvent(
                at=clock(),
                kind=kind,
                name="tehran" if kind.value.startswith("identity") else "washington",
                fingerprint=str(me.fingerprint if "identity" in kind.value else peer.fingerprint),
                old_fingerprint=str(me.fingerprint) if "key-change" in kind.value else None,
            )
        )
    log.session_started(conversation=CONV, peer=peer.fingerprint, role="initiator")
    log.prekeys_rotated(relay="https://relay.example:8470", count=20)
    for i in range(rounds):
        log.message(
            "message-sent",
            conversation=CONV,
            seq=i + 1,
            payload_hash=bytes([i + 1]) * 32,
            peer=peer.fingerprint,
        )
        log.message(
            "message-received",
            conversation=CONV,
            seq=i + 1,
            payload_hash=bytes([i + 101]) * 32,
            peer=peer.fingerprint,
        )
    log.rejected("Replay", "message 3 was already processed", conversation=CONV)
    log.checkpoint_seen(origin="relay.example/log", size=42, root_hash=_sha256(b"root"))
    _fill_group(log, me, peer)


def _fill_group(log: AuditLog, me: Identity, peer: Identity) -> None:
    """The group kinds (docs/AUDIT.md): a creation, a message each way."""
    from tests.test_audit_group_entries import group_records

    change, signed, theirs = group_records(me, peer)
    log.group_change(change, None, position=1, log_index=7)
    log.group_message("group-message-sent", signed, epoch=0, position=2, log_index=8)
    log.group_message("group-message-received", theirs, epoch=0, position=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    home = tmp_path_factory.mktemp("built") / "home"
    me, peer = fixed_identity("tehran"), fixed_identity("washington")
    clock = Clock()
    with AuditLog.open(home, me, clock=clock, checkpoint_every=EVERY) as log:
        _fill(log, me, peer, clock)
        log.checkpoint()  # on demand, in the middle of a stretch
        log.message(
            "message-sent", conversation=CONV, seq=9, payload_hash=ZERO, peer=peer.fingerprint
        )
        log.message(
            "message-sent", conversation=CONV, seq=10, payload_hash=ZERO, peer=peer.fingerprint
        )
        entries = list(log.entries())
    checkpoints = [e.index for e in entries if e.kind == "log-checkpoint"]
    return Built(home=home, me=me, entries=entries, checkpoints=checkpoints)


@pytest.fixture
def copy(built: Built, tmp_path: Path) -> Path:
    """A copy of the built log's files (the log is closed: no -wal left)."""
    home = tmp_path / "copy"
    home.mkdir()
    for name in ("audit.db", "audit.head"):
        shutil.copy2(built.home / name, home / name)
    return home


def _tamper(home: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    db = sqlite3.connect(home / "audit.db")
    try:
        change(db)
        db.commit()
    finally:
        db.close()


def _rechain(db: sqlite3.Connection, start: int) -> None:
    """Recompute the stored hashes from ``start`` on, as an attacker can."""
    prev = ZERO
    if start > 0:
        (prev,) = db.execute("SELECT hash FROM entries WHERE idx = ?", (start - 1,)).fetchone()
    rows = db.execute(
        "SELECT idx, entry FROM entries WHERE idx >= ? ORDER BY idx", (start,)
    ).fetchall()
    for idx, blob in rows:
        prev = _sha256(CTX_ENTRY + prev + blob)
        db.execute("UPDATE entries SET hash = ? WHERE idx = ?", (prev, idx))


def _blob(db: sqlite3.Connection, idx: int) -> bytes:
    (blob,) = db.execute("SELECT entry FROM entries WHERE idx = ?", (idx,)).fetchone()
    assert isinstance(blob, bytes)
    return blob


def _put(db: sqlite3.Connection, entry: AuditEntry) -> None:
    db.execute(
        "UPDATE entries SET kind = ?, entry = ? WHERE idx = ?",
        (entry.kind, entry.to_bytes(), entry.index),
    )


def _broken(home: Path, who: Identity) -> AuditLogBroken:
    with AuditLog.open(home, read_only=True) as log, pytest.raises(AuditLogBroken) as info:
        log.verify(who.public)
    return info.value


def _report(home: Path, who: Identity) -> VerifyReport:
    with AuditLog.open(home, read_only=True) as log:
        return log.verify(who.public)


def _message_index(built: Built, before: int) -> int:
    return max(e.index for e in built.entries if e.kind == "message-sent" and e.index < before)


# --- the intact log ------------------------------------------------------------------


def test_every_kind_is_in_the_log(built: Built) -> None:
    assert {e.kind for e in built.entries} == set(KINDS)


def test_verify_passes_and_reports(built: Built) -> None:
    report = _report(built.home, built.me)
    n = len(built.entries)
    last = built.checkpoints[-1]
    assert report == VerifyReport(
        entries=n,
        checkpoints=len(built.checkpoints),
        last_checkpoint=last,
        unsigned=n - last - 1,
        head_checkpoint=last,
        signers=(built.me.fingerprint,),
    )
    assert report.unsigned == 2
    assert len(built.checkpoints) >= 3


def test_automatic_checkpoints_every_n_entries(built: Built) -> None:
    # A log-signer entry introduces the key once, then a checkpoint follows
    # every EVERY entries; the last one was asked for on demand.
    first = built.checkpoints[0]
    assert built.entries[first - 1].kind == "log-signer"
    assert first == EVERY + 1
    for a, b in zip(built.checkpoints, built.checkpoints[1:-1], strict=False):
        assert b - a == EVERY + 1
    kinds = [e.kind for e in built.entries]
    assert kinds.count("log-signer") == 1


def test_hash_chain_and_signatures_follow_the_spec(built: Built) -> None:
    """Recompute from the documented layout with hashlib alone."""
    db = sqlite3.connect(f"{(built.home / 'audit.db').resolve().as_uri()}?mode=ro", uri=True)
    rows = db.execute("SELECT idx, kind, entry, hash FROM entries ORDER BY idx").fetchall()
    db.close()
    prev = ZERO
    for (idx, kind, blob, digest), entry in zip(rows, built.entries, strict=True):
        assert (idx, kind) == (entry.index, entry.kind)
        assert blob == entry.to_bytes()
        prev = _sha256(CTX_ENTRY + prev + blob)
        assert digest == prev
        if isinstance(entry.fields, LogCheckpoint):
            cp = entry.fields
            assert cp.count == idx
            assert cp.head == rows[idx - 1][3]
            assert cp.signer == built.me.fingerprint.digest
            built.me.public.verify(cp.signature, cp.body_bytes(), context=CTX_CHECKPOINT)
    last = built.entries[built.checkpoints[-1]].fields
    assert isinstance(last, LogCheckpoint)
    assert (built.home / "audit.head").read_bytes() == last.to_bytes()


def test_documented_example() -> None:
    """The worked example of docs/AUDIT.md, byte for byte."""
    me = fixed_identity("tehran")
    entry = AuditEntry(
        index=0,
        time=NOW,
        kind="identity-created",
        fields=PartyEvent(name="tehran", fingerprint=me.fingerprint.digest),
    )
    blob = entry.to_bytes()
    assert blob.hex() == (
        "0100c0"
        "01000000080000000000000000"
        "0200000008000000006ab13b80"
        "0300000010" + b"identity-created".hex() + "0400000033"
        "0100c1"
        "010000000674656872616e"
        "0200000020d126ffa5ca5e8af507dc7e4d53c8d3cbd8e93e10d7263193eb7c036f45fc467f"
    )
    assert _sha256(CTX_ENTRY + ZERO + blob).hex() == (
        "d8fca0b472870da4faaabbec03f2939b87e2486e4b74f7d36cbb3ae4b092fa12"
    )
    with tempfile.TemporaryDirectory() as tmp, AuditLog.open(tmp) as log:
        log.record(
            SecurityEvent(
                at=NOW,
                kind=EventKind.IDENTITY_CREATED,
                name="tehran",
                fingerprint=str(me.fingerprint),
            )
        )
        assert list(log.entries()) == [entry]


def test_entries_since(built: Built) -> None:
    with AuditLog.open(built.home, read_only=True) as log:
        assert list(log.entries(since=5)) == built.entries[5:]
        assert list(log.entries(since=10_000)) == []
        with pytest.raises(ValueError, match="since"):
            list(log.entries(since=-1))


def test_files_modes_and_pragmas(built: Built, tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    with AuditLog.open(home) as log:
        log.rejected("Replay", "again")
        db = log._db
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA secure_delete").fetchone() == (1,)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        for p in home.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_no_secret_and_no_plaintext_in_the_files(built: Built) -> None:
    data = (built.home / "audit.db").read_bytes() + (built.home / "audit.head").read_bytes()
    ed_seed, mldsa_seed = built.me._key.seed_bytes_secret()
    for secret in (ed_seed, mldsa_seed, built.me.storage_key()):
        assert secret not in data
    # The API takes no plaintext at all: only ids, hashes, names and keys.
    for kind, record_type in KINDS.items():
        names = set(record_type.__dataclass_fields__)
        assert not names & {"text", "body", "plaintext", "content", "data"}, kind


def test_read_only_use_changes_nothing(built: Built, copy: Path) -> None:
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    _report(copy, built.me)
    with AuditLog.open(copy, read_only=True) as log:
        list(log.entries())
    after = {p.name: p.read_bytes() for p in copy.iterdir() if p.name in before}
    assert after == before


def test_two_writers_interleave(tmp_path: Path) -> None:
    me, peer = fixed_identity("tehran"), fixed_identity("washington")
    home = tmp_path / "home"
    with (
        AuditLog.open(home, me, checkpoint_every=3) as a,
        AuditLog.open(home, checkpoint_every=3) as b,
    ):
        for i in range(7):
            (a if i % 2 else b).message(
                "message-sent",
                conversation=CONV,
                seq=i + 1,
                payload_hash=ZERO,
                peer=peer.fingerprint,
            )
        a.checkpoint()
    report = _report(home, me)
    assert report.entries == 7 + report.checkpoints + 1  # + one log-signer
    assert report.unsigned == 0


def test_open_with_identity_writes_the_due_checkpoint(tmp_path: Path) -> None:
    """Entries appended without the identity get signed at the next open with it."""
    me = fixed_identity("tehran")
    home = tmp_path / "home"
    with AuditLog.open(home, checkpoint_every=4) as log:
        for _ in range(5):
            log.rejected("UnknownSender", "refused")
    assert _report(home, me).last_checkpoint is None
    with AuditLog.open(home, me, checkpoint_every=4):
        pass
    report = _report(home, me)
    assert (report.last_checkpoint, report.unsigned, report.head_checkpoint) == (6, 0, 6)


def test_checkpoint_of_a_signed_log_writes_nothing(tmp_path: Path) -> None:
    me = fixed_identity("tehran")
    with AuditLog.open(tmp_path / "h", me) as log:
        log.rejected("Replay", "again")
        first = log.checkpoint()
        assert log.checkpoint() == first
        assert [e.kind for e in log.entries()] == ["rejected", "log-signer", "log-checkpoint"]


def test_checkpoint_needs_the_identity(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "h") as log, pytest.raises(ValueError, match="identity"):
        log.checkpoint()


def test_identity_replacement_hands_over(built: Built, copy: Path) -> None:
    new = fixed_identity("tehran-2")
    with AuditLog.open(copy, new) as log:
        log.record(
            SecurityEvent(
                at=NOW,
                kind=EventKind.IDENTITY_REPLACED,
                name="tehran-2",
                fingerprint=str(new.fingerprint),
            )
        )
        log.checkpoint()
        tail = list(log.entries(since=len(built.entries)))
    assert [e.kind for e in tail] == [
        "log-signer",
        "log-checkpoint",
        "identity-replaced",
        "log-checkpoint",
    ]
    report = _report(copy, new)
    assert report.signers == (built.me.fingerprint, new.fingerprint)
    # The old key no longer vouches for the end of the log.
    assert "signed by" in _broken(copy, built.me).reason


def test_stale_head_after_a_crash_is_accepted_and_repaired(built: Built, copy: Path) -> None:
    """A crash between the commit and the head write leaves audit.head older."""
    older = built.entries[built.checkpoints[-2]].fields
    assert isinstance(older, LogCheckpoint)
    (copy / "audit.head").write_bytes(older.to_bytes())
    assert _report(copy, built.me).head_checkpoint == built.checkpoints[-2]
    with AuditLog.open(copy, built.me):
        pass
    assert _report(copy, built.me).head_checkpoint == built.checkpoints[-1]


# --- tampering: each caught at the first bad entry ---------------------------------------


def test_edit_a_field_byte(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])

    def edit(db: sqlite3.Connection) -> None:
        blob = bytearray(_blob(db, i))
        fields = built.entries[i].fields
        assert isinstance(fields, MessageEvent)
        blob[blob.index(fields.payload_hash)] ^= 0x01
        db.execute("UPDATE entries SET entry = ? WHERE idx = ?", (bytes(blob), i))

    _tamper(copy, edit)
    err = _broken(copy, built.me)
    assert err.index == i
    assert "chain" in err.reason
    assert str(err).startswith(f"the audit log is broken at entry {i}: ")


def test_edit_with_its_hash_recomputed_breaks_the_next_link(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])

    def edit(db: sqlite3.Connection) -> None:
        entry = built.entries[i]
        assert isinstance(entry.fields, MessageEvent)
        _put(db, replace(entry, fields=replace(entry.fields, seq=999)))
        prev = db.execute("SELECT hash FROM entries WHERE idx = ?", (i - 1,)).fetchone()[0]
        db.execute(
            "UPDATE entries SET hash = ? WHERE idx = ?",
            (_sha256(CTX_ENTRY + prev + _blob(db, i)), i),
        )

    _tamper(copy, edit)
    assert _broken(copy, built.me).index == i + 1


def test_edit_with_the_whole_chain_recomputed_is_caught_by_the_checkpoint(
    built: Built, copy: Path
) -> None:
    cp = built.checkpoints[1]
    i = _message_index(built, cp)
    assert i > built.checkpoints[0]

    def edit(db: sqlite3.Connection) -> None:
        entry = built.entries[i]
        assert isinstance(entry.fields, MessageEvent)
        _put(db, replace(entry, fields=replace(entry.fields, payload_hash=b"\xee" * 32)))
        _rechain(db, i)

    _tamper(copy, edit)
    err = _broken(copy, built.me)
    assert err.index == cp
    assert f"after entry {built.checkpoints[0]}" in err.reason


def test_delete_a_row(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])
    _tamper(copy, lambda db: db.execute("DELETE FROM entries WHERE idx = ?", (i,)))
    err = _broken(copy, built.me)
    assert (err.index, "missing" in err.reason) == (i, True)


def test_delete_a_row_and_renumber(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])

    def delete(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM entries WHERE idx = ?", (i,))
        db.execute("UPDATE entries SET idx = idx - 1 WHERE idx > ?", (i,))

    _tamper(copy, delete)
    assert _broken(copy, built.me).index == i


def _forge_insert(built: Built, db: sqlite3.Connection, i: int, reencode: bool) -> None:
    """Insert a forged message at ``i`` with a correct hash; shift the rest."""
    for (idx,) in db.execute(
        "SELECT idx FROM entries WHERE idx >= ? ORDER BY idx DESC", (i,)
    ).fetchall():
        db.execute("UPDATE entries SET idx = ? WHERE idx = ?", (idx + 1, idx))
    forged = AuditEntry(
        index=i,
        time=NOW,
        kind="message-received",
        fields=MessageEvent(conversation=CONV, seq=77, payload_hash=b"\xf0" * 32, peer=ZERO),
    )
    db.execute(
        "INSERT INTO entries (idx, kind, entry, hash) VALUES (?, ?, ?, ?)",
        (i, forged.kind, forged.to_bytes(), ZERO),
    )
    if reencode:
        for e in built.entries[i:]:
            _put(db, replace(e, index=e.index + 1))
    _rechain(db, i)


def test_insert_a_forged_row(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])
    _tamper(copy, lambda db: _forge_insert(built, db, i, reencode=False))
    err = _broken(copy, built.me)
    assert err.index == i + 1
    assert "moved" in err.reason


def test_insert_a_forged_row_and_reencode_the_rest(built: Built, copy: Path) -> None:
    cp = built.checkpoints[1]
    i = _message_index(built, cp)
    _tamper(copy, lambda db: _forge_insert(built, db, i, reencode=True))
    err = _broken(copy, built.me)
    assert err.index == cp + 1  # the checkpoint, now one place later
    assert "checkpoint" in err.reason


def test_swap_two_rows(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])
    j = i - 1

    def swap(db: sqlite3.Connection) -> None:
        a = db.execute("SELECT kind, entry, hash FROM entries WHERE idx = ?", (i,)).fetchone()
        b = db.execute("SELECT kind, entry, hash FROM entries WHERE idx = ?", (j,)).fetchone()
        db.execute("UPDATE entries SET kind = ?, entry = ?, hash = ? WHERE idx = ?", (*a, j))
        db.execute("UPDATE entries SET kind = ?, entry = ?, hash = ? WHERE idx = ?", (*b, i))

    _tamper(copy, swap)
    assert _broken(copy, built.me).index == j


def test_swap_two_entries_reencoded_is_caught_by_the_checkpoint(built: Built, copy: Path) -> None:
    cp = built.checkpoints[1]
    i = _message_index(built, cp)
    j = i - 1

    def swap(db: sqlite3.Connection) -> None:
        _put(db, replace(built.entries[i], index=j))
        _put(db, replace(built.entries[j], index=i))
        _rechain(db, j)

    _tamper(copy, swap)
    assert _broken(copy, built.me).index == cp


def test_truncate_past_the_last_checkpoint(built: Built, copy: Path) -> None:
    last = built.checkpoints[-1]
    _tamper(copy, lambda db: db.execute("DELETE FROM entries WHERE idx >= ?", (last,)))
    err = _broken(copy, built.me)
    assert err.index == last
    assert "audit.head" in err.reason
    # A writer refuses to continue on it, so audit.head keeps the evidence.
    head = (copy / "audit.head").read_bytes()
    with pytest.raises(AuditLogBroken):
        AuditLog.open(copy, built.me)
    assert (copy / "audit.head").read_bytes() == head


def test_truncate_and_delete_audit_head(built: Built, copy: Path) -> None:
    last = built.checkpoints[-1]
    _tamper(copy, lambda db: db.execute("DELETE FROM entries WHERE idx >= ?", (last,)))
    (copy / "audit.head").unlink()
    err = _broken(copy, built.me)
    assert (err.index, "audit.head is missing" in err.reason) == (None, True)


def test_delete_the_database_but_not_the_head(built: Built, copy: Path) -> None:
    (copy / "audit.db").unlink()
    with pytest.raises(AuditLogBroken) as info:
        AuditLog.open(copy, read_only=True)
    assert info.value.index == 0
    with pytest.raises(AuditLogBroken):
        AuditLog.open(copy, built.me)
    assert not (copy / "audit.db").exists()


def test_replace_a_checkpoint_signature(built: Built, copy: Path) -> None:
    cp_index = built.checkpoints[1]
    impostor = fixed_identity("impostor")

    def resign(db: sqlite3.Connection) -> None:
        entry = built.entries[cp_index]
        cp = entry.fields
        assert isinstance(cp, LogCheckpoint)
        forged = impostor.sign(cp.body_bytes(), context=CTX_CHECKPOINT)
        _put(db, replace(entry, fields=replace(cp, signature=forged)))
        _rechain(db, cp_index)

    _tamper(copy, resign)
    err = _broken(copy, built.me)
    assert (err.index, "signature" in err.reason) == (cp_index, True)


def test_replace_a_checkpoint_signature_without_rehashing(built: Built, copy: Path) -> None:
    cp_index = built.checkpoints[0]

    def flip(db: sqlite3.Connection) -> None:
        blob = bytearray(_blob(db, cp_index))
        blob[-10] ^= 0x80  # inside the Ed25519 half of the signature
        db.execute("UPDATE entries SET entry = ? WHERE idx = ?", (bytes(blob), cp_index))

    _tamper(copy, flip)
    assert _broken(copy, built.me).index == cp_index


def test_kind_column_must_match_the_entry(built: Built, copy: Path) -> None:
    i = _message_index(built, built.checkpoints[1])
    _tamper(copy, lambda db: db.execute("UPDATE entries SET kind = 'rejected' WHERE idx = ?", (i,)))
    assert _broken(copy, built.me).index == i


def test_a_log_rewritten_under_another_key_is_refused(built: Built, tmp_path: Path) -> None:
    """Someone who can write the files re-creates the whole log with their key."""
    impostor = fixed_identity("tehran-impostor")
    home = tmp_path / "forged"
    with AuditLog.open(home, impostor, checkpoint_every=EVERY) as log:
        _fill(log, impostor, fixed_identity("washington"), Clock())
        log.checkpoint()
    err = _broken(home, built.me)
    assert err.index is None
    assert "audit.head is signed by" in err.reason
    (home / "audit.head").unlink()
    err = _broken(home, built.me)  # without the head: the last checkpoint's signer
    assert "the last signed checkpoint is by" in err.reason
    assert err.index is not None


def test_a_damaged_head_file(built: Built, copy: Path) -> None:
    raw = bytearray((copy / "audit.head").read_bytes())
    raw[-1] ^= 0x01
    (copy / "audit.head").write_bytes(bytes(raw))
    assert _broken(copy, built.me).index is None
    (copy / "audit.head").write_bytes(b"\x01\x00\xc9")
    assert "damaged" in _broken(copy, built.me).reason


def test_verify_against_the_wrong_identity(built: Built) -> None:
    assert _broken(built.home, fixed_identity("washington")).index is None


# --- limits, shown honestly (docs/AUDIT.md "What it does not prove") --------------------


def test_limit_the_unsigned_tail_can_be_cut(built: Built, copy: Path) -> None:
    last = built.checkpoints[-1]
    _tamper(copy, lambda db: db.execute("DELETE FROM entries WHERE idx > ?", (last,)))
    assert _report(copy, built.me).unsigned == 0  # passes: nothing signed those two


def test_limit_old_head_and_matching_truncation(built: Built, copy: Path) -> None:
    """An attacker who kept an old audit.head can cut the log back to it."""
    older_index = built.checkpoints[-2]
    older = built.entries[older_index].fields
    assert isinstance(older, LogCheckpoint)
    _tamper(copy, lambda db: db.execute("DELETE FROM entries WHERE idx > ?", (older_index,)))
    (copy / "audit.head").write_bytes(older.to_bytes())
    assert _report(copy, built.me).last_checkpoint == older_index


def test_limit_everything_deleted(built: Built, copy: Path) -> None:
    for p in copy.iterdir():
        p.unlink()
    with pytest.raises(StorageError, match="no audit log"):
        AuditLog.open(copy, read_only=True)


# --- schema and strict parsing -----------------------------------------------------------


def test_newer_schema_is_refused(built: Built, copy: Path) -> None:
    _tamper(copy, lambda db: db.execute("PRAGMA user_version = 2"))
    with pytest.raises(StorageError, match="newer"):
        AuditLog.open(copy, read_only=True)
    with pytest.raises(StorageError, match="newer"):
        AuditLog.open(copy)


def test_upgrade_path(
    built: Built, copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schemas = tmp_path / "schema"
    schemas.mkdir()
    v1 = (SCHEMA_ROOT / "audit" / "v1.sql").read_text()
    (schemas / "v2.sql").write_text(v1 + "CREATE TABLE notes (id INTEGER PRIMARY KEY);\n")
    (schemas / "upgrade-to-v2.sql").write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY);\n")
    monkeypatch.setattr(
        log_module, "SCHEMA", dataclasses.replace(log_module.SCHEMA, folder=schemas)
    )
    with pytest.raises(StorageError, match="upgrades it"):
        AuditLog.open(copy, read_only=True)
    AuditLog.open(copy).close()
    db = sqlite3.connect(copy / "audit.db")
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()
    assert _report(copy, built.me).entries == len(built.entries)


def test_entry_parsing_is_strict(built: Built) -> None:
    entry = built.entries[3]
    blob = entry.to_bytes()
    assert AuditEntry.from_bytes(blob) == entry
    with pytest.raises(MalformedInput):
        AuditEntry.from_bytes(blob + b"\x00")
    with pytest.raises(MalformedInput):
        AuditEntry.from_bytes(blob[:-1])
    unknown = blob.replace(entry.kind.encode(), b"x" * len(entry.kind), 1)
    with pytest.raises(MalformedInput, match="kind"):
        AuditEntry.from_bytes(unknown)
    msg = next(e for e in built.entries if e.kind == "message-sent")
    as_received = msg.to_bytes().replace(b"message-sent", b"rejected\x00\x00\x00\x00", 1)
    with pytest.raises(MalformedInput):
        AuditEntry.from_bytes(as_received)
    with pytest.raises(TypeError):
        AuditEntry(index=0, time=0, kind="rejected", fields=msg.fields)


def test_append_refuses_misuse(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "h") as log:
        for kind in INTERNAL_KINDS | {"no-such-kind"}:
            with pytest.raises(ValueError, match="kind"):
                log.append(kind)
        with pytest.raises(TypeError, match="plaintext"):
            log.append("rejected", reason="Replay", detail="x", plaintext="secret")
        with pytest.raises(TypeError):
            log.append("message-sent", conversation=CONV, seq="1", payload_hash=ZERO, peer=ZERO)
        with pytest.raises(ValueError, match="role"):
            log.session_started(conversation=CONV, peer=fixed_identity("a").fingerprint, role="x")
        with pytest.raises(ValueError, match="a reason is a code"):
            log.rejected("not a class name", "x")
        with pytest.raises(ValueError, match="control"):
            log.append("rejected", reason="Replay", detail="\x1b[2J")
        entry = log.append("rejected", reason="Replay", detail="ok", at=NOW)
        assert list(log.entries()) == [entry]


def test_rejection_detail_is_made_safe(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "h") as log:
        entry = log.rejected("FileCorrupt", "file 'a\x1b]0;owned\x07.txt'\n" + "y" * 900)
    fields = entry.fields
    assert isinstance(fields, Rejection)
    assert fields.detail.startswith("file 'a ]0;owned .txt' ")
    assert len(fields.detail) == 500 and fields.detail.endswith("\u2026")


@settings(max_examples=300, deadline=None)
@given(detail=st.text(max_size=1200))
def test_any_detail_can_be_recorded(detail: str) -> None:
    """A rejection's message comes from anywhere: it must never stop the record."""
    fields = Rejection(reason="MessageRejected", detail=clean_detail(detail))
    assert Rejection.from_bytes(fields.to_bytes()) == fields
    assert len(fields.detail) <= 500


def test_record_maps_every_event_kind(tmp_path: Path) -> None:
    me = fixed_identity("tehran")
    with AuditLog.open(tmp_path / "h") as log:
        for kind in EventKind:
            log.record(
                SecurityEvent(at=NOW, kind=kind, name="tehran", fingerprint=str(me.fingerprint))
            )
        assert [e.kind for e in log.entries()] == [k.value for k in EventKind]
        assert all(e.time == NOW for e in log.entries())


# --- the command line ------------------------------------------------------------------

PW = "alpha's long test passphrase"


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home made by 'securechan init', a contact added, then signed."""
    base = tmp_path_factory.mktemp("cli")
    home = base / "home"
    env = {"SECURECHAN_HOME": str(home), "SECURECHAN_PASSPHRASE": PW}
    ok(_cli("--home", home, "init", "--name", "tehran", "--kdf", "interactive", env=env))
    peer_file = base / "washington.pub"
    peer_file.write_text(fixed_identity("washington").public.to_text())
    ok(_cli("--home", home, "contact", "add", peer_file))
    me = Keystore(home).unlock(PW)
    with AuditLog.open(home, me) as log:
        log.checkpoint()
    return home


def _cli(*args: object, env: dict[str, str] | None = None) -> Result:
    full = {"SECURECHAN_HOME": None, "SECURECHAN_PASSPHRASE": None, **(env or {})}
    result = CliRunner().invoke(cli, [str(a) for a in args], env=full)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the CLI raised {result.exception!r}") from result.exception
    return result


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def failed(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("securechan: "), result.stderr
    return lines[0]


def _cli_copy(cli_home: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(cli_home, home)
    return home


def test_cli_log_show(cli_home: Path) -> None:
    out = ok(_cli("--home", cli_home, "log", "show")).stdout.splitlines()
    # init signs a checkpoint at once (so 'log verify' holds right after it).
    assert [line.split()[2] for line in out] == [
        "identity-created",
        "log-signer",
        "log-checkpoint",
        "contact-added",
        "log-checkpoint",
    ]
    assert "name=washington" in out[3]
    rows = ndjson(ok(_cli("--home", cli_home, "log", "show", "--json")).stdout)
    assert rows[3]["kind"] == "contact-added"
    assert rows[3]["fields"]["fingerprint"] == str(fixed_identity("washington").fingerprint)
    assert rows[0]["time"].endswith("Z")
    since = ndjson(ok(_cli("--home", cli_home, "log", "show", "--since", 3, "--json")).stdout)
    assert [r["index"] for r in since] == [3, 4]


def test_cli_log_verify(cli_home: Path) -> None:
    result = ok(_cli("--home", cli_home, "log", "verify"))
    assert result.stdout == "log intact: 5 entries, last signed checkpoint at 4\n"
    data = one(ok(_cli("--home", cli_home, "log", "verify", "--json")).stdout)
    assert (data["intact"], data["entries"], data["last_checkpoint"]) == (True, 5, 4)


def test_cli_log_verify_catches_an_edit(cli_home: Path, tmp_path: Path) -> None:
    home = _cli_copy(cli_home, tmp_path)

    def edit(db: sqlite3.Connection) -> None:
        blob = bytearray(_blob(db, 3))
        blob[blob.index(b"washington")] ^= 0x20  # "Washington"
        db.execute("UPDATE entries SET entry = ? WHERE idx = 3", (bytes(blob),))

    _tamper(home, edit)
    line = failed(_cli("--home", home, "log", "verify"), 1)
    assert line.startswith("securechan: the audit log is broken at entry 3: ")
    failed(_cli("--home", home, "log", "verify", "--json"), 1)


def test_cli_log_verify_catches_truncation(cli_home: Path, tmp_path: Path) -> None:
    home = _cli_copy(cli_home, tmp_path)
    _tamper(home, lambda db: db.execute("DELETE FROM entries WHERE idx >= 4"))
    line = failed(_cli("--home", home, "log", "verify"), 1)
    assert "at entry 4" in line and "cut short" in line


def test_cli_log_verify_with_another_key(cli_home: Path, tmp_path: Path) -> None:
    key = tmp_path / "other.pub"
    key.write_text(fixed_identity("washington").public.to_text())
    failed(_cli("--home", cli_home, "log", "verify", "--key", key), 1)


def test_cli_no_log(tmp_path: Path) -> None:
    failed(_cli("--home", tmp_path, "log", "show"), 2)
    key = tmp_path / "k.pub"
    key.write_text(fixed_identity("tehran").public.to_text())
    assert "no audit log" in failed(_cli("--home", tmp_path, "log", "verify", "--key", key), 2)


def test_cli_records_contact_events(cli_home: Path, tmp_path: Path) -> None:
    """_App.keystore passes the audit log as the identity layer's event sink."""
    home = _cli_copy(cli_home, tmp_path)
    ok(_cli("--home", home, "contact", "remove", "washington"))
    rows = ndjson(ok(_cli("--home", home, "log", "show", "--since", 5, "--json")).stdout)
    assert [r["kind"] for r in rows] == ["contact-removed"]
    out = ok(_cli("--home", home, "log", "verify")).stdout
    assert (
        out
        == "log intact: 6 entries, last signed checkpoint at 4 (1 newer entries not signed yet)\n"
    )


def test_process_log_verify(cli_home: Path, tmp_path: Path) -> None:
    home = _cli_copy(cli_home, tmp_path)
    command = [sys.executable, "-c", "from securechan.cli import main; main()"]
    run = subprocess.run(
        [*command, "--home", str(home), "log", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert (run.returncode, run.stdout, run.stderr) == (
        0,
        "log intact: 5 entries, last signed checkpoint at 4\n",
        "",
    )
    _tamper(home, lambda db: db.execute("DELETE FROM entries WHERE idx = 1"))
    run = subprocess.run(
        [*command, "--home", str(home), "log", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith(
        "securechan: the audit log is broken at entry 1: entry 1 is missing"
    )
    assert run.stderr.count("\n") == 1


# --- random corruption ------------------------------------------------------------------


def _entry_bytes(home: Path) -> list[bytes]:
    with AuditLog.open(home, read_only=True) as log:
        return [e.to_bytes() for e in log.entries()]


def _corrupt_and_check(source: Path, me: Identity, offset: int, xor: int) -> bool:
    """Flip bits of one byte of a copy of ``source``'s audit.db; verify it.

    Returns True if verify passed, which is allowed only when every entry
    still reads back exactly as before (the byte was in unused space).
    Any other exception than a SecurechanError fails the test.
    """
    original = _entry_bytes(source)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for name in ("audit.db", "audit.head"):
            if (source / name).exists():
                shutil.copy2(source / name, home / name)
        data = bytearray((home / "audit.db").read_bytes())
        data[offset % len(data)] ^= xor
        (home / "audit.db").write_bytes(bytes(data))
        try:
            with AuditLog.open(home, read_only=True) as log:
                log.verify(me.public)
        except SecurechanError:
            return False
        assert _entry_bytes(home) == original, "verify passed a log whose entries changed"
        return True


def test_corrupted_schema_text_is_a_broken_log(built: Built, copy: Path) -> None:
    """A byte of the schema turned into invalid UTF-8 (sqlite3 then fails to
    decode its own error message) is reported like any other damage."""
    data = bytearray((copy / "audit.db").read_bytes())
    data[data.index(b"indexentries_kind") + len(b"index")] ^= 0xEC  # the name: 'e' -> 0x89
    (copy / "audit.db").write_bytes(bytes(data))
    with pytest.raises(AuditLogBroken, match="damaged"), AuditLog.open(copy, read_only=True) as log:
        log.verify(built.me.public)


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(offset=st.integers(min_value=0, max_value=1 << 20), xor=st.integers(1, 255))
def test_single_byte_corruption_never_passes_silently(built: Built, offset: int, xor: int) -> None:
    _corrupt_and_check(built.home, built.me, offset, xor)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.sampled_from(["sent", "received", "rejected", "checkpoint"]), min_size=1, max_size=24
    ),
    every=st.integers(2, 10),
    offset=st.integers(min_value=0, max_value=1 << 20),
    xor=st.integers(1, 255),
)
def test_random_appends_then_corruption(ops: list[str], every: int, offset: int, xor: int) -> None:
    me, peer = fixed_identity("tehran"), fixed_identity("washington")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with AuditLog.open(home, me, clock=Clock(), checkpoint_every=every) as log:
            for n, op in enumerate(ops):
                if op == "checkpoint":
                    log.checkpoint()
                elif op == "rejected":
                    log.rejected("Replay", f"message {n}")
                else:
                    log.message(
                        "message-sent" if op == "sent" else "message-received",
                        conversation=CONV,
                        seq=n,
                        payload_hash=ZERO,
                        peer=peer.fingerprint,
                    )
        _report(home, me)
        _corrupt_and_check(home, me, offset, xor)
