"""The client database's group tables (issue 17; docs/PROTOCOL.md §20).

A part of :class:`~securechan.client.db.ClientDB` (which inherits these
methods). Four tables, schema version 9 (``securechan/schema/client/``):

* ``groups``: one row per group this member holds: the group id, the
  current epoch, the stream cursor (the last position read in the current
  epoch's stream), our own group sequence number, whether we left (or were
  removed), and sealed: the local name, the relay of the group's streams,
  the current state's encoding and the view (head, recent heads, per sender
  the last sequence number and signed-payload hash): :class:`GroupRow`.
* ``group_secrets``: per (group, epoch, hash of the change that opens the
  epoch) the :class:`GroupWelcome` that gave us the epoch's secret (sealed)
  and its author's fingerprint. Keyed by the change too: a welcome for a
  change that never makes it into the stream (it lost to a concurrent one,
  or a hostile member made it up) cannot shadow the real epoch's.
* ``group_transcript``: one row per stream item read, in the order read:
  epoch, position, log index, record hash, status (one of
  ``GROUP_STATUSES``) and sealed the record, the blob, the stream id and
  what was shown: :class:`TranscriptRow`.
* ``group_deliveries``: pairwise content received (a ``GroupDelivery`` and
  the pairwise message it came in), keyed by the signed payload's hash.

Everything private is sealed with the storage key, bound to its table and
row (:meth:`ClientDB.seal`). Each method runs inside the caller's
transaction, or alone in autocommit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from securechan.json_text import dumps
from securechan.strict_json import loads

__all__ = ["DeliveryRow", "GroupRow", "GroupTables", "TranscriptRow"]


# A stored group value (the state, the view's recent heads, senders' marks).
_MAX_VALUE = 8 * 1024 * 1024


def _pack(data: dict[str, Any]) -> bytes:
    return dumps(data).encode("ascii")


def _secret_row(group_id: bytes, epoch: int, change_hash: bytes) -> bytes:
    return group_id + epoch.to_bytes(8, "big") + change_hash


def _cap(value: Any) -> tuple[int, int]:
    items, size = value
    return int(items), int(size)


def _unpack(data: bytes) -> dict[str, Any]:
    # Sealed under the storage key, so only this client wrote it; read
    # strictly all the same (one JSON reader in the package).
    out = loads(data, max_size=_MAX_VALUE, what="a stored group value")
    if not isinstance(out, dict):
        raise ValueError("a stored group value is not an object")
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRow:
    """One group as this member holds it. ``started`` is False between a
    creation's welcome and reading the creation in stream 0 (no view yet)."""

    group_id: bytes
    name: str
    relay: str
    epoch: int
    state: bytes  # the GroupState encoding
    head: bytes
    heads: tuple[bytes, ...]
    last: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    cursor: int = 0
    own_seq: int = 0
    left: bool = False
    started: bool = True
    created: int = 0
    opened_by: bytes = b""  # the hash of the change that opened the current epoch
    joined: bool = False  # the view started from a welcome (not from the creation)
    # Pairwise sends that could not be queued: (content type, recipient, body).
    owed: tuple[tuple[int, bytes, bytes], ...] = ()
    # Relays that may hold the group's streams, tried in order on the first
    # read (the one whose copy of ``probe_stream`` is not empty wins).
    probe: tuple[str, ...] = ()
    probe_stream: bytes = b""
    # The current epoch was opened by a leave (GroupView.quiet): no message
    # until an admin's rekey. Absent in rows written before it (False).
    quiet: bool = False
    # Bytes the relay holds in the current epoch's stream as far as read
    # (each item: its blob + 256, as the relay charges it; docs/RELAY.md,
    # "Group streams"), for the rekey before the stream fills (§20.4).
    # Absent in rows written before it (0: counted from the next item).
    stream_bytes: int = 0
    # (items, bytes) a stream of this group held when the relay refused a
    # post as full (409 stream_full; the smallest seen), (0, 0) if never:
    # the rotation budget is kept under it (client/group_change.py).
    stream_cap: tuple[int, int] = (0, 0)

    def _sealed(self) -> bytes:
        return _pack(
            {
                "name": self.name,
                "relay": self.relay,
                "state": self.state.hex(),
                "head": self.head.hex(),
                "heads": [h.hex() for h in self.heads],
                "last": {k.hex(): [s, h.hex()] for k, (s, h) in self.last.items()},
                "started": self.started,
                "opened_by": self.opened_by.hex(),
                "joined": self.joined,
                "owed": [[t, f.hex(), b.hex()] for t, f, b in self.owed],
                "probe": list(self.probe),
                "probe_stream": self.probe_stream.hex(),
                "quiet": self.quiet,
                "stream_bytes": self.stream_bytes,
                "stream_cap": list(self.stream_cap),
            }
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptRow:
    """One stream item read (or, for a joiner, the change it joined by:
    position 0, log index -1). ``record`` is the GroupRecord encoding (empty
    when the blob did not open); ``status`` one of GROUP_STATUSES;
    ``message`` the pairwise message the content came in ("conversation
    hex:seq"), when matched."""

    group_id: bytes
    epoch: int
    position: int
    log_index: int
    record_hash: bytes
    status: str
    at: int
    stream_id: bytes
    blob: bytes
    record: bytes
    summary: str
    sender: bytes = b""
    seq: int = 0
    sent_at: int = 0
    text: str | None = None
    file_name: str | None = None
    message: str | None = None
    id: int = 0

    def _sealed(self) -> bytes:
        return _pack(
            {
                "stream_id": self.stream_id.hex(),
                "blob": self.blob.hex(),
                "record": self.record.hex(),
                "summary": self.summary,
                "sender": self.sender.hex(),
                "seq": self.seq,
                "sent_at": self.sent_at,
                "text": self.text,
                "file_name": self.file_name,
                "message": self.message,
            }
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRow:
    """Pairwise content of one group message: the GroupDelivery encoding,
    the pairwise signed payload it came in (evidence: signed by the sender
    too), and that message's place ("conversation hex:seq")."""

    record_hash: bytes
    group_id: bytes
    sender: bytes
    seq: int
    received: int
    matched: bool
    delivery: bytes
    pairwise: bytes
    message: str


class GroupTables:
    """``groups``, ``group_secrets``, ``group_transcript``, ``group_deliveries``."""

    _db: sqlite3.Connection
    seal: Callable[[str, bytes, bytes], bytes]
    open: Callable[[str, bytes, bytes], bytes]

    # --- groups -----------------------------------------------------------------

    def put_group(self, row: GroupRow) -> None:
        """Insert or replace one group's row."""
        self._db.execute(
            "INSERT INTO groups (group_id, epoch, cursor, own_seq, left_group, created, sealed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_id) DO UPDATE SET "
            "epoch = excluded.epoch, cursor = excluded.cursor, own_seq = excluded.own_seq, "
            "left_group = excluded.left_group, sealed = excluded.sealed",
            (
                row.group_id,
                row.epoch,
                row.cursor,
                row.own_seq,
                int(row.left),
                row.created,
                self.seal("groups", row.group_id, row._sealed()),
            ),
        )

    def groups(self) -> list[GroupRow]:
        """Every group, in the order created."""
        rows = self._db.execute(
            "SELECT group_id, epoch, cursor, own_seq, left_group, created, sealed FROM groups "
            "ORDER BY created, group_id"
        ).fetchall()
        return [self._group(r) for r in rows]

    def group(self, group_id: bytes) -> GroupRow | None:
        """One group by id, or None."""
        r = self._db.execute(
            "SELECT group_id, epoch, cursor, own_seq, left_group, created, sealed FROM groups "
            "WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        return self._group(r) if r is not None else None

    def _group(self, r: tuple[Any, ...]) -> GroupRow:
        d = _unpack(self.open("groups", r[0], r[6]))
        return GroupRow(
            group_id=r[0],
            epoch=r[1],
            cursor=r[2],
            own_seq=r[3],
            left=bool(r[4]),
            created=r[5],
            name=d["name"],
            relay=d["relay"],
            state=bytes.fromhex(d["state"]),
            head=bytes.fromhex(d["head"]),
            heads=tuple(bytes.fromhex(h) for h in d["heads"]),
            last={bytes.fromhex(k): (int(v[0]), bytes.fromhex(v[1])) for k, v in d["last"].items()},
            started=bool(d["started"]),
            opened_by=bytes.fromhex(d["opened_by"]),
            joined=bool(d.get("joined", False)),
            owed=tuple(
                (int(t), bytes.fromhex(f), bytes.fromhex(b)) for t, f, b in d.get("owed", [])
            ),
            probe=tuple(d.get("probe", [])),
            probe_stream=bytes.fromhex(d.get("probe_stream", "")),
            quiet=bool(d.get("quiet", False)),
            stream_bytes=int(d.get("stream_bytes", 0)),
            stream_cap=_cap(d.get("stream_cap", [0, 0])),
        )

    def forget_group(self, group_id: bytes) -> None:
        """Remove a group that never started (its creation was not posted)."""
        for table in ("groups", "group_secrets", "group_transcript", "group_deliveries"):
            self._db.execute(f"DELETE FROM {table} WHERE group_id = ?", (group_id,))  # noqa: S608

    # --- epoch secrets ------------------------------------------------------------

    def put_welcome(
        self,
        group_id: bytes,
        epoch: int,
        change_hash: bytes,
        author: bytes,
        welcome: bytes,
        received: int,
    ) -> bool:
        """Keep a welcome (the epoch's secret for one change); returns
        whether it was new."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO group_secrets "
            "(group_id, epoch, change_hash, author, received, sealed) VALUES (?, ?, ?, ?, ?, ?)",
            (
                group_id,
                epoch,
                change_hash,
                author,
                received,
                self.seal("group_secrets", _secret_row(group_id, epoch, change_hash), welcome),
            ),
        )
        return cur.rowcount == 1

    def welcome(self, group_id: bytes, epoch: int, change_hash: bytes) -> bytes | None:
        """The GroupWelcome encoding for a (group, epoch, change), or None."""
        r = self._db.execute(
            "SELECT sealed FROM group_secrets WHERE group_id = ? AND epoch = ? AND change_hash = ?",
            (group_id, epoch, change_hash),
        ).fetchone()
        if r is None:
            return None
        return self.open("group_secrets", _secret_row(group_id, epoch, change_hash), r[0])

    def welcomes(self, group_id: bytes) -> list[tuple[int, bytes, bytes]]:
        """Every kept welcome of one group: (epoch, change hash, encoding)."""
        rows = self._db.execute(
            "SELECT epoch, change_hash, sealed FROM group_secrets WHERE group_id = ? "
            "ORDER BY epoch, received",
            (group_id,),
        ).fetchall()
        return [
            (e, c, self.open("group_secrets", _secret_row(group_id, e, c), s)) for e, c, s in rows
        ]

    # --- the transcript -------------------------------------------------------------

    def add_transcript(self, row: TranscriptRow) -> int:
        """Append one read stream item; returns its row id."""
        key = row.group_id + row.epoch.to_bytes(8, "big") + row.position.to_bytes(8, "big")
        cur = self._db.execute(
            "INSERT INTO group_transcript (group_id, epoch, position, log_index, record_hash, "
            "status, at, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.group_id,
                row.epoch,
                row.position,
                row.log_index,
                row.record_hash,
                row.status,
                row.at,
                self.seal("group_transcript", key, row._sealed()),
            ),
        )
        return int(cur.lastrowid or 0)

    def update_transcript(self, row: TranscriptRow) -> None:
        """Rewrite one row's status and what it shows (content arrived later)."""
        key = row.group_id + row.epoch.to_bytes(8, "big") + row.position.to_bytes(8, "big")
        self._db.execute(
            "UPDATE group_transcript SET status = ?, sealed = ? WHERE id = ?",
            (row.status, self.seal("group_transcript", key, row._sealed()), row.id),
        )

    def transcript(
        self,
        group_id: bytes,
        *,
        after: int = 0,
        limit: int = 1000,
        record_hash: bytes | None = None,
        status: str | None = None,
    ) -> list[TranscriptRow]:
        """One group's transcript rows in the order read (row id > ``after``,
        at most ``limit``), optionally only those of one record hash or status."""
        query = (
            "SELECT id, group_id, epoch, position, log_index, record_hash, status, at, sealed "
            "FROM group_transcript WHERE group_id = ? AND id > ?"
        )
        args: list[Any] = [group_id, after]
        if record_hash is not None:
            query += " AND record_hash = ?"
            args.append(record_hash)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        rows = self._db.execute(query + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [self._transcript(r) for r in rows]

    def transcript_count(self, group_id: bytes) -> int:
        """How many rows one group's transcript has."""
        r = self._db.execute(
            "SELECT COUNT(*) FROM group_transcript WHERE group_id = ?", (group_id,)
        ).fetchone()
        return int(r[0])

    def _transcript(self, r: tuple[Any, ...]) -> TranscriptRow:
        key = r[1] + r[2].to_bytes(8, "big") + r[3].to_bytes(8, "big")
        d = _unpack(self.open("group_transcript", key, r[8]))
        return TranscriptRow(
            id=r[0],
            group_id=r[1],
            epoch=r[2],
            position=r[3],
            log_index=r[4],
            record_hash=r[5],
            status=r[6],
            at=r[7],
            stream_id=bytes.fromhex(d["stream_id"]),
            blob=bytes.fromhex(d["blob"]),
            record=bytes.fromhex(d["record"]),
            summary=d["summary"],
            sender=bytes.fromhex(d["sender"]),
            seq=int(d["seq"]),
            sent_at=int(d["sent_at"]),
            text=d["text"],
            file_name=d["file_name"],
            message=d["message"],
        )

    # --- pairwise deliveries -----------------------------------------------------------

    def add_delivery(self, row: DeliveryRow) -> bool:
        """Keep one delivery (the first for a signed payload hash stays);
        returns whether it was new."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO group_deliveries (record_hash, group_id, sender, seq, "
            "received, matched, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.record_hash,
                row.group_id,
                row.sender,
                row.seq,
                row.received,
                int(row.matched),
                self.seal(
                    "group_deliveries",
                    row.record_hash,
                    _pack(
                        {
                            "delivery": row.delivery.hex(),
                            "pairwise": row.pairwise.hex(),
                            "message": row.message,
                        }
                    ),
                ),
            ),
        )
        return cur.rowcount == 1

    def deliveries(
        self,
        group_id: bytes,
        *,
        record_hash: bytes | None = None,
        sender: bytes | None = None,
        seq: int | None = None,
        unmatched: bool = False,
    ) -> list[DeliveryRow]:
        """Deliveries of one group, by record hash, by (sender, seq), or
        those not yet matched with a stream record."""
        query = (
            "SELECT record_hash, group_id, sender, seq, received, matched, sealed "
            "FROM group_deliveries WHERE group_id = ?"
        )
        args: list[Any] = [group_id]
        if record_hash is not None:
            query += " AND record_hash = ?"
            args.append(record_hash)
        if sender is not None:
            query += " AND sender = ?"
            args.append(sender)
        if seq is not None:
            query += " AND seq = ?"
            args.append(seq)
        if unmatched:
            query += " AND matched = 0"
        rows = self._db.execute(query + " ORDER BY received, record_hash", args).fetchall()
        out = []
        for r in rows:
            d = _unpack(self.open("group_deliveries", r[0], r[6]))
            out.append(
                DeliveryRow(
                    record_hash=r[0],
                    group_id=r[1],
                    sender=r[2],
                    seq=r[3],
                    received=r[4],
                    matched=bool(r[5]),
                    delivery=bytes.fromhex(d["delivery"]),
                    pairwise=bytes.fromhex(d["pairwise"]),
                    message=d["message"],
                )
            )
        return out

    def mark_delivery(self, record_hash: bytes, matched: int = 1) -> None:
        """A delivery was matched with its record (1) or reported withheld (2)."""
        self._db.execute(
            "UPDATE group_deliveries SET matched = ? WHERE record_hash = ?",
            (matched, record_hash),
        )
