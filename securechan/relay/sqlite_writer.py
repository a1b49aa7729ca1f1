"""The writer thread and reader pool of relay.db.

The plumbing of :class:`~securechan.relay.sqlite_store.SqliteStorage`,
apart from what the relay stores: each write is a job (a function of the
write connection) put on the queue of a
:class:`~securechan.relay.writer_thread.WriterThread` (the writer thread the
transparency log uses too); the thread takes a batch
(:func:`~securechan.relay.batching.take_batch`) and :class:`_Transactions`
runs it in ONE ``BEGIN IMMEDIATE`` ... ``COMMIT``, each job inside its own
``SAVEPOINT`` (a job that raises is rolled back alone); the callers' futures
are resolved only after ``COMMIT`` returned: with ``synchronous=FULL`` that
commit synced the WAL, so a caller that sees success has its write on stable
storage. If ``BEGIN`` or ``COMMIT`` fails, every job of the batch fails with
:class:`~securechan.errors.StorageError` (nothing of it was stored). One
event-loop wake-up per batch, not per job. Reads run on their own threads,
one read-only connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from securechan.errors import StorageError
from securechan.relay.writer_thread import (
    MAX_BATCH,
    Job,
    Outcome,
    WriterThread,
    sqlite_words,
    storage_error,
)

__all__ = ["MAX_BATCH", "SqliteWorker", "sqlite_words", "storage_error"]

T = TypeVar("T")
Conn = sqlite3.Connection
_Write = tuple[Callable[[Conn], Any], bool]  # the job's function, and whether transactional


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


class _Transactions:
    """relay.db's :class:`~securechan.relay.writer_thread.Work`: a batch in
    one transaction of savepoints, the store's upkeep between batches."""

    def __init__(self, conn: Conn, upkeep: Maintenance) -> None:
        self.commits = 0
        self.write_jobs = 0
        self._conn = conn
        self._upkeep = upkeep

    def idle_wait(self) -> float | None:
        return self._upkeep.idle_wait()

    def idle(self) -> None:
        self._upkeep.idle(self._conn)

    def after_batch(self) -> None:
        self._upkeep.after_batch(self._conn)

    def at_exit(self) -> None:
        self._upkeep.at_exit(self._conn)

    def close(self) -> None:
        self._conn.close()

    def run(self, batch: list[Job[_Write]]) -> list[Outcome[_Write]]:
        conn = self._conn
        outcomes: list[Outcome[_Write]] = []
        transactional = [job for job in batch if job.work[1]]
        if transactional:
            outcomes += self._commit(conn, transactional)
        for job in batch:
            if not job.work[1]:
                try:
                    outcomes.append((job, True, job.work[0](conn)))
                except Exception as e:
                    outcomes.append((job, False, storage_error(e)))
        return outcomes

    def _commit(self, conn: Conn, jobs: list[Job[_Write]]) -> list[Outcome[_Write]]:
        """Run ``jobs`` in one transaction, each in a savepoint; one sync at the end."""
        done: list[Outcome[_Write]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.work[0](conn)
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


class SqliteWorker:
    """The writer thread (owning ``writer``) and the reader pool (``readers``).

    :meth:`write` and :meth:`read` raise
    :class:`~securechan.relay.storage.StorageClosed` after :meth:`close`; a
    job whose caller was cancelled still runs.
    """

    def __init__(
        self, writer: Conn, readers: list[Conn], upkeep: Maintenance, *, name: str
    ) -> None:
        self.work = _Transactions(writer, upkeep)
        """Its counters: ``commits`` (each one sync with ``FULL``), ``write_jobs``."""
        self._readers: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._all_readers = list(readers)
        for conn in readers:
            self._readers.put(conn)
        self._read_pool = ThreadPoolExecutor(len(readers), thread_name_prefix=f"{name}-read")
        self._writer: WriterThread[_Write] = WriterThread(
            lambda: self.work, name=f"{name}-write", what="the relay storage"
        )

    def idle(self) -> bool:
        """No write job is waiting (writer thread: upkeep yields to writes)."""
        return self._writer.idle()

    async def write(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        return cast(T, await self._writer.submit((fn, transaction)))

    async def read(self, fn: Callable[[Conn], T]) -> T:
        with self._writer.gate():
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

    async def close(self) -> None:
        """Finish the writes already submitted and stop; a second call waits."""
        await self._writer.close(self._close_readers)

    def _close_readers(self) -> None:
        self._read_pool.shutdown(wait=True)
        for conn in self._all_readers:
            conn.close()
