"""PostgreSQL relay storage (securechan.relay.pg_store) on a real server.

The backend-independent contract runs from tests/relay_conformance.py (the
same suite as SQLite); the tests below show what several relay processes
on one database rely on: two storage instances (each with its own
connections, as two processes have) or two OS processes sending, fetching
and acknowledging on one queue lose nothing, store nothing twice and hand
out sequence numbers without gaps; quotas, prekey claims and nonces hold
across instances; a send through one instance wakes the other; the schema
is versioned and a newer one is refused.

The server is the session's throwaway one (tests/conftest.py): skipped on a
machine without PostgreSQL, required in CI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from securechan.errors import StorageError
from securechan.relay.storage import (
    NonceUse,
    PutResult,
    QueueFull,
    Quota,
    QuotaExceeded,
    RelayStorage,
)
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


def _in_schema(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    return f"{url}?options={quote(f'-c search_path={schema}')}"


def _new_schema(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return _in_schema(url, name)


class TestPostgresConformance(StorageConformance, StreamConformance):
    @pytest.fixture
    def open_storage(self, postgres_url: str) -> OpenStorage:
        # A fresh PostgreSQL schema (namespace) per call: cheaper than a
        # database, and just as empty.
        counter = itertools.count()

        async def open_fresh() -> RelayStorage:
            from securechan.relay.pg_store import PgStorage

            url = _new_schema(postgres_url, f"s{next(counter)}")
            return await PgStorage.open(url, pool_size=4, listen=False)

        return open_fresh


Body = Callable[[Any, Any], Awaitable[None]]


def _two(url: str, body: Body, *, listen: bool = False) -> None:
    """Run ``body(a, b)`` on two storage instances of one database."""

    async def main() -> None:
        from securechan.relay.pg_store import PgStorage

        a = await PgStorage.open(url, pool_size=6, listen=listen)
        b = await PgStorage.open(url, pool_size=6, listen=listen)
        try:
            await body(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_two_instances_sending_to_one_queue_take_distinct_gapless_seqs(postgres_url: str) -> None:
    q = make_queue("shared")

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        puts = [
            (a if i % 2 else b).put_envelope(q.rid, msg_id(i), b"m%d" % i, now=NOW, max_depth=DEPTH)
            for i in range(300)
        ]
        results = await asyncio.gather(*puts)
        assert sorted(r.seq for r in results) == list(range(1, 301))
        held = await b.fetch(q.rid, after=0, limit=1000)
        assert [e.seq for e in held] == list(range(1, 301))
        for i, r in enumerate(results):
            assert held[r.seq - 1].msg_id == msg_id(i)
            assert held[r.seq - 1].data == b"m%d" % i
        assert await a.depth(q.rid) == 300

    _two(postgres_url, body)


def test_two_instances_resending_one_message_store_it_once(postgres_url: str) -> None:
    q = make_queue("resend")

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        puts = [
            (a, b)[j % 2].put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH)
            for i in range(40)
            for j in range(6)
        ]
        results = await asyncio.gather(*puts)
        assert sum(not r.duplicate for r in results) == 40
        by_msg: dict[int, set[int]] = {}
        for n, r in enumerate(results):
            by_msg.setdefault(n // 6, set()).add(r.seq)
        assert all(len(seqs) == 1 for seqs in by_msg.values())
        assert sorted(s for seqs in by_msg.values() for s in seqs) == list(range(1, 41))
        assert await b.depth(q.rid) == 40

    _two(postgres_url, body)


def test_send_fetch_ack_across_instances_delivers_each_exactly_once(postgres_url: str) -> None:
    # Senders on both instances while a receiver on instance b pages and
    # acknowledges: every envelope is seen exactly once, in seq order.
    q = make_queue("flow")
    total = 400

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        seen: list[int] = []
        done = asyncio.Event()

        async def send(s: Any, ids: range) -> None:
            for i in ids:
                await s.put_envelope(q.rid, msg_id(i), b"%d" % i, now=NOW, max_depth=DEPTH)

        async def receive() -> None:
            after = 0
            while len(seen) < total:
                batch = await b.fetch(q.rid, after=after, limit=37)
                if not batch:
                    await asyncio.sleep(0.005)
                    continue
                seen.extend(int(e.data) for e in batch)
                assert [e.seq for e in batch] == list(range(after + 1, after + 1 + len(batch)))
                after = batch[-1].seq
                await b.ack(q.rid, up_to=after)
            done.set()

        await asyncio.gather(
            send(a, range(0, total, 2)), send(b, range(1, total, 2)), receive(), send(a, range(0))
        )
        assert sorted(seen) == list(range(total))
        assert len(seen) == len(set(seen))
        assert await a.depth(q.rid) == 0
        assert done.is_set()

    _two(postgres_url, body)


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from securechan.relay.pg_store import PgStorage
    from tests.relay_conformance import NOW, make_queue, msg_id

    async def main(url, first, count):
        s = await PgStorage.open(url, pool_size=4, listen=False)
        q = make_queue("procs")
        seqs = await asyncio.gather(*(
            s.put_envelope(q.rid, msg_id(i), b"%d" % i, now=NOW, max_depth=100000)
            for i in range(first, first + count)
        ))
        # Each message again: every resend must answer the first seq.
        again = await asyncio.gather(*(
            s.put_envelope(q.rid, msg_id(i), b"%d" % i, now=NOW, max_depth=100000)
            for i in range(first, first + count)
        ))
        assert [r.seq for r in again] == [r.seq for r in seqs], "resend moved"
        assert all(r.duplicate for r in again)
        print(" ".join(str(r.seq) for r in seqs))
        await s.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


def test_two_os_processes_on_one_queue_lose_nothing_and_duplicate_nothing(
    postgres_url: str,
) -> None:
    q = make_queue("procs")

    async def setup() -> None:
        from securechan.relay.pg_store import PgStorage

        s = await PgStorage.open(postgres_url, listen=False)
        await s.create_queue(q)
        await s.close()

    asyncio.run(setup())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    per = 250
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, postgres_url, str(n * per), str(per)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for n in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    seqs = [int(x) for out, _ in outs for x in out.split()]
    assert sorted(seqs) == list(range(1, 2 * per + 1))

    async def check() -> None:
        from securechan.relay.pg_store import PgStorage

        s = await PgStorage.open(postgres_url, listen=False)
        held = await s.fetch(q.rid, after=0, limit=1000)
        await s.close()
        assert [e.seq for e in held] == list(range(1, 2 * per + 1))
        assert sorted(int(e.data) for e in held) == list(range(2 * per))

    asyncio.run(check())


def test_depth_and_byte_quotas_hold_across_instances(postgres_url: str) -> None:
    q = make_queue("deep")
    s1, s2 = make_queue("s1", sender=True), make_queue("s2", sender=True)
    s2 = dataclasses.replace(s2, sender_key=s1.sender_key)  # two queues, one sender key

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        results = await asyncio.gather(
            *(
                (a, b)[i % 2].put_envelope(q.rid, msg_id(i), b"x", now=NOW, max_depth=50)
                for i in range(90)
            ),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, PutResult)]
        assert len(ok) == 50 and sum(isinstance(r, QueueFull) for r in results) == 40
        assert sorted(r.seq for r in ok) == list(range(1, 51))
        assert await b.depth(q.rid) == 50

        await a.create_queue(s1)
        await a.create_queue(s2)
        quota = Quota(sender_bytes=1000)
        sends = await asyncio.gather(
            *(
                (a, b)[i % 2].put_envelope(
                    (s1, s2)[i % 3 % 2].rid,
                    msg_id(i),
                    bytes(100),
                    now=NOW,
                    max_depth=DEPTH,
                    quota=quota,
                )
                for i in range(30)
            ),
            return_exceptions=True,
        )
        stored = [r for r in sends if isinstance(r, PutResult)]
        refused = [r for r in sends if isinstance(r, QuotaExceeded)]
        assert (len(stored), len(refused)) == (10, 20)
        assert {r.kind for r in refused} == {"sender"}
        assert await a.depth(s1.rid) + await a.depth(s2.rid) == 10

    _two(postgres_url, body)


def test_claims_and_nonces_are_once_across_instances(postgres_url: str) -> None:
    q = make_queue("c", contact=True)
    blobs = [b"otk %d" % i for i in range(20)]

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        await b.put_prekeys(q.rid, signed=b"S", one_time=blobs, replace_one_time=False)
        bundles = await asyncio.gather(*((a, b)[i % 2].claim_bundle(q.rid) for i in range(50)))
        handed = [x[1] for x in bundles if x is not None and x[1] is not None]
        assert sorted(handed) == sorted(blobs)
        key = bytes(range(32))
        used = await asyncio.gather(
            *((a, b)[i % 2].use_nonce(key, b"n", now=NOW, expires=NOW + 60) for i in range(40))
        )
        assert sorted(used) == [False] * 39 + [True]
        nonce = NonceUse(key=key, nonce=b"put", now=NOW, expires=NOW + 60)
        puts = await asyncio.gather(
            *(
                (a, b)[i % 2].put_envelope(
                    q.rid, msg_id(i), b"x", now=NOW, max_depth=DEPTH, nonce=nonce
                )
                for i in range(10)
            ),
            return_exceptions=True,
        )
        assert sum(isinstance(r, PutResult) for r in puts) == 1
        assert await a.depth(q.rid) == 1

    _two(postgres_url, body)


def test_secured_and_deleted_queues_are_seen_by_the_other_instance(postgres_url: str) -> None:
    # No cache per process: a change through a is what b reads next.
    q = make_queue("seen")

    async def body(a: Any, b: Any) -> None:
        await a.create_queue(q)
        assert (await b.queue_by_sid(q.sid)).sender_key is None
        await a.set_sender_key(q.rid, bytes(32))
        assert (await b.queue_by_sid(q.sid)).sender_key == bytes(32)
        await b.delete_queue(q.rid)
        assert await a.queue_by_sid(q.sid) is None

    _two(postgres_url, body)


def test_a_send_through_one_instance_wakes_the_other(postgres_url: str) -> None:
    from securechan.relay.wake import queue_tag

    q, other = make_queue("woken"), make_queue("other")

    async def body(a: Any, b: Any) -> None:
        heard_a: list[tuple[str, int]] = []
        heard_b: list[tuple[str, int]] = []
        got = asyncio.Event()

        def on_b(tag: str, seq: int) -> None:
            heard_b.append((tag, seq))
            got.set()

        a.on_wake(lambda tag, seq: heard_a.append((tag, seq)))
        b.on_wake(on_b)
        await a.listening()
        await b.listening()
        await a.create_queue(q)
        await a.create_queue(other)
        r = await a.put_envelope(q.rid, msg_id(1), b"secret body", now=NOW, max_depth=DEPTH)
        await asyncio.wait_for(got.wait(), timeout=10)
        assert heard_b == [(queue_tag(q.rid), r.seq)]
        # A duplicate wakes nobody; a refused send wakes nobody.
        await a.put_envelope(q.rid, msg_id(1), b"secret body", now=NOW, max_depth=DEPTH)
        with pytest.raises(QueueFull):
            await a.put_envelope(q.rid, msg_id(2), b"x", now=NOW, max_depth=1)
        got.clear()
        await b.put_envelope(other.rid, msg_id(3), b"y", now=NOW, max_depth=DEPTH)
        await a.put_envelope(other.rid, msg_id(4), b"z", now=NOW, max_depth=DEPTH)
        await asyncio.wait_for(got.wait(), timeout=10)
        await asyncio.sleep(0.2)
        assert heard_b == [(queue_tag(q.rid), 1), (queue_tag(other.rid), 2)]
        # a heard b's send only: never its own.
        assert heard_a == [(queue_tag(other.rid), 1)]

    _two(postgres_url, body, listen=True)


def test_wake_payload_carries_no_id_or_content(postgres_url: str) -> None:
    import psycopg

    from securechan.relay.wake import WAKE_CHANNEL

    q = make_queue("payload")

    async def body(a: Any, b: Any) -> None:
        conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        await conn.execute(f"LISTEN {WAKE_CHANNEL}")
        await a.create_queue(q)
        await a.put_envelope(q.rid, msg_id(7), b"content!", now=NOW, max_depth=DEPTH)
        gen = conn.notifies(timeout=10, stop_after=1)
        notes = [n async for n in gen]
        await conn.close()
        payload = notes[0].payload
        for secret in (q.rid, q.sid, msg_id(7), b"content!"):
            assert secret.hex() not in payload and secret.decode("latin-1") not in payload

    _two(postgres_url, body)


def test_schema_is_versioned_and_a_newer_one_is_refused(postgres_url: str) -> None:
    import psycopg

    from securechan.relay.pg_store import SCHEMA, PgStorage

    async def main() -> None:
        # Two instances opening a new database at once migrate it once.
        a, b = await asyncio.gather(
            PgStorage.open(postgres_url, listen=False), PgStorage.open(postgres_url, listen=False)
        )
        await a.close()
        await b.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            rows = conn.execute("SELECT component, version FROM schema_version").fetchall()
            assert rows == [("relay_pg", SCHEMA.version)]
            conn.execute("UPDATE schema_version SET version = version + 1")
        with pytest.raises(StorageError, match="newer than this securechan knows"):
            await PgStorage.open(postgres_url, listen=False)

    asyncio.run(main())


def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    from securechan.relay.pg_pool import redact_dsn
    from securechan.relay.pg_store import PgStorage

    url = "postgresql://relay:hunter2-secret@127.0.0.1:1/relaydb?connect_timeout=2"
    with pytest.raises(StorageError) as info:
        asyncio.run(PgStorage.open(url))
    assert "hunter2" not in str(info.value)
    assert "postgresql://relay@127.0.0.1:1/relaydb" in str(info.value)
    assert redact_dsn("host=h port=5 user=u password=pw dbname=d") == "postgresql://u@h:5/d"


_BURST = textwrap.dedent(
    """
    import asyncio, sys
    from securechan.errors import StorageError
    from securechan.relay.pg_store import PgStorage
    from tests.relay_conformance import NOW, make_queue, msg_id

    async def main(url):
        s = await PgStorage.open(url, pool_size=8, listen=False)
        q = make_queue("crash")
        counter = iter(range(10**6))
        failing = False

        async def sender():
            nonlocal failing
            while not failing:
                i = next(counter)
                try:
                    r = await s.put_envelope(q.rid, msg_id(i), b"%d" % i, now=NOW, max_depth=10**6)
                except StorageError:
                    failing = True
                    return
                print("ok", r.seq, i, flush=True)  # acknowledged

        await asyncio.gather(*(sender() for _ in range(16)))
        print("down", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def _pg_ctl(folder: Path, *args: str) -> None:
    """Debian's pg_ctl on the throwaway cluster in ``folder``, as its owner."""
    import pwd

    from securechan.testing.postgres import find_bindir

    bindir = find_bindir()
    assert bindir is not None
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    subprocess.run(
        [str(bindir / "pg_ctl"), "-D", str(folder / "data"), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
        extra_groups=[] if owner else None,
        cwd=folder,
    )


def test_a_crash_of_postgresql_mid_burst_loses_no_acknowledged_send(
    postgres_server: Any, tmp_path: Path
) -> None:
    # Its own server: this one is crashed. `pg_ctl stop -m immediate` is
    # PostgreSQL's crash (every server process quits at once, no checkpoint;
    # the restart replays the WAL), 16 sends in flight at that moment. A
    # storage instance open across the crash comes back by itself: its
    # pooled connections died, its next calls open new ones, and its
    # wake-up listener listens again.
    from securechan.relay.pg_store import PgStorage
    from securechan.testing.postgres import running_postgres

    q = make_queue("crash")
    with running_postgres() as server:
        url = server.create_database("crash")
        out = tmp_path / "burst.out"

        async def main() -> None:
            survivor = await PgStorage.open(url, pool_size=4)
            woken: list[int] = []
            survivor.on_wake(lambda tag, seq: woken.append(seq))
            await survivor.create_queue(q)
            await survivor.put_envelope(q.rid, msg_id(10**7), b"before", now=NOW, max_depth=DEPTH)
            with out.open("wb") as f:
                worker = subprocess.Popen(
                    [sys.executable, "-c", _BURST, url],
                    stdout=f,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                    cwd=REPO,
                )
            deadline = time.monotonic() + 60
            while out.read_text().count("ok ") < 200:
                assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.to_thread(_pg_ctl, server.folder, "-m", "immediate", "-w", "stop")
            _, err = await asyncio.to_thread(worker.communicate, timeout=60)
            assert worker.returncode == 0, err.decode()
            lines = out.read_text().split("\n")
            assert "down" in lines
            acked = {
                int(i): int(seq) for _, seq, i in (x.split() for x in lines if x.startswith("ok"))
            }
            await asyncio.to_thread(
                _pg_ctl, server.folder, "-l", str(server.folder / "log"), "-w", "start"
            )
            held = []
            after = 0
            while batch := await survivor.fetch(q.rid, after=after, limit=1000):
                held += batch
                after = batch[-1].seq
            stored = {int(e.data): e.seq for e in held if e.data != b"before"}
            # Every acknowledged send is there, at the seq it was given.
            assert {i: stored.get(i) for i in acked} == acked
            assert len({e.seq for e in held}) == len(held)
            # No seq is handed out again after the crash.
            r = await survivor.put_envelope(
                q.rid, msg_id(10**8), b"after", now=NOW, max_depth=DEPTH
            )
            assert r.seq == max(e.seq for e in held) + 1
            # The survivor hears other instances' sends again.
            other = await PgStorage.open(url, listen=False)
            deadline = time.monotonic() + 30
            n = 0
            while not woken:
                assert time.monotonic() < deadline, "the wake-up listener did not come back"
                n += 1
                await other.put_envelope(q.rid, msg_id(10**9 + n), b"w", now=NOW, max_depth=DEPTH)
                await asyncio.sleep(0.5)
            await other.close()
            await survivor.close()

        asyncio.run(main())


def test_pg_v1_plus_upgrade_is_v2(postgres_url: str) -> None:
    """A version 1 database (before group streams, with a queue and an
    envelope) upgrades in place: the envelope is kept, the tables, columns
    and functions are those of a new database, and streams work."""
    import psycopg

    from securechan.relay.pg_store import PgStorage

    old = (REPO / "tests/fixtures/stores/relay/pg-schema-v1.sql").read_text()
    upgraded, fresh = _new_schema(postgres_url, "v1up"), _new_schema(postgres_url, "fresh")
    with psycopg.connect(upgraded, autocommit=True) as conn:
        conn.execute(old.encode())
        conn.execute(
            "CREATE TABLE schema_version"
            " (component text PRIMARY KEY, version integer NOT NULL CHECK (version >= 1))"
        )
        conn.execute("INSERT INTO schema_version VALUES ('relay_pg', 1)")
    q = make_queue("kept")

    async def main() -> None:
        s = await PgStorage.open(upgraded, listen=False)
        try:
            assert s.schema_version == 2
            await s.create_queue(q)
            await s.put_envelope(q.rid, msg_id(1), b"env", now=NOW, max_depth=10)
            put = await s.put_stream_item(bytes(32), b"x", log_index=0, now=NOW, max_items=5)
            assert put.position == 1
        finally:
            await s.close()
        await (await PgStorage.open(fresh, listen=False)).close()

    asyncio.run(main())

    def shape(url: str, schema: str) -> list[tuple[object, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cols = conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
                (schema,),
            ).fetchall()
            funcs = conn.execute(
                "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 1",
                (schema,),
            ).fetchall()
            return [*cols, *funcs]

    assert shape(upgraded, "v1up") == shape(fresh, "fresh")
