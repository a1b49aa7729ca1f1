"""The reader thread of the relay's transparency log: its own
``TreeStore`` and leaf-index connection (``sqlite3`` objects stay on the
thread that made them), made on first use, for proofs and look-ups."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from securechan.audit.merkle import NodeSource
from securechan.audit.tree import TreeStore
from securechan.relay.tlog_schema import SCHEMA
from securechan.relay.tlog_writer import storage_error

__all__ = ["LogReader", "ProofTree", "ReadThread"]

T = TypeVar("T")
Connect = Callable[..., sqlite3.Connection]


class ProofTree(NodeSource, Protocol):
    """What the log reads from its tree: a :class:`TreeStore`, or the
    PostgreSQL log's (:mod:`securechan.relay.pg_tlog`)."""

    def root(self, size: int | None = None) -> bytes: ...
    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...
    def close(self) -> None: ...


class LogReader:
    """The reader thread's own TreeStore and index connection."""

    tree: ProofTree

    def __init__(self, path: Path, connect: Connect) -> None:
        self.tree = TreeStore(path, schema=SCHEMA)
        try:
            self.index = connect(path, writer=False)
        except BaseException:
            self.tree.close()
            raise

    def lookup(self, leaf: bytes) -> int | None:
        row = self.index.execute(
            "SELECT idx FROM relay_log_leaves WHERE leaf = ?", (leaf,)
        ).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        self.index.close()
        self.tree.close()


class ReadThread:
    """One reader thread, with its :class:`LogReader`."""

    def __init__(self, path: Path, connect: Connect) -> None:
        self._path = path
        self._connect = connect
        self._state = threading.local()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="relay-log-read")

    def submit(self, fn: Callable[[LogReader], T]) -> Future[T]:
        return self._pool.submit(self._run, fn)

    def _run(self, fn: Callable[[LogReader], T]) -> T:
        reader: LogReader | None = getattr(self._state, "reader", None)
        try:
            if reader is None:
                reader = self._state.reader = LogReader(self._path, self._connect)
            return fn(reader)
        except sqlite3.Error as e:
            raise storage_error(e) from None

    def _close_reader(self) -> None:
        reader: LogReader | None = getattr(self._state, "reader", None)
        if reader is not None:
            self._state.reader = None
            reader.close()

    def close(self) -> None:
        """Close the reader's connections and stop the thread (blocking)."""
        with contextlib.suppress(RuntimeError):
            self._pool.submit(self._close_reader).result()
        self._pool.shutdown(wait=True)
