"""The client's local database: session state, queues, outbox, messages.

One SQLite file (``client.db`` in the home folder; opened by
:mod:`securechan.sqlite_schema`: WAL, ``synchronous=FULL``,
``secure_delete=ON``; tables in ``securechan/schema/client/``; the
received-envelope, log and message tables' methods in ``db_received.py``,
``db_logs.py``, ``db_messages.py`` and ``db_groups.py``). Everything secret
or private is sealed with the identity's storage key before it is written:
session and prekey state as ``SealedState`` records (``protocol/sealed.py``),
and queue secrets, peer grants and stored messages with XChaCha20-Poly1305 bound to their table and
row. In clear remain only random ids (conversation ids, queue ids, message
ids), counters and times, and the peer's fingerprint that also sits in
``contacts.bin``.

Rollback (``docs/CLI.md``, Backups): every sealed store's generation grows
with each write, and the highest one reached is kept outside this file, in
``state.gen`` (``client/generations.py``). :meth:`ClientDB.load_state`
compares the two: a store older than its mark was restored from an older
copy of this file, and is refused for sending (:class:`RolledBack`).

Each public method is one transaction. Read-modify-write of a session runs
inside ``BEGIN IMMEDIATE`` (:meth:`ClientDB.transaction`), so two commands on
the same home (``receive --follow`` in one terminal, ``send`` in another)
never interleave their changes to one session.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from securechan.client.db_groups import GroupTables
from securechan.client.db_logs import LogTables
from securechan.client.db_messages import MessageTables, StoredMessage
from securechan.client.db_outbox import OutboxTables, QueuedRow
from securechan.client.db_received import HeldRow, ReceivedTables
from securechan.client.generations import GENERATIONS_FILE, Generations
from securechan.errors import MalformedInput, RolledBack, StorageError, VerificationFailed
from securechan.primitives import aead_decrypt, aead_encrypt, hkdf_sha256
from securechan.protocol.sealed import open_state, seal_state
from securechan.sqlite_schema import Schema, connect, prepare_file

__all__ = [
    "ClientDB",
    "HeldRow",
    "OutboxEntry",
    "QueueRow",
    "QueuedRow",
    "SessionRow",
    "StoredMessage",
]

SCHEMA = Schema("client", application_id=0x7363434C, title="a securechan client database")
"""``securechan/schema/client/``: the tables, their versions and upgrades."""
SCHEMA_VERSION = SCHEMA.version
_AAD = b"securechan/v1/client-db/"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRow:
    """Index data of one session (the state itself is sealed)."""

    conversation: bytes
    peer: bytes
    created: int
    grant_sent: bool
    peer_grant: bytes | None  # sealed QueueGrant bytes, opened by the caller


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRow:
    """One of our receive queues."""

    rid: bytes
    relay: str
    kind: str  # "contact" or "private"
    conversation: bytes | None
    secret: bytes  # the recipient key's seed (opened)
    last_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """An envelope persisted before sending, until the relay acknowledged it."""

    id: int
    msg_id: bytes
    relay: str
    sid: bytes
    sender: bytes | None  # sender key seed (opened), for secured queues
    envelope: bytes


class ClientDB(ReceivedTables, LogTables, MessageTables, OutboxTables, GroupTables):
    """The local database of one home folder, opened with its storage key."""

    def __init__(self, path: Path, storage_key: bytes) -> None:
        self.path = path
        self._key = storage_key
        prepare_file(path)
        try:
            self._db = connect(path)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open {path}: {e}") from None
        try:
            # Two processes opening a new home at once: the schema is applied
            # in BEGIN IMMEDIATE, so the second waits and finds it done.
            SCHEMA.apply(self._db, path)
        except BaseException as e:
            self._db.close()
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"cannot open {path}: {e}") from None
            raise
        self.generations = Generations(path.parent / GENERATIONS_FILE, storage_key)
        # Stores found rolled back by this process, in the order found (the
        # channel reports each once to the audit log).
        self.rollbacks: list[str] = []
        self._found: set[str] = set()
        self._position_key = hkdf_sha256(
            storage_key, salt=b"", info=_AAD + b"position-key", length=32
        )
        self._check_marks_present()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rollback on any exception.

        ``durable=False``: the commit is not fsync'ed on its own
        (``synchronous=NORMAL`` for it): it is atomic, survives the
        process being killed, and becomes durable with the next durable
        commit (in WAL mode that fsyncs the log it follows in) or
        checkpoint; only a power loss or an OS crash before then can undo
        it. For bookkeeping whose loss is repaired, never for a commit that
        must precede something leaving the machine."""
        if self._db.in_transaction:
            yield self._db
            return
        level = None
        if not durable:
            (level,) = self._db.execute("PRAGMA synchronous").fetchone()
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StorageError(f"cannot lock {self.path}: {e}") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
        finally:
            if level is not None:
                self._db.execute(f"PRAGMA synchronous = {int(level)}")  # as it was

    # --- sealing --------------------------------------------------------------

    def seal(self, table: str, row: bytes, data: bytes) -> bytes:
        """Encrypt a value for ``table``/``row`` (bound: cannot be moved)."""
        return aead_encrypt(self._key, data, _AAD + table.encode() + b"/" + row)

    def open(self, table: str, row: bytes, sealed: bytes) -> bytes:
        """Decrypt :meth:`seal`'s output; raise :class:`StorageError`."""
        try:
            return aead_decrypt(self._key, sealed, _AAD + table.encode() + b"/" + row)
        except VerificationFailed:
            raise StorageError(f"{self.path}: a stored {table} value was altered") from None

    # --- sealed protocol state ------------------------------------------------

    def _check_marks_present(self) -> None:
        """``state.gen`` deleted while this database says it was written: a
        rollback can no longer be ruled out, so every stored session is
        treated as rolled back (sending on it refused until re-keyed)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'generations'").fetchone()
        if row is None or self.generations.path.exists():
            return
        with self.transaction():
            names = [r[0] for r in self._db.execute("SELECT name FROM state ORDER BY name")]
            for name in names:
                if name.startswith("session:"):
                    self.generations.mark_rolled_back(name)
            self.generations.raise_to({})
            self.rollbacks.append(GENERATIONS_FILE)

    def load_state(
        self, name: str, kind: str, object_id: bytes, *, refuse_rolled_back: bool = False
    ) -> tuple[int, bytes] | None:
        """A sealed state blob, opened; ``None`` if absent.

        The stored generation is checked against ``state.gen``, never
        against this database (which a restored copy would bring along). A
        rolled-back store is added to :attr:`rollbacks`; a rolled-back
        session is also marked in ``state.gen`` (it stays marked while it
        receives, until re-keyed). With ``refuse_rolled_back``,
        :class:`RolledBack` is raised for it.
        """
        row = self._db.execute(
            "SELECT blob FROM state WHERE name = ? AND kind = ?", (name, kind)
        ).fetchone()
        if row is None:
            return None
        try:
            generation, data = open_state(self._key, row[0], kind=kind, object_id=object_id)
        except (VerificationFailed, MalformedInput) as e:
            raise StorageError(f"{self.path}: stored {kind} state is damaged: {e}") from None
        if self.generations.is_rolled_back(name, generation):
            if name not in self._found:
                self._found.add(name)
                self.rollbacks.append(name)
            if kind != "session":
                # The prekey store, replay guard, registrations: used as they
                # are (reported once), resealed above the mark. What they let
                # through again (a first message accepted after the backup)
                # re-creates a session below its own mark: refused for sending.
                resealed = max(self.state_generation(name) or 0, self.generations.high(name)) + 1
                with self.transaction():
                    self.save_state(name, kind, object_id, resealed, data)
                return resealed, data
            with self.transaction():
                self.generations.mark_rolled_back(name)
            if refuse_rolled_back:
                raise RolledBack(
                    f"stored {kind} state is generation {generation}, older than generation "
                    f"{self.generations.high(name)} already used (client.db was restored "
                    "from an older copy)"
                )
        return generation, data

    def save_state(
        self, name: str, kind: str, object_id: bytes, generation: int | None, data: bytes
    ) -> None:
        """Seal and store a state blob (inside the caller's transaction).

        ``generation=None`` (stores without their own counter): one above
        both the stored generation and the high-water mark, so every write
        of every store has a generation never used before."""
        if generation is None:
            row = self._db.execute(
                "SELECT generation FROM state WHERE name = ?", (name,)
            ).fetchone()
            stored = int(row[0]) if row is not None else 0
            generation = max(stored, self.generations.high(name)) + 1
        blob = seal_state(self._key, data, kind=kind, object_id=object_id, generation=generation)
        self._db.execute(
            "INSERT INTO state (name, kind, generation, blob) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET "
            "generation = excluded.generation, blob = excluded.blob",
            (name, kind, generation, blob),
        )

    def state_generation(self, name: str) -> int | None:
        """The generation column of a stored state (``None`` if absent)."""
        row = self._db.execute("SELECT generation FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def record_generations(self) -> None:
        """Raise ``state.gen`` to every stored generation. Called before
        anything made from the state leaves the machine, and on close.

        The generation column is not authenticated, but it can only raise
        the mark (a false alarm, as deleting the file would be), never lower it."""
        with self.transaction():
            gens = {
                str(r[0]): int(r[1]) for r in self._db.execute("SELECT name, generation FROM state")
            }
            self.generations.raise_to(gens)
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('generations', 1)")

    # --- sessions ---------------------------------------------------------------

    def retire_session(self, conversation: bytes, now: int) -> None:
        """Never send on this session again (``contact rekey``); it still
        receives, so the peer's messages sent before the new handshake reach
        us. Its rollback mark is cleared: its high-water mark stays."""
        self._db.execute(
            "INSERT OR IGNORE INTO retired (conversation, at) VALUES (?, ?)", (conversation, now)
        )
        self.generations.forget("session:" + conversation.hex())

    def retired(self) -> set[bytes]:
        """Conversations retired by ``contact rekey``."""
        return {bytes(r[0]) for r in self._db.execute("SELECT conversation FROM retired")}

    def add_session(self, conversation: bytes, peer: bytes, created: int) -> None:
        """Index a new session."""
        self._db.execute(
            "INSERT INTO sessions (conversation, peer, created) VALUES (?, ?, ?)",
            (conversation, peer, created),
        )

    def has_session(self, conversation: bytes) -> bool:
        """Whether a session with this conversation id exists."""
        return (
            self._db.execute(
                "SELECT 1 FROM sessions WHERE conversation = ?", (conversation,)
            ).fetchone()
            is not None
        )

    def sessions(self, peer: bytes | None = None) -> list[SessionRow]:
        """Sessions, newest first (of one peer, if given)."""
        query = "SELECT conversation, peer, created, grant_sent, peer_grant FROM sessions"
        args: tuple[bytes, ...] = ()
        if peer is not None:
            query += " WHERE peer = ?"
            args = (peer,)
        rows = self._db.execute(query + " ORDER BY created DESC, rowid DESC", args).fetchall()
        return [
            SessionRow(
                conversation=r[0],
                peer=r[1],
                created=r[2],
                grant_sent=bool(r[3]),
                peer_grant=self.open("peer_grant", r[0], r[4]) if r[4] is not None else None,
            )
            for r in rows
        ]

    def set_peer_grant(self, conversation: bytes, grant: bytes) -> None:
        """Remember where the peer wants our messages."""
        self._db.execute(
            "UPDATE sessions SET peer_grant = ? WHERE conversation = ?",
            (self.seal("peer_grant", conversation, grant), conversation),
        )

    def mark_grant_sent(self, conversation: bytes) -> None:
        """We told the peer about our private queue."""
        self._db.execute(
            "UPDATE sessions SET grant_sent = 1 WHERE conversation = ?", (conversation,)
        )

    # --- queues -------------------------------------------------------------------

    def add_queue(
        self, rid: bytes, relay: str, kind: str, conversation: bytes | None, secret: bytes
    ) -> None:
        """Remember one of our receive queues and its recipient key seed."""
        self._db.execute(
            "INSERT INTO queues (rid, relay, kind, conversation, secret) VALUES (?, ?, ?, ?, ?)",
            (rid, relay, kind, conversation, self.seal("queues", rid, secret)),
        )

    def queues(self) -> list[QueueRow]:
        """All our receive queues."""
        rows = self._db.execute(
            "SELECT rid, relay, kind, conversation, secret, last_seq FROM queues ORDER BY rowid"
        ).fetchall()
        return [
            QueueRow(
                rid=r[0],
                relay=r[1],
                kind=r[2],
                conversation=r[3],
                secret=self.open("queues", r[0], r[4]),
                last_seq=r[5],
            )
            for r in rows
        ]

    def set_last_seq(self, rid: bytes, seq: int) -> None:
        """Advance the position we have fully processed in a queue."""
        self._db.execute("UPDATE queues SET last_seq = MAX(last_seq, ?) WHERE rid = ?", (seq, rid))

    # --- outbox -------------------------------------------------------------------

    def add_outbox(
        self, msg_id: bytes, relay: str, sid: bytes, sender: bytes | None, envelope: bytes, now: int
    ) -> None:
        """Persist an envelope before it is posted."""
        sealed_sender = self.seal("outbox", msg_id + sid, sender) if sender is not None else None
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (msg_id, relay, sid, sender, envelope, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (msg_id, relay, sid, sealed_sender, envelope, now),
        )

    def outbox(self) -> list[OutboxEntry]:
        """Envelopes not yet acknowledged by their relay, oldest first."""
        rows = self._db.execute(
            "SELECT id, msg_id, relay, sid, sender, envelope FROM outbox ORDER BY id"
        ).fetchall()
        return [
            OutboxEntry(
                id=r[0],
                msg_id=r[1],
                relay=r[2],
                sid=r[3],
                sender=self.open("outbox", r[1] + r[3], r[4]) if r[4] is not None else None,
                envelope=r[5],
            )
            for r in rows
        ]

    def remove_outbox(self, entry_id: int) -> None:
        """The relay has the envelope."""
        self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
