"""The relay's embedded storage: SQLite in WAL mode, ``synchronous=FULL``, group commit.

Open with ``storage = await open_in_thread(SqliteStorage, path)`` (the
constructor, run in a worker thread: it creates the folder with mode 0700
and the file with mode 0600, then runs the schema migrations) and finish
with ``await storage.close()`` (or use it as ``async with``).

**Layout.** :class:`SqliteStorage` opens the file and runs the schema
migrations; the queues (and their cache in memory) are
:mod:`~securechan.relay.sqlite_queues`, the envelopes (with the request
nonces and the byte quotas) :mod:`~securechan.relay.sqlite_envelopes`, the
prekeys :mod:`~securechan.relay.sqlite_prekeys`, the group streams
:mod:`~securechan.relay.sqlite_streams`, disk space and reclaiming
it :mod:`~securechan.relay.sqlite_space`, the threads
:mod:`~securechan.relay.sqlite_writer`.

**Writes and group commit** (:mod:`~securechan.relay.sqlite_writer`). One
writer thread owns the only write connection and runs each batch of jobs in
one transaction, each job in its own savepoint (a job that raises fails
alone), and answers only after ``COMMIT`` returned: with ``synchronous=FULL``
a caller that sees success has its write on stable storage, and N concurrent
sends cost far fewer than N syncs (:attr:`commits` counts them). If ``BEGIN``
or ``COMMIT`` fails (disk full, I/O error), every job of the batch fails with
:class:`~securechan.errors.StorageError`; callers may retry (``put_envelope``
is idempotent on ``msg_id``). A job whose caller was cancelled still runs.
Reads run on their own threads with read-only connections; in WAL mode they
see the last commit and never block the writer.

**Deleted data does not linger.** ``secure_delete=ON`` overwrites deleted
rows in the database pages; older copies stay in the WAL until the writer
truncates it (idle after a deletion, at :meth:`close`, on :meth:`checkpoint`;
:mod:`~securechan.relay.sqlite_space`). Blocks the file system freed are out
of reach of any database; full-disk encryption covers them.

**Schema.** Connections and the schema come from :mod:`securechan.sqlite_schema`:
the tables are in ``securechan/schema/relay/``, ``PRAGMA user_version`` holds
the version, each upgrade step runs in one transaction with its new version
number (all or nothing), and a file from a newer version is refused.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from securechan.errors import StorageError
from securechan.relay.sqlite_checks import Nonces
from securechan.relay.sqlite_envelopes import MAX_ENVELOPE_BYTES, MAX_FETCH, EnvelopeTable
from securechan.relay.sqlite_prekeys import MAX_ONE_TIME_HELD, MAX_PREKEY_BLOB, PrekeyTable
from securechan.relay.sqlite_queues import QueueTable
from securechan.relay.sqlite_space import Space
from securechan.relay.sqlite_streams import StreamTable
from securechan.relay.sqlite_writer import MAX_BATCH, SqliteWorker
from securechan.relay.storage import NonceUse
from securechan.relay.writer_thread import Closing
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


_SYNC_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")


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
"""``securechan/schema/relay/``: the tables (v3.sql), upgrade-to-v2.sql from
version 1 (byte quotas) and upgrade-to-v3.sql from version 2 (group
streams). Version 1's schema is a test fixture
(``tests/fixtures/stores/relay/schema-v1.sql``)."""
SCHEMA_VERSION: Final = SCHEMA.version


def _prepare_file(path: Path) -> None:
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_file(path)


class SqliteStorage(Closing):
    """:class:`~securechan.relay.storage.RelayStorage` on one SQLite file.

    Open with :func:`~securechan.relay.writer_thread.open_in_thread`.
    Methods raise :class:`StorageClosed` after :meth:`close`,
    :class:`~securechan.errors.StorageError` when SQLite fails, and
    ``TypeError``/``ValueError`` on misuse: wrong sizes, out-of-range
    integers, a write to a queue that does not exist, a duplicate queue id.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        readers: int = 2,
        busy_timeout: float = 5.0,
        idle_checkpoint: float = 1.0,
    ) -> None:
        """Open (creating if needed) the database at ``path`` and migrate it.

        Blocking: from async code, ``await open_in_thread(SqliteStorage, path,
        ...)`` (:func:`~securechan.relay.writer_thread.open_in_thread`).
        ``synchronous`` below ``FULL`` breaks the durability contract (a
        power loss may lose acknowledged envelopes); it exists for benchmarks.
        Raises :class:`~securechan.errors.StorageError` if the file cannot be
        created, is not a database, or has a newer schema.
        """
        sync = synchronous.upper() if isinstance(synchronous, str) else ""
        if sync not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        if not 1 <= readers <= 16:
            raise ValueError("readers must be 1 to 16")
        if not 0 < busy_timeout <= 600 or not 0 < idle_checkpoint <= 3600:
            raise ValueError("busy_timeout and idle_checkpoint must be positive seconds")
        # absolute(), not resolve(): a symlink at the path must be refused, not followed.
        self.path = Path(path).absolute()
        self._space = Space(self.path, idle_checkpoint=idle_checkpoint)
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
            self._space.page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            self._space.used(self._conn)
            for _ in range(readers):
                self._connect_reader(busy_timeout)
        except BaseException as e:
            for conn in [*self._all_readers, self._conn]:
                conn.close()
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"cannot open {self.path}: {e}") from None
            raise
        self._worker = SqliteWorker(self._conn, self._all_readers, self._space, name="relay-db")
        self._space.writes_waiting = lambda: not self._worker.idle()
        self._nonces = Nonces()
        self._envelopes = EnvelopeTable(self._worker, self._space, self._nonces)
        self._prekeys = PrekeyTable(self._worker, self._space)
        self._queues = QueueTable(self._worker, self._space)
        self._streams = StreamTable(self._worker, self._space)
        # The RelayStorage operations are the tables' own methods (each
        # signature and its documentation written once, in sqlite_queues,
        # sqlite_envelopes and sqlite_prekeys); queue records are cached.
        self.create_queue = self._queues.create_queue
        self.queue_by_rid = self._queues.queue_by_rid
        self.queue_by_sid = self._queues.queue_by_sid
        self.set_sender_key = self._queues.set_sender_key
        self.delete_queue = self._queues.delete_queue
        self.put_envelope = self._envelopes.put_envelope
        self.fetch = self._envelopes.fetch
        self.ack = self._envelopes.ack
        self.depth = self._envelopes.depth
        self.expire = self._envelopes.expire
        self.held_since = self._envelopes.held_since
        self.put_prekeys = self._prekeys.put_prekeys
        self.claim_bundle = self._prekeys.claim_bundle
        self.prekey_count = self._prekeys.prekey_count
        self.put_stream_item = self._streams.put_stream_item
        self.fetch_stream = self._streams.fetch_stream
        self.stream_length = self._streams.stream_length
        self.stream_usage = self._streams.stream_usage
        self.held_stream_item = self._streams.held_stream_item

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

    # --- plumbing (securechan.relay.sqlite_writer) -------------------------------

    @property
    def commits(self) -> int:
        """Write transactions committed so far (each one sync with ``FULL``)."""
        return self._worker.work.commits

    @property
    def write_jobs(self) -> int:
        """Write jobs run so far; ``write_jobs / commits`` is the mean batch size."""
        return self._worker.work.write_jobs

    async def _write(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        return await self._worker.write(fn, transaction=transaction)

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        return await self._worker.read(fn)

    def _note_deletion(self) -> None:
        self._space.deleted = True  # runs on the writer thread, inside a job

    @property
    def used_bytes(self) -> int:
        """Bytes of the database's pages in use, as of the last commit."""
        return self._space.used_bytes

    @property
    def reclaimed_pages(self) -> int:
        """Free pages given back to the file system so far."""
        return self._space.reclaimed_pages

    def free_bytes(self) -> int | None:
        """Free space on the database's file system less the WAL; ``None``
        if it cannot be read."""
        return self._space.free_bytes()

    def disk_bytes(self) -> tuple[int, int] | None:
        """The file system's free space (less the WAL) and size."""
        return self._space.disk_bytes()

    # --- nonces (the other operations are the tables', bound in __init__) ---------

    async def use_nonce(self, key: bytes, nonce: bytes, *, now: int, expires: int) -> bool:
        """Record a nonce until ``expires``; ``False`` if it is already recorded.

        Entries that expired before ``now`` are forgotten on the way, so the
        table holds only the nonces of the replay window.
        """
        args = Nonces.args(NonceUse(key=key, nonce=nonce, now=now, expires=expires))

        def job(conn: Conn) -> bool:
            return self._nonces.record(conn, *args)

        return await self._write(job)

    # --- maintenance ------------------------------------------------------------

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; ``False`` if readers
        kept it busy (it is tried again when idle and at close)."""
        return await self._write(self._space.truncate_wal, transaction=False)

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
        await self._worker.close()
