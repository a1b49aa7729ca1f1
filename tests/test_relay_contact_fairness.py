"""Issue 15, item 2: a stranger flooding a contact address cannot starve other
first contacts (docs/RELAY.md, "Contact addresses"; relay/fairness.py).

Played as the attacker would: a real relay process on 127.0.0.1; the
attacker (127.0.0.2) floods the owner's contact address with unsigned junk
from 8 connections at full speed while the owner is away; an honest
stranger (127.0.0.3) sends one first contact every 0.2 s meanwhile; then the
owner (127.0.0.1) comes back and fetches. The honest first contacts must all
be stored and reach the owner; the attacker holds at most its share. On the
code before relay/fairness.py the attacker took the queue's whole send
bucket and depth, and the honest sender's first contacts were refused
(429 rate_limited, then queue_full): the test fails there.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import aiohttp
import pytest

from securechan.protocol.relay_auth import b64e
from securechan.relay.fairness import MIN_SHARE, ContactFairness, ShareExceeded
from securechan.transport import RelayClient
from tests.test_relay_api import (
    STRICT,
    Queue,
    Relay,
    bystander,
    new_queue,
    run,
    running,
    session,
)

ATTACKER = "127.0.0.2"
HONEST = "127.0.0.3"
FLOOD_SECONDS = 4.0
HONEST_EVERY = 0.2
MAX_DEPTH = 640  # small, so that a flood could fill it within the test
SHARE = 16  # the default contact_share: one address holds <= MAX_DEPTH / 16
LIMITS: dict[str, float | int] = {"max_depth": MAX_DEPTH, "fetch_limit": 1000}


async def _post(s: aiohttp.ClientSession, relay: Relay, q: Queue, tag: bytes) -> int:
    body = tag + os.urandom(1024)
    headers = {"X-Message-Id": b64e(os.urandom(16)), "Content-Type": "application/octet-stream"}
    try:
        async with s.post(f"{relay.url}/v1/send/{q.s}", data=body, headers=headers) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def test_a_flooded_contact_address_still_takes_other_first_contacts(tmp_path: Path) -> None:
    with running(tmp_path, "fair", LIMITS) as relay:

        async def go() -> tuple[dict[int, int], list[int], list[bytes], float]:
            async with session() as owner:
                contact = await new_queue(owner, relay, contact=True)
            attacker_status: dict[int, int] = {}
            honest_status: list[int] = []
            honest_tags: list[bytes] = []
            stop = time.monotonic() + FLOOD_SECONDS

            async def flood(s: aiohttp.ClientSession) -> None:
                while time.monotonic() < stop:
                    status = await _post(s, relay, contact, b"JUNK")
                    attacker_status[status] = attacker_status.get(status, 0) + 1

            async def honest() -> None:
                async with session(HONEST) as s:
                    n = 0
                    while time.monotonic() < stop:
                        tag = b"HELLO-%04d-" % n
                        n += 1
                        status = await _post(s, relay, contact, tag)
                        honest_status.append(status)
                        if 200 <= status < 300:
                            honest_tags.append(tag)
                        await asyncio.sleep(HONEST_EVERY)

            async with session(ATTACKER) as a:
                await asyncio.gather(*(flood(a) for _ in range(8)), honest())
            # A well-behaved client on a queue of its own is served meanwhile.
            t0 = time.perf_counter()
            await bystander(relay)
            bystander_s = time.perf_counter() - t0
            # The owner comes back and reads its contact address.
            got: list[bytes] = []
            async with session() as s, RelayClient(relay.url, retry=STRICT, session=s) as rc:
                after = 0
                while page := await rc.fetch(contact.rid, contact.rkey, after=after, limit=1000):
                    got += [e.data for e in page]
                    after = page[-1].seq
            fetched = [d[:11] for d in got if d.startswith(b"HELLO-")]
            assert sorted(fetched) == sorted(honest_tags)
            junk = sum(1 for d in got if d.startswith(b"JUNK"))
            attacker_status[-1] = junk  # stored junk, for the report
            return attacker_status, honest_status, fetched, bystander_s

        attacker, honest, fetched, bystander_s = run(go())
        metrics = relay.metrics()
        relay.stop()
    junk_held = attacker.pop(-1)
    tried = len(honest)
    through = sum(1 for s in honest if 200 <= s < 300)
    print(
        f"\nflood {FLOOD_SECONDS:g} s: attacker answers {attacker}, junk held {junk_held}; "
        f"honest first contacts stored and fetched: {through}/{tried} ({len(fetched)} fetched); "
        f"bystander {bystander_s * 1000:.0f} ms"
    )
    # The attacker really flooded, and was held to its own share.
    assert sum(attacker.values()) > 100
    assert 0 < junk_held <= MAX_DEPTH // SHARE
    # Every honest first contact got through: none starved.
    assert tried >= 10
    assert through == tried, honest
    assert len(fetched) == through
    assert bystander_s < 2.0
    m = re.search(
        r'^securechan_relay_rejected_total\{reason="contact_share"\} (\S+)$', metrics, re.M
    )
    assert m is not None and float(m[1]) > 0
    m = re.search(
        r'^securechan_relay_rate_limited_total\{limit="contact_sender"\} (\S+)$', metrics, re.M
    )
    assert m is not None and float(m[1]) > 0


# --- the bookkeeping alone (relay/fairness.py) ----------------------------------


def _fair(**kw: int) -> ContactFairness:
    args = {"max_depth": 320, "max_bytes": 10000, "share": 10, "rate": 1.0, "burst": 3, "ttl": 100}
    args.update(kw)
    return ContactFairness(**args)  # type: ignore[arg-type]


def test_share_is_per_sender_and_comes_back_with_ack() -> None:
    f = _fair()
    rid = b"r" * 16
    assert f.depth == MIN_SHARE == 32  # 320 / 10, but never below MIN_SHARE
    for seq in range(1, 33):
        f.reserve(rid, "a", 10, now=0)
        f.settle(rid, "a", 10, seq, now=0)
    with pytest.raises(ShareExceeded):
        f.reserve(rid, "a", 10, now=0)
    f.reserve(rid, "b", 10, now=0)  # another sender is not affected
    f.settle(rid, "b", 10, 33, now=0)
    assert f.held_by(rid, "a") == (32, 320)
    f.acked(rid, 3)
    assert f.held_by(rid, "a") == (29, 290)
    f.reserve(rid, "a", 10, now=0)
    f.settle(rid, "a", 10, None, now=0)  # refused or a duplicate: nothing held
    assert f.held_by(rid, "a") == (29, 290)
    f.acked(rid, 33)
    assert f.held_by(rid, "a") == f.held_by(rid, "b") == (0, 0)


def test_bytes_share_ttl_and_late_answers() -> None:
    f = _fair()
    rid = b"r" * 16
    f.reserve(rid, "a", 900, now=0)
    f.settle(rid, "a", 900, 1, now=0)
    with pytest.raises(ShareExceeded):
        f.reserve(rid, "a", 200, now=0)  # 10000 / 10 = 1000 bytes per sender
    f.reserve(rid, "a", 200, now=101)  # the first passed the TTL
    # Answered after the owner already acknowledged it: not held.
    f.acked(rid, 5)
    f.settle(rid, "a", 200, 4, now=101)
    assert f.held_by(rid, "a") == (0, 0)
    # Answered out of order: acked() still releases by seq.
    for _ in (7, 6):
        f.reserve(rid, "b", 1, now=101)
    f.settle(rid, "b", 1, 7, now=101)
    f.settle(rid, "b", 1, 6, now=101)
    f.acked(rid, 6)
    assert f.held_by(rid, "b") == (1, 1)


def test_rate_is_per_sender_and_share_zero_is_off() -> None:
    f = _fair(share=0)
    rid = b"r" * 16
    assert [f.allow_rate(rid, "a", 0.0) for _ in range(4)][:3] == [0, 0, 0]
    assert f.allow_rate(rid, "a", 0.0) > 0
    assert f.allow_rate(rid, "b", 0.0) == 0
    for seq in range(1, 100):
        f.reserve(rid, "a", 1000, now=0)
        f.settle(rid, "a", 1000, seq, now=0)
