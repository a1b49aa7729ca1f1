"""The relay's transparency log: appends per second, SQLite against
PostgreSQL with one and two processes, in one run (issue 16).

Each process opens the log the way ``relay serve`` does
(:func:`securechan.relay.tlog_open.open_relay_log`) and appends ``N``
distinct envelopes with ``C`` appends in flight at once (as concurrent
sends are); every append returns its receipt (checkpoint + inclusion proof)
only after its batch is durable. Reported: appends/s over the whole run
appends per commit (the group commit of the writer thread, one
transaction and one sync per batch) and the relay processes' own CPU time
per append (PostgreSQL's is not counted). PostgreSQL runs on a throwaway server
from Debian's binaries (``securechan.testing.postgres``), ``fsync = on``.

    python bench/bench_tlog_pg.py [--n 4000] [--concurrency 64]

On a machine shared with other work, compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from securechan.primitives import Ed25519SigningKey
from securechan.relay.tlog_open import open_relay_log

KEY = Ed25519SigningKey(hashlib.sha256(b"securechan bench log key").digest())  # public bench key


async def _appends(where: str, tag: str, n: int, concurrency: int) -> tuple[float, int, float]:
    db = where if where.startswith("postgresql://") else None
    tlog = await open_relay_log(Path(where), KEY, db=db)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await tlog.append(f"{tag}-{i}-".encode() + os.urandom(64))

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    commits = tlog.commits
    await tlog.close()
    return took, commits, cpu


Result = tuple[float, int, float]  # seconds, commits, CPU seconds of the process


def _process(where: str, tag: str, n: int, c: int, out: mp.Queue[Result]) -> None:
    out.put(asyncio.run(_appends(where, tag, n, c)))


def _run(where: str, procs: int, n: int, c: int) -> tuple[float, int, float]:
    """Appends/s over all processes, commits, relay-process CPU ms per append."""
    ctx = mp.get_context("spawn")
    results: mp.Queue[Result] = ctx.Queue()
    ps = [ctx.Process(target=_process, args=(where, f"p{k}", n, c, results)) for k in range(procs)]
    start = time.perf_counter()
    for p in ps:
        p.start()
    got = [results.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    wall = max(t for t, _, _ in got)
    del start
    cpu_ms = 1000 * sum(u for _, _, u in got) / (procs * n)
    return procs * n / wall, sum(c for _, c, _ in got), cpu_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000, help="appends per process")
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    from securechan.testing.postgres import running_postgres

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rate, commits, cpu = _run(tmp, 1, args.n, args.concurrency)
        rows.append(("SQLite tlog.db, 1 process", rate, args.n / commits, cpu))
    with running_postgres() as server:
        for procs in (1, 2):
            url = server.create_database(f"bench{procs}")
            rate, commits, cpu = _run(url, procs, args.n, args.concurrency)
            rows.append((f"PostgreSQL, {procs} process(es)", rate, procs * args.n / commits, cpu))
    print(f"{args.n} appends per process, {args.concurrency} in flight, {os.cpu_count()} CPUs")
    print(f"{'backend':32} {'appends/s':>10} {'appends/commit':>15} {'relay CPU ms/append':>20}")
    for name, rate, per, cpu in rows:
        print(f"{name:32} {rate:10.0f} {per:15.1f} {cpu:20.3f}")


if __name__ == "__main__":
    main()
