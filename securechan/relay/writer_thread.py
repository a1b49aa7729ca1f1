"""One writer thread over a job queue, shared by the relay's two SQLite files.

Both relay.db (:class:`~securechan.relay.sqlite_writer.SqliteWorker`) and
the transparency log (:class:`~securechan.relay.tlog.RelayLog`) write
through one thread that owns the writing connection. What they share is
here: the queue of jobs (each a piece of work with the caller's future),
the gate that lets no job in after :meth:`WriterThread.close` has begun, the
loop that takes a batch (:func:`~securechan.relay.batching.take_batch`),
hands it to the store's :class:`Work` and resolves the callers' futures in
one event-loop wake-up per batch, the hand-over of the writer's start-up
(its connections are opened on the thread itself: a failure is raised to
whoever opened the store), and the clean stop (readers first, then every job
already submitted, then the connections).

What each store does with a batch stays with the store: relay.db commits
its jobs in one transaction of savepoints, the log appends a batch's leaves
in one commit of its tree and signs one checkpoint. Neither answers a caller
before its commit returned; this module only carries the answer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, ParamSpec, Protocol, Self, TypeVar

from securechan.errors import StorageError
from securechan.relay.batching import LINGER, take_batch
from securechan.relay.storage import StorageClosed

__all__ = [
    "MAX_BATCH",
    "Closing",
    "Job",
    "Outcome",
    "Work",
    "WriterThread",
    "open_in_thread",
    "sqlite_words",
    "storage_error",
]

P = TypeVar("P")

MAX_BATCH: Final = 256
"""Most write jobs sharing one commit (and one sync)."""


def sqlite_words(exc: sqlite3.Error) -> str:
    """SQLite's own words for a failure ("database or disk is full
    (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"): names no data."""
    name = getattr(exc, "sqlite_errorname", None)
    # Without an SQLite error name the text is Python's, which may quote data.
    return f"{exc} ({name})" if name else type(exc).__name__


def storage_error(exc: BaseException, what: str = "the relay database") -> BaseException:
    """What a caller sees for ``exc``: SQLite's errors become one StorageError
    ("<what> failed: <SQLite's words>"); anything else is left as it is."""
    if isinstance(exc, sqlite3.Error):
        err = StorageError(f"{what} failed: {sqlite_words(exc)}")
        err.__cause__ = exc
        return err
    return exc


@dataclass(slots=True)
class Job(Generic[P]):
    """One submitted piece of ``work`` and the future of the caller awaiting it."""

    work: P
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


Outcome = tuple[Job[P], bool, Any]
"""A job, whether it succeeded, and its value (or the exception it fails with)."""


class Work(Protocol[P]):
    """What a store does on its writer thread (made there by ``start``)."""

    def idle_wait(self) -> float | None:
        """Seconds to wait for a job before :meth:`idle` (``None``: forever)."""

    def idle(self) -> None:
        """Nothing came for :meth:`idle_wait` seconds."""

    def run(self, batch: list[Job[P]]) -> list[Outcome[P]]:
        """Run a batch; one outcome per job, given only once it is durable."""

    def after_batch(self) -> None:
        """A batch was run and its callers answered."""

    def at_exit(self) -> None:
        """The last batch was run (the stop mark was taken)."""

    def close(self) -> None:
        """Close the writer's connections (always called last)."""


class Closing:
    """A store used as ``async with store: ...``: closed on the way out."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_P = ParamSpec("_P")
_T = TypeVar("_T")


async def open_in_thread(store: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``await open_in_thread(SqliteStorage, path, ...)``: construct a store
    (whose constructor blocks: it opens files, migrates, starts threads) in
    a worker thread, so that the event loop is not held. The arguments are
    the constructor's, checked by mypy (ParamSpec)."""
    return await asyncio.to_thread(store, *args, **kwargs)


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class WriterThread(Generic[P]):
    """The writer thread of one SQLite file, and the gate in front of it.

    ``start`` runs on the new thread and returns its :class:`Work`; the
    constructor waits for it and raises what it raised. ``linger`` is how
    long a batch of two or more may wait for more
    (:func:`~securechan.relay.batching.take_batch`). After :meth:`close` has
    begun, :meth:`submit` and :meth:`gate` raise :class:`StorageClosed`
    (``"<what> is closed"``); a job whose caller was cancelled still runs.
    """

    def __init__(
        self,
        start: Callable[[], Work[P]],
        *,
        name: str,
        what: str,
        linger: float = LINGER,
    ) -> None:
        self._what = what
        self._linger = linger
        self._lock = threading.Lock()
        self._closed = False
        self._shut = threading.Event()
        self._jobs: queue.SimpleQueue[Job[P] | None] = queue.SimpleQueue()
        ready = threading.Event()
        failure: list[BaseException] = []
        # A daemon: a relay that exits without close() loses nothing already
        # acknowledged (that was committed), and must not hang on exit.
        self._thread = threading.Thread(
            target=self._main, args=(start, ready, failure), name=name, daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]

    def idle(self) -> bool:
        """No job is waiting (on the writer thread: upkeep yields to writes)."""
        return self._jobs.empty()

    @contextlib.contextmanager
    def gate(self) -> Iterator[None]:
        """Held while a job or a read is handed over: none passes once
        :meth:`close` has begun (none can land behind the stop mark)."""
        with self._lock:
            if self._closed:
                raise StorageClosed(f"{self._what} is closed")
            yield

    async def submit(self, work: P) -> Any:
        """Queue ``work``; what the store's :meth:`Work.run` answered for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self.gate():
            self._jobs.put(Job(work, loop, future))
        return await future

    def _main(
        self,
        start: Callable[[], Work[P]],
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        try:
            work = start()
        except BaseException as e:
            failure.append(e)
            ready.set()
            return
        ready.set()
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=work.idle_wait())
                except queue.Empty:
                    work.idle()
                    continue
                if job is None:
                    break
                batch, stop = take_batch(self._jobs, job, MAX_BATCH, linger=self._linger)
                self._answer(work.run(batch))
                work.after_batch()
                if stop:
                    break
            work.at_exit()
        finally:
            work.close()

    @staticmethod
    def _answer(outcomes: list[Outcome[P]]) -> None:
        """One wake-up per event loop and batch, not one per job."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for job, ok, value in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle, settled)

    async def close(self, close_readers: Callable[[], None]) -> None:
        """Close the gate, then (blocking, off the event loop) ``close_readers``,
        finish every job already submitted and close the writer's connections.
        A second call waits for the first to finish."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            await asyncio.to_thread(self._shutdown, close_readers)
        else:
            await asyncio.to_thread(self._shut.wait)

    def _shutdown(self, close_readers: Callable[[], None]) -> None:
        try:
            # Readers first, so that the writer's last checkpoint is not kept
            # busy and closing the last connection removes the WAL file.
            close_readers()
            self._jobs.put(None)
            self._thread.join()
        finally:
            self._shut.set()
