"""Issue 15, authentication and logs: a real relay process, attacked as an
attacker would attack it (docs/RELAY.md §3, "Limits", "Metrics and logs").

- a flood of bad-signature and unsigned requests from one address
  (127.0.0.2) is throttled to the failed-authentication budget, answered 429
  before any signature is checked, counted in ``auth_failures`` by reason,
  and grows the relay's log by a bounded number of lines, while a
  well-behaved client on 127.0.0.1 keeps being served quickly;
- reads are rate-limited per queue;
- signed fetches write nothing to relay.db (their nonces are held in memory)
  and a replayed fetch is still refused while the relay runs;
- a replayed send or ack is still refused after a restart (durable nonces).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64e, sign_request
from tests.test_relay_api import (
    OTHER_CLIENT,
    Relay,
    Resp,
    call,
    envelope,
    new_msg_id,
    new_queue,
    now,
    run,
    running,
    send,
    session,
    start_relay,
)

FLOOD_SECONDS = 2.0
AUTH_RATE = 2.0
AUTH_BURST = 30
LOG_SAMPLE = 5


def auth_failures(metrics: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(
            r'^securechan_relay_auth_failures_total\{reason="(\w+)"\} (\S+)$', metrics, re.M
        )
    }


def gauge(metrics: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    assert m is not None, f"{name} missing from /metrics"
    return float(m[1])


def db_bytes(relay: Relay) -> int:
    return sum(
        (relay.data / n).stat().st_size
        for n in ("relay.db", "relay.db-wal")
        if (relay.data / n).exists()
    )


def test_auth_failure_flood_is_throttled_counted_and_logged_sparingly(tmp_path: Path) -> None:
    limits: dict[str, float | int] = {
        "auth_failure_rate": AUTH_RATE,
        "auth_failure_burst": AUTH_BURST,
        "log_sample": LOG_SAMPLE,
        "log_interval": 30.0,
    }
    with running(tmp_path, "flood", limits) as relay:

        async def go() -> tuple[dict[int, int], float, list[float], list[float], list[str]]:
            async with session() as good:
                q = await new_queue(good, relay)
                assert (await send(good, relay, q, envelope(relay))).status == 201
                msgs = f"/v1/queues/{q.r}/messages"

                async def polite_fetch() -> float:
                    started = time.perf_counter()
                    r = await call(good, relay, "GET", msgs, key=q.rkey)
                    assert r.status == 200, (r.status, r.body[:200])
                    return time.perf_counter() - started

                baseline = [await polite_fetch() for _ in range(15)]
                forger = Ed25519SigningKey.generate()
                statuses: dict[int, int] = {}
                problems: list[str] = []
                deadline = time.monotonic() + FLOOD_SECONDS

                async def attacker(s: aiohttp.ClientSession, n: int) -> None:
                    i = n
                    while time.monotonic() < deadline:
                        i += 1
                        kind = i % 3
                        if kind == 0:  # a fetch signed by the wrong key
                            r: Resp = await call(s, relay, "GET", msgs, key=forger)
                        elif kind == 1:  # an unsigned fetch
                            r = await call(s, relay, "GET", msgs)
                        else:  # an unsigned send to the secured queue
                            r = await send(s, relay, q, envelope(relay), signed=False)
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 429 and not r.headers.get("retry-after", "").isdigit():
                            problems.append("a 429 without Retry-After")

                during: list[float] = []

                async def polite() -> None:
                    while time.monotonic() < deadline:
                        during.append(await polite_fetch())
                        await asyncio.sleep(0.02)

                started = time.monotonic()
                async with session(OTHER_CLIENT) as bad:
                    await asyncio.gather(polite(), *(attacker(bad, n) for n in range(16)))
                elapsed = time.monotonic() - started
                return statuses, elapsed, baseline, during, problems

        lines_before = len(relay.log().splitlines())
        statuses, elapsed, baseline, during, problems = run(go())
        assert not problems, problems[:3]
        refused = statuses.get(401, 0) + statuses.get(403, 0)
        total = sum(statuses.values())
        assert total >= 200, f"the flood was too small to show anything: {statuses}"
        # Past the budget, every attempt is answered 429 before verification.
        bound = AUTH_BURST + AUTH_RATE * elapsed + 2
        assert refused <= bound, (
            f"{refused} failed authentications were checked in {elapsed:.1f} s "
            f"(budget {bound:.0f}): {statuses}"
        )
        assert statuses.get(429, 0) >= total - refused - 1, statuses
        # The well-behaved client kept being served, without slowing down much.
        assert len(during) >= 5, during
        base = statistics.median(baseline)
        assert statistics.median(during) <= max(10 * base, 0.15), (base, during)

        metrics = relay.metrics()
        counted = auth_failures(metrics)
        assert sum(counted.values()) == refused, (counted, statuses)
        assert counted.get("missing", 0) >= 1 and counted.get("signature", 0) >= 1, counted
        log = relay.stop()
        added = log.splitlines()[lines_before:]
        # At most LOG_SAMPLE lines per (route, status, code) and a summary each.
        keys = 6  # fetch 401/403/429, send 401/429, and one spare
        assert len(added) <= keys * (LOG_SAMPLE + 1) + 3, (
            f"{len(added)} log lines for {total} refused requests:\n" + "\n".join(added[-20:])
        )
        assert any("more like this not logged" in line for line in added), added[-10:]
        assert OTHER_CLIENT not in log


def test_reads_are_rate_limited_per_queue(tmp_path: Path) -> None:
    with running(tmp_path, "reads", {"read_rate": 1.0, "read_burst": 10}) as relay:

        async def go() -> tuple[list[int], list[int], Resp]:
            async with session() as s:
                q = await new_queue(s, relay)
                other = await new_queue(s, relay)
                target = f"/v1/queues/{q.r}/messages"
                first = [
                    (await call(s, relay, "GET", target, key=q.rkey)).status for _ in range(15)
                ]
                last = await call(s, relay, "GET", target, key=q.rkey)
                theirs = f"/v1/queues/{other.r}/messages"
                others = [
                    (await call(s, relay, "GET", theirs, key=other.rkey)).status for _ in range(5)
                ]
                return first, others, last

        first, others, last = run(go())
        assert first[:10] == [200] * 10, first
        assert 429 in first[10:], first
        assert last.status == 429 and last.headers.get("retry-after", "").isdigit()
        assert last.json()["error"]["code"] == "rate_limited"
        assert others == [200] * 5, "one queue's reads spent another queue's budget"
        relay.stop()


def test_signed_fetches_write_nothing_and_replays_are_still_refused(tmp_path: Path) -> None:
    limits: dict[str, float | int] = {
        "read_rate": 100_000.0,
        "read_burst": 100_000,
        "fetch_rate": 100_000.0,
        "fetch_burst": 100_000,
    }
    with running(tmp_path, "fetches", limits) as relay:

        async def go() -> tuple[float, float, int, int, list[int]]:
            async with session() as s:
                q = await new_queue(s, relay)
                assert (await send(s, relay, q, envelope(relay, 2000))).status == 201
                target = f"/v1/queues/{q.r}/messages"
                await asyncio.sleep(0.5)  # let the send's commits settle
                commits = gauge(relay.metrics(), "securechan_relay_db_commits")
                size = db_bytes(relay)
                sem = asyncio.Semaphore(8)

                async def one() -> int:
                    async with sem:
                        return (await call(s, relay, "GET", target, key=q.rkey)).status

                statuses = await asyncio.gather(*(one() for _ in range(600)))
                grown = db_bytes(relay) - size
                after = gauge(relay.metrics(), "securechan_relay_db_commits")
                # A captured fetch, replayed while the relay runs: refused.
                header = sign_request(q.rkey, "GET", target, b"", now=now())
                replay = [
                    (await call(s, relay, "GET", target, headers={"Authorization": header})).status
                    for _ in range(2)
                ]
                return commits, after, grown, statuses.count(200), replay

        commits, after, grown, ok, replay = run(go())
        assert ok == 600
        assert after == commits, f"600 signed fetches made {after - commits:.0f} commits"
        assert grown < 16 * 1024, f"relay.db grew by {grown} bytes for 600 fetches"
        assert replay == [200, 403], replay
        metrics = relay.metrics()
        assert auth_failures(metrics).get("replayed") == 1
        assert gauge(metrics, "securechan_relay_read_nonces") >= 601
        relay.stop()


def test_replayed_send_and_ack_are_refused_after_a_restart(tmp_path: Path) -> None:
    """The durable nonces stay durable (this passes on main too: it guards
    the split between read and state-changing nonces)."""
    relay = start_relay(tmp_path, "restart")
    try:

        async def first() -> tuple[str, str, bytes, dict[str, str], str]:
            async with session() as s:
                q = await new_queue(s, relay)
                assert q.skey is not None
                data = envelope(relay)
                target = f"/v1/send/{q.s}"
                headers = {
                    "X-Message-Id": b64e(new_msg_id(relay)),
                    "Authorization": sign_request(q.skey, "POST", target, data, now=now()),
                }
                r = await call(s, relay, "POST", target, body=data, headers=headers)
                assert r.status == 201, r.body
                ack = f"/v1/queues/{q.r}/ack"
                ack_auth = sign_request(q.rkey, "POST", ack, b'{"up_to": 1}', now=now())
                r = await call(
                    s, relay, "POST", ack, body=b'{"up_to": 1}', headers={"Authorization": ack_auth}
                )
                assert r.status == 200, r.body
                return target, ack, data, headers, ack_auth

        target, ack, data, headers, ack_auth = run(first())
        relay.stop()
        relay = start_relay(tmp_path, "restart")

        async def replay() -> tuple[Resp, Resp]:
            async with session() as s:
                sent = await call(s, relay, "POST", target, body=data, headers=headers)
                acked = await call(
                    s, relay, "POST", ack, body=b'{"up_to": 1}', headers={"Authorization": ack_auth}
                )
                return sent, acked

        sent, acked = run(replay())
        assert (sent.status, sent.json()["error"]["code"]) == (403, "replayed")
        assert (acked.status, acked.json()["error"]["code"]) == (403, "replayed")
        relay.stop()
    finally:
        relay.kill()


def test_storage_error_is_logged_with_its_cause(tmp_path: Path) -> None:
    """Another process holds relay.db's write lock (as a stuck backup job
    would): the send gets the plain 503, the operator's log line the cause."""
    with running(tmp_path, "locked") as relay:

        async def create() -> tuple[Resp, Resp]:
            async with session() as s:
                q = await new_queue(s, relay)
                holder = sqlite3.connect(relay.data / "relay.db", isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
                try:
                    locked = await send(s, relay, q, envelope(relay))
                finally:
                    holder.execute("ROLLBACK")
                    holder.close()
                return locked, await send(s, relay, q, envelope(relay))

        locked, after = run(create())
        assert locked.status == 503 and locked.json()["error"]["code"] == "storage"
        assert locked.headers.get("retry-after") == "5"
        assert "SQLITE" not in locked.body.decode() and "locked" not in locked.body.decode()
        assert after.status == 201, "the relay did not recover once the lock was gone"
        log = relay.stop()
        lines = [line for line in log.splitlines() if "503 storage error" in line]
        assert lines and "database is locked (SQLITE_BUSY)" in lines[0], lines


def _fill(db: Path, n: int, size: int) -> None:
    """n envelopes of ``size`` bytes received now, on one queue, written
    straight into a stopped relay's relay.db (as a busy relay would hold)."""
    conn = sqlite3.connect(db)
    rid = os.urandom(16)
    t = now()
    conn.execute(
        "INSERT INTO queues (rid, sid, recipient_key, contact, created) VALUES (?, ?, ?, 0, ?)",
        (rid, os.urandom(16), os.urandom(32), t),
    )
    conn.executemany(
        "INSERT INTO envelopes (rid, seq, msg_id, data, received)"
        " VALUES (?, ?, ?, CAST(randomblob(16) || zeroblob(?) AS BLOB), ?)",
        ((rid, i + 1, os.urandom(16), size - 16, t) for i in range(n)),
    )
    conn.commit()
    conn.close()


def _timed_start(root: Path, name: str, data: Path) -> tuple[Relay, float]:
    started = time.perf_counter()
    relay = start_relay(root, name, data=data)
    return relay, time.perf_counter() - started


def test_start_up_time_does_not_grow_with_stored_envelopes(tmp_path: Path) -> None:
    """Before issue 15 every start re-read (and hashed) every envelope of
    the last hour to repair the transparency log: ~4 s per GiB."""
    empty = tmp_path / "empty"
    full = tmp_path / "full"
    for data in (empty, full):
        start_relay(tmp_path, data.name, data=data).stop()
    _fill(full / "relay.db", 500, 256 * 1024)  # 125 MiB
    relay = start_relay(tmp_path, "full", data=full)  # logs what it lacks
    relay.stop()
    assert "appended 500 stored envelopes" in relay.log()
    times: dict[str, list[float]] = {"empty": [], "full": []}
    for _ in range(2):
        for data in (empty, full):
            relay, took = _timed_start(tmp_path, data.name, data)
            relay.stop()
            times[data.name].append(took)
    grew = min(times["full"]) - min(times["empty"])
    assert grew < 0.8, f"start-up took {grew:.2f} s longer with 125 MiB stored: {times}"
    # A crash (no clean stop) still repairs: the mark is gone once started.
    relay, _ = _timed_start(tmp_path, "full", full)
    relay.kill()
    relay = start_relay(tmp_path, "full", data=full)
    log = relay.stop()
    assert "no repair needed" in _timed_start(tmp_path, "full", full)[0].stop()
    assert log.count("no repair needed") == 0, log


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
