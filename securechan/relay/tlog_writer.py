"""The writer thread's work for the relay's transparency log.

:class:`Appender` is the :class:`~securechan.relay.writer_thread.Work` of
the log's :class:`~securechan.relay.writer_thread.WriterThread` (the writer
thread relay.db uses too): appends are group-committed (every job waiting,
up to :data:`~securechan.relay.writer_thread.MAX_BATCH`: the new
leaves, their index rows and the append time in ONE transaction of the
tree's connection, one checkpoint signed, every caller's inclusion proof
computed against it in one pass, and only then the callers' futures
resolved), cosignatures are checked and stored
(:class:`~securechan.relay.tlog_witness.Witnesses`), and the clean-stop
mark is written. :class:`~securechan.relay.tlog.RelayLog` is the log's face
on the event loop; its module docstring states the guarantees.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from securechan.audit.merkle import leaf_hash
from securechan.audit.receipt import ENVELOPE_LEAF_CONTEXT
from securechan.audit.tree import TreeStore
from securechan.errors import StorageError
from securechan.primitives import sha256
from securechan.relay.tlog_proofs import inclusion_proofs, lookup_many
from securechan.relay.tlog_witness import Head, Witnesses
from securechan.relay.writer_thread import Job, Outcome
from securechan.relay.writer_thread import storage_error as _storage_error

__all__ = ["LINGER", "WHAT", "Appender", "Task", "storage_error"]

WHAT: Final = "the transparency log"
LINGER: Final = 0.0
"""No linger: appends come in bursts already (the sends of one relay.db
batch resume together), and a wait here would only add to every send's
latency."""


@dataclass(slots=True, frozen=True)
class Task:
    kind: str  # "append" (arg: the envelope), "cosign" (arg: the posted note) or "clean"
    arg: Any
    # An append's SHA-256(envelope) when the caller had it already.
    digest: bytes | None = None


def storage_error(exc: BaseException) -> BaseException:
    return _storage_error(exc, f"{WHAT} database")


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

    def attach(self, tree: TreeStore, index: sqlite3.Connection) -> Appender:
        """Take the writer thread's opened tree and index connection."""
        self._tree = tree
        self._index = index
        return self

    # --- writer_thread.Work ---------------------------------------------------------

    def idle_wait(self) -> float | None:
        return None

    def idle(self) -> None:
        pass

    def after_batch(self) -> None:
        pass

    def at_exit(self) -> None:
        pass

    def close(self) -> None:
        self._index.close()
        self._tree.close()

    def run(self, batch: list[Job[Task]]) -> list[Outcome[Task]]:
        tree, index = self._tree, self._index
        outcomes: list[Outcome[Task]] = []
        appends = [j for j in batch if j.work.kind == "append"]
        if appends:
            outcomes += self._append_batch(tree, appends)
            self.lost = self.lost or not all(ok for _, ok, _ in outcomes)
        for j in batch:
            if j.work.kind == "clean":
                try:
                    outcomes.append((j, True, self._mark_clean(index)))
                except Exception as e:
                    outcomes.append((j, False, storage_error(e)))
            if j.work.kind == "cosign":
                try:
                    cosigned = self._witness.cosign(tree, index, j.work.arg, self.head)
                    outcomes.append((j, True, cosigned))
                except Exception as e:
                    outcomes.append((j, False, storage_error(e)))
        return outcomes

    def _append_batch(self, tree: TreeStore, jobs: list[Job[Task]]) -> list[Outcome[Task]]:
        start = self.head.size
        placed: dict[bytes, tuple[int, bool]] = {}
        new: list[bytes] = []
        entries: list[bytes] = []
        try:
            # Jobs carry envelopes, and the digest when the caller had it.
            digests = [job.work.digest or sha256(job.work.arg) for job in jobs]
            leaves = [leaf_hash(ENVELOPE_LEAF_CONTEXT + d) for d in digests]
            # Through the tree's connection, which writes the index rows too:
            # its page cache stays warm (a second connection's cache would be
            # dropped after every commit of the tree's).
            known = lookup_many(tree.connection, set(leaves))
            for leaf, digest in zip(leaves, digests, strict=True):
                if leaf in placed:
                    continue
                if leaf in known:
                    placed[leaf] = (known[leaf], False)
                else:
                    placed[leaf] = (start + len(new), True)
                    new.append(leaf)
                    entries.append(digest)
            if new:
                self._commit(tree, start, new, entries)
            head = self.head
            # Each caller's receipt proves its leaf in this batch's checkpoint:
            # computed here, once per batch, not by a read per caller.
            proofs = inclusion_proofs(tree, {i for i, _ in placed.values()}, head.size)
        except Exception as e:
            err = storage_error(e)
            return [(job, False, err) for job in jobs]
        out: list[Outcome[Task]] = []
        for job, leaf in zip(jobs, leaves, strict=True):
            idx, created = placed[leaf]
            # Only the first job of a new leaf reports it as created.
            out.append((job, True, (idx, head, created, tuple(proofs[idx]))))
            if created:
                placed[leaf] = (idx, False)
        return out

    def _commit(self, tree: TreeStore, start: int, new: list[bytes], entries: list[bytes]) -> None:
        """The leaves, their index rows, their entries (the envelope digests
        the tlog-tiles entry bundles serve) and the append time in ONE
        transaction of the tree's connection (one commit, one sync), then the
        head."""
        stamp = int(self._clock())

        def index_rows(conn: sqlite3.Connection, at: int) -> None:
            if at != start:
                raise StorageError("another writer appended to the transparency log")
            conn.executemany(
                "INSERT INTO relay_log_leaves (leaf, idx) VALUES (?, ?)",
                ((leaf, start + i) for i, leaf in enumerate(new)),
            )
            conn.executemany(
                "INSERT INTO relay_log_entries (idx, digest) VALUES (?, ?)",
                ((start + i, digest) for i, digest in enumerate(entries)),
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
