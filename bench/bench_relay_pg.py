"""Benchmark the relay on PostgreSQL with one and two processes against the SQLite relay.

Usage::

    python bench/bench_relay_pg.py [--json] [--quick] [--rounds N] [--duration S]

Issue 16, item 4. One run, three targets, the same load: ``wrk`` (C, one
thread, 50 connections, pre-signed unique sends of 6 KiB, exactly as
``bench/bench_relay_wrk.py`` makes them) against

* ``sqlite``: ``securechan relay serve`` with DATA/relay.db and tlog.db
  (``synchronous=FULL``), one process: the embedded default;
* ``pg1``: one relay process with ``--db postgresql://...`` (queues,
  envelopes and the transparency log in PostgreSQL);
* ``pg2``: two relay processes on that database and one port
  (``--reuse-port``: the kernel spreads wrk's connections); ``pg1`` is a
  third process on the same database, on a port of its own.

PostgreSQL is a throwaway cluster started by this script from Debian's
binaries (``securechan/testing/postgres.py``), ``fsync=on``,
``synchronous_commit=on``: a 2xx survives a power loss, as with SQLite FULL.
Rounds interleave the targets. Nothing is pinned to a CPU: the relays,
PostgreSQL and wrk share the machine, so besides requests/s the script
reports the CPU each part used per request (relay processes, PostgreSQL
backends, wrk), from /proc: that is what projects the figures to a machine
with more cores (``cores / cpu_per_request``), which a 2-core machine cannot
show directly. Every answered send is checked to be stored exactly once.

Target (issue 16): ``pg2`` at least 1.5x ``pg1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_relay as br
import bench_relay_wrk as bw

from securechan.testing.postgres import PostgresServer, running_postgres

TARGET = 1.5
MODES = {"default": (3, 1.0, 8.0), "quick": (1, 1.0, 2.0)}
# Pre-signed requests per measured second; a PostgreSQL relay on this machine
# answers far fewer, and wrk stops rather than replays when they run out.
POOL_RATE = 6000


def _children_cpu(root_pid: int) -> float:
    """CPU seconds of ``root_pid`` and every process whose parent it is."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += (int(fields[11]) + int(fields[12])) / tck
    return total


def _postmaster(server: PostgresServer) -> int:
    return int((server.folder / "data" / "postmaster.pid").read_text().split()[0])


def _start(name: str, argv: list[str], log: Path) -> br.Server:
    return br.start_server(name, argv, log, None)


def run(args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    mode = "quick" if args.quick else "default"
    rounds, warmup, duration = MODES[mode]
    rounds = args.rounds or rounds
    duration = args.duration or duration
    with (
        tempfile.TemporaryDirectory(prefix="bench-relay-pg-") as tmp_name,
        running_postgres(settings={"synchronous_commit": "on", "max_connections": "300"}) as pg,
    ):
        tmp = Path(tmp_name)
        config = tmp / "relay.toml"
        config.write_text(
            "[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in br.RELAY_LIMITS.items()), "utf-8"
        )
        base = [*br.relay_command(), "relay", "serve", "--host", "127.0.0.1"]
        base += ["--config", str(config), "--synchronous", "FULL"]
        port = br_free_port()
        pg_url = pg.create_database("bench")
        targets: dict[str, list[br.Server]] = {}
        runs: dict[str, list[dict[str, Any]]] = {"sqlite": [], "pg1": [], "pg2": []}
        queues: dict[str, list[br.BenchQueue]] = {}
        try:
            br.progress("starting the SQLite relay and two PostgreSQL relay processes")
            (tmp / "sqlite").mkdir(mode=0o700)
            targets["sqlite"] = [
                _start(
                    "sqlite", [*base, "--port", "0", "--data", str(tmp / "sqlite")], tmp / "s.log"
                )
            ]
            (tmp / "pg").mkdir(mode=0o700)
            pg_argv = [*base, "--data", str(tmp / "pg"), "--db", pg_url]
            # pg1: one process on its own port; pg2: two more on another port,
            # sharing it (--reuse-port). All three on the same database: the
            # idle ones cost nothing while the others are measured.
            single = _start("pg-1", [*pg_argv, "--port", "0"], tmp / "p1.log")
            pair = [
                _start(
                    f"pg-2{x}", [*pg_argv, "--reuse-port", "--port", str(port)], tmp / f"{x}.log"
                )
                for x in "ab"
            ]
            targets["pg1"] = [single]
            targets["pg2"] = pair
            queues["sqlite"] = asyncio.run(br.create_queues(targets["sqlite"][0].url, bw.QUEUES))
            queues["pg1"] = queues["pg2"] = asyncio.run(br.create_queues(single.url, bw.QUEUES))
            postmaster = _postmaster(pg)
            for r in range(rounds):
                for name in ("sqlite", "pg1", "pg2"):
                    br.progress(f"round {r + 1}/{rounds}: {name} ({warmup:g} s + {duration:g} s)")
                    url = targets[name][0].url
                    warm, measure = tmp / "warm.lua", tmp / "run.lua"
                    bw.write_lua(
                        warm, bw.presign(queues[name], int(POOL_RATE * warmup)), cycle=False
                    )
                    bw.write_lua(
                        measure, bw.presign(queues[name], int(POOL_RATE * duration)), cycle=False
                    )
                    warmed = bw.wrk_run(wrk, url, warm, None, warmup)
                    relay0 = sum(_children_cpu(s.proc.pid) for s in targets[name])
                    pg0 = _children_cpu(postmaster)
                    t0 = time.perf_counter()
                    result = bw.wrk_run(wrk, url, measure, None, duration)
                    wall = time.perf_counter() - t0
                    relay1 = sum(_children_cpu(s.proc.pid) for s in targets[name])
                    pg1 = _children_cpu(postmaster)
                    ok = max(1, result["requests"] - result["errors"])
                    result["relay_cpu_ms_per_request"] = (relay1 - relay0) * 1000 / ok
                    result["postgres_cpu_ms_per_request"] = (
                        (pg1 - pg0) * 1000 / ok if name != "sqlite" else 0.0
                    )
                    result["wrk_cpu_ms_per_request"] = (
                        (result["client_cpu"] or 0) * wall * 1000 / ok
                    )
                    # The warm-up's sends are stored too: counted for durability.
                    result["warmup_2xx"] = warmed["requests"] - warmed["errors"]
                    runs[name].append(result)
            br.progress("fetching every envelope back")
            stored = {
                "sqlite": asyncio.run(br.fetch_all(targets["sqlite"][0].url, queues["sqlite"])),
                "pg": asyncio.run(br.fetch_all(single.url, queues["pg1"])),
            }
        finally:
            exit_codes = {s.name: s.stop() for v in targets.values() for s in v}

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": max(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "pool_exhausted": any(r["pool_exhausted"] for r in rs),
            "relay_cpu_ms_per_request": statistics.median(
                r["relay_cpu_ms_per_request"] for r in rs
            ),
            "postgres_cpu_ms_per_request": statistics.median(
                r["postgres_cpu_ms_per_request"] for r in rs
            ),
            "wrk_cpu_ms_per_request": statistics.median(r["wrk_cpu_ms_per_request"] for r in rs),
        }

    results = {name: summary(rs) for name, rs in runs.items()}

    def answered_2xx(names: tuple[str, ...]) -> int:
        return sum(r["requests"] - r["errors"] + r["warmup_2xx"] for n in names for r in runs[n])

    answered = {"sqlite": answered_2xx(("sqlite",)), "pg": answered_2xx(("pg1", "pg2"))}
    durability: dict[str, Any] = {}
    for key, held in stored.items():
        ids = [i for v in held.values() for i, _, _ in v]
        durability[key] = {
            "answered_2xx": answered[key],
            "stored": len(ids),
            "duplicates": len(ids) - len(set(ids)),
        }
        # wrk stops each run with up to one send in flight per connection,
        # which the relay still stores: two runs (warm-up, measured) a round.
        slack = bw.CONNECTIONS * rounds * (2 if key == "sqlite" else 4)
        durability[key]["ok"] = answered[key] <= len(ids) <= answered[key] + slack and len(
            ids
        ) == len(set(ids))
    ratio = (
        results["pg2"]["requests_per_s"] / results["pg1"]["requests_per_s"]
        if results["pg1"]["requests_per_s"]
        else 0.0
    )
    per_request = (
        results["pg2"]["relay_cpu_ms_per_request"] + results["pg2"]["postgres_cpu_ms_per_request"]
    )
    return {
        "environment": br.environment(),
        "configuration": {
            "mode": mode,
            "rounds": rounds,
            "warmup_s": warmup,
            "duration_s": duration,
            "connections": bw.CONNECTIONS,
            "envelope_bytes": bw.ENVELOPE_BYTES,
            "cpus": os.cpu_count(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        },
        "results": results,
        "verdict": {
            "pg2_over_pg1": ratio,
            "target_met": ratio >= TARGET,
            # Server CPU per request (relays + PostgreSQL) bounds what one core
            # serves; N cores with wrk elsewhere: N * 1000 / per_request.
            "server_cpu_ms_per_request": per_request,
            "projected_per_core_rps": 1000 / per_request if per_request else None,
        },
        "durability": durability,
        "exit_codes": exit_codes,
    }


def br_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def markdown(out: dict[str, Any]) -> str:
    c, v = out["configuration"], out["verdict"]
    lines = [
        f"# Relay on PostgreSQL, 1 and 2 processes, vs SQLite ({c['mode']}, {c['cpus']} CPUs, "
        f"load {c['loadavg']})",
        "",
        "| target | sends/s | p50 ms | p99 ms | relay CPU ms/send | PostgreSQL CPU ms/send | "
        "wrk CPU ms/send | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        lines.append(
            f"| {name} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['relay_cpu_ms_per_request']:.2f} | {r['postgres_cpu_ms_per_request']:.2f} | "
            f"{r['wrk_cpu_ms_per_request']:.2f} | {r['errors']} |"
        )
    lines += [
        "",
        f"- pg2 / pg1: {v['pg2_over_pg1']:.2f} (target {TARGET}: "
        f"{'met' if v['target_met'] else 'not met'})",
        f"- server CPU per send with two processes (relays + PostgreSQL): "
        f"{v['server_cpu_ms_per_request']:.2f} ms, so one core serves about "
        f"{v['projected_per_core_rps'] or 0:.0f} sends/s; N free cores, about N times that",
    ]
    for key, d in out["durability"].items():
        lines.append(
            f"- durability ({key}): {d['answered_2xx']} answered 2xx, {d['stored']} stored, "
            f"{d['duplicates']} duplicates: {'ok' if d['ok'] else 'FAILED'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="short smoke-test run")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per target")
    parser.add_argument("--duration", type=float, default=0, help="measured seconds per round")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(bw.WRK_MISSING, file=sys.stderr)
        return 2
    out = run(args, wrk)
    print(json.dumps(out, indent=2) if args.json else markdown(out))
    return 0 if all(d["ok"] for d in out["durability"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
