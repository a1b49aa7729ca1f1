"""One writer thread and a pool of reader threads over one SQLite file.

The plumbing of :class:`~securechan.relay.sqlite_store.SqliteStorage`,
apart from what the relay stores: each write is a job (a function of the
write connection) put on a queue; the writer thread takes a batch
(:func:`~securechan.relay.batching.take_batch`) and runs it in ONE
``BEGIN IMMEDIATE`` ... ``COMMIT``, each job inside its own ``SAVEPOINT`` (a
job that raises is rolled back alone), and resolves the callers' futures
only after ``COMMIT`` returned: with ``synchronous=FULL`` that commit synced
the WAL, so a caller that sees success has its write on stable storage. If
``BEGIN`` or ``COMMIT`` fails, every job of the batch fails with
:class:`~securechan.errors.StorageError` (nothing of it was stored). One
event-loop wake-up per batch, not per job. Reads run on their own threads,
one read-only connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

from securechan.errors import StorageError
from securechan.relay.batching import take_batch
from securechan.relay.storage import StorageClosed

__all__ = ["MAX_BATCH", "SqliteWorker", "sqlite_words", "storage_error"]

T = TypeVar("T")
Conn = sqlite3.Connection

MAX_BATCH: Final = 256
"""Most write jobs sharing one transaction (and one sync)."""


def sqlite_words(exc: sqlite3.Error) -> str:
    """SQLite's own words for a failure ("database or disk is full
    (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"): names no data."""
    name = getattr(exc, "sqlite_errorname", None)
    # Without an SQLite error name the text is Python's, which may quote data.
    return f"{exc} ({name})" if name else type(exc).__name__


def storage_error(exc: BaseException) -> BaseException:
    """What a caller sees for ``exc``: SQLite's errors become one StorageError."""
    if isinstance(exc, sqlite3.Error):
        err = StorageError(f"the relay database failed: {sqlite_words(exc)}")
        err.__cause__ = exc
        return err
    return exc


@dataclass(slots=True)
class _Job:
    fn: Callable[[Conn], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    transaction: bool


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Maintenance(Protocol):
    """What the store does on the writer thread besides its jobs."""

    def idle_wait(self) -> float | None:
        """Seconds to wait for a job before :meth:`idle` (``None``: forever)."""

    def idle(self, conn: Conn) -> None:
        """Nothing came for :meth:`idle_wait` seconds."""

    def after_batch(self, conn: Conn) -> None:
        """A batch was run (under load: a small step of upkeep)."""

    def after_commit(self, conn: Conn) -> None:
        """A batch committed."""

    def at_exit(self, conn: Conn) -> None:
        """The writer stops (the connection is closed next)."""


class SqliteWorker:
    """The writer thread (owning ``writer``) and the reader pool (``readers``).

    :meth:`write` and :meth:`read` raise :class:`StorageClosed` after
    :meth:`close`; a job whose caller was cancelled still runs.
    """

    commits: int
    """Write transactions committed so far (each one sync with ``FULL``)."""
    write_jobs: int
    """Write jobs run so far; ``write_jobs / commits`` is the mean batch size."""

    def __init__(
        self, writer: Conn, readers: list[Conn], upkeep: Maintenance, *, name: str
    ) -> None:
        self.commits = 0
        self.write_jobs = 0
        self._conn = writer
        self._upkeep = upkeep
        self._lock = threading.Lock()
        self._closed = False
        self._shut = threading.Event()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._readers: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._all_readers = list(readers)
        for conn in readers:
            self._readers.put(conn)
        self._read_pool = ThreadPoolExecutor(len(readers), thread_name_prefix=f"{name}-read")
        self._writer = threading.Thread(target=self._writer_main, name=f"{name}-write")
        # A daemon: a relay that exits without close() loses nothing already
        # acknowledged (that was committed), and must not hang on exit.
        self._writer.daemon = True
        self._writer.start()

    def idle(self) -> bool:
        """No write job is waiting (writer thread: upkeep yields to writes)."""
        return self._jobs.empty()

    async def write(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # no job may enter the queue behind close()'s stop mark
            if self._closed:
                raise StorageClosed("the relay storage is closed")
            self._jobs.put(_Job(fn, loop, future, transaction))
        return cast(T, await future)

    async def read(self, fn: Callable[[Conn], T]) -> T:
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
            raise storage_error(e) from None
        finally:
            self._readers.put(conn)

    def _writer_main(self) -> None:
        conn = self._conn
        upkeep = self._upkeep
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=upkeep.idle_wait())
                except queue.Empty:
                    upkeep.idle(conn)
                    continue
                if job is None:
                    break
                batch, stop = take_batch(self._jobs, job, MAX_BATCH)
                self._run_batch(conn, batch)
                upkeep.after_batch(conn)
                if stop:
                    break
            upkeep.at_exit(conn)
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
                    outcomes.append((job, False, storage_error(e)))
        # One wake-up per event loop and batch, not one per job.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for job, ok, value in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle, settled)

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
                        done.append((job, False, storage_error(e)))
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    done.append((job, False, storage_error(e)))
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
            words = sqlite_words(e) if isinstance(e, sqlite3.Error) else type(e).__name__
            failed = StorageError(f"the relay database failed ({words}); nothing was stored")
            failed.__cause__ = e
            ran = {id(job) for job, _, _ in done}
            done = [(job, False, failed) if ok else (job, ok, v) for job, ok, v in done]
            done += [(job, False, failed) for job in jobs if id(job) not in ran]
            return done
        self.commits += 1
        self.write_jobs += len(jobs)
        with contextlib.suppress(sqlite3.Error):
            self._upkeep.after_commit(conn)
        return done

    def close_now(self) -> bool:
        """Mark closed; ``True`` for the first call (which must then :meth:`shutdown`)."""
        with self._lock:
            first = not self._closed
            self._closed = True
        return first

    def shutdown(self) -> None:
        """Finish the writes already submitted and stop (blocking)."""
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

    def wait_shut(self) -> None:
        self._shut.wait()
