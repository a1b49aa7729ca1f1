"""One one-time prekey pool per relay (issue 11, finding 6, last point).

The old client published the same one-time prekeys to every relay it was
registered at, in the same order: two initiators who claimed a bundle from
two different relays got the *same* one-time key, and the second first
message was refused as a reuse. Now each relay gets a pool of its own,
made for it and published once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.channel import ONE_TIME_BATCH
from securechan.client.results import Received, Rejected
from securechan.protocol.prekeys import MAX_ONE_TIME, ONE_TIME_PREKEY_LIFETIME, PrekeyStore
from tests.adversary import Exchange, MaliciousRelay, RelayProcess
from tests.adversary.parties import make_people, pin, receive_until
from tests.adversary.world import PASSPHRASES
from tests.conftest import fixed_identity

pytestmark = pytest.mark.timeout(300)

NOW = 1_790_000_000
BOB = fixed_identity("bob")


# --- the store -------------------------------------------------------------------------


def test_each_pool_is_new_and_disjoint() -> None:
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)
    store, first = store.new_pool(BOB, 5, now=NOW)
    store, second = store.new_pool(BOB, 5, now=NOW)
    ids_first = {p.prekey_id for p in first}
    ids_second = {p.prekey_id for p in second}
    assert len(ids_first) == len(ids_second) == 5
    assert not ids_first & ids_second
    # Earlier pools keep their secrets: a first message made from one may
    # still be on its way.
    assert {p.prekey_id for p in store.one_time_records()} == ids_first | ids_second
    for p in (*first, *second):
        store.take_one_time(p.prekey_id, now=NOW)


def test_pools_stay_bounded_expired_then_oldest_go_first() -> None:
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)
    store, old = store.new_pool(BOB, 10, now=NOW)
    later = NOW + ONE_TIME_PREKEY_LIFETIME + 1
    store, fresh = store.new_pool(BOB, 3, now=later)
    assert store.one_time_records() == fresh  # the expired pool is gone
    store, big = store.new_pool(BOB, MAX_ONE_TIME - 1, now=later)
    assert len(store.one_time) == MAX_ONE_TIME
    assert store.one_time_records() == (fresh[2], *big)  # the two oldest made room
    with pytest.raises(ValueError, match="at most"):
        store.new_pool(BOB, MAX_ONE_TIME + 1, now=later)
    assert old[0] not in store.one_time_records()


# --- end to end: one party at two real relays ----------------------------------------


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RelayProcess]]:
    out = []
    try:
        for name in ("one", "two"):
            r = RelayProcess(tmp_path_factory.mktemp(f"relay-{name}"))
            r.start()
            out.append(r)
        yield out
        for r in out:
            r.stop()
            r.assert_no_traceback()
    finally:
        for r in out:
            r.close()


def run(coro: Any, seconds: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


def test_two_initiators_claiming_from_two_relays_both_get_through(
    relays: list[RelayProcess], tmp_path: Path
) -> None:
    """washington is registered at relay one (through a front the test
    controls) and at relay two. tehran claims a bundle from relay one;
    relay one then refuses cairo's claim, so cairo's client takes the bundle
    from relay two, as it does whenever a relay is down. Each relay hands out
    the first key of its pool: with one pool for both, that was the same
    key, and cairo's first message was refused."""
    names = ["tehran", "washington", "cairo"]
    people = make_people(tmp_path / "pristine", tmp_path, {n: PASSPHRASES[n] for n in names})
    t, w, c = (people[n] for n in names)
    front = MaliciousRelay(relays[0].url, relays[0].data, tmp_path / "front")
    front.start()
    try:

        async def register() -> tuple[set[int], Any]:
            async with w.channel() as ch:
                await ch.register(front.url)
                card = await ch.register(relays[1].url)
                ids = {p.prekey_id for p in ch.state.prekeys().one_time_records()}
            return ids, card

        before, card = run(register())

        async def introduce() -> None:
            for p in (t, c):
                async with p.channel() as ch:
                    own = await ch.register(relays[1].url)
                pin(p, card)
                pin(w, own)

        run(introduce())

        async def send(p: Any, text: str) -> None:
            async with p.channel() as ch:
                result = await ch.send_text("washington", text)
                assert result.pending == 0

        run(send(t, "from tehran"))  # claims at relay one

        def refuse(x: Exchange) -> tuple[int, bytes]:
            body = {"error": {"code": "unavailable", "message": "not for you"}}
            return 404, json.dumps(body).encode()

        front.on_request("bundle", refuse)
        run(send(c, "from cairo"))  # relay one refuses: claims at relay two
        front.on_request("bundle", None)
        claims = [x for x in list(front.exchanges) if x.kind == "bundle"]
        assert len(claims) == 2 and claims[0].forwarded and not claims[1].forwarded

        async def receive() -> tuple[list[Received | Rejected], set[int]]:
            async with w.channel() as ch:
                got = await receive_until(ch, 2)
                left = {p.prekey_id for p in ch.state.prekeys().one_time_records()}
            return got, left

        got, after = run(receive())
    finally:
        front.close()
    texts = sorted(x.text for x in got if isinstance(x, Received) and x.text is not None)
    assert texts == ["from cairo", "from tehran"], got
    assert not [x for x in got if isinstance(x, Rejected)], got
    used = before - after
    assert len(used) == 2, f"two different one-time prekeys were used: {sorted(used)}"
    assert len(before) == 2 * ONE_TIME_BATCH, "a pool of its own for each relay"
