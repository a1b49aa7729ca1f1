"""The local audit log: an append-only, hash-chained record of one party's
security events, signed at intervals by the party's own identity.

``docs/AUDIT.md`` ("Local audit log") is the normative description. In short:

* Two files in the home folder. ``audit.db`` (SQLite: WAL,
  ``synchronous=FULL``, ``secure_delete=ON``, schema version in
  ``PRAGMA user_version``) holds one row per entry. ``audit.head`` holds a
  copy of the newest signed checkpoint, replaced atomically after the
  checkpoint is committed, so cutting entries off the end of the database is
  seen even when the checkpoint entries go with them.
* An entry is an :class:`AuditEntry` (wire type 0x00C0): index, time, kind and
  a typed fields record (:mod:`securechan.audit.log_records`). Entries hold
  ids, hashes, names and fingerprints: never a plaintext, never a secret.
* ``hash(i) = SHA-256("securechan/v1/audit-entry" || hash(i - 1) || entry(i))``
  where ``hash(-1)`` is 32 zero bytes.
* Every ``checkpoint_every`` entries (64 by default) and on
  :meth:`AuditLog.checkpoint`, a ``log-checkpoint`` entry at index ``count``
  carries the identity's composite signature (context
  ``securechan/v1/audit-checkpoint``) over ``(count, hash(count - 1), time,
  signer fingerprint)``. A ``log-signer`` entry holding the public identity
  comes before the first checkpoint of each key, so a log that outlived an
  identity replacement still verifies entry by entry.

:meth:`AuditLog.verify` recomputes all of it and raises
:class:`~securechan.errors.AuditLogBroken` naming the first entry at which the
log stops verifying. It cannot see entries added or removed after the last
signed checkpoint, nor a log cut back to an older checkpoint together with an
older copy of ``audit.head``; AUDIT.md says so in "What it does not prove".

Errors: misuse raises ``ValueError``/``TypeError``; a log that fails its checks
raises :class:`~securechan.errors.AuditLogBroken`; a file that cannot be read
or written raises :class:`~securechan.errors.StorageError`; a log written by a
newer schema raises :class:`~securechan.errors.UnsupportedVersion`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from securechan.audit.log_records import (
    CONTEXT_CHECKPOINT,
    INTERNAL_KINDS,
    KINDS,
    AuditEntry,
    LogCheckpoint,
    LogSigner,
    MessageEvent,
    PartyEvent,
    PrekeysRotated,
    Rejection,
    RelayCheckpointSeen,
    SessionEvent,
    clean_detail,
    entry_hash,
)
from securechan.errors import (
    AuditLogBroken,
    BadSignature,
    MalformedInput,
    Reason,
    SecurechanError,
    StorageError,
    UnsupportedVersion,
)
from securechan.identity._files import atomic_write, ensure_private_dir, read_bounded
from securechan.identity.events import SecurityEvent
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity

__all__ = [
    "CHECKPOINT_EVERY",
    "DB_FILE",
    "HEAD_FILE",
    "SCHEMA_VERSION",
    "ZERO_HASH",
    "AuditLog",
    "VerifyReport",
]

DB_FILE = "audit.db"
HEAD_FILE = "audit.head"
CHECKPOINT_EVERY = 64
SCHEMA_VERSION = 1
ZERO_HASH = bytes(32)
_MAX_HEAD = 16 * 1024

_SCHEMA_V1 = (
    "CREATE TABLE entries ("
    " idx INTEGER PRIMARY KEY CHECK (idx >= 0),"
    " kind TEXT NOT NULL,"
    " entry BLOB NOT NULL,"
    " hash BLOB NOT NULL CHECK (length(hash) = 32))",
    # Finds the last checkpoint without a scan; `kind` repeats the entry's own
    # kind, and verify() refuses a row where the two differ.
    "CREATE INDEX entries_kind ON entries (kind, idx)",
)

# Upgrade path: _MIGRATIONS[v] turns a version-v file into version v + 1 inside
# the transaction that records the new version. Empty while only v1 exists.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

# SQLite result codes that mean "could not get at the file", not "the file is
# damaged": they become StorageError; every other failure is a broken log.
_ACCESS_ERRORS = frozenset(
    {
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_CANTOPEN",
        "SQLITE_PERM",
        "SQLITE_READONLY",
        "SQLITE_FULL",
        "SQLITE_NOMEM",
        "SQLITE_AUTH",
    }
)


def _now() -> int:
    return int(time.time())


# What a damaged file can make sqlite3 raise: its own errors, and a
# UnicodeDecodeError when an error message quotes non-UTF-8 schema text.
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _sqlite_error(e: Exception, where: str, index: int | None) -> SecurechanError:
    """Map a SQLite failure to the error tree (no data in the message)."""
    if not isinstance(e, sqlite3.Error):
        return AuditLogBroken(index, "the database file is damaged (unreadable text)")
    name = str(getattr(e, "sqlite_errorname", "") or "")
    if name in _ACCESS_ERRORS or name.startswith("SQLITE_IOERR"):
        return StorageError(f"cannot use {where}: {e}")
    return AuditLogBroken(index, f"the database file is damaged ({e})")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` established about an intact log.

    ``last_checkpoint`` is the index of the last signed checkpoint entry
    (``None`` if there is none yet); ``unsigned`` counts the entries after it,
    which no signature covers yet. ``head_checkpoint`` is the checkpoint that
    ``audit.head`` holds. ``signers`` are the keys the log introduced to sign
    checkpoints (``log-signer`` entries), in order of first introduction.
    """

    entries: int
    checkpoints: int
    last_checkpoint: int | None
    unsigned: int
    head_checkpoint: int | None
    signers: tuple[Fingerprint, ...]


class _Tip:
    """Where the next entry goes: its index and the hash it chains from."""

    __slots__ = ("head", "next")

    def __init__(self, next_index: int, head: bytes) -> None:
        self.next = next_index
        self.head = head


def _parse_row(index: int, row: tuple[Any, ...] | None) -> AuditEntry:
    """The entry in ``row`` (idx, kind, entry, hash), which must be entry
    ``index``: parsed strictly and checked against its row."""
    if row is None:
        raise AuditLogBroken(index, f"entry {index} is missing")
    idx, kind, blob, stored = row
    if type(idx) is not int:
        raise AuditLogBroken(index, "a row has a damaged index")
    if idx != index:
        # Rows are read in index order, so a larger index means rows are gone.
        raise AuditLogBroken(index, f"entry {index} is missing (the next row is entry {idx})")
    if type(blob) is not bytes or type(stored) is not bytes or type(kind) is not str:
        raise AuditLogBroken(index, "the row is damaged")
    try:
        entry = AuditEntry.from_bytes(blob)
    except (SecurechanError, ValueError, TypeError):
        raise AuditLogBroken(index, "the entry is malformed") from None
    if entry.index != index:
        raise AuditLogBroken(index, f"the row holds entry {entry.index} (moved or reordered)")
    if entry.kind != kind:
        raise AuditLogBroken(index, "the row's kind column does not match the entry")
    return entry


class _Chain:
    """Recomputes the hash chain one stored row at a time.

    Raises :class:`AuditLogBroken` at the first row that does not follow: a
    gap, a row out of place, a malformed entry, a hash that does not chain,
    or a checkpoint that does not sign the chain before it. With
    ``check_signatures`` every checkpoint's signature is verified with the
    key introduced by an earlier ``log-signer`` entry.
    """

    def __init__(self, *, start: int = 0, prev: bytes = ZERO_HASH, check_signatures: bool) -> None:
        self.next = start
        self.prev = prev
        self.check_signatures = check_signatures
        self.signers: dict[bytes, PublicIdentity] = {}
        self.order: list[Fingerprint] = []
        self.checkpoints = 0
        self.last_checkpoint: tuple[int, LogCheckpoint] | None = None
        self.last_good = -1  # index of the last checkpoint that verified

    def feed(self, row: tuple[Any, ...]) -> AuditEntry:
        """Check the next row; return its entry."""
        i = self.next
        entry = _parse_row(i, row)
        digest = entry_hash(self.prev, row[2])
        if digest != row[3]:
            raise AuditLogBroken(
                i, "the entry does not chain from the one before it (changed, inserted or moved)"
            )
        fields = entry.fields
        if isinstance(fields, LogSigner):
            fp = fields.identity.fingerprint
            if fp.digest not in self.signers:
                self.order.append(fp)
            self.signers[fp.digest] = fields.identity
        elif isinstance(fields, LogCheckpoint):
            self._checkpoint(i, entry.time, fields)
        self.prev = digest
        self.next = i + 1
        return entry

    def _checkpoint(self, i: int, at: int, cp: LogCheckpoint) -> None:
        if cp.count != i:
            raise AuditLogBroken(i, f"the checkpoint claims to be at entry {cp.count}")
        if cp.time != at:
            raise AuditLogBroken(i, "the checkpoint's time differs from its entry's")
        if cp.head != self.prev:
            since = "the start" if self.last_good < 0 else f"entry {self.last_good}"
            raise AuditLogBroken(
                i,
                f"the signed checkpoint does not match the entries before it: "
                f"an entry after {since} was changed, inserted, removed or reordered",
            )
        if self.check_signatures:
            signer = self.signers.get(cp.signer)
            if signer is None:
                raise AuditLogBroken(i, "the checkpoint's key was never introduced in the log")
            try:
                signer.verify(cp.signature, cp.body_bytes(), context=CONTEXT_CHECKPOINT)
            except BadSignature:
                raise AuditLogBroken(i, "the checkpoint's signature does not verify") from None
        self.checkpoints += 1
        self.last_checkpoint = (i, cp)
        self.last_good = i


class AuditLog:
    """The audit log of one home folder. Open it with :meth:`open`.

    One instance per thread (``sqlite3``'s rule). Several instances and
    processes may share a home: every append is one ``BEGIN IMMEDIATE``
    transaction that reads the tip of the chain inside it.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        home: Path,
        identity: Identity | None,
        *,
        read_only: bool,
        clock: Callable[[], int],
        checkpoint_every: int,
    ) -> None:
        self._db = db
        self.home = home
        self._identity = identity
        self._read_only = read_only
        self._clock = clock
        self._every = checkpoint_every

    # --- opening ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path | str,
        identity: Identity | None = None,
        *,
        read_only: bool = False,
        clock: Callable[[], int] = _now,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> AuditLog:
        """Open (creating if needed) the log of ``home``.

        ``identity`` is needed only to sign checkpoints; without it entries
        are appended and the checkpoint they are due is written the next
        time the log is opened with the identity. With it, opening also
        writes any checkpoint that is due (and a hand-over checkpoint after
        the identity was replaced) and brings ``audit.head`` up to date.

        ``read_only`` opens an existing log for :meth:`entries` and
        :meth:`verify` without creating or changing anything; a missing log
        raises :class:`StorageError` (or :class:`AuditLogBroken` when
        ``audit.head`` survives it).

        A writer refuses (:class:`AuditLogBroken`) a database that lacks the
        checkpoint ``audit.head`` records, so no new checkpoint ever replaces
        the evidence of a truncation.
        """
        if type(checkpoint_every) is not int or checkpoint_every < 1:
            raise ValueError("checkpoint_every is a positive integer")
        if read_only and identity is not None:
            raise ValueError("a read-only log signs nothing: give no identity")
        home = Path(home)
        path = home / DB_FILE
        db = cls._connect_read_only(home, path) if read_only else cls._connect(home, path)
        log = cls(
            db,
            home,
            identity,
            read_only=read_only,
            clock=clock,
            checkpoint_every=checkpoint_every,
        )
        try:
            if not read_only:
                log._check_head_present()
                if identity is not None:
                    log._catch_up()
        except BaseException:
            db.close()
            raise
        return log

    @staticmethod
    def _no_log(home: Path) -> SecurechanError:
        """No log: broken if ``audit.head`` outlived it, else simply absent."""
        if (home / HEAD_FILE).exists():
            return AuditLogBroken(0, f"{DB_FILE} is missing or empty but {HEAD_FILE} is there")
        return StorageError(f"no audit log in {home}")

    @classmethod
    def _connect(cls, home: Path, path: Path) -> sqlite3.Connection:
        if not path.exists() and (home / HEAD_FILE).exists():
            raise cls._no_log(home)  # before creating anything
        ensure_private_dir(home)
        try:
            # Created here with mode 0600; SQLite gives -wal and -shm the same.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}") from None
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except _SQLITE_ERRORS as e:
            raise _sqlite_error(e, str(path), None) from None
        try:
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StorageError(f"{path}: the audit log needs a file system with WAL support")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA secure_delete = ON")
            _init_schema(db, path)
        except _SQLITE_ERRORS as e:
            db.close()
            raise _sqlite_error(e, str(path), None) from None
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def _connect_read_only(cls, home: Path, path: Path) -> sqlite3.Connection:
        if not path.exists():
            raise cls._no_log(home)
        try:
            db = sqlite3.connect(
                path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, timeout=30.0
            )
        except _SQLITE_ERRORS as e:
            raise _sqlite_error(e, str(path), None) from None
        try:
            db.execute("PRAGMA query_only = ON")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            _check_version(version, bool(tables), path, writable=False)
            if version == 0:
                raise cls._no_log(home)
        except _SQLITE_ERRORS as e:
            db.close()
            raise _sqlite_error(e, str(path), None) from None
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The database file."""
        return self.home / DB_FILE

    @property
    def head_path(self) -> Path:
        """The file holding the newest signed checkpoint."""
        return self.home / HEAD_FILE

    # --- plumbing ----------------------------------------------------------------

    @contextmanager
    def _errors(self, index: int | None = None) -> Iterator[None]:
        try:
            yield
        except _SQLITE_ERRORS as e:
            raise _sqlite_error(e, str(self.path), index) from None

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` to write, a snapshot to read."""
        if write and self._read_only:
            raise ValueError("this log was opened read-only")
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                with self._errors():
                    self._db.execute("ROLLBACK")
            raise
        with self._errors():
            self._db.execute("COMMIT")

    def _tip(self) -> _Tip:
        """The next index and the hash of the last entry (inside a transaction)."""
        with self._errors():
            row = self._db.execute(
                "SELECT idx, hash FROM entries ORDER BY idx DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return _Tip(0, ZERO_HASH)
        idx, digest = row
        if type(idx) is not int or type(digest) is not bytes or len(digest) != 32:
            raise AuditLogBroken(None, "the last row is damaged")
        return _Tip(idx + 1, digest)

    def _row(self, index: int) -> tuple[Any, ...] | None:
        with self._errors(index):
            row = self._db.execute(
                "SELECT idx, kind, entry, hash FROM entries WHERE idx = ?", (index,)
            ).fetchone()
        return tuple(row) if row is not None else None

    def _last_checkpoint_index(self) -> int | None:
        with self._errors():
            (idx,) = self._db.execute(
                "SELECT max(idx) FROM entries WHERE kind = 'log-checkpoint'"
            ).fetchone()
        return idx if type(idx) is int else None

    def _last_checkpoint(self) -> tuple[AuditEntry, LogCheckpoint] | None:
        """The last checkpoint entry and its fields, or ``None``."""
        last = self._last_checkpoint_index()
        if last is None:
            return None
        entry = _parse_row(last, self._row(last))
        if not isinstance(entry.fields, LogCheckpoint):  # unreachable: the kind was checked
            raise AuditLogBroken(last, "the row's kind column does not match the entry")
        return entry, entry.fields

    def _insert(self, tip: _Tip, kind: str, fields: Any, at: int) -> AuditEntry:
        """Append one entry at ``tip`` and advance it."""
        entry = AuditEntry(index=tip.next, time=at, kind=kind, fields=fields)
        blob = entry.to_bytes()
        digest = entry_hash(tip.head, blob)
        with self._errors():
            self._db.execute(
                "INSERT INTO entries (idx, kind, entry, hash) VALUES (?, ?, ?, ?)",
                (entry.index, kind, blob, digest),
            )
        tip.next, tip.head = entry.index + 1, digest
        return entry

    # --- audit.head ----------------------------------------------------------------

    def _read_head(self) -> tuple[LogCheckpoint, bytes] | None:
        """The checkpoint in ``audit.head`` (signature not checked), or ``None``."""
        try:
            raw = read_bounded(self.head_path, _MAX_HEAD)
        except FileNotFoundError:
            return None
        except StorageError:
            raise AuditLogBroken(None, f"{HEAD_FILE} is damaged (too large)") from None
        try:
            return LogCheckpoint.from_bytes(raw), raw
        except MalformedInput:
            raise AuditLogBroken(None, f"{HEAD_FILE} is damaged") from None

    def _check_head_present(self) -> None:
        """Refuse a database that lacks the checkpoint ``audit.head`` records."""
        head = self._read_head()
        if head is None:
            return
        cp, raw = head
        with self._transaction(write=False):
            n = self._tip().next
            row = self._row(cp.count)
        _check_head_row(cp, raw, row, n)

    def _sync_head(self) -> None:
        """Copy the newest checkpoint by our identity to ``audit.head``.

        Runs under the database's write lock, so two writers cannot put an
        older checkpoint back over a newer one; the database is committed
        first, so a crash leaves ``audit.head`` older, never ahead.
        """
        ident = self._identity
        if ident is None:
            return
        with self._transaction(write=True):
            found = self._last_checkpoint()
            if found is None or found[1].signer != ident.fingerprint.digest:
                return
            entry, cp = found
            try:
                ident.public.verify(cp.signature, cp.body_bytes(), context=CONTEXT_CHECKPOINT)
            except BadSignature:
                raise AuditLogBroken(
                    entry.index, "the checkpoint's signature does not verify"
                ) from None
            head = self._read_head()
            if head is not None and head[0].count >= cp.count:
                return
            atomic_write(self.head_path, cp.to_bytes(), replace=True)

    # --- writing -------------------------------------------------------------------

    def _checkpoint_due(self, tip: _Tip) -> bool:
        last = self._last_checkpoint_index()
        return tip.next - (last + 1 if last is not None else 0) >= self._every

    def _catch_up(self) -> None:
        """On open with an identity: write a due or hand-over checkpoint, and
        bring ``audit.head`` up to date (after a crash between the two)."""
        ident = self._identity
        if ident is None:
            return
        with self._transaction(write=True):
            tip = self._tip()
            last = self._last_checkpoint()
            handover = last is not None and last[1].signer != ident.fingerprint.digest
            if handover or self._checkpoint_due(tip):
                self._write_checkpoint(tip, self._clock())
        self._sync_head()

    def _check_unsigned_tail(self) -> None:
        """Before signing: the entries since the last checkpoint must chain.

        A writer signs whatever chain it finds; checking the short stretch it
        is about to vouch for keeps it from signing over a careless edit.
        """
        last = self._last_checkpoint_index()
        start = last if last is not None else 0
        prev = ZERO_HASH
        if start > 0:
            row = self._row(start - 1)
            if row is None or type(row[3]) is not bytes:
                raise AuditLogBroken(start - 1, "the row is missing or damaged")
            prev = row[3]
        chain = _Chain(start=start, prev=prev, check_signatures=False)
        with self._errors(start):
            rows = self._db.execute(
                "SELECT idx, kind, entry, hash FROM entries WHERE idx >= ? ORDER BY idx", (start,)
            ).fetchall()
        for row in rows:
            chain.feed(tuple(row))

    def _write_checkpoint(self, tip: _Tip, at: int) -> AuditEntry:
        """Inside a write transaction: sign the chain up to ``tip``.

        A key signs only after a ``log-signer`` entry introduced it; one
        introduction lasts while the same key signs every checkpoint.
        """
        ident = self._identity
        if ident is None:
            raise ValueError("this log was opened without an identity: it cannot sign")
        self._check_unsigned_tail()
        signer = ident.fingerprint.digest
        last = self._last_checkpoint()
        if last is None or last[1].signer != signer:
            self._insert(tip, "log-signer", LogSigner(identity=ident.public), at)
        body = LogCheckpoint.body_for(count=tip.next, head=tip.head, time=at, signer=signer)
        signature = ident.sign(body, context=CONTEXT_CHECKPOINT)
        fields = LogCheckpoint(
            count=tip.next, head=tip.head, time=at, signer=signer, signature=signature
        )
        return self._insert(tip, "log-checkpoint", fields, at)

    def append(self, kind: str, /, *, at: int | None = None, **fields: Any) -> AuditEntry:
        """Append one entry of ``kind`` with ``fields``; return it.

        ``fields`` are the keyword arguments of the kind's record type (see
        :data:`securechan.audit.log_records.KINDS`); ``at`` defaults to the
        clock. The entry is durable when this returns. Writes the checkpoint
        that is due, if the log has an identity. Raises ``ValueError`` or
        ``TypeError`` for an unknown kind or fields that do not fit it.
        """
        record_type = KINDS.get(kind)
        if record_type is None or kind in INTERNAL_KINDS:
            raise ValueError(f"not an entry kind one can append: {kind!r}")
        return self._append(kind, record_type(**fields), at)

    def _append(self, kind: str, fields: Any, at: int | None) -> AuditEntry:
        when = self._clock() if at is None else at
        AuditEntry(index=0, time=when, kind=kind, fields=fields)  # misuse fails before locking
        checkpointed = False
        with self._transaction(write=True):
            tip = self._tip()
            entry = self._insert(tip, kind, fields, when)
            if self._identity is not None and self._checkpoint_due(tip):
                self._write_checkpoint(tip, when)
                checkpointed = True
        if checkpointed:
            self._sync_head()
        return entry

    def checkpoint(self, *, at: int | None = None) -> AuditEntry:
        """Sign the log as it is now; return the checkpoint entry.

        If the last entry already is a checkpoint by this identity, the log is
        signed as it is: that entry is returned and nothing is written. Raises
        ``ValueError`` if the log was opened without an identity, and
        :class:`AuditLogBroken` if the entries since the last checkpoint do
        not chain (nothing is signed then).
        """
        ident = self._identity
        if ident is None:
            raise ValueError("this log was opened without an identity: it cannot sign")
        with self._transaction(write=True):
            tip = self._tip()
            last = self._last_checkpoint()
            if (
                last is not None
                and last[0].index == tip.next - 1
                and last[1].signer == ident.fingerprint.digest
            ):
                entry = last[0]
            else:
                entry = self._write_checkpoint(tip, self._clock() if at is None else at)
        self._sync_head()
        return entry

    # --- typed helpers -------------------------------------------------------------

    def record(self, event: SecurityEvent) -> None:
        """The :data:`~securechan.identity.events.EventSink` of the identity layer.

        Maps each keystore and contact event to an entry of the same kind.
        Failures propagate: a security record that silently drops events
        would be worse than a loud error.
        """
        kind = event.kind.value
        if KINDS.get(kind) is not PartyEvent:
            raise ValueError(f"no audit entry kind for event {kind!r}")
        old = event.old_fingerprint
        fields = PartyEvent(
            name=event.name,
            fingerprint=Fingerprint.parse(event.fingerprint).digest,
            old_fingerprint=Fingerprint.parse(old).digest if old is not None else None,
        )
        self._append(kind, fields, event.at)

    def message_sent(
        self,
        *,
        conversation: bytes,
        seq: int,
        payload_hash: bytes,
        peer: Fingerprint,
        at: int | None = None,
    ) -> AuditEntry:
        """A message we signed and queued: its conversation, sequence number,
        SHA-256 of its signed payload record, and the recipient's key."""
        fields = MessageEvent(
            conversation=conversation, seq=seq, payload_hash=payload_hash, peer=peer.digest
        )
        return self._append("message-sent", fields, at)

    def message_received(
        self,
        *,
        conversation: bytes,
        seq: int,
        payload_hash: bytes,
        peer: Fingerprint,
        at: int | None = None,
    ) -> AuditEntry:
        """A message that passed every check, as :meth:`message_sent`."""
        fields = MessageEvent(
            conversation=conversation, seq=seq, payload_hash=payload_hash, peer=peer.digest
        )
        return self._append("message-received", fields, at)

    def session_started(
        self, *, conversation: bytes, peer: Fingerprint, role: str, at: int | None = None
    ) -> AuditEntry:
        """A new session; ``role`` is ``"initiator"`` or ``"responder"``."""
        fields = SessionEvent(conversation=conversation, peer=peer.digest, role=role)
        return self._append("session-started", fields, at)

    def rejected(
        self,
        reason: Reason,
        detail: str,
        *,
        conversation: bytes | None = None,
        peer: Fingerprint | None = None,
        at: int | None = None,
    ) -> AuditEntry:
        """Something refused: ``reason`` is its stable code (``Reason.REPLAY``),
        ``detail`` its message, made safe to print and cut to 500 characters."""
        fields = Rejection(
            reason=reason,
            detail=clean_detail(detail),
            conversation=conversation,
            peer=peer.digest if peer is not None else None,
        )
        return self._append("rejected", fields, at)

    def checkpoint_seen(
        self, *, origin: str, size: int, root_hash: bytes, at: int | None = None
    ) -> AuditEntry:
        """A relay transparency-log checkpoint we verified."""
        fields = RelayCheckpointSeen(origin=origin, size=size, root_hash=root_hash)
        return self._append("relay-checkpoint-seen", fields, at)

    def prekeys_rotated(self, *, relay: str, count: int, at: int | None = None) -> AuditEntry:
        """Prekeys published at ``relay`` (``count`` one-time keys)."""
        return self._append("prekeys-rotated", PrekeysRotated(relay=relay, count=count), at)

    # --- reading -------------------------------------------------------------------

    def entries(self, since: int | None = None) -> Iterator[AuditEntry]:
        """The entries from index ``since`` (default 0) on, parsed strictly.

        Read as stored: this checks each entry's format, not the chain or the
        signatures (that is :meth:`verify`). Raises :class:`AuditLogBroken`
        at an entry that does not parse.
        """
        start = 0 if since is None else since
        if type(start) is not int or start < 0:
            raise ValueError("since is a non-negative index")
        with self._transaction(write=False), self._errors(start):
            cursor = self._db.execute(
                "SELECT idx, entry FROM entries WHERE idx >= ? ORDER BY idx", (start,)
            )
            for idx, blob in cursor:
                if type(blob) is not bytes:
                    raise AuditLogBroken(idx, "the row is damaged")
                try:
                    entry = AuditEntry.from_bytes(blob)
                except (SecurechanError, ValueError, TypeError):
                    raise AuditLogBroken(idx, "the entry is malformed") from None
                if entry.index != idx:
                    raise AuditLogBroken(idx, f"the row holds entry {entry.index}")
                yield entry

    def verify(self, public_identity: PublicIdentity) -> VerifyReport:
        """Check the whole log against ``public_identity``; return a report.

        Recomputes every entry hash from the first, checks every checkpoint's
        signature (each by the key its ``log-signer`` entry introduced) and
        that it signs the chain before it, checks ``audit.head`` (signed by
        ``public_identity``, and present in the log), and that the last
        checkpoint is by ``public_identity``. Raises :class:`AuditLogBroken`
        naming the first entry where the log stops verifying (``index`` is
        ``None`` for a problem of a whole file). Changes nothing on disk.
        """
        trusted = public_identity
        head = self._read_head()
        if head is not None:
            cp, _ = head
            if cp.signer != trusted.fingerprint.digest:
                raise AuditLogBroken(
                    None, f"{HEAD_FILE} is signed by {Fingerprint(cp.signer)}, not by this identity"
                )
            try:
                trusted.verify(cp.signature, cp.body_bytes(), context=CONTEXT_CHECKPOINT)
            except BadSignature:
                raise AuditLogBroken(None, f"{HEAD_FILE}'s signature does not verify") from None
        chain = _Chain(check_signatures=True)
        head_row: tuple[Any, ...] | None = None
        with self._transaction(write=False):
            with self._errors(0):
                cursor = self._db.execute("SELECT idx, kind, entry, hash FROM entries ORDER BY idx")
            while True:
                with self._errors(chain.next):
                    row = cursor.fetchone()
                if row is None:
                    break
                chain.feed(tuple(row))
                if head is not None and row[0] == head[0].count:
                    head_row = tuple(row)
            # The entries all verified; SQLite's own check still refuses a file
            # that something other than SQLite wrote into (indexes included).
            with self._errors(None):
                problems = self._db.execute("PRAGMA integrity_check(1)").fetchall()
            if problems != [("ok",)]:
                raise AuditLogBroken(None, "the database file is damaged (integrity_check)")
        n = chain.next
        if head is not None:
            _check_head_row(head[0], head[1], head_row, n)
        last = chain.last_checkpoint
        if last is not None:
            if last[1].signer != trusted.fingerprint.digest:
                raise AuditLogBroken(
                    last[0],
                    f"the last signed checkpoint is by {Fingerprint(last[1].signer)}, "
                    f"not by this identity ({trusted.fingerprint})",
                )
            if head is None:
                raise AuditLogBroken(
                    None, f"{HEAD_FILE} is missing, but the log holds signed checkpoints"
                )
        return VerifyReport(
            entries=n,
            checkpoints=chain.checkpoints,
            last_checkpoint=last[0] if last is not None else None,
            unsigned=n - (last[0] + 1) if last is not None else n,
            head_checkpoint=head[0].count if head is not None else None,
            signers=tuple(chain.order),
        )


def _check_version(version: Any, has_tables: bool, path: Path, *, writable: bool) -> None:
    if type(version) is not int or version < 0:
        raise AuditLogBroken(None, "the database header is damaged")
    if version > SCHEMA_VERSION:
        raise UnsupportedVersion(f"{path} was written by a newer securechan (schema {version})")
    if version == 0 and has_tables:
        raise AuditLogBroken(None, "the database lost its schema version")
    if 0 < version < SCHEMA_VERSION and not writable:
        raise StorageError(
            f"{path} uses schema {version}; any command that writes the log upgrades it"
        )


def _init_schema(db: sqlite3.Connection, path: Path) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        _check_version(version, bool(tables), path, writable=True)
        if version == 0:
            for statement in _SCHEMA_V1:
                db.execute(statement)
            version = 1
        start = version
        while version < SCHEMA_VERSION:
            step = _MIGRATIONS.get(version)
            if step is None:
                raise UnsupportedVersion(f"{path}: no upgrade path from schema {version}")
            step(db)
            version += 1
        if version != start or not tables:
            # PRAGMA takes no parameters; the value is an int we computed.
            db.execute(f"PRAGMA user_version = {int(version)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _check_head_row(cp: LogCheckpoint, raw: bytes, row: tuple[Any, ...] | None, n: int) -> None:
    """The row at ``cp.count`` must be the checkpoint ``audit.head`` holds."""
    if cp.count >= n:
        raise AuditLogBroken(
            n,
            f"entries from {n} on are missing: {HEAD_FILE} holds a signed "
            f"checkpoint at entry {cp.count} (the log was cut short)",
        )
    if row is None:
        raise AuditLogBroken(cp.count, f"the checkpoint {HEAD_FILE} holds is missing")
    try:
        stored = _parse_row(cp.count, row).fields
    except AuditLogBroken:
        stored = None
    if not isinstance(stored, LogCheckpoint) or stored.to_bytes() != raw:
        raise AuditLogBroken(cp.count, f"the entry is not the checkpoint {HEAD_FILE} holds")
