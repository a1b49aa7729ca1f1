"""The local audit log: an append-only, hash-chained record of one party's
security events, signed at intervals by the party's own identity.

``docs/AUDIT.md`` ("Local audit log") is the normative description. In short:

* Two files in the home folder. ``audit.db`` (SQLite, opened by
  :mod:`securechan.sqlite_schema`: WAL, ``synchronous=FULL``,
  ``secure_delete=ON``; schema in ``securechan/schema/audit/``) holds one
  row per entry. ``audit.head`` holds a
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
or written raises :class:`~securechan.errors.StorageError`, and so does a log written by
a newer schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from securechan.audit.log_chain import (
    HEAD_FILE,
    ZERO_HASH,
    Chain,
    VerifyReport,
    check_head_row,
    check_head_signature,
    parse_blob,
    verdict,
)
from securechan.audit.log_events import AuditEvents
from securechan.audit.log_records import (
    CONTEXT_CHECKPOINT,
    INTERNAL_KINDS,
    KINDS,
    AuditEntry,
    LogCheckpoint,
    LogSigner,
)
from securechan.audit.log_store import DB_FILE, LogRows, Tip, open_db
from securechan.errors import (
    AuditLogBroken,
    BadSignature,
    MalformedInput,
    StorageError,
)
from securechan.identity._files import atomic_write, read_bounded
from securechan.identity.keys import Identity, PublicIdentity
from securechan.sqlite_schema import Schema

__all__ = [
    "CHECKPOINT_EVERY",
    "DB_FILE",
    "HEAD_FILE",
    "SCHEMA_VERSION",
    "ZERO_HASH",
    "AuditLog",
    "VerifyReport",
]

CHECKPOINT_EVERY = 64
_MAX_HEAD = 16 * 1024


def _legacy(db: sqlite3.Connection) -> int:
    # Tables but no version: the header was reset (version 1 always set one).
    raise AuditLogBroken(None, "the database lost its schema version")


SCHEMA = Schema("audit", application_id=0x73634155, title="a securechan audit log", legacy=_legacy)
"""``securechan/schema/audit/``: the table, its versions and upgrades."""
SCHEMA_VERSION = SCHEMA.version


def _now() -> int:
    return int(time.time())


class AuditLog(AuditEvents, LogRows):
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
        db = open_db(home, SCHEMA, read_only=read_only)
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

    @property
    def head_path(self) -> Path:
        """The file holding the newest signed checkpoint."""
        return self.home / HEAD_FILE

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
        check_head_row(cp, raw, row, n)

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

    def _checkpoint_due(self, tip: Tip) -> bool:
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
        chain = Chain(start=start, prev=prev, check_signatures=False)
        with self._errors(start):
            rows = self._db.execute(
                "SELECT idx, kind, entry, hash FROM entries WHERE idx >= ? ORDER BY idx", (start,)
            ).fetchall()
        for row in rows:
            chain.feed(tuple(row))

    def _write_checkpoint(self, tip: Tip, at: int) -> AuditEntry:
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
                yield parse_blob(idx, blob)

    def newest(self, kind: str, *, since: int) -> list[AuditEntry]:
        """The entries of ``kind``, newest first, back to (not including) the
        first one whose time is before Unix time ``since``; parsed strictly.

        For a writer that must not record one event twice after a crash
        (client/group_audit.py: a group joined by a welcome); the ``(kind,
        idx)`` index keeps it short when ``kind`` is rare. Raises
        :class:`AuditLogBroken` at an entry that does not parse.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown entry kind {kind!r}")
        out: list[AuditEntry] = []
        with self._transaction(write=False), self._errors(None):
            cursor = self._db.execute(
                "SELECT idx, entry FROM entries WHERE kind = ? ORDER BY idx DESC", (kind,)
            )
            for idx, blob in cursor:
                entry = parse_blob(idx, blob)
                if entry.time < since:
                    break
                out.append(entry)
        return out

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
        check_head_signature(head, trusted)
        chain = Chain(check_signatures=True)
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
        return verdict(chain, head, head_row, trusted)
