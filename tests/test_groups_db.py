"""client.db's group tables (schema v9, client/db_groups.py): rows round
trip, everything private is sealed (no name, text or secret in the file),
and a sealed value moved to another row does not open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from securechan.client.db import ClientDB
from securechan.client.db_groups import DeliveryRow, GroupRow, TranscriptRow
from securechan.errors import StorageError

KEY = bytes(range(32))
GID = b"\x11" * 32


def _row(**kw: object) -> GroupRow:
    base: dict[str, object] = {
        "group_id": GID,
        "name": "secret talks",
        "relay": "http://127.0.0.1:1",
        "epoch": 2,
        "state": b"state-bytes",
        "head": b"\x01" * 32,
        "heads": (b"\x00" * 32, b"\x01" * 32),
        "last": {b"\x02" * 32: (3, b"\x03" * 32)},
        "cursor": 7,
        "own_seq": 4,
        "opened_by": b"\x04" * 32,
        "joined": True,
    }
    base.update(kw)
    return GroupRow(**base)  # type: ignore[arg-type]


def test_group_tables_round_trip_and_are_sealed(tmp_path: Path) -> None:
    db = ClientDB(tmp_path / "client.db", KEY)
    try:
        with db.transaction():
            db.put_group(_row())
            assert db.put_welcome(GID, 2, b"\x04" * 32, b"\x05" * 32, b"WELCOME-SECRET", 1)
            assert not db.put_welcome(GID, 2, b"\x04" * 32, b"\x05" * 32, b"other", 2)
            rid = db.add_transcript(
                TranscriptRow(
                    group_id=GID,
                    epoch=2,
                    position=1,
                    log_index=9,
                    record_hash=b"\x06" * 32,
                    status="content-pending",
                    at=5,
                    stream_id=b"\x07" * 32,
                    blob=b"blob",
                    record=b"record",
                    summary="content not yet received",
                    sender=b"\x02" * 32,
                    seq=3,
                    sent_at=4,
                )
            )
            assert db.add_delivery(
                DeliveryRow(
                    record_hash=b"\x06" * 32,
                    group_id=GID,
                    sender=b"\x02" * 32,
                    seq=3,
                    received=5,
                    matched=False,
                    delivery=b"PLAINTEXT-CONTENT",
                    pairwise=b"signed",
                    message="ab:1",
                )
            )
        assert db.group(GID) == _row(created=0)
        assert db.welcome(GID, 2, b"\x04" * 32) == b"WELCOME-SECRET"
        assert db.welcome(GID, 2, b"\x08" * 32) is None
        [t] = db.transcript(GID)
        assert (t.id, t.status, t.seq, t.blob) == (rid, "content-pending", 3, b"blob")
        with db.transaction():
            db.update_transcript(
                TranscriptRow(**{**_fields(t), "status": "shown", "text": "hello"})
            )
            db.mark_delivery(b"\x06" * 32)
        assert db.transcript(GID, status="shown")[0].text == "hello"
        assert db.deliveries(GID, unmatched=True) == []
        assert db.deliveries(GID, sender=b"\x02" * 32, seq=3)[0].delivery == b"PLAINTEXT-CONTENT"
        assert db.transcript_count(GID) == 1
    finally:
        db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("client.db*"))
    for secret in (b"secret talks", b"WELCOME-SECRET", b"PLAINTEXT-CONTENT", b"hello"):
        assert secret not in raw


def _fields(t: TranscriptRow) -> dict[str, object]:
    return {f: getattr(t, f) for f in TranscriptRow.__dataclass_fields__}


def test_a_sealed_group_row_moved_to_another_group_does_not_open(tmp_path: Path) -> None:
    db = ClientDB(tmp_path / "client.db", KEY)
    try:
        with db.transaction():
            db.put_group(_row())
            db.put_group(_row(group_id=b"\x22" * 32, name="other"))
    finally:
        db.close()
    conn = sqlite3.connect(tmp_path / "client.db")
    sealed = conn.execute("SELECT sealed FROM groups WHERE group_id = ?", (GID,)).fetchone()[0]
    conn.execute("UPDATE groups SET sealed = ? WHERE group_id = ?", (sealed, b"\x22" * 32))
    conn.commit()
    conn.close()
    db = ClientDB(tmp_path / "client.db", KEY)
    try:
        with pytest.raises(StorageError):
            db.group(b"\x22" * 32)
    finally:
        db.close()
