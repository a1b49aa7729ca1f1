"""The relay's embedded storage: SQLite in WAL mode, ``synchronous=FULL``, group commit.

Open with ``storage = await SqliteStorage.open(path)`` (an async class method:
it creates the folder with mode 0700 and the file with mode 0600, then runs the
schema migrations in a worker thread) and finish with ``await storage.close()``
(or use it as ``async with``).

**Writes and group commit.** One writer thread owns the only write connection.
Each write method turns into a job, a function of that connection, put on a
queue; the caller awaits an asyncio future. The writer takes the first job
(blocking), drains up to :data:`MAX_BATCH` jobs already waiting (under load
also those arriving within a few milliseconds, see
:mod:`securechan.relay.batching`), and runs them all in one ``BEGIN IMMEDIATE``
... ``COMMIT``, each inside its own ``SAVEPOINT``: a job that raises
(``QueueFull``, ``ValueError``, an SQLite error) is rolled back to its
savepoint and fails alone while the others commit. Futures are resolved only
after ``COMMIT`` returned, and with ``synchronous=FULL`` that commit synced the
WAL, so a caller that sees success has its write on stable storage. While one
batch is being synced the next one gathers, so N concurrent sends cost far
fewer than N syncs (:attr:`commits` counts them). If ``BEGIN`` or ``COMMIT``
itself fails (disk full, I/O error), nothing of the batch was stored and every
job of it fails with :class:`~securechan.errors.StorageError`; callers may
retry (``put_envelope`` is idempotent on ``msg_id``). A job whose caller was
cancelled still runs: a resent envelope then comes back as a duplicate.

**Reads** run on a small dedicated thread pool with as many read-only
connections (``mode=ro``), so the event loop never blocks; in WAL mode readers
see the last commit and never block the writer. A queue's depth is a counter
kept by triggers, so the queue-full check reads one row however deep it is.

**Deleted data does not linger.** ``secure_delete=ON`` overwrites deleted rows
(acknowledged or expired envelopes, claimed one-time prekeys, deleted queues)
in the database pages. Older copies of those pages stay in the WAL file until
it is checkpointed and truncated, which the writer does when it has been idle
for ``idle_checkpoint`` seconds after a deletion, at :meth:`close`, and on
:meth:`SqliteStorage.checkpoint`. (Blocks the file system freed are out of
reach of any database; full-disk encryption covers them.)

**Schema.** Connections and the schema come from :mod:`securechan.sqlite_schema`:
the tables are in ``securechan/schema/relay/``, ``PRAGMA user_version`` holds
the version, each upgrade step runs in one transaction with its new version
number (all or nothing), and a file from a newer version is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

from securechan.errors import StorageError
from securechan.relay.batching import take_batch
from securechan.relay.storage import (
    ID_SIZE,
    KEY_SIZE,
    Envelope,
    HeldEnvelope,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    QueueRecord,
    Quota,
    QuotaExceeded,
    StorageClosed,
)
from securechan.sqlite_schema import Schema, connect, prepare_file

__all__ = [
    "MAX_BATCH",
    "MAX_ENVELOPE_BYTES",
    "MAX_FETCH",
    "MAX_ONE_TIME_HELD",
    "MAX_PREKEY_BLOB",
    "SCHEMA_VERSION",
    "SqliteSettings",
    "SqliteStorage",
]

T = TypeVar("T")
Conn = sqlite3.Connection
log = logging.getLogger("securechan.relay")

MAX_BATCH: Final = 256
"""Most write jobs sharing one transaction (and one sync)."""
MAX_FETCH: Final = 1000
"""Most envelopes one :meth:`SqliteStorage.fetch` returns, whatever ``limit`` says."""
MAX_ENVELOPE_BYTES: Final = 16 * 1024 * 1024
"""Hard ceiling on one envelope; the relay enforces its own, lower, limit."""
MAX_PREKEY_BLOB: Final = 64 * 1024
"""Hard ceiling on one sealed prekey blob."""
MAX_ONE_TIME_HELD: Final = 10_000
"""Most one-time prekey blobs one queue may hold."""
MAX_NONCE: Final = 64
"""Longest request nonce."""
VACUUM_FREE_PAGES: Final = 64
"""Free pages (256 KiB of 4 KiB pages) above which the idle writer reclaims space."""
VACUUM_STEP: Final = 256
"""Pages one ``PRAGMA incremental_vacuum`` step gives back (one short write)."""
MAX_CACHED_QUEUES: Final = 65_536
"""Most queue records held in memory (see :meth:`SqliteStorage.queue_by_sid`)."""

_SYNC_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteSettings:
    """The settings in force on the write connection (for tests and start-up logs)."""

    journal_mode: str
    synchronous: int  # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
    secure_delete: int
    foreign_keys: int
    busy_timeout_ms: int
    schema_version: int


# --- schema ------------------------------------------------------------------


SCHEMA: Final = Schema("relay", application_id=0x7363524C, title="a securechan relay database")
"""``securechan/schema/relay/``: the tables (v2.sql), and upgrade-to-v2.sql from
version 1 (byte quotas). v1.sql stays for the upgrade test."""
SCHEMA_VERSION: Final = SCHEMA.version


# --- argument checks (misuse is a bug in the caller: TypeError / ValueError) ---


def _bytes(value: object, name: str, *, size: int | None = None, max_size: int = 0) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if size is not None and len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    if size is None and not 1 <= len(value) <= max_size:
        raise ValueError(f"{name} must be 1 to {max_size} bytes")
    return value


def _id(value: object, name: str) -> bytes:
    return _bytes(value, name, size=ID_SIZE)


def _key(value: object, name: str) -> bytes:
    return _bytes(value, name, size=KEY_SIZE)


def _int(value: object, name: str, *, low: int = _INT64[0]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int")
    if not low <= value <= _INT64[1]:
        raise ValueError(f"{name} is out of range")
    return value


def _sqlite_words(exc: sqlite3.Error) -> str:
    """SQLite's own words for a failure ("database or disk is full
    (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"): names no data."""
    name = getattr(exc, "sqlite_errorname", None)
    # Without an SQLite error name the text is Python's, which may quote data.
    return f"{exc} ({name})" if name else type(exc).__name__


def _storage_error(exc: BaseException) -> BaseException:
    """What a caller sees for ``exc``: SQLite's errors become one StorageError."""
    if isinstance(exc, sqlite3.Error):
        err = StorageError(f"the relay database failed: {_sqlite_words(exc)}")
        err.__cause__ = exc
        return err
    return exc


def _prepare_file(path: Path) -> None:
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_file(path)


@dataclass(slots=True)
class _Job:
    fn: Callable[[Conn], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    transaction: bool
    then: Callable[[Any, asyncio.Future[Any]], bool] | None = None


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _queue_record(row: tuple[Any, ...]) -> QueueRecord:
    rid, sid, recipient_key, sender_key, contact, created = row
    return QueueRecord(
        rid=rid,
        sid=sid,
        recipient_key=recipient_key,
        sender_key=sender_key,
        contact=bool(contact),
        created=created,
    )


_QUEUE_COLUMNS = "rid, sid, recipient_key, sender_key, contact, created"
_QUEUE_BY_RID = f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE rid = ?"  # noqa: S608 (constants)
_QUEUE_BY_SID = f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE sid = ?"  # noqa: S608 (constants)
_NONCE_UPSERT = (
    # A nonce past its expiry may be used again (it would be forgotten anyway):
    # the row is then renewed, otherwise nothing changes and rowcount is 0.
    "INSERT INTO nonces (key, nonce, expires) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key, nonce) DO UPDATE SET expires = excluded.expires"
    " WHERE nonces.expires < ?4"
)
_FULL: Final = object()  # a put_envelope job's answer when the queue is full
_PUT_CHECK = (
    "SELECT next_seq, depth,"
    " (SELECT seq FROM envelopes WHERE rid = ?1 AND msg_id = ?2), bytes, sender_key"
    " FROM queues WHERE rid = ?1"
)
_SENDER_BYTES = "SELECT coalesce(sum(bytes), 0) FROM queues WHERE sender_key = ?"


class SqliteStorage:
    """:class:`~securechan.relay.storage.RelayStorage` on one SQLite file.

    Construct with :meth:`open`. Methods raise :class:`StorageClosed` after
    :meth:`close`, :class:`~securechan.errors.StorageError` when SQLite fails,
    and ``TypeError``/``ValueError`` on misuse: wrong sizes, out-of-range
    integers, a write to a queue that does not exist, a duplicate queue id.
    """

    commits: int
    """Write transactions committed so far (each one sync with ``FULL``)."""
    write_jobs: int
    """Write jobs run so far; ``write_jobs / commits`` is the mean batch size."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        readers: int = 2,
        busy_timeout: float = 5.0,
        idle_checkpoint: float = 1.0,
    ) -> None:
        """Blocking: prefer ``await SqliteStorage.open(...)`` from async code."""
        sync = synchronous.upper() if isinstance(synchronous, str) else ""
        if sync not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        if not 1 <= readers <= 16:
            raise ValueError("readers must be 1 to 16")
        if not 0 < busy_timeout <= 600 or not 0 < idle_checkpoint <= 3600:
            raise ValueError("busy_timeout and idle_checkpoint must be positive seconds")
        # absolute(), not resolve(): a symlink at the path must be refused, not followed.
        self.path = Path(path).absolute()
        self.commits = 0
        self.write_jobs = 0
        self.used_bytes = 0
        self.reclaimed_pages = 0
        self._page_size = 4096
        self._idle_checkpoint = idle_checkpoint
        self._deleted = False  # writer thread only: a deletion since the last truncation
        self._next_purge = _INT64[0]  # writer thread only: when expired nonces go next
        # Queue records by sid and by rid, filled by reads and dropped around
        # every write that changes a queue (see _queue_by); event loop only.
        self._by_sid: dict[bytes, QueueRecord] = {}
        self._by_rid: dict[bytes, QueueRecord] = {}
        self._queue_writes = 0
        self._lock = threading.Lock()
        self._closed = False
        self._shut = threading.Event()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._readers: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._all_readers: list[Conn] = []
        try:
            _prepare_file(self.path)
        except OSError as e:
            raise StorageError(f"cannot create {self.path}: {e.strerror}") from None
        try:
            self._conn = self._connect_writer(sync, busy_timeout)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open {self.path}: {e}") from None
        try:
            SCHEMA.apply(self._conn, self.path)
            self._incremental_vacuum_on()
            self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            self._used(self._conn)
            for _ in range(readers):
                self._connect_reader(busy_timeout)
        except BaseException as e:
            for conn in [*self._all_readers, self._conn]:
                conn.close()
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"cannot open {self.path}: {e}") from None
            raise
        self._read_pool = ThreadPoolExecutor(readers, thread_name_prefix="relay-db-read")
        self._writer = threading.Thread(target=self._writer_main, name="relay-db-write")
        # A daemon: a relay that exits without close() loses nothing already
        # acknowledged (that was committed), and must not hang on exit.
        self._writer.daemon = True
        self._writer.start()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        readers: int = 2,
        busy_timeout: float = 5.0,
        idle_checkpoint: float = 1.0,
    ) -> Self:
        """Open (creating if needed) the database at ``path`` and migrate it.

        ``synchronous`` below ``FULL`` breaks the durability contract (a
        power loss may lose acknowledged envelopes); it exists for benchmarks.
        Raises :class:`~securechan.errors.StorageError` if the file cannot be
        created, is not a database, or has a newer schema.
        """
        return await asyncio.to_thread(
            cls,
            path,
            synchronous=synchronous,
            readers=readers,
            busy_timeout=busy_timeout,
            idle_checkpoint=idle_checkpoint,
        )

    def _connect_writer(self, sync: str, busy_timeout: float) -> Conn:
        # auto_vacuum takes effect on a new, empty file only, and only before
        # WAL mode writes its header (see _incremental_vacuum_on).
        return connect(
            self.path,
            synchronous=sync,  # from the _SYNC_MODES allow-list
            incremental_vacuum=True,
            journal_size_limit=64 * 1024 * 1024,  # bound the idle WAL: 64 MiB
            timeout=busy_timeout,
            check_same_thread=False,
        )

    def _incremental_vacuum_on(self) -> None:
        """``auto_vacuum = INCREMENTAL``: free pages can be given back to the
        file system in small steps. A new file gets it before its first
        table (set in :meth:`_connect_writer`); a file made before it needs
        one full ``VACUUM`` (at the first open by this version: it rewrites
        the file once and needs as much free space again)."""
        conn = self._conn
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        log.warning("relay storage: one-time VACUUM of %s for incremental vacuum", self.path.name)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")

    def _connect_reader(self, busy_timeout: float) -> None:
        conn = connect(self.path, read_only=True, timeout=busy_timeout, check_same_thread=False)
        self._all_readers.append(conn)
        self._readers.put(conn)

    # --- plumbing ---------------------------------------------------------------

    async def _write(
        self,
        fn: Callable[[Conn], T],
        *,
        transaction: bool = True,
        then: Callable[[Any, asyncio.Future[Any]], bool] | None = None,
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # no job may enter the queue behind close()'s stop mark
            if self._closed:
                raise StorageClosed("the relay storage is closed")
            self._jobs.put(_Job(fn, loop, future, transaction, then))
        return cast(T, await future)

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        with self._lock:
            if self._closed:
                raise StorageClosed("the relay storage is closed")
            done = self._read_pool.submit(self._run_read, fn)
        return await asyncio.wrap_future(done)

    def _run_read(self, fn: Callable[[Conn], T]) -> T:
        conn = self._readers.get()  # as many connections as threads: never waits
        try:
            return fn(conn)
        except sqlite3.Error as e:
            raise _storage_error(e) from None
        finally:
            self._readers.put(conn)

    def _writer_main(self) -> None:
        conn = self._conn
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=self._idle_checkpoint if self._deleted else None)
                except queue.Empty:
                    self._reclaim(conn)
                    self._truncate_wal(conn)
                    continue
                if job is None:
                    break
                batch, stop = take_batch(self._jobs, job, MAX_BATCH)
                self._run_batch(conn, batch)
                if self._deleted:  # never idle under load: one step now and then
                    self._reclaim(conn, steps=1, above=16 * VACUUM_FREE_PAGES)
                if stop:
                    break
            self._truncate_wal(conn)
        finally:
            conn.close()

    def _run_batch(self, conn: Conn, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, bool, Any]] = []
        transactional = [job for job in batch if job.transaction]
        if transactional:
            outcomes += self._commit(conn, transactional)
        for job in batch:
            if not job.transaction:
                try:
                    outcomes.append((job, True, job.fn(conn)))
                except Exception as e:
                    outcomes.append((job, False, _storage_error(e)))
        # One wake-up per event loop and batch, not one per job.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for job, ok, value in outcomes:
            if ok and job.then is not None and self._hand_over(job.then, value, job.future):
                continue  # the continuation answers the caller
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle, settled)

    @staticmethod
    def _hand_over(
        then: Callable[[Any, asyncio.Future[Any]], bool], value: Any, future: asyncio.Future[Any]
    ) -> bool:
        try:
            return then(value, future)
        except Exception:  # the continuation could not start: answer the caller now
            log.exception("relay storage: a commit continuation failed")
            return False

    def _commit(self, conn: Conn, jobs: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        """Run ``jobs`` in one transaction, each in a savepoint; one sync at the end."""
        done: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as e:
                    if not conn.in_transaction:  # SQLite rolled everything back
                        done.append((job, False, _storage_error(e)))
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    done.append((job, False, _storage_error(e)))
                else:
                    conn.execute("RELEASE job")
                    done.append((job, True, value))
            conn.execute("COMMIT")
        except Exception as e:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # Nothing of this batch was stored: the jobs that had succeeded,
            # and those never run, fail with the batch.
            words = _sqlite_words(e) if isinstance(e, sqlite3.Error) else type(e).__name__
            failed = StorageError(f"the relay database failed ({words}); nothing was stored")
            failed.__cause__ = e
            ran = {id(job) for job, _, _ in done}
            done = [(job, False, failed) if ok else (job, ok, v) for job, ok, v in done]
            done += [(job, False, failed) for job in jobs if id(job) not in ran]
            return done
        self.commits += 1
        self.write_jobs += len(jobs)
        with contextlib.suppress(sqlite3.Error):
            self._used(conn)
        return done

    def _reclaim(self, conn: Conn, *, steps: int = 1 << 30, above: int = VACUUM_FREE_PAGES) -> None:
        """Give free pages back to the file system (writer thread, idle):
        steps of :data:`VACUUM_STEP` pages while more than
        :data:`VACUUM_FREE_PAGES` (``above``) are free and no write is
        waiting, at most ``steps`` of them (one after a batch under load);
        the file shrinks at the next WAL truncation."""
        try:
            for _ in range(steps):
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if free <= above or (steps > 1 and not self._jobs.empty()):
                    break
                # executescript steps the pragma to the end (execute would
                # free one page per call).
                conn.executescript(f"PRAGMA incremental_vacuum({int(VACUUM_STEP)});")
                self.reclaimed_pages += min(free, VACUUM_STEP)
            self._used(conn)
        except sqlite3.Error:
            log.warning("relay storage: incremental vacuum failed", exc_info=False)

    def _truncate_wal(self, conn: Conn) -> bool:
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        if busy == 0:
            self._deleted = False
        return bool(busy == 0)

    def _note_deletion(self) -> None:
        self._deleted = True  # runs on the writer thread, inside a job

    # --- queues -----------------------------------------------------------------

    async def create_queue(self, queue: QueueRecord) -> None:
        """Store a new queue; ``ValueError`` if its rid or sid exists."""
        if not isinstance(queue, QueueRecord) or not isinstance(queue.contact, bool):
            raise TypeError("queue must be a QueueRecord")
        row = (
            _id(queue.rid, "rid"),
            _id(queue.sid, "sid"),
            _key(queue.recipient_key, "recipient_key"),
            None if queue.sender_key is None else _key(queue.sender_key, "sender_key"),
            int(queue.contact),
            _int(queue.created, "created"),
        )

        def job(conn: Conn) -> None:
            try:
                conn.execute(
                    f"INSERT INTO queues ({_QUEUE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                    row,
                )
            except sqlite3.IntegrityError:
                raise ValueError("a queue with this rid or sid exists") from None

        await self._write(job)

    async def queue_by_rid(self, rid: bytes) -> QueueRecord | None:
        """The queue with receive id ``rid``, or ``None``."""
        _id(rid, "rid")
        return self._by_rid.get(rid) or await self._queue_by(_QUEUE_BY_RID, rid)

    async def queue_by_sid(self, sid: bytes) -> QueueRecord | None:
        """The queue with send id ``sid``, or ``None``.

        Queue records are cached in memory (every send reads one): a record
        read from the database is kept unless a write that changes a queue
        (securing, deleting) was submitted or finished while it was read, and
        each such write drops the queue's record when it is submitted and again
        when it has committed. So a record is never older than the last
        committed change, as a database read would be; this holds because one
        process owns the database (one writer connection) and only this
        object's methods change queues. Unknown ids are not cached.
        """
        _id(sid, "sid")
        return self._by_sid.get(sid) or await self._queue_by(_QUEUE_BY_SID, sid)

    async def _queue_by(self, sql: str, value: bytes) -> QueueRecord | None:
        def read(conn: Conn) -> QueueRecord | None:
            row = conn.execute(sql, (value,)).fetchone()
            return None if row is None else _queue_record(row)

        writes = self._queue_writes
        queue = await self._read(read)
        if queue is not None and writes == self._queue_writes:
            if len(self._by_sid) >= MAX_CACHED_QUEUES:
                self._by_sid.clear()
                self._by_rid.clear()
            self._by_sid[queue.sid] = queue
            self._by_rid[queue.rid] = queue
        return queue

    def _forget_queue(self, rid: bytes) -> None:
        self._queue_writes += 1  # a read in flight must not cache what it read
        queue = self._by_rid.pop(rid, None)
        if queue is not None:
            self._by_sid.pop(queue.sid, None)

    async def _queue_write(self, rid: bytes, job: Callable[[Conn], None]) -> None:
        self._forget_queue(rid)
        try:
            await self._write(job)
        finally:
            self._forget_queue(rid)

    async def set_sender_key(self, rid: bytes, sender_key: bytes) -> None:
        """Secure a queue; ``ValueError`` if there is no such queue."""
        args = (_key(sender_key, "sender_key"), _id(rid, "rid"))

        def job(conn: Conn) -> None:
            if conn.execute("UPDATE queues SET sender_key = ? WHERE rid = ?", args).rowcount != 1:
                raise ValueError("no such queue")

        await self._queue_write(rid, job)

    async def delete_queue(self, rid: bytes) -> None:
        """Delete a queue with its envelopes and prekeys (no error if absent)."""
        args = (_id(rid, "rid"),)

        def job(conn: Conn) -> None:
            conn.execute("DELETE FROM queues WHERE rid = ?", args)  # cascades
            self._note_deletion()

        await self._queue_write(rid, job)

    # --- envelopes --------------------------------------------------------------

    async def put_envelope(
        self,
        rid: bytes,
        msg_id: bytes,
        data: bytes,
        *,
        now: int,
        max_depth: int,
        nonce: NonceUse | None = None,
        then: Callable[[PutResult, asyncio.Future[PutResult]], bool] | None = None,
        quota: Quota | None = None,
    ) -> PutResult:
        """Append durably; idempotent on ``msg_id`` while the envelope is held.

        With ``quota``, :class:`QuotaExceeded` when the envelope would take
        the queue's bytes, its sender key's bytes (all queues secured with
        that key), the database's used pages or the file system's free space
        past a limit; checked in the write transaction, after the duplicate
        and depth checks.

        Raises :class:`QueueFull` when ``max_depth`` envelopes are held (a
        resend of one of them still answers ``duplicate``), ``ValueError`` if
        there is no such queue. With ``nonce``, the request nonce is recorded
        in the same transaction: :class:`NonceReused` (nothing stored) if it
        was recorded before; a full queue still records it.

        ``then(result, future)``, if given, runs on the writer thread right
        after the commit that stored (or found) the envelope, before the
        caller is answered; it must not block. If it returns ``True`` it has
        taken over answering: it must resolve ``future`` with ``result`` (the
        relay does so once the transparency log has committed the envelope's
        leaf, which spares the event loop a round trip between the two
        commits). If it returns ``False`` or raises, the caller is answered
        at once.
        """
        _id(rid, "rid")
        _id(msg_id, "msg_id")
        _bytes(data, "data", max_size=MAX_ENVELOPE_BYTES)
        _int(now, "now")
        _int(max_depth, "max_depth", low=1)
        if nonce is not None and not isinstance(nonce, NonceUse):
            raise TypeError("nonce must be a NonceUse")
        request = None if nonce is None else self._nonce_args(nonce)

        def job(conn: Conn) -> PutResult | object:
            if request is not None and not self._record_nonce(conn, *request):
                raise NonceReused("this request nonce was already used")
            row = conn.execute(_PUT_CHECK, (rid, msg_id)).fetchone()
            if row is None:
                raise ValueError("no such queue")
            seq, depth, held, queue_bytes, sender_key = row
            if held is not None:  # checked before fullness: a resend is never refused
                return PutResult(seq=held, duplicate=True)
            if depth >= max_depth:
                return _FULL  # not raised: the nonce stays recorded
            if quota is not None:
                over = self._over_quota(conn, quota, len(data), queue_bytes, sender_key)
                if over is not None:
                    return over  # not raised either
            # The envelope_added trigger moves next_seq on and counts the depth.
            conn.execute(
                "INSERT INTO envelopes (rid, seq, msg_id, data, received) VALUES (?, ?, ?, ?, ?)",
                (rid, seq, msg_id, data, now),
            )
            return PutResult(seq=seq, duplicate=False)

        def after(value: Any, future: asyncio.Future[Any]) -> bool:
            # Not for a full queue (the caller gets QueueFull at once).
            return then is not None and isinstance(value, PutResult) and then(value, future)

        if quota is not None and not isinstance(quota, Quota):
            raise TypeError("quota must be a Quota")
        result = await self._write(job, then=None if then is None else after)
        if result is _FULL:
            raise QueueFull("the queue is full")
        if isinstance(result, QuotaExceeded):
            raise result
        return cast(PutResult, result)

    def _over_quota(
        self, conn: Conn, quota: Quota, size: int, queue_bytes: int, sender_key: bytes | None
    ) -> QuotaExceeded | None:
        """The first limit of ``quota`` that ``size`` more bytes would pass."""
        if quota.queue_bytes is not None and queue_bytes + size > quota.queue_bytes:
            return QuotaExceeded("queue")
        if quota.sender_bytes is not None and sender_key is not None:
            (held,) = conn.execute(_SENDER_BYTES, (sender_key,)).fetchone()
            if held + size > quota.sender_bytes:
                return QuotaExceeded("sender")
        if quota.storage_bytes is not None and self._used(conn) + size > quota.storage_bytes:
            return QuotaExceeded("storage")
        if quota.free_bytes is not None:
            disk = self.disk_bytes()
            reserve = None if disk is None else quota.reserve(disk[1])
            if disk is not None and reserve is not None and disk[0] - size < reserve:
                return QuotaExceeded("disk")
        return None

    def _used(self, conn: Conn) -> int:
        """Bytes of the database's pages in use (free pages not counted)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        used = int(pages - free) * self._page_size
        self.used_bytes = used
        return used

    def free_bytes(self) -> int | None:
        """Free space on the database's file system less the WAL (see
        :meth:`disk_bytes`); ``None`` if it cannot be read."""
        disk = self.disk_bytes()
        return None if disk is None else disk[0]

    def disk_bytes(self) -> tuple[int, int] | None:
        """The database's file system: free space (for unprivileged writers)
        less the size of the WAL, and its size. The WAL's frames may all be
        copied into the database file at the next checkpoint, so in WAL mode
        the data can take twice its size for a while (conservative: after a
        checkpoint the WAL keeps its size until the writer truncates it)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        return max(0, st.f_bavail * st.f_frsize - wal), st.f_blocks * st.f_frsize

    async def fetch(
        self, rid: bytes, *, after: int, limit: int, max_bytes: int | None = None
    ) -> list[Envelope]:
        """Envelopes with ``seq > after``, oldest first, at most ``min(limit,
        MAX_FETCH)``; with ``max_bytes``, no more envelope bytes than that
        (but always the first envelope). Rows are read one at a time, so a
        cut page never holds more than one envelope beyond its budget."""
        args = (_id(rid, "rid"), _int(after, "after"), min(_int(limit, "limit", low=1), MAX_FETCH))
        budget = None if max_bytes is None else _int(max_bytes, "max_bytes", low=1)

        def read(conn: Conn) -> list[Envelope]:
            out: list[Envelope] = []
            total = 0
            for s, m, d, r in conn.execute(
                "SELECT seq, msg_id, data, received FROM envelopes"
                " WHERE rid = ? AND seq > ? ORDER BY seq LIMIT ?",
                args,
            ):
                total += len(d)
                if budget is not None and out and total > budget:
                    break
                out.append(Envelope(seq=s, msg_id=m, data=d, received=r))
            return out

        return await self._read(read)

    async def ack(self, rid: bytes, *, up_to: int) -> int:
        """Delete envelopes with ``seq <= up_to``; return how many."""
        args = (_id(rid, "rid"), _int(up_to, "up_to"))

        def job(conn: Conn) -> int:
            n = conn.execute("DELETE FROM envelopes WHERE rid = ? AND seq <= ?", args).rowcount
            if n:
                self._note_deletion()
            return int(n)

        return await self._write(job)

    async def depth(self, rid: bytes) -> int:
        """How many envelopes the queue holds."""
        args = (_id(rid, "rid"),)

        def read(conn: Conn) -> int:
            row = conn.execute("SELECT depth FROM queues WHERE rid = ?", args).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(read)

    async def expire(self, *, older_than: int) -> int:
        """Delete envelopes received before ``older_than``; return how many."""
        args = (_int(older_than, "older_than"),)

        def job(conn: Conn) -> int:
            n = conn.execute("DELETE FROM envelopes WHERE received < ?", args).rowcount
            if n:
                self._note_deletion()
            return int(n)

        return await self._write(job)

    async def held_since(
        self, *, received: int, after: tuple[int, bytes, int] | None, limit: int
    ) -> list[HeldEnvelope]:
        """Held envelopes received at or after ``received``, by ``(received,
        rid, seq)``, strictly after the cursor ``after``; at most
        ``min(limit, MAX_FETCH)``."""
        since = _int(received, "received")
        count = min(_int(limit, "limit", low=1), MAX_FETCH)
        if after is None:
            sql = (
                "SELECT rid, seq, msg_id, data, received FROM envelopes WHERE received >= ?"
                " ORDER BY received, rid, seq LIMIT ?"
            )
            args: tuple[Any, ...] = (since, count)
        else:
            if not isinstance(after, tuple) or len(after) != 3:
                raise TypeError("after must be a (received, rid, seq) tuple")
            cursor = (_int(after[0], "after"), _id(after[1], "after"), _int(after[2], "after"))
            sql = (
                "SELECT rid, seq, msg_id, data, received FROM envelopes"
                " WHERE received >= ? AND (received, rid, seq) > (?, ?, ?)"
                " ORDER BY received, rid, seq LIMIT ?"
            )
            args = (since, *cursor, count)

        def read(conn: Conn) -> list[HeldEnvelope]:
            return [
                HeldEnvelope(rid=r, envelope=Envelope(seq=s, msg_id=m, data=d, received=t))
                for r, s, m, d, t in conn.execute(sql, args).fetchall()
            ]

        return await self._read(read)

    # --- prekeys ----------------------------------------------------------------

    async def put_prekeys(
        self, rid: bytes, *, signed: bytes, one_time: list[bytes], replace_one_time: bool
    ) -> int:
        """Store the signed blob, add (or replace) one-time blobs; return how many are held.

        ``ValueError`` if there is no such queue or the queue would hold more
        than :data:`MAX_ONE_TIME_HELD` one-time blobs (then nothing changes).
        """
        _id(rid, "rid")
        _bytes(signed, "signed", max_size=MAX_PREKEY_BLOB)
        if not isinstance(one_time, list):
            raise TypeError("one_time must be a list")
        if len(one_time) > MAX_ONE_TIME_HELD:
            raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
        blobs = [(rid, _bytes(b, "one_time blob", max_size=MAX_PREKEY_BLOB)) for b in one_time]
        if not isinstance(replace_one_time, bool):
            raise TypeError("replace_one_time must be a bool")
        replace = replace_one_time

        def job(conn: Conn) -> int:
            if conn.execute("SELECT 1 FROM queues WHERE rid = ?", (rid,)).fetchone() is None:
                raise ValueError("no such queue")
            if replace:
                conn.execute("DELETE FROM one_time_prekeys WHERE rid = ?", (rid,))
                self._note_deletion()
            (held,) = conn.execute(
                "SELECT count(*) FROM one_time_prekeys WHERE rid = ?", (rid,)
            ).fetchone()
            if held + len(blobs) > MAX_ONE_TIME_HELD:
                raise ValueError(f"a queue holds at most {MAX_ONE_TIME_HELD} one-time prekeys")
            conn.execute(
                "INSERT INTO signed_prekeys (rid, blob) VALUES (?, ?)"
                " ON CONFLICT (rid) DO UPDATE SET blob = excluded.blob",
                (rid, signed),
            )
            conn.executemany("INSERT INTO one_time_prekeys (rid, blob) VALUES (?, ?)", blobs)
            return int(held) + len(blobs)

        return await self._write(job)

    async def claim_bundle(self, rid: bytes) -> tuple[bytes, bytes | None, int] | None:
        """The signed blob, the oldest one-time blob (removed), how many remain."""
        _id(rid, "rid")

        def job(conn: Conn) -> tuple[bytes, bytes | None, int] | None:
            row = conn.execute("SELECT blob FROM signed_prekeys WHERE rid = ?", (rid,)).fetchone()
            if row is None:
                return None
            one = conn.execute(
                "SELECT id, blob FROM one_time_prekeys WHERE rid = ? ORDER BY id LIMIT 1", (rid,)
            ).fetchone()
            if one is not None:
                conn.execute("DELETE FROM one_time_prekeys WHERE id = ?", (one[0],))
                self._note_deletion()
            (left,) = conn.execute(
                "SELECT count(*) FROM one_time_prekeys WHERE rid = ?", (rid,)
            ).fetchone()
            return row[0], None if one is None else one[1], int(left)

        return await self._write(job)

    async def prekey_count(self, rid: bytes) -> int:
        """How many one-time blobs remain."""
        args = (_id(rid, "rid"),)

        def read(conn: Conn) -> int:
            sql = "SELECT count(*) FROM one_time_prekeys WHERE rid = ?"
            return int(conn.execute(sql, args).fetchone()[0])

        return await self._read(read)

    # --- request nonces ---------------------------------------------------------

    async def use_nonce(self, key: bytes, nonce: bytes, *, now: int, expires: int) -> bool:
        """Record a nonce until ``expires``; ``False`` if it is already recorded.

        Entries that expired before ``now`` are forgotten on the way, so the
        table holds only the nonces of the replay window.
        """
        args = self._nonce_args(NonceUse(key=key, nonce=nonce, now=now, expires=expires))

        def job(conn: Conn) -> bool:
            return self._record_nonce(conn, *args)

        return await self._write(job)

    @staticmethod
    def _nonce_args(use: NonceUse) -> tuple[bytes, bytes, int, int]:
        return (
            _key(use.key, "key"),
            _bytes(use.nonce, "nonce", max_size=MAX_NONCE),
            _int(use.expires, "expires"),
            _int(use.now, "now"),
        )

    def _record_nonce(self, conn: Conn, key: bytes, nonce: bytes, expires: int, now: int) -> bool:
        """Record a nonce (writer thread, inside a job); ``False`` if it is held
        and not yet expired. Expired rows are purged at most once a second:
        the check itself does not depend on the purge."""
        if now >= self._next_purge:
            conn.execute("DELETE FROM nonces WHERE expires < ?", (now,))
            self._next_purge = now + 1
        return bool(conn.execute(_NONCE_UPSERT, (key, nonce, expires, now)).rowcount == 1)

    # --- maintenance ------------------------------------------------------------

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; ``False`` if readers
        kept it busy (it is tried again when idle and at close)."""
        return await self._write(self._truncate_wal, transaction=False)

    async def settings(self) -> SqliteSettings:
        """The settings in force on the write connection."""

        def job(conn: Conn) -> SqliteSettings:
            def one(pragma: str) -> Any:
                return conn.execute(f"PRAGMA {pragma}").fetchone()[0]

            return SqliteSettings(
                journal_mode=str(one("journal_mode")),
                synchronous=int(one("synchronous")),
                secure_delete=int(one("secure_delete")),
                foreign_keys=int(one("foreign_keys")),
                busy_timeout_ms=int(one("busy_timeout")),
                schema_version=int(one("user_version")),
            )

        return await self._write(job, transaction=False)

    async def close(self) -> None:
        """Finish the writes already submitted, truncate the WAL, close.

        Later calls of any other method raise :class:`StorageClosed`; calling
        ``close`` again waits for the first close and returns.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            await asyncio.to_thread(self._shutdown)
        else:
            await asyncio.to_thread(self._shut.wait)

    def _shutdown(self) -> None:
        try:
            # Readers first, so that the writer's last checkpoint is not kept
            # busy and closing the last connection removes the WAL file.
            self._read_pool.shutdown(wait=True)
            for conn in self._all_readers:
                conn.close()
            self._jobs.put(None)
            self._writer.join()
        finally:
            self._shut.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
