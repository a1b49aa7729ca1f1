"""The audit log's SQLite file: opening it, mapping SQLite's failures into
the error tree, and the ``entries`` table row by row (:class:`LogRows`).

:class:`securechan.audit.log.AuditLog` builds the chain's policy (when to
sign, ``audit.head``, verification) on top of these rows; ``docs/AUDIT.md``
("Local audit log") describes both. The schema (``securechan/schema/audit/``)
is passed in by the caller, so the log's module keeps the one ``SCHEMA``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from securechan.audit.log_chain import HEAD_FILE, ZERO_HASH, parse_row
from securechan.audit.log_records import AuditEntry, LogCheckpoint, entry_hash
from securechan.errors import AuditLogBroken, SecurechanError, StorageError
from securechan.identity._files import ensure_private_dir
from securechan.sqlite_schema import OwnsConnection, Schema, connect, prepare_file

__all__ = ["DB_FILE", "SQLITE_ERRORS", "LogRows", "Tip", "open_db", "sqlite_error"]

DB_FILE = "audit.db"

# SQLite result codes that mean "could not get at the file", not "the file is
# damaged": they become StorageError; every other failure is a broken log.
_ACCESS_ERRORS = frozenset(
    "SQLITE_" + name
    for name in ("BUSY", "LOCKED", "CANTOPEN", "PERM", "READONLY", "FULL", "NOMEM", "AUTH")
)

# What a damaged file can make sqlite3 raise: its own errors, and a
# UnicodeDecodeError when an error message quotes non-UTF-8 schema text.
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def sqlite_error(e: Exception, where: str, index: int | None) -> SecurechanError:
    """Map a SQLite failure to the error tree (no data in the message)."""
    if not isinstance(e, sqlite3.Error):
        return AuditLogBroken(index, "the database file is damaged (unreadable text)")
    name = str(getattr(e, "sqlite_errorname", "") or "")
    if name in _ACCESS_ERRORS or name.startswith("SQLITE_IOERR"):
        return StorageError(f"cannot use {where}: {e}")
    return AuditLogBroken(index, f"the database file is damaged ({e})")


def _no_log(home: Path) -> SecurechanError:
    """No log: broken if ``audit.head`` outlived it, else simply absent."""
    if (home / HEAD_FILE).exists():
        return AuditLogBroken(0, f"{DB_FILE} is missing or empty but {HEAD_FILE} is there")
    return StorageError(f"no audit log in {home}")


def open_db(home: Path, schema: Schema, *, read_only: bool) -> sqlite3.Connection:
    """Open ``home``'s ``audit.db``: create and upgrade it to ``schema`` for a
    writer; for a reader, an existing log of a version this code reads."""
    path = home / DB_FILE
    if read_only:
        if not path.exists():
            raise _no_log(home)
    else:
        if not path.exists() and (home / HEAD_FILE).exists():
            raise _no_log(home)  # before creating anything
        ensure_private_dir(home)
        prepare_file(path)
    try:
        db = connect(path, read_only=True) if read_only else connect(path, foreign_keys=False)
    except SQLITE_ERRORS as e:
        raise sqlite_error(e, str(path), None) from None
    try:
        if read_only:
            if schema.check(db, path) == 0:
                raise _no_log(home)
        else:
            schema.apply(db, path)
    except SQLITE_ERRORS as e:
        db.close()
        raise sqlite_error(e, str(path), None) from None
    except BaseException:
        db.close()
        raise
    return db


class Tip:
    """Where the next entry goes: its index and the hash it chains from."""

    __slots__ = ("head", "next")

    def __init__(self, next_index: int, head: bytes) -> None:
        self.next = next_index
        self.head = head


class LogRows(OwnsConnection):
    """The ``entries`` table of one open log: transactions, the tip of the
    chain, single rows and appending one (a mixin of ``AuditLog``), and
    closing the connection."""

    _db: sqlite3.Connection
    _read_only: bool
    home: Path

    @property
    def path(self) -> Path:
        """The database file."""
        return self.home / DB_FILE

    @contextmanager
    def _errors(self, index: int | None = None) -> Iterator[None]:
        try:
            yield
        except SQLITE_ERRORS as e:
            raise sqlite_error(e, str(self.path), index) from None

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

    def _tip(self) -> Tip:
        """The next index and the hash of the last entry (inside a transaction)."""
        with self._errors():
            row = self._db.execute(
                "SELECT idx, hash FROM entries ORDER BY idx DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return Tip(0, ZERO_HASH)
        idx, digest = row
        if type(idx) is not int or type(digest) is not bytes or len(digest) != 32:
            raise AuditLogBroken(None, "the last row is damaged")
        return Tip(idx + 1, digest)

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
        entry = parse_row(last, self._row(last))
        if not isinstance(entry.fields, LogCheckpoint):  # unreachable: the kind was checked
            raise AuditLogBroken(last, "the row's kind column does not match the entry")
        return entry, entry.fields

    def _insert(self, tip: Tip, kind: str, fields: Any, at: int) -> AuditEntry:
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
