"""SQLite relay storage (securechan.relay.sqlite_store) on real files.

The backend-independent contract runs from tests/relay_conformance.py; the
tests below are what only SQLite can show: the pragmas in force, group commit,
durability across restart and ``kill -9``, private file modes, schema
versions, and that deleted envelopes do not linger in the file or its WAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from securechan.errors import StorageError
from securechan.relay import sqlite_store
from securechan.relay.sqlite_store import MAX_FETCH, SCHEMA_VERSION, SqliteStorage
from securechan.relay.storage import (
    Envelope,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    RelayStorage,
)
from securechan.relay.writer_thread import open_in_thread
from securechan.sqlite_schema import SCHEMA_ROOT
from tests.relay_conformance import (
    NOW,
    OpenStorage,
    StorageConformance,
    StreamConformance,
    make_queue,
    msg_id,
)

REPO = Path(__file__).resolve().parent.parent
DEPTH = 10_000


class TestSqliteConformance(StorageConformance, StreamConformance):
    @pytest.fixture
    def open_storage(self, tmp_path: Path) -> OpenStorage:
        counter = itertools.count()

        async def open_fresh() -> RelayStorage:
            return await open_in_thread(SqliteStorage, tmp_path / f"relay-{next(counter)}.db")

        return open_fresh


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


async def _fetch_all(s: SqliteStorage, rid: bytes) -> list[Envelope]:
    out: list[Envelope] = []
    after = 0
    while batch := await s.fetch(rid, after=after, limit=MAX_FETCH):
        out += batch
        after = batch[-1].seq
    return out


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _files(path: Path) -> bytes:
    """The database file and its WAL (if any), as a thief would read them."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


# --- opening ---------------------------------------------------------------------


def test_open_creates_a_private_folder_and_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "data" / "relay.db"

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            await s.create_queue(make_queue("a"))
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.parent.stat().st_mode & 0o777 == 0o700
            wal = path.with_name("relay.db-wal")
            assert wal.stat().st_mode & 0o777 == 0o600  # SQLite copies the file's mode

    _run(main)


def test_the_pragmas_in_force(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            got = await s.settings()
            assert got.journal_mode == "wal"
            assert got.synchronous == 2  # FULL: the WAL is synced on every commit
            assert got.secure_delete == 1
            assert got.foreign_keys == 1
            assert got.busy_timeout_ms == 5000
            assert got.schema_version == SCHEMA_VERSION
        async with await open_in_thread(SqliteStorage, path, synchronous="normal") as s:
            assert (await s.settings()).synchronous == 1

    _run(main)
    with _raw(path) as conn:  # WAL mode and the version are recorded in the file
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"synchronous": "FULL; DROP TABLE queues"}, "synchronous"),
        ({"synchronous": "SOMETIMES"}, "synchronous"),
        ({"readers": 0}, "readers"),
        ({"busy_timeout": 0}, "busy_timeout"),
        ({"idle_checkpoint": -1}, "idle_checkpoint"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SqliteStorage(tmp_path / "relay.db", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "relay.db").exists()


def test_a_symlink_at_the_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    (tmp_path / "relay.db").symlink_to(target)
    with pytest.raises(StorageError):
        SqliteStorage(tmp_path / "relay.db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"not a database, just some bytes" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError):
        SqliteStorage(path)
    assert path.read_bytes() == before


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    async def make() -> None:
        await (await open_in_thread(SqliteStorage, path)).close()

    _run(make)
    conn = _raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="schema version"):
        SqliteStorage(path)
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


def test_an_upgrade_runs_the_missing_steps_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.db"
    q = make_queue("kept")

    async def make_v1() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            await s.create_queue(q)

    _run(make_v1)

    # The next version, in a schema folder of its own: v3.sql and upgrade-to-v3.sql.
    schemas = tmp_path / "schema"
    shutil.copytree(Path(str(SCHEMA_ROOT / "relay")), schemas)
    add_column = "ALTER TABLE queues ADD COLUMN note INTEGER;\n"
    v2 = (schemas / f"v{SCHEMA_VERSION}.sql").read_text()
    (schemas / f"v{SCHEMA_VERSION + 1}.sql").write_text(v2 + add_column)
    upgrade = schemas / f"upgrade-to-v{SCHEMA_VERSION + 1}.sql"
    # A failing step leaves the file at its old version, without the new column.
    failing = "INSERT INTO no_such_table VALUES (1);\n"
    upgrade.write_text(add_column + failing)
    schema = dataclasses.replace(sqlite_store.SCHEMA, folder=schemas)
    monkeypatch.setattr(sqlite_store, "SCHEMA", schema)
    with pytest.raises(StorageError):
        SqliteStorage(path)
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert "note" not in [r[1] for r in conn.execute("PRAGMA table_info(queues)")]
    conn.close()

    # A good step upgrades the file and keeps the data.
    upgrade.write_text(add_column)
    schema = dataclasses.replace(sqlite_store.SCHEMA, folder=schemas)
    monkeypatch.setattr(sqlite_store, "SCHEMA", schema)

    async def upgraded() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            assert (await s.settings()).schema_version == SCHEMA_VERSION + 1
            assert await s.queue_by_rid(q.rid) == q

    _run(upgraded)
    conn = _raw(path)
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(queues)")]
    conn.close()


# --- durability ------------------------------------------------------------------


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    q, c = make_queue("a", sender=True), make_queue("c", contact=True)

    async def first() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            await s.create_queue(q)
            await s.create_queue(c)
            for i in range(5):
                await s.put_envelope(q.rid, msg_id(i), b"m%d" % i, now=NOW + i, max_depth=DEPTH)
            await s.ack(q.rid, up_to=2)
            await s.put_prekeys(c.rid, signed=b"S", one_time=[b"a", b"b"], replace_one_time=False)
            assert await s.use_nonce(bytes(32), b"n1", now=NOW, expires=NOW + 600)

    async def second() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            assert await s.queue_by_rid(q.rid) == q
            assert await s.queue_by_sid(c.sid) == c
            got = await s.fetch(q.rid, after=0, limit=10)
            assert [(e.seq, e.data) for e in got] == [(3, b"m2"), (4, b"m3"), (5, b"m4")]
            assert await s.prekey_count(c.rid) == 2
            assert not await s.use_nonce(bytes(32), b"n1", now=NOW + 1, expires=NOW + 600)
            # The counter survives too: after acking everything, no number comes back.
            await s.ack(q.rid, up_to=5)
            assert (await s.put_envelope(q.rid, msg_id(9), b"x", now=NOW, max_depth=DEPTH)).seq == 6

    _run(first)
    _run(second)


def test_close_finishes_every_submitted_write(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    q = make_queue("a")

    async def main() -> None:
        s = await open_in_thread(SqliteStorage, path)
        await s.create_queue(q)
        puts = [
            asyncio.ensure_future(s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH))
            for i in range(50)
        ]
        await asyncio.sleep(0)  # each put has queued its job
        await s.close()
        assert sorted(r.seq for r in await asyncio.gather(*puts)) == list(range(1, 51))
        async with await open_in_thread(SqliteStorage, path) as again:
            assert await again.depth(q.rid) == 50

    _run(main)
    assert not path.with_name("relay.db-wal").exists()  # checkpointed and removed


# The child opens the store, runs concurrent senders that each send one
# envelope after another (as HTTP clients do), prints each send the store
# acknowledged (as the relay would answer 2xx), and kills itself with SIGKILL
# half-way through, while the next commits are in flight.
_CRASH_CHILD = r"""
import asyncio, os, signal, sys
from securechan.relay.sqlite_store import SqliteStorage
from securechan.relay.writer_thread import open_in_thread
from securechan.relay.storage import QueueRecord

path, senders, each, kill_after = sys.argv[1], *map(int, sys.argv[2:])
rid = bytes(range(16))

async def main():
    s = await open_in_thread(SqliteStorage, path)
    await s.create_queue(QueueRecord(rid=rid, sid=bytes(16), recipient_key=bytes(32),
                                     sender_key=None, contact=False, created=0))
    acked = 0
    async def sender(k):
        nonlocal acked
        for i in range(k * each, (k + 1) * each):
            r = await s.put_envelope(rid, i.to_bytes(16, "big"), b"envelope %d" % i,
                                     now=1, max_depth=100_000)
            os.write(1, b"%d %d\n" % (i, r.seq))
            acked += 1
            if acked == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.gather(*(sender(k) for k in range(senders)))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_sigkill_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    senders, each, kill_after = 40, 10, 150
    n = senders * each
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, str(path), str(senders), str(each), str(kill_after)],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    acked: dict[int, int] = {}  # message number -> the seq the store answered
    for line in child.stdout.decode().splitlines():
        i, seq = line.split()
        acked[int(i)] = int(seq)
    assert kill_after <= len(acked) < n  # killed mid-burst
    rid = bytes(range(16))

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            stored = await _fetch_all(s, rid)
            by_seq = {e.seq: e for e in stored}
            assert len(by_seq) == len(stored)
            assert len({e.msg_id for e in stored}) == len(stored)  # nothing stored twice
            for e in stored:  # nothing torn
                assert e.data == b"envelope %d" % int.from_bytes(e.msg_id, "big")
            for i, seq in acked.items():  # every acknowledged send is there
                assert by_seq[seq].msg_id == msg_id(i)
            # The client resends everything it was not sure of: the ones that
            # landed come back as duplicates with their seq, the rest are new.
            results = await asyncio.gather(
                *(
                    s.put_envelope(rid, msg_id(i), b"envelope %d" % i, now=1, max_depth=DEPTH)
                    for i in range(n)
                )
            )
            for i, r in enumerate(results):
                if i in acked:
                    assert r == PutResult(seq=acked[i], duplicate=True)
            assert sum(not r.duplicate for r in results) == n - len(stored)
            assert min(r.seq for r in results if not r.duplicate) > max(by_seq)  # no reuse
            assert await s.depth(rid) == n

    _run(main)


# --- group commit ----------------------------------------------------------------


def test_concurrent_puts_share_commits(tmp_path: Path) -> None:
    q = make_queue("a")

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, tmp_path / "relay.db") as s:
            await s.create_queue(q)
            commits, jobs = s.commits, s.write_jobs
            for i in range(10):  # one after the other: each waits for its own commit
                await s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
            assert (s.commits - commits, s.write_jobs - jobs) == (10, 10)
            commits, jobs = s.commits, s.write_jobs
            await asyncio.gather(
                *(
                    s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
                    for i in range(100, 300)
                )
            )
            assert s.write_jobs - jobs == 200
            assert s.commits - commits <= 20, s.commits - commits

    _run(main)


def test_a_failed_commit_fails_its_whole_batch_and_stores_nothing(tmp_path: Path) -> None:
    # If the transaction itself is lost (I/O error, disk full), no caller of
    # that batch may be told "stored": all fail, none is stored, none used a
    # sequence number, and the writer carries on with the next batch.
    q = make_queue("a")
    entered, gate = threading.Event(), threading.Event()

    def hold_the_writer(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    def lose_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, tmp_path / "relay.db") as s:
            await s.create_queue(q)
            held = asyncio.ensure_future(s._write(hold_the_writer))
            assert await asyncio.to_thread(entered.wait, 10)

            def put(i: int) -> asyncio.Future[PutResult]:
                return asyncio.ensure_future(
                    s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
                )

            # These queue up behind the held writer, so they form one batch.
            puts = [put(i) for i in range(10)]
            lost = asyncio.ensure_future(s._write(lose_the_transaction))
            puts += [put(i) for i in range(10, 20)]
            await asyncio.sleep(0.01)
            gate.set()
            await held
            results = await asyncio.gather(*puts, lost, return_exceptions=True)
            assert all(isinstance(r, StorageError) for r in results), results
            assert await s.depth(q.rid) == 0
            assert await s.put_envelope(q.rid, msg_id(0), b"x", now=NOW, max_depth=DEPTH) == (
                PutResult(seq=1, duplicate=False)
            )

    _run(main)


def test_the_depth_counter_matches_the_rows(tmp_path: Path) -> None:
    # depth is kept by triggers (so the queue-full check reads one row);
    # every way of adding or removing envelopes must keep it exact.
    path = tmp_path / "relay.db"
    a, b, c = make_queue("a"), make_queue("b"), make_queue("c")

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            for x in (a, b, c):
                await s.create_queue(x)
            await asyncio.gather(
                *(
                    s.put_envelope(x.rid, msg_id(i), b"x", now=NOW + i, max_depth=DEPTH)
                    for x in (a, b, c)
                    for i in range(30)
                )
            )
            await s.put_envelope(a.rid, msg_id(0), b"x", now=NOW, max_depth=DEPTH)  # duplicate
            await s.ack(a.rid, up_to=7)
            await s.expire(older_than=NOW + 20)
            await s.delete_queue(c.rid)
            assert (await s.depth(a.rid), await s.depth(b.rid), await s.depth(c.rid)) == (10, 10, 0)

    _run(main)
    conn = _raw(path)
    rows = conn.execute(
        "SELECT depth, (SELECT count(*) FROM envelopes e WHERE e.rid = q.rid) FROM queues q"
    ).fetchall()
    assert rows == [(10, 10), (10, 10)]
    conn.close()


def test_fetch_is_capped(tmp_path: Path) -> None:
    q = make_queue("a")

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, tmp_path / "relay.db") as s:
            await s.create_queue(q)
            await asyncio.gather(
                *(
                    s.put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
                    for i in range(MAX_FETCH + 5)
                )
            )
            assert len(await s.fetch(q.rid, after=0, limit=10**9)) == MAX_FETCH

    _run(main)


def test_expired_nonces_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            for i in range(50):
                assert await s.use_nonce(bytes(32), b"%d" % i, now=NOW, expires=NOW + 60)
            assert await s.use_nonce(bytes(32), b"later", now=NOW + 61, expires=NOW + 121)

    _run(main)
    conn = _raw(path)
    assert conn.execute("SELECT nonce FROM nonces").fetchall() == [(b"later",)]
    conn.close()


# --- deleted data does not linger (SECURITY-TESTS: the disk as adversary) ---------


def _marker(label: str) -> bytes:
    return b"<<" + label.encode() + os.urandom(8).hex().encode() + b">>"


def test_deleted_envelopes_and_prekeys_do_not_linger(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    a, b, c = make_queue("a"), make_queue("b"), make_queue("c", contact=True)
    acked, expired, in_deleted_queue = _marker("acked"), _marker("expired"), _marker("queue")
    claimed, old_signed, kept = _marker("claimed"), _marker("old-signed"), _marker("kept")
    gone = [acked, expired, in_deleted_queue, claimed, old_signed]

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path) as s:
            for x in (a, b, c):
                await s.create_queue(x)
            await s.put_envelope(a.rid, msg_id(1), acked * 4, now=NOW + 100, max_depth=DEPTH)
            # 40 kB: stored in overflow pages, which must be wiped too.
            await s.put_envelope(a.rid, msg_id(2), expired * 1500, now=NOW, max_depth=DEPTH)
            await s.put_envelope(a.rid, msg_id(3), kept, now=NOW + 100, max_depth=DEPTH)
            await s.put_envelope(b.rid, msg_id(1), in_deleted_queue, now=NOW + 100, max_depth=DEPTH)
            await s.put_prekeys(
                c.rid, signed=old_signed, one_time=[claimed], replace_one_time=False
            )
            assert await s.checkpoint()
            everything = _files(path)
            assert all(m in everything for m in [*gone, kept])  # the grep sees stored data

            assert await s.ack(a.rid, up_to=1) == 1
            assert await s.expire(older_than=NOW + 1) == 1
            await s.delete_queue(b.rid)
            assert await s.claim_bundle(c.rid) == (old_signed, claimed, 0)
            await s.put_prekeys(c.rid, signed=b"new signed", one_time=[], replace_one_time=False)
            assert await s.checkpoint()
            left = _files(path)
            assert path.with_name("relay.db-wal").stat().st_size == 0  # truncated
            assert [m for m in gone if m in left] == []
            assert kept in left

    _run(main)
    left = _files(path)
    assert [m for m in gone if m in left] == []
    assert kept in left


def test_the_wal_is_truncated_when_idle_after_a_deletion(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    secret = _marker("idle")
    q = make_queue("a")

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, path, idle_checkpoint=0.05) as s:
            await s.create_queue(q)
            await s.put_envelope(q.rid, msg_id(1), secret, now=NOW, max_depth=DEPTH)
            assert secret in _files(path)
            await s.ack(q.rid, up_to=1)
            for _ in range(100):  # no explicit checkpoint: the idle writer does it
                await asyncio.sleep(0.02)
                if secret not in _files(path):
                    break
            assert secret not in _files(path)
            assert path.with_name("relay.db-wal").stat().st_size == 0

    _run(main)


def test_without_secure_delete_the_grep_would_find_them(tmp_path: Path) -> None:
    # The control for the two tests above: the same deletion on a connection
    # without secure_delete leaves the bytes in the file, so the grep has teeth.
    path = tmp_path / "plain.db"
    secret = _marker("plain")
    conn = _raw(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute("CREATE TABLE t (data BLOB)")
    conn.execute("INSERT INTO t VALUES (?), (?)", (secret, b"other row"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("DELETE FROM t WHERE data = ?", (secret,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert secret in _files(path)
    conn.close()


def test_a_send_records_its_nonce_in_the_same_transaction(tmp_path: Path) -> None:
    key = bytes(range(32))

    def use(nonce: bytes, now: int = NOW) -> NonceUse:
        return NonceUse(key=key, nonce=nonce, now=now, expires=now + 600)

    async def main() -> None:
        async with await open_in_thread(SqliteStorage, tmp_path / "relay.db") as s:
            q = make_queue("n", sender=True)
            await s.create_queue(q)
            commits = s.commits
            r = await s.put_envelope(q.rid, msg_id(1), b"a", now=NOW, max_depth=2, nonce=use(b"1"))
            assert r == PutResult(seq=1, duplicate=False)
            assert s.commits == commits + 1  # one commit for the nonce and the envelope
            # A replay stores nothing, even under a new message id.
            with pytest.raises(NonceReused):
                await s.put_envelope(q.rid, msg_id(2), b"b", now=NOW, max_depth=2, nonce=use(b"1"))
            assert [e.msg_id for e in await _fetch_all(s, q.rid)] == [msg_id(1)]
            # The nonce tables of use_nonce and put_envelope are one.
            assert not await s.use_nonce(key, b"1", now=NOW, expires=NOW + 600)
            assert await s.use_nonce(key, b"2", now=NOW, expires=NOW + 600)
            with pytest.raises(NonceReused):
                await s.put_envelope(q.rid, msg_id(3), b"c", now=NOW, max_depth=2, nonce=use(b"2"))
            # A full queue refuses the envelope but keeps the nonce.
            await s.put_envelope(q.rid, msg_id(4), b"d", now=NOW, max_depth=2, nonce=use(b"3"))
            with pytest.raises(QueueFull):
                await s.put_envelope(q.rid, msg_id(5), b"e", now=NOW, max_depth=2, nonce=use(b"4"))
            assert not await s.use_nonce(key, b"4", now=NOW, expires=NOW + 600)
            # No such queue: nothing recorded.
            with pytest.raises(ValueError, match="no such queue"):
                await s.put_envelope(
                    bytes(16), msg_id(6), b"f", now=NOW, max_depth=2, nonce=use(b"5")
                )
            assert await s.use_nonce(key, b"5", now=NOW, expires=NOW + 600)
            # Past its expiry a nonce may be used again.
            later = NOW + 601
            r = await s.put_envelope(
                q.rid, msg_id(1), b"a", now=later, max_depth=2, nonce=use(b"1", later)
            )
            assert r.duplicate

    _run(main)


def test_cached_queue_records_follow_every_change(tmp_path: Path) -> None:
    async def main() -> None:
        async with await open_in_thread(SqliteStorage, tmp_path / "relay.db") as s:
            q = make_queue("c")
            await s.create_queue(q)
            assert await s.queue_by_sid(q.sid) == q
            assert await s.queue_by_rid(q.rid) == q
            await s.set_sender_key(q.rid, bytes(range(32)))
            secured = await s.queue_by_sid(q.sid)
            assert secured is not None
            assert secured.sender_key == bytes(range(32))
            assert await s.queue_by_rid(q.rid) == secured
            # A read racing a change must not cache what it read before the change.
            read = asyncio.ensure_future(s.queue_by_sid(q.sid))
            await s.delete_queue(q.rid)
            await read
            assert await s.queue_by_sid(q.sid) is None
            assert await s.queue_by_rid(q.rid) is None

    _run(main)
