"""Issue 15, quotas and backpressure: a real relay process on 127.0.0.1,
driven as an attacker would (one address filling queues, fetching big
queues in parallel) while a well-behaved client on another queue keeps
working. Limits are set small in each relay's config so each test takes a
few seconds (docs/RELAY.md, "Limits", has the defaults)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from securechan.transport import RelayClient
from tests.test_relay_api import (
    STRICT,
    Relay,
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
