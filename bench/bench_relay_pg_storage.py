"""Relay storage sends per second: SQLite against PostgreSQL with 1 and 2 processes.

Storage only (no HTTP, no log): each process opens the storage and runs
SENDS ``put_envelope`` calls of 1 KiB, CONCURRENCY at a time, spread over
QUEUES queues; the PostgreSQL processes share one database on a throwaway
server started here (fsync on, ``synchronous_commit = on``: every send is
durable when it returns, as SQLite's ``synchronous=FULL``). With 2
processes, both run at once and the rate is their total. Run from a
source tree:

    PYTHONPATH=$PWD .venv/bin/python bench/bench_relay_pg_storage.py [SENDS]

It prints one line per setting: sends/s and the CPU seconds the sending
processes used per 1,000 sends (the server's own CPU is not counted).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONCURRENCY = 32
QUEUES = 16

_WORKER = textwrap.dedent(
    """
    import asyncio, hashlib, sys, time
    from securechan.relay.storage import QueueRecord

    def q(n):
        h = lambda s, k: hashlib.sha256(f"{s} {n}".encode()).digest()[:k]
        return QueueRecord(rid=h("rid", 16), sid=h("sid", 16), recipient_key=h("rk", 32),
                           sender_key=None, contact=False, created=0)

    async def main(kind, where, first, count, conc, queues, create):
        if kind == "pg":
            from securechan.relay.pg_store import PgStorage
            s = await PgStorage.open(where, pool_size=conc, listen=False)
        else:
            from securechan.relay.sqlite_store import SqliteStorage
            from securechan.relay.writer_thread import open_in_thread
            s = await open_in_thread(SqliteStorage, where)
        qs = [q(n) for n in range(queues)]
        if create:
            for x in qs:
                await s.create_queue(x)
            await s.close()
            return
        ids = iter(range(first, first + count))
        body = bytes(1024)

        async def sender():
            for i in ids:
                await s.put_envelope(qs[i % queues].rid, i.to_bytes(16, "big"), body,
                                     now=0, max_depth=10**7)

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(conc)))
        print(time.perf_counter() - t0, time.process_time() - cpu0, flush=True)
        await s.close()

    a = sys.argv
    asyncio.run(main(a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), a[7] == "1"))
    """
)


def _run(kind: str, where: str, procs: int, sends: int) -> tuple[float, float]:
    env = dict(os.environ)

    def spawn(first: int, count: int, create: bool) -> subprocess.Popen[bytes]:
        args = [kind, where, str(first), str(count), str(CONCURRENCY), str(QUEUES)]
        return subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args, "1" if create else "0"],
            stdout=subprocess.PIPE,
            env=env,
        )

    if spawn(0, 0, True).wait() != 0:
        raise SystemExit("creating the queues failed")
    per = sends // procs
    t0 = time.perf_counter()
    workers = [spawn(n * per, per, False) for n in range(procs)]
    outs = [w.communicate()[0].decode().split() for w in workers]
    wall = time.perf_counter() - t0
    if any(w.returncode != 0 for w in workers):
        raise SystemExit("a sending process failed")
    cpu = sum(float(o[1]) for o in outs)
    slowest = max(float(o[0]) for o in outs)
    return per * procs / slowest, cpu / (per * procs) * 1000 if wall else 0.0


def main() -> None:
    from securechan.testing.postgres import running_postgres

    sends = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    print(f"{sends} sends of 1 KiB, {CONCURRENCY} at a time per process, {QUEUES} queues")
    print(f"cores: {os.cpu_count()}, load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        rate, cpu = _run("sqlite", str(Path(tmp) / "relay.db"), 1, sends)
        print(f"SQLite, 1 process:      {rate:8.0f} sends/s, {cpu:.2f} CPU s per 1,000 sends")
    with running_postgres() as server:
        for procs in (1, 2):
            url = server.create_database(f"bench{procs}")
            rate, cpu = _run("pg", url, procs, sends)
            print(
                f"PostgreSQL, {procs} process{'es' if procs > 1 else '  '}: {rate:8.0f} sends/s,"
                f" {cpu:.2f} CPU s per 1,000 sends"
            )


if __name__ == "__main__":
    main()
