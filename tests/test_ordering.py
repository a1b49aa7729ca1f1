"""The hold/reorder machine (securechan/protocol/ordering.py), by properties.

Any sequence of events (envelopes arriving, first messages accepted,
senders pinned, retries settled or re-labelled, time passing) is generated;
the machine must keep its bounds, refuse every chain-waiting envelope at the
first tick past its deadline, retry only what waits for the event that
happened, be deterministic, and survive a round trip through its rows (what
the client stores in client.db). The client side of it (a real relay, real
envelopes) is tests/test_receive_junk.py and tests/test_adversary_relay.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.client.db import ClientDB
from securechan.errors import DecryptionFailed, MessageRejected, Replay
from securechan.protocol.ordering import (
    CHAIN,
    SENDER,
    Bounds,
    Budget,
    Entry,
    Expired,
    Hold,
    HoldQueue,
    Refuse,
    Release,
    Retry,
    may_be_early,
)

# The property tests open no file: a ResourceWarning raised while they run is
# another test's leak collected by the garbage collector (seen once in a
# combined run: a Popen pipe of tests/test_e2e_relay.py), not theirs.
_others_leaks = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

IDS = [bytes([i]) * 4 for i in range(8)]
KEYS = [bytes([0x40 + i]) * 4 for i in range(3)]

bounds_st = st.builds(
    Bounds,
    count=st.integers(0, 5),
    size=st.integers(0, 300),
    grace=st.integers(0, 60),
    tries=st.integers(0, 4),
)

event_st = st.one_of(
    st.tuples(
        st.just("arrive"),
        st.sampled_from(IDS),
        st.integers(0, 120),
        st.sampled_from([CHAIN, SENDER]),
        st.sampled_from(KEYS),
        st.integers(0, 30),
    ),
    st.tuples(st.just("chain"), st.sampled_from(KEYS)),
    st.tuples(st.just("pin"), st.sampled_from(KEYS)),
    st.tuples(st.just("tick"), st.integers(0, 40)),
    st.tuples(st.just("settle"), st.sampled_from(IDS)),
    st.tuples(st.just("rewait"), st.sampled_from(IDS), st.sampled_from(KEYS)),
    st.tuples(st.just("reload")),
)

Decision = Hold | Refuse | Retry | Expired | Release | None


@dataclass
class Run:
    decisions: list[Decision]
    rows: list[tuple[object, ...]]
    final: HoldQueue
    now: int


def run(bounds: Bounds, events: list[tuple[object, ...]], *, check: bool = True) -> Run:
    """Feed ``events``; with ``check``, assert the invariants after each."""
    q = HoldQueue(bounds)
    now = 1000
    out: list[Decision] = []
    for ev in events:
        before = {e.msg_id: e for e in q.rows()}
        d: Decision = None
        match ev:
            case ("arrive", bytes() as m, int() as size, wait, bytes() as key, int() as dt):
                now += dt
                d = q.arrived(m, size, wait, key, now=now)  # type: ignore[arg-type]
                if check:
                    assert not isinstance(d, Retry)  # an arrival retries nothing
                    if isinstance(d, Refuse):
                        assert m not in before
                        assert len(before) >= bounds.count or (
                            sum(e.size for e in before.values()) + size > bounds.size
                        )
                    elif m not in before:
                        until = now + bounds.grace if wait == CHAIN else None
                        assert d == Hold(m, wait, key, until)  # type: ignore[arg-type]
            case ("chain" | "pin" as what, bytes() as key):
                d = q.chain_accepted(key) if what == "chain" else q.sender_pinned(key)
                if check:
                    # Only what waits for exactly this event is retried, oldest first.
                    wait = CHAIN if what == "chain" else SENDER
                    want = tuple(m for m, e in before.items() if e.wait == wait and e.key == key)
                    assert d == Retry(want)
                    assert {e.msg_id: e for e in q.rows()} == before  # held until settled
            case ("tick", int() as dt):
                now += dt
                d = q.tick(now)
                if check:
                    late = tuple(
                        m
                        for m, e in before.items()
                        if e.wait == CHAIN and now > e.at + bounds.grace
                    )
                    assert d == Expired(late)
            case ("settle", bytes() as m):
                d = q.settled(m)
                if check:
                    assert d == Release(m) and m not in q
            case ("rewait", bytes() as m, bytes() as key):
                d = q.rewait(m, SENDER, key)
                if check and m in before:
                    assert d == Hold(m, SENDER, key, None)
                    assert q.rows()[list(before).index(m)].at == before[m].at
            case ("reload",):
                q = HoldQueue.from_rows(q.rows(), bounds)  # what the client does
        out.append(d)
        if check:
            assert q.count <= bounds.count
            assert q.size <= bounds.size
            assert q.count == len(q.rows()) and q.size == sum(e.size for e in q.rows())
            # Nothing waiting for its chain outlives its deadline by a tick.
            if ev[0] == "tick":
                assert all(e.wait != CHAIN or now <= e.at + bounds.grace for e in q.rows())
    return Run(out, [tuple(vars_of(e)) for e in q.rows()], q, now)


def vars_of(e: object) -> list[object]:
    return [getattr(e, f) for f in ("msg_id", "size", "wait", "key", "at")]


@_others_leaks
@settings(max_examples=300, deadline=None)
@given(bounds_st, st.lists(event_st, max_size=60))
def test_invariants_hold_for_any_sequence(bounds: Bounds, events: list[tuple[object, ...]]) -> None:
    run(bounds, events)


@_others_leaks
@settings(max_examples=200, deadline=None)
@given(bounds_st, st.lists(event_st, max_size=60))
def test_every_held_envelope_is_released_or_refused(
    bounds: Bounds, events: list[tuple[object, ...]]
) -> None:
    """Whatever was held at the end: every chain-waiting envelope is refused
    at the first tick past its deadline, and every sender-waiting one is
    retried when its sender is pinned (it has no deadline: the user decides)."""
    r = run(bounds, events)
    q = r.final
    waiting_chain = {e.msg_id for e in q.rows() if e.wait == CHAIN}
    waiting_sender = {e.msg_id: e.key for e in q.rows() if e.wait == SENDER}
    expired = q.tick(r.now + bounds.grace + 1)
    assert set(expired.ids) == waiting_chain
    for fp in q.waiting_senders():
        retried = q.sender_pinned(fp)
        assert set(retried.ids) == {m for m, k in waiting_sender.items() if k == fp}
        for m in retried.ids:
            assert q.settled(m) == Release(m)
    assert q.rows() == ()


@_others_leaks
@settings(max_examples=200, deadline=None)
@given(bounds_st, st.lists(event_st, max_size=60))
def test_deterministic(bounds: Bounds, events: list[tuple[object, ...]]) -> None:
    a = run(bounds, events, check=False)
    b = run(bounds, events, check=False)
    assert a.decisions == b.decisions and a.rows == b.rows


@_others_leaks
@settings(max_examples=200, deadline=None)
@given(bounds_st, st.lists(event_st, max_size=40), st.lists(event_st, max_size=40))
def test_rows_round_trip(
    bounds: Bounds, first: list[tuple[object, ...]], then: list[tuple[object, ...]]
) -> None:
    """Stopping after ``first``, storing the rows and loading them again
    changes nothing that follows (the client reloads the machine from
    client.db at every decision)."""
    straight = run(bounds, first + then, check=False)
    stored = run(bounds, [*first, ("reload",), *then], check=False)
    assert straight.rows == stored.rows
    n = len(first)
    assert straight.decisions[n:] == stored.decisions[n + 1 :]
    q = straight.final
    assert HoldQueue.from_rows(q.rows(), bounds).rows() == q.rows()


def test_hold_full_refuses_and_a_settled_slot_is_reused() -> None:
    q = HoldQueue(Bounds(count=2, size=100, grace=10))
    assert isinstance(q.arrived(IDS[0], 60, CHAIN, KEYS[0], now=0), Hold)
    assert q.arrived(IDS[1], 41, CHAIN, KEYS[0], now=0) == Refuse(IDS[1], "the hold is full")
    assert isinstance(q.arrived(IDS[1], 40, SENDER, KEYS[1], now=0), Hold)
    assert isinstance(q.arrived(IDS[2], 0, CHAIN, KEYS[0], now=0), Refuse)  # count
    # Arriving again (the relay re-delivers) changes nothing.
    assert q.arrived(IDS[0], 60, CHAIN, KEYS[0], now=5) == Hold(IDS[0], CHAIN, KEYS[0], 10)
    assert q.tick(10) == Expired(())
    assert q.tick(11) == Expired((IDS[0],))
    assert q.waiting_senders() == (KEYS[1],)
    assert q.sender_pinned(KEYS[1]) == Retry((IDS[1],))
    q.settled(IDS[1])
    assert q.rows() == ()


def test_budget() -> None:
    b = Budget.of(Bounds(tries=2))
    assert not b.exhausted
    b.spend()
    b.spend()
    assert b.exhausted


def test_may_be_early() -> None:
    assert may_be_early(contact_queue=True, ratchet_message=True, error=DecryptionFailed("x"))
    assert may_be_early(contact_queue=True, ratchet_message=True, error=MessageRejected("x"))
    assert not may_be_early(contact_queue=False, ratchet_message=True, error=DecryptionFailed("x"))
    assert not may_be_early(contact_queue=True, ratchet_message=False, error=DecryptionFailed("x"))
    assert not may_be_early(contact_queue=True, ratchet_message=True, error=Replay("x"))


def test_client_db_rows_are_the_machines_state(tmp_path: Path) -> None:
    """What client.db keeps (held + held_keys, as the client writes them) is
    the machine's state: reloading it gives the same rows and decisions. A row
    held before schema 6 (no held_keys row) reads as waiting for a sender no
    one pins: never expired, never retried by an event."""
    db = ClientDB(tmp_path / "client.db", bytes(32))
    try:
        q = HoldQueue(Bounds(grace=10))
        rows: list[tuple[bytes, int, Literal["chain", "sender"], bytes, int]] = [
            (IDS[0], 30, CHAIN, KEYS[0], 100),
            (IDS[1], 20, SENDER, KEYS[1], 101),
            (IDS[2], 10, CHAIN, KEYS[2], 102),
        ]
        with db.transaction():
            for m, size, wait, key, at in rows:
                d = q.arrived(m, size, wait, key, now=at)
                assert isinstance(d, Hold)
                db.hold(m, "https://relay.example", bytes(size), at)
                db.set_held_key(m, d.wait, d.key)
            db.hold(IDS[3], "https://relay.example", bytes(5), 99)  # before schema 6
        loaded = HoldQueue.from_rows(db.held_index(), q.bounds)
        assert loaded.rows()[1:] == q.rows()
        assert loaded.rows()[0] == Entry(msg_id=IDS[3], size=5, wait=SENDER, key=b"", at=99)
        assert loaded.tick(111) == q.tick(111) == Expired((IDS[0],))
        assert loaded.chain_accepted(KEYS[2]) == Retry((IDS[2],))
        assert loaded.sender_pinned(KEYS[1]) == Retry((IDS[1],))
        assert [r.msg_id for r in db.held_unlabelled()] == [IDS[3]]
        row = db.held_row(IDS[1])
        assert row is not None and (row.kind, row.key, row.at) == (SENDER, KEYS[1], 101)
    finally:
        db.close()
