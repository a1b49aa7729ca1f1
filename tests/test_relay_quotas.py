"""Issue 15, quotas and backpressure: a real relay process on 127.0.0.1,
driven as an attacker would (one address filling queues, fetching big
queues in parallel) while a well-behaved client on another queue keeps
working. Limits are set small in each relay's config so each test takes a
few seconds (docs/RELAY.md, "Limits", has the defaults)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from securechan.primitives import Ed25519SigningKey
from securechan.transport import RelayClient
from tests.test_relay_api import (
    STRICT,
    Queue,
    Relay,
    Resp,
    bystander,
    call,
    envelope,
    new_queue,
    run,
    send,
    session,
    start_relay,
)

KIB = 1024
MIB = 1024 * KIB


def rss(relay: Relay) -> int:
    """The relay process's resident set size in bytes (/proc/<pid>/status)."""
    text = Path(f"/proc/{relay.proc.pid}/status").read_text()
    line = next(x for x in text.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * KIB


class PeakRss:
    """Samples the relay's VmRSS every 5 ms while running."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.peak = rss(relay)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.relay))
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def timed_bystander(relay: Relay) -> float:
    started = time.monotonic()
    await bystander(relay)
    return time.monotonic() - started


# --- fetch answers are bounded by bytes --------------------------------------------------

FETCH_MAX = 1 * MIB
BIG = 256 * KIB - 64
HELD = 40  # 10 MiB in one queue
FETCHERS = 6
RSS_GROWTH_BOUND = 48 * MIB
LATENCY_BOUND = 3.0


def test_fetch_answers_are_bounded_pages_and_memory_stays_bounded(tmp_path: Path) -> None:
    """An attacker fills its own queue with 40 envelopes of 256 KiB and
    fetches it six times at once, again and again. Each answer is a page of
    at most ``fetch_max_bytes`` of envelopes saying ``"more": true``; the
    relay's resident memory grows by less than 48 MiB (on main each answer
    was the whole 10 MiB queue, 14 MiB of JSON, and six at once grew the
    relay by hundreds of MiB); a well-behaved client on another queue sends
    and fetches meanwhile within 3 s; the client transport still drains the
    whole queue, in order, page after page."""
    relay = start_relay(tmp_path, "fetch", {"fetch_max_bytes": FETCH_MAX, "fetch_concurrency": 2})
    try:

        async def go() -> tuple[list[int], list[bool], int, int, float, list[int]]:
            async with session() as s:
                q = await new_queue(s, relay)
                for _ in range(HELD):
                    r = await send(s, relay, q, envelope(relay, BIG))
                    assert r.status == 201, r.body[:200]
                base = rss(relay)
                sizes: list[int] = []
                mores: list[bool] = []
                latency = 0.0
                with PeakRss(relay) as peak:
                    for _ in range(3):
                        answers = await asyncio.gather(
                            *(
                                call(
                                    s,
                                    relay,
                                    "GET",
                                    f"/v1/queues/{q.r}/messages?limit=500",
                                    key=q.rkey,
                                )
                                for _ in range(FETCHERS)
                            ),
                            timed_bystander(relay),
                        )
                        latency = max(latency, answers[-1])
                        for a in answers[:-1]:
                            assert a.status == 200, a.body[:200]
                            data = a.json()
                            sizes.append(len(a.body))
                            mores.append(data.get("more") is True)
                async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
                    seqs = [e.seq for e in await rc.fetch(q.rid, q.rkey, limit=500)]
                return sizes, mores, base, peak.peak, latency, seqs

        sizes, mores, base, peak, latency, seqs = run(go())
        print(
            f"\nfetch: answers {max(sizes)} bytes max, RSS {base / MIB:.0f} MiB ->"
            f" peak {peak / MIB:.0f} MiB, bystander {latency:.2f} s"
        )
        # At most the budget plus one envelope, in base64 inside JSON.
        assert max(sizes) <= (FETCH_MAX + BIG) * 4 // 3 + 64 * KIB, max(sizes)
        assert all(mores)
        assert peak - base < RSS_GROWTH_BOUND, (base, peak)
        assert latency < LATENCY_BOUND
        assert seqs == list(range(1, HELD + 1))
    finally:
        relay.stop()


# --- byte quotas per queue and per sender key ---------------------------------------------

QUOTA_ENVELOPE = 200 * KIB
QUEUE_QUOTA = 1 * MIB  # 5 envelopes of 200 KiB
SENDER_QUOTA = 3 * MIB // 2  # 7 of them over all queues of one sender key


async def queue_with(s: aiohttp.ClientSession, relay: Relay, skey: Ed25519SigningKey) -> Queue:
    """A queue secured with a sender key the attacker reuses over many queues."""
    rkey = Ed25519SigningKey.generate()
    async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
        ids = await rc.create_queue(rkey, sender_key=skey.public)
    return Queue(ids.rid, ids.sid, rkey, skey)


def refused(r: Resp, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body[:200])
    assert r.json()["error"]["code"] == code, r.body[:200]
    assert int(r.headers["retry-after"]) >= 1


def test_one_sender_fills_its_queue_and_key_quota_and_is_refused(tmp_path: Path) -> None:
    """One address with one sender key sends 200 KiB envelopes as fast as
    it can into one queue, then into a second queue under the same key.
    The queue's byte quota stops the first at 1 MiB (429 quota_exceeded,
    Retry-After), the sender key's quota stops the second at 1.5 MiB over
    both; a well-behaved client on another queue sends and fetches
    meanwhile within 3 s each time; once the recipient acknowledges, the
    queue takes envelopes again. On main every send was stored."""
    relay = start_relay(
        tmp_path,
        "quota",
        {"queue_max_bytes": QUEUE_QUOTA, "sender_max_bytes": SENDER_QUOTA, "queue_burst": 1000},
    )
    try:

        async def go() -> tuple[list[int], list[int], float, Resp, Resp, Resp]:
            async with session() as s:
                skey = Ed25519SigningKey.generate()
                a = await queue_with(s, relay, skey)
                b = await queue_with(s, relay, skey)
                latency = 0.0
                first: list[int] = []
                for _ in range(8):
                    r, t = await asyncio.gather(
                        send(s, relay, a, envelope(relay, QUOTA_ENVELOPE)), timed_bystander(relay)
                    )
                    first.append(r.status)
                    latency = max(latency, t)
                last_a = r
                second: list[int] = []
                for _ in range(5):
                    r = await send(s, relay, b, envelope(relay, QUOTA_ENVELOPE))
                    second.append(r.status)
                last_b = r
                async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
                    await rc.ack(a.rid, a.rkey, up_to=2)
                again = await send(s, relay, b, envelope(relay, QUOTA_ENVELOPE))
                return first, second, latency, last_a, last_b, again

        first, second, latency, last_a, last_b, again = run(go())
        print(f"\nquota: queue {first}, second queue {second}, bystander {latency:.2f} s")
        assert first == [201] * 5 + [429] * 3
        refused(last_a, 429, "quota_exceeded")
        assert "queue" in last_a.json()["error"]["message"]
        assert second == [201] * 2 + [429] * 3
        refused(last_b, 429, "quota_exceeded")
        assert "sender" in last_b.json()["error"]["message"]
        assert again.status == 201, again.body[:200]
        assert latency < LATENCY_BOUND
        assert 'securechan_relay_rejected_total{reason="queue_quota"} 3.0' in relay.metrics()
    finally:
        relay.stop()


def test_one_address_is_limited_in_bytes_per_second(tmp_path: Path) -> None:
    """One address spreads 200 KiB envelopes over many fresh queues (no
    queue or key quota is reached): past its byte burst it gets 429 with
    Retry-After, while another address still sends."""
    relay = start_relay(
        tmp_path, "bytes", {"client_byte_rate": 64 * KIB, "client_byte_burst": 1 * MIB}
    )
    try:

        async def go() -> list[int]:
            statuses = []
            async with session() as s:
                for _ in range(8):
                    q = await new_queue(s, relay)
                    r = await send(s, relay, q, envelope(relay, QUOTA_ENVELOPE))
                    statuses.append(r.status)
            await bystander(relay, local="127.0.0.2")
            return statuses

        statuses = run(go())
        assert statuses == [201] * 5 + [429] * 3, statuses
    finally:
        relay.stop()


# --- a relay near its storage limit: acks and deletes still work, /readyz says so ----------


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


async def readyz(s: aiohttp.ClientSession, relay: Relay) -> Resp:
    return await call(s, relay, "GET", "/readyz")


@pytest.mark.parametrize("disk", ["storage-limit", "tmpfs"])
def test_full_relay_accepts_acks_and_deletes_and_is_not_ready(tmp_path: Path, disk: str) -> None:
    """An attacker fills the relay: with ``storage_max_bytes`` (any CI), or
    on a real 8 MiB tmpfs data folder with a 3 MiB free-space reserve
    (where mounting is allowed). Sends are then refused with 507
    insufficient_storage and Retry-After; /readyz answers 503 not_ready
    (and /healthz, liveness, 200); the recipients can still acknowledge
    and delete queues, and once they have, the relay is ready and takes
    envelopes again. On main /readyz did not exist and the disk case
    answered every send 503 while /healthz said 200."""
    data = tmp_path / "data"
    mounted = False
    limits: dict[str, float | int] = {"queue_burst": 1000}
    if disk == "tmpfs":
        mounted = _tmpfs(data, "8m")
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        limits["storage_reserve_bytes"] = 3 * MIB
    else:
        limits["storage_max_bytes"] = 4 * MIB
        limits["storage_reserve_bytes"] = 1 * MIB
    relay = start_relay(tmp_path, "full", limits, data=data)
    try:

        async def go() -> dict[str, object]:
            async with session() as s:
                assert (await readyz(s, relay)).status == 200
                queues = [await new_queue(s, relay) for _ in range(4)]
                statuses: list[int] = []
                last = None
                for i in range(40):
                    last = await send(s, relay, queues[i % 4], envelope(relay, QUOTA_ENVELOPE))
                    statuses.append(last.status)
                    if last.status != 201:
                        break
                assert last is not None
                ready = await readyz(s, relay)
                health = await call(s, relay, "GET", "/healthz")
                async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
                    acked = await rc.ack(queues[0].rid, queues[0].rkey, up_to=100)
                    await rc.delete_queue(queues[1].rid, queues[1].rkey)
                    await rc.delete_queue(queues[2].rid, queues[2].rkey)
                    await rc.ack(queues[3].rid, queues[3].rkey, up_to=100)
                deadline = time.monotonic() + 5
                while (after := await readyz(s, relay)).status != 200:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                again = await send(s, relay, queues[0], envelope(relay, QUOTA_ENVELOPE))
                return {
                    "statuses": statuses,
                    "last": last,
                    "ready": ready,
                    "health": health.status,
                    "acked": acked,
                    "after": after,
                    "again": again.status,
                }

        out = run(go())
        statuses = out["statuses"]
        assert isinstance(statuses, list)
        print(f"\nfull ({disk}): {statuses.count(201)} envelopes of 200 KiB stored, then refused")
        assert 201 in statuses and statuses[-1] == 507, statuses
        last = out["last"]
        assert isinstance(last, Resp)
        refused(last, 507, "insufficient_storage")
        ready = out["ready"]
        assert isinstance(ready, Resp)
        assert ready.status == 503, ready.body
        body = json.loads(ready.body)
        assert body["status"] == "not_ready"
        want = "disk_reserve" if disk == "tmpfs" else "storage_limit"
        assert want in body["reasons"], body
        assert out["health"] == 200
        assert isinstance(out["acked"], int) and out["acked"] > 0
        after = out["after"]
        assert isinstance(after, Resp) and after.status == 200, after.body
        assert out["again"] == 201
    finally:
        relay.stop()
        if mounted:
            with contextlib.suppress(Exception):
                subprocess.run(["umount", "-l", str(data)], check=False)


# --- space comes back after a drain ------------------------------------------------------


def db_size(relay: Relay) -> int:
    return sum(
        (relay.data / name).stat().st_size
        for name in ("relay.db", "relay.db-wal")
        if (relay.data / name).exists()
    )


def test_space_is_reclaimed_after_a_drain(tmp_path: Path) -> None:
    """A queue is filled with 8 MiB and drained (fetched and acknowledged):
    within 5 s relay.db (with its WAL) shrinks back under 1 MiB, where on
    main it kept its full size for good."""
    relay = start_relay(tmp_path, "drain", {"queue_burst": 1000})
    try:

        async def go() -> tuple[int, int]:
            async with session() as s:
                q = await new_queue(s, relay)
                for _ in range(40):
                    r = await send(s, relay, q, envelope(relay, QUOTA_ENVELOPE))
                    assert r.status == 201
                full = db_size(relay)
                async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
                    got = await rc.fetch(q.rid, q.rkey, limit=500)
                    await rc.ack(q.rid, q.rkey, up_to=got[-1].seq)
                deadline = time.monotonic() + 5
                while db_size(relay) >= MIB and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                return full, db_size(relay)

        full, drained = run(go())
        print(f"\ndrain: relay.db {full} bytes full, {drained} bytes after the drain")
        assert full > 8 * MIB
        assert drained < MIB, drained
        assert "securechan_relay_storage_reclaimed_pages" in relay.metrics()
    finally:
        relay.stop()


def test_a_failing_write_makes_the_relay_not_ready(tmp_path: Path) -> None:
    """With no reserve configured, an attacker fills a 4 MiB tmpfs data
    folder until a commit fails (disk full: 503 storage): /readyz then
    answers 503 with ``write_failed`` while /healthz (liveness) says 200.
    On main /readyz did not exist: /healthz said 200 and nothing else."""
    data = tmp_path / "data"
    if not _tmpfs(data, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    relay = start_relay(
        tmp_path, "failing", {"queue_burst": 1000, "storage_reserve_bytes": 0}, data=data
    )
    try:

        async def go() -> tuple[list[int], Resp, int]:
            async with session() as s:
                q = await new_queue(s, relay)
                statuses: list[int] = []
                for _ in range(40):
                    r = await send(s, relay, q, envelope(relay, QUOTA_ENVELOPE))
                    statuses.append(r.status)
                    if r.status != 201:
                        break
                ready = await readyz(s, relay)
                health = await call(s, relay, "GET", "/healthz")
                return statuses, ready, health.status

        statuses, ready, health = run(go())
        assert statuses[-1] == 503, statuses
        assert ready.status == 503, ready.body
        assert "write_failed" in json.loads(ready.body)["reasons"]
        assert health == 200
    finally:
        relay.kill()
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(data)], check=False)
