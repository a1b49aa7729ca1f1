"""The writer thread shared by relay.db and tlog.db (securechan/relay/writer_thread.py).

Run on real SQLite files: a start-up failure reaches the opener, every job
submitted before close() is run and answered, none is let in after it, and a
batch's answers wait for its work (what both stores' durability rests on).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from securechan.errors import StorageError
from securechan.relay.storage import StorageClosed
from securechan.relay.writer_thread import Job, Outcome, WriterThread, storage_error


class Counter:
    """A Work that inserts each job's number in one transaction per batch."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER NOT NULL)")
        self.batches: list[int] = []
        self.closed = False

    def idle_wait(self) -> float | None:
        return None

    def idle(self) -> None:
        pass

    def run(self, batch: list[Job[int]]) -> list[Outcome[int]]:
        self.conn.execute("BEGIN IMMEDIATE")
        for job in batch:
            self.conn.execute("INSERT INTO t (n) VALUES (?)", (job.work,))
        self.conn.execute("COMMIT")
        self.batches.append(len(batch))
        return [(job, True, job.work) for job in batch]

    def after_batch(self) -> None:
        pass

    def at_exit(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.conn.close()


def _rows(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [n for (n,) in db.execute("SELECT n FROM t ORDER BY n")]
    finally:
        db.close()


def test_a_failing_start_is_raised_to_the_opener(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()

    def start() -> Counter:
        try:
            return Counter(tmp_path / "dir.db")  # a folder: SQLite cannot open it
        except sqlite3.Error as e:
            raise storage_error(e, "the test database") from None

    with pytest.raises(StorageError, match="the test database failed"):
        WriterThread(start, name="test-write", what="the test store")
    assert not any(t.name == "test-write" for t in threading.enumerate())


def test_every_job_before_close_is_committed_and_none_after(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    work: list[Counter] = []

    def start() -> Counter:
        work.append(Counter(path))
        return work[0]

    async def main() -> None:
        writer: WriterThread[int] = WriterThread(start, name="test-write", what="the test store")
        answers = await asyncio.gather(*(writer.submit(n) for n in range(500)))
        assert answers == list(range(500))
        # Submitted, not yet awaited, when close() begins: still run and answered.
        pending = [asyncio.ensure_future(writer.submit(n)) for n in range(500, 600)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(writer.close(lambda: None))
        await asyncio.sleep(0)
        with pytest.raises(StorageClosed, match="the test store is closed"):
            await writer.submit(999)
        with pytest.raises(StorageClosed), writer.gate():
            pass
        await closing
        await writer.close(lambda: None)  # a second close returns
        assert await asyncio.gather(*pending) == list(range(500, 600))

    asyncio.run(main())
    assert _rows(path) == list(range(600))
    assert work[0].closed
    # Group commit: fewer transactions than jobs, none above the cap.
    assert len(work[0].batches) < 600 and max(work[0].batches) <= 256
