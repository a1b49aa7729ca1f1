"""The relay's transparency log on PostgreSQL: one log for several relay processes.

:class:`PgRelayLog` has :class:`~securechan.relay.tlog.RelayLog`'s public
interface (``append`` -> :class:`~securechan.audit.receipt.Receipt`,
``checkpoint``, ``checkpoint_at``, ``inclusion_proof``,
``consistency_proof``, ``receipt_for``, ``receipt_for_leaf``,
``add_cosignatures``, ``repair``, ``mark_clean``, ``close``) and inherits
every method that only reads the tree; what differs is where the tree is.

**Sequencing.** Each process keeps :mod:`~securechan.relay.tlog`'s writer
thread and its group commit: the appends waiting when the thread is free
(up to :data:`~securechan.relay.writer_thread.MAX_BATCH`) form one batch.
A batch is sequenced by :func:`~securechan.relay.pg_tlog_store.append_leaves`:
one transaction that locks the one-row tree state (``SELECT ... FOR
UPDATE``, as Tessera's database backend does), deduplicates against the
leaf index, writes the nodes, index rows, size and root, and commits. So
the processes take turns, one writer at a time, and the log stays one
append-only tree whatever process took the send. A caller is answered only
after the commit returned, with the checkpoint of the size that commit
made and an inclusion proof against it.

**Every process serves the same log.** Proofs and roots are read from the
database. Each process signs its own checkpoints (the same Ed25519 relay
key, deterministic: any process signs a size byte for byte as the others
would). A listener thread ``LISTEN``\\ s on
:data:`~securechan.relay.pg_tlog_store.CHANNEL` (the appending transaction
``NOTIFY``\\ s at commit) and re-reads the state at least every second, so
a process that did not take a send learns the new size within
milliseconds, and reloads the witnesses' cosignatures when another process
stored one. Cosignatures are checked and stored under the same row lock,
so the staleness check and the update are atomic across processes.

**Crashes.** A process killed mid-batch never committed it (nothing of it
is visible: it was one transaction) and answered nobody. PostgreSQL killed
mid-commit: a commit that returned is in its WAL (``synchronous_commit =
on`` on these connections); one that did not return was answered with an
error, and is either absent or, if it did reach the WAL, holds leaves the
sender will resend and get the same index for. Connections are reopened
on the next batch after PostgreSQL comes back.

**Repair.** With several processes, one process's clean stop says nothing
of the others, so :meth:`PgRelayLog.mark_clean` records nothing and every
start rescans the envelopes received since
:data:`~securechan.relay.tlog.REPAIR_MARGIN` seconds before the log's
last append (by any process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from securechan.audit.merkle import EMPTY_ROOT, CompactRange
from securechan.audit.note import NoteSigner, VerifierKey, is_valid_key_name
from securechan.audit.receipt import envelope_leaf_hash
from securechan.errors import StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.relay.pg_tlog_store import (
    CHANNEL,
    PgTree,
    State,
    append_leaves,
    connect,
    ensure_schema,
    lookup_many,
    pg_error,
    read_state,
)
from securechan.relay.tlog import RelayLog, default_origin
from securechan.relay.tlog_proofs import inclusion_proofs
from securechan.relay.tlog_reader import LogReader, ReadThread
from securechan.relay.tlog_witness import DEFAULT_COSIGN_WINDOW, Head, Witnesses
from securechan.relay.tlog_writer import LINGER, WHAT, Appender, Task
from securechan.relay.writer_thread import Job, Outcome, WriterThread

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[tuple[object, ...]]

__all__ = ["PgRelayLog"]

log = logging.getLogger("securechan.relay")

T = Any
_POLL = 1.0
"""Seconds between two reads of the tree state when no notification came."""


class _PgWitnesses(Witnesses):
    """Cosignatures stored in PostgreSQL, inside the caller's transaction
    (which holds the tree-state row lock), and announced to other processes."""

    def store(self, index: Any, rows: list[tuple[str, int, int, str]]) -> None:
        conn: Conn = index
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO relay_log_cosignatures (witness, size, timestamp, line)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (witness) DO UPDATE SET"
                " size = excluded.size, timestamp = excluded.timestamp,"
                " line = excluded.line",
                rows,
            )
        conn.execute(
            "UPDATE relay_log_state SET cosig_generation = cosig_generation + 1 WHERE id = 0"
        )
        conn.execute("SELECT pg_notify(%s, 'cosig')", (CHANNEL,))


class _PgAppender(Appender):
    """The writer thread's work: batches sequenced in PostgreSQL."""

    def __init__(
        self,
        url: str,
        witness: Witnesses,
        make_head: Callable[[int, bytes], Head],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(witness, make_head, clock)
        self._url = url
        self._db: Conn | None = None
        self._compact: CompactRange | None = None
        self._lock = threading.Lock()
        self.cosig_generation = -1

    def conn(self) -> Conn:
        """The writer's connection, reopened if PostgreSQL dropped it."""
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
            self._db = None
            self._compact = None
            self._db = connect(self._url)
        return self._db

    def advance(self, size: int, root: bytes) -> Head:
        """The head at ``size`` if newer than the one held (any thread):
        heads only move forward, whoever learns of a size first."""
        with self._lock:
            head = self.head
            if size > head.size:
                self.head = self._make_head(size, root)
                self._witness.grew(head.size)
            return self.head

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def run(self, batch: list[Job[Task]]) -> list[Outcome[Task]]:
        outcomes: list[Outcome[Task]] = []
        appends = [j for j in batch if j.work.kind == "append"]
        if appends:
            outcomes += self._sequence(appends)
            self.lost = self.lost or not all(ok for _, ok, _ in outcomes)
        for j in batch:
            if j.work.kind == "clean":
                outcomes.append((j, True, not self.lost))
            if j.work.kind == "cosign":
                try:
                    outcomes.append((j, True, self._cosign(j.work.arg)))
                except Exception as e:
                    outcomes.append((j, False, pg_error(e)))
        return outcomes

    def _sequence(self, jobs: list[Job[Task]]) -> list[Outcome[Task]]:
        try:
            leaves = [job.work.leaf or envelope_leaf_hash(job.work.arg) for job in jobs]
            conn = self.conn()
            done = append_leaves(conn, leaves, cached=self._compact, stamp=int(self._clock()))
            self._compact = done.compact
            if any(created for _, created in done.placed.values()):
                self.commits += 1
            head = self.advance(done.size, done.root)
            if head.size != done.size:
                # A listener saw a larger size already: prove against ours.
                head = self._make_head(done.size, done.root)
            proofs = inclusion_proofs(PgTree(conn), {i for i, _ in done.placed.values()}, head.size)
        except Exception as e:
            self._compact = None
            err = pg_error(e)
            return [(job, False, err) for job in jobs]
        placed = dict(done.placed)
        out: list[Outcome[Task]] = []
        for job, leaf in zip(jobs, leaves, strict=True):
            idx, created = placed[leaf]
            out.append((job, True, (idx, head, created, tuple(proofs[idx]))))
            if created:
                placed[leaf] = (idx, False)
        return out

    def _cosign(self, body: bytes) -> str:
        conn = self.conn()
        tree = PgTree(conn)
        with conn.transaction():
            state = read_state(conn, lock=True)
            if state is None:
                raise StorageError("the PostgreSQL log has no tree state")
            head = self.advance(state.size, state.root)
            if head.size != state.size:
                head = self._make_head(state.size, state.root)
            # Another process may hold newer cosignatures: the staleness
            # check must see them (all under the row lock).
            self._witness.cosigs = self._witness.load(tree, conn, state.size)
            self.cosig_generation = state.cosig_generation
            return self._witness.cosign(tree, conn, body, head)


class _PgReader(LogReader):
    def __init__(self, url: str) -> None:
        self.index = None  # type: ignore[assignment]
        self.conn = connect(url)
        self.tree = PgTree(self.conn)

    def lookup(self, leaf: bytes) -> int | None:
        return lookup_many(self.conn, {leaf}).get(leaf)

    def close(self) -> None:
        self.conn.close()


class _PgReadThread(ReadThread):
    """The reader thread, reconnecting after PostgreSQL dropped it."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._state = threading.local()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="relay-log-read")

    def _run(self, fn: Callable[[LogReader], T]) -> T:
        reader: _PgReader | None = getattr(self._state, "reader", None)
        try:
            if reader is None or reader.conn.closed or reader.conn.broken:
                if reader is not None:
                    reader.close()
                reader = self._state.reader = _PgReader(self._url)
            return fn(reader)
        except Exception as e:
            raise pg_error(e) from None


class PgRelayLog(RelayLog):
    """The relay's transparency log in a PostgreSQL database, shared by
    every relay process that opens the same database with the same key.

    Open with :func:`~securechan.relay.writer_thread.open_in_thread`;
    finish with :meth:`close`. Raises as :class:`RelayLog` does
    (:class:`~securechan.errors.StorageError` when PostgreSQL fails, naming
    only the SQLSTATE).
    """

    def __init__(
        self,
        url: str,
        key: Ed25519SigningKey,
        *,
        origin: str | None = None,
        witnesses: Sequence[VerifierKey] = (),
        cosign_window: float = DEFAULT_COSIGN_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating its tables if needed) the log in the database at
        ``url`` (``postgresql://...``). Blocking. Raises
        :class:`~securechan.errors.StorageError` if the database cannot be
        used or holds the log of another origin or key."""
        self.url = url
        self.origin = default_origin(key.public) if origin is None else origin
        if not is_valid_key_name(self.origin):
            raise ValueError("the log origin must be a valid C2SP key name")
        self._signer = NoteSigner(self.origin, key)
        self.verifier = self._signer.verifier
        self._witness = _PgWitnesses(
            self.origin, self._signer, witnesses, window=cosign_window, clock=clock
        )
        self.witnesses = self._witness.keys
        self._clock = clock
        self._pg = _PgAppender(url, self._witness, self._make_head, clock)
        self._appender = self._pg
        self._note = None
        self._watermark = None
        self._clean_size = None  # several processes: never skip the repair
        self._writer = WriterThread(
            self._start_writer, name="relay-log-write", what=WHAT, linger=LINGER
        )
        self._reads = _PgReadThread(url)
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="relay-log-listen", daemon=True)
        self._listener.start()

    # --- the writer thread ---------------------------------------------------------

    def _start_writer(self) -> Appender:
        try:
            conn = self._pg.conn()
            ensure_schema(conn)
            state = self._open_state(conn)
            self._pg.head = self._make_head(state.size, state.root)
            self._pg.cosig_generation = state.cosig_generation
            self._witness.cosigs = self._witness.load(PgTree(conn), conn, state.size)
        except BaseException as e:
            self._pg.close()
            raise pg_error(e)  # noqa: B904 (its cause is e already)
        return self._pg

    def _open_state(self, conn: Conn) -> State:
        """The tree state, created for a new log; the log's identity checked."""
        key_text = self.verifier.to_text()
        with conn.transaction():
            conn.execute(
                "INSERT INTO relay_log_state (id, origin, log_key, size, root)"
                " VALUES (0, %s, %s, 0, %s) ON CONFLICT (id) DO NOTHING",
                (self.origin, key_text, EMPTY_ROOT),
            )
            state = read_state(conn)
        if state is None:  # pragma: no cover - inserted just above
            raise StorageError("the PostgreSQL log has no tree state")
        if (state.origin, state.log_key) != (self.origin, key_text):
            raise StorageError(
                f"the database holds the log {state.origin!r}, not {self.origin!r} under"
                " this key; a log's origin and key never change"
            )
        self._watermark = state.last_append
        return state

    # --- other processes' appends and cosignatures --------------------------------

    def _listen(self) -> None:
        """LISTEN for other processes' commits; re-read the state on each
        notification and at least every :data:`_POLL` seconds."""
        conn: Conn | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    if conn is not None:
                        conn.close()
                    conn = connect(self.url)
                    conn.execute(f"LISTEN {CHANNEL}")
                for _ in conn.notifies(timeout=_POLL, stop_after=1):
                    pass
                if self._stop.is_set() or not hasattr(self._pg, "head"):
                    continue
                self._catch_up(conn)
            except Exception as e:
                log.debug("transparency log listener: %s", pg_error(e))
                self._stop.wait(0.5)
        if conn is not None:
            conn.close()

    def _catch_up(self, conn: Conn) -> None:
        state = read_state(conn)
        if state is None:
            return
        self._pg.advance(state.size, state.root)
        if state.cosig_generation != self._pg.cosig_generation:
            self._witness.cosigs = self._witness.load(PgTree(conn), conn, state.size)
            self._pg.cosig_generation = state.cosig_generation

    # --- lifetime --------------------------------------------------------------------

    async def mark_clean(self) -> bool:
        """Nothing is recorded (see the module docstring: every start
        repairs); ``False`` if an append failed since this log was opened."""
        return not self._pg.lost

    def _close_readers(self) -> None:
        self._stop.set()
        self._listener.join()
        self._reads.close()

    async def close(self) -> None:
        """Finish the jobs already submitted and close; a second call waits."""
        await self._writer.close(self._close_readers)
