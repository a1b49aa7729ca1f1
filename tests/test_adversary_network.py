"""The network as adversary, end to end (issue 6; SECURITY-TESTS.md, "The
network as adversary").

The network sits where the malicious front sits (between the delegations and
a real ``securechan relay serve``), so the same proxy plays it: it reads
sizes, flips bits, truncates, and replays or re-targets the signed requests
it saw. The catalogue's five rules are checked as in
``test_adversary_relay.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from securechan.client.results import Received, Rejected
from securechan.errors import MalformedInput, MessageRejected
from tests.adversary import Exchange, RelayProcess, running_relay
from tests.adversary.world import World, world_of
from tests.test_adversary_relay import (
    Unchanged,
    cli_receive,
    is_message,
    receive,
    refusals,
    run,
    send,
    shown,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


@pytest.fixture
def world(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        yield w


# --- sizes ---------------------------------------------------------------------------


def test_network_sees_only_padded_sizes(world: World) -> None:
    t, fw = world.t, world.front["washington"]
    short = [("x" * n) for n in range(1, 201, 10)]  # 20 texts, 1..191 characters
    longer = [("y" * n) for n in range(200, 2200, 100)]  # 20 texts, 200..2100
    send(t, "washington", *short)
    sizes_short = [len(x.body) for x in fw.sent()][-len(short) :]
    send(t, "washington", *longer)
    sizes_long = [len(x.body) for x in fw.sent()][-len(longer) :]
    # The network sees three sizes for 20 different short texts (Padmé
    # buckets are 128 bytes wide at this size)...
    assert len(set(sizes_short)) <= 3, sizes_short
    assert all((a - b) % 64 == 0 for a in sizes_short for b in sizes_short), sizes_short
    # ... and a few Padmé buckets for lengths spread over 200..2100.
    assert len(set(sizes_long)) <= 10, sizes_long
    assert all((a - b) % 128 == 0 for a in sizes_long for b in sizes_long), sizes_long
    assert sorted(sizes_long) == sizes_long  # buckets grow, never shrink
    print(
        f"\nsizes on the wire: {sorted(set(sizes_short))} for 20 texts of 1..191 chars,"
        f" {sorted(set(sizes_long))} for 20 texts of 200..2100 chars"
    )


# --- bit flips and truncation -----------------------------------------------------------


def _positions(length: int) -> list[int]:
    """The header bytes, every 61st byte, and the last 16."""
    return sorted({*range(min(48, length)), *range(0, length, 61), *range(length - 16, length)})


def test_network_flips_bits_of_every_field(world: World) -> None:
    t, w, fw = world.t, world.w, world.front["washington"]
    fw.hold(is_message)
    send(t, "washington", "intact")
    assert shown(receive(w)) == []
    [m] = fw.held()
    data = m.data
    variants = [
        data[:p] + bytes([data[p] ^ (1 << (p % 8))]) + data[p + 1 :] for p in _positions(len(data))
    ]
    variants += [data[:n] for n in (1, 3, 8, len(data) // 2, len(data) - 1)]
    variants += [data + b"\x00"]
    w_state, t_state = Unchanged(w), Unchanged(t)
    for v in variants:
        fw.inject(v, queue="private")

    async def go() -> list[Received | Rejected]:
        out: list[Received | Rejected] = []
        async with w.channel() as ch:
            for _ in range(4):  # 200 envelopes a fetch
                out.extend(await ch.receive())
        return out

    got = run(go(), 150)
    assert shown(got) == [], "a flipped or truncated envelope was shown"
    assert len(refusals(got)) == len(variants)
    # Every refusal is one of the message-refusal family, never a crash.
    families = {
        r
        for r in refusals(got)
        if r not in {c.code for c in _subclasses(MessageRejected) | _subclasses(MalformedInput)}
    }
    assert families == set(), families
    w_state.check()
    assert w_state.audited() == refusals(got)
    # The peer learns nothing: no error travels back to tehran.
    assert receive(t) == []
    t_state.check()
    fw.release()
    items, err = cli_receive(w)
    assert [x["text"] for x in items] == ["intact"] and err == []
    print(f"\nbit flips: {len(variants)} variants refused as {sorted(set(refusals(got)))}")


def _subclasses(cls: type) -> set[type]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _subclasses(sub)
    return out


# --- replayed and re-targeted requests ------------------------------------------------


async def _replay(
    relay: RelayProcess,
    x: Exchange,
    *,
    path: str | None = None,
    method: str | None = None,
    body: bytes | None = None,
) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method or x.method,
            relay.url + (path or x.path),
            data=(x.body if body is None else body) or None,
            headers=x.headers,
        ) as resp,
    ):
        await resp.read()
        return resp.status


def test_network_replays_client_request(world: World) -> None:
    """Signed requests captured on the wire, sent again verbatim or pointed at
    another queue or method: the relay refuses them all (403)."""
    t, w, fw, ft = world.t, world.w, world.front["washington"], world.front["tehran"]
    send(t, "washington", "once")
    assert shown(receive(w)) == ["once"]
    sends = [x for x in fw.sent() if x.status == 201 and "Authorization" in x.headers]
    fetches = [x for x in fw.exchanges if x.kind == "fetch" and x.status == 200]
    acks = [x for x in fw.exchanges if x.kind == "ack" and x.status == 200]
    assert sends and fetches and acks
    other_sid = [x for x in ft.sent() if x.status == 201][-1].queue
    captured_send, fetch, ack = sends[-1], fetches[-1], acks[-1]

    async def go() -> dict[str, int]:
        relay = world.relay
        rid = fetch.queue
        return {
            "send replayed": await _replay(relay, captured_send),
            "send re-targeted": await _replay(relay, captured_send, path=f"/v1/send/{other_sid}"),
            "fetch replayed": await _replay(relay, fetch),
            "ack replayed": await _replay(relay, ack),
            "fetch signature used to delete the queue": await _replay(
                relay, fetch, path=f"/v1/queues/{rid}", method="DELETE"
            ),
            "ack signature used on the fetch route": await _replay(
                relay,
                ack,
                path=f"/v1/queues/{rid}/messages?after=0&limit=100",
                method="GET",
                body=b"",
            ),
        }

    answers = run(go())
    assert all(status in (401, 403) for status in answers.values()), str(answers)
    # Nothing was stored twice or lost; the queue still exists and works.
    send(t, "washington", "twice?")
    assert shown(receive(w)) == ["twice?"]


def test_network_cross_protocol_signature_reuse(world: World) -> None:
    """A relay-request signature (context securechan/v1/relay-request) made
    for one queue's fetch offered as the signature of a prekey upload and of
    a queue-securing request: refused. (Signatures across the identity's own
    purposes are covered by test_primitives.py::test_context_separates_purposes
    and test_identity.py::test_signatures_do_not_cross_contexts.)"""
    w, fw = world.w, world.front["washington"]
    receive(w)
    fetch = [x for x in fw.exchanges if x.kind == "fetch" and x.status == 200][-1]
    rid = fetch.queue

    async def go() -> list[int]:
        return [
            await _replay(world.relay, fetch, path=f"/v1/queues/{rid}/prekeys", method="PUT"),
            await _replay(world.relay, fetch, path=f"/v1/queues/{rid}/sender-key", method="PUT"),
        ]

    answers: list[Any] = run(go())
    assert all(status in (400, 401, 403) for status in answers), answers
    send(world.t, "washington", "still mine")
    assert shown(receive(w)) == ["still mine"]
