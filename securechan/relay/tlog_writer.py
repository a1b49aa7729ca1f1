"""The writer thread's work for the relay's transparency log.

:class:`Appender` serves the log's job queue on its writer thread: appends
are group-committed (every job waiting, up to :data:`MAX_BATCH`: the new
leaves, their index rows and the append time in ONE transaction of the
tree's connection, one checkpoint signed, every caller's inclusion proof
computed against it in one pass, and only then the callers' futures
resolved), cosignatures are checked and stored
(:class:`~securechan.relay.tlog_witness.Witnesses`), and the clean-stop
mark is written. :class:`~securechan.relay.tlog.RelayLog` is the log's face
on the event loop; its module docstring states the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from securechan.audit.receipt import envelope_leaf_hash
from securechan.audit.tree import TreeStore
from securechan.errors import StorageError
from securechan.relay.batching import take_batch
from securechan.relay.tlog_proofs import inclusion_proofs, lookup_many
from securechan.relay.tlog_witness import Head, Witnesses

__all__ = ["MAX_BATCH", "Appender", "Job", "settle", "storage_error"]

MAX_BATCH: Final = 256
"""Most appends sharing one commit (and one checkpoint)."""


@dataclass(slots=True)
class Job:
    kind: str  # "append" (arg: the envelope), "cosign" (arg: the posted note) or "clean"
    arg: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # An append's leaf hash when the caller had SHA-256(envelope) already.
    leaf: bytes | None = None


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def sqlite_words(exc: sqlite3.Error) -> str:
    """SQLite's own words for a failure ("database or disk is full
    (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"): names no data."""
    name = getattr(exc, "sqlite_errorname", None)
    # Without an SQLite error name the text is Python's, which may quote data.
    return f"{exc} ({name})" if name else type(exc).__name__


def storage_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = StorageError(f"the transparency log database failed: {sqlite_words(exc)}")
        err.__cause__ = exc
        return err
    return exc


def settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Appender:
    """The log's state on the writer thread: the newest head, the commits,
    whether an append failed since the log was opened."""

    head: Head
    """Replaced whole (never mutated) by the writer, read by the event loop."""

    def __init__(
        self,
        witness: Witnesses,
        make_head: Callable[[int, bytes], Head],
        clock: Callable[[], float],
    ) -> None:
        self.commits = 0
        self.lost = False
        self._witness = witness
        self._make_head = make_head
        self._clock = clock

    def serve(
        self, jobs: queue.SimpleQueue[Job | None], tree: TreeStore, index: sqlite3.Connection
    ) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            # No linger: appends come in bursts already (the sends of one
            # relay.db batch resume together), and a wait here would only
            # add to every send's latency.
            batch, stop = take_batch(jobs, job, MAX_BATCH, linger=0)
            outcomes: list[tuple[Job, bool, Any]] = []
            appends = [j for j in batch if j.kind == "append"]
            if appends:
                outcomes += self._append_batch(tree, appends)
                self.lost = self.lost or not all(ok for _, ok, _ in outcomes)
            for j in batch:
                if j.kind == "clean":
                    try:
                        outcomes.append((j, True, self._mark_clean(index)))
                    except Exception as e:
                        outcomes.append((j, False, storage_error(e)))
                if j.kind == "cosign":
                    try:
                        outcomes.append(
                            (j, True, self._witness.cosign(tree, index, j.arg, self.head))
                        )
                    except Exception as e:
                        outcomes.append((j, False, storage_error(e)))
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
            by_loop = {}
            for j, ok, value in outcomes:
                by_loop.setdefault(j.loop, []).append((j.future, ok, value))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                    loop.call_soon_threadsafe(settle, settled)
            if stop:
                return

    def _append_batch(self, tree: TreeStore, jobs: list[Job]) -> list[tuple[Job, bool, Any]]:
        start = self.head.size
        placed: dict[bytes, tuple[int, bool]] = {}
        new: list[bytes] = []
        try:
            # Jobs carry envelopes, and the leaf hash when the caller had the digest.
            leaves = [job.leaf or envelope_leaf_hash(job.arg) for job in jobs]
            # Through the tree's connection, which writes the index rows too:
            # its page cache stays warm (a second connection's cache would be
            # dropped after every commit of the tree's).
            known = lookup_many(tree.connection, set(leaves))
            for leaf in leaves:
                if leaf in placed:
                    continue
                if leaf in known:
                    placed[leaf] = (known[leaf], False)
                else:
                    placed[leaf] = (start + len(new), True)
                    new.append(leaf)
            if new:
                self._commit(tree, start, new)
            head = self.head
            # Each caller's receipt proves its leaf in this batch's checkpoint:
            # computed here, once per batch, not by a read per caller.
            proofs = inclusion_proofs(tree, {i for i, _ in placed.values()}, head.size)
        except Exception as e:
            err = storage_error(e)
            return [(job, False, err) for job in jobs]
        out: list[tuple[Job, bool, Any]] = []
        for job, leaf in zip(jobs, leaves, strict=True):
            idx, created = placed[leaf]
            # Only the first job of a new leaf reports it as created.
            out.append((job, True, (idx, head, created, tuple(proofs[idx]))))
            if created:
                placed[leaf] = (idx, False)
        return out

    def _commit(self, tree: TreeStore, start: int, new: list[bytes]) -> None:
        """The leaves, their index rows and the append time in ONE transaction
        of the tree's connection (one commit, one sync), then the head."""
        stamp = int(self._clock())

        def index_rows(conn: sqlite3.Connection, at: int) -> None:
            if at != start:
                raise StorageError("another writer appended to the transparency log")
            conn.executemany(
                "INSERT INTO relay_log_leaves (leaf, idx) VALUES (?, ?)",
                ((leaf, start + i) for i, leaf in enumerate(new)),
            )
            conn.execute("UPDATE relay_log_meta SET last_append = ? WHERE id = 0", (stamp,))

        tree.append_many_leaf_hashes(new, also=index_rows)
        self.commits += 1
        # The root from the tree's compact range (the only writer: index_rows
        # checked the batch went where expected), not from three queries.
        size, root = tree.appended
        self.head = self._make_head(size, root)
        self._witness.grew(start)

    def _mark_clean(self, index: sqlite3.Connection) -> bool:
        if self.lost:
            return False
        with index:
            index.execute(
                "INSERT OR REPLACE INTO relay_log_clean (id, size) VALUES (0, ?)",
                (self.head.size,),
            )
        return True
