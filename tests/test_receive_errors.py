"""A refusal is the peer's fault, a bug is ours (issue 12, item 5).

The receive pipeline no longer treats a ``ValueError`` as "the peer sent
something bad": every parser of peer-controlled bytes (wire, strict_json,
the protocol's records, the relay's answers) raises ``MalformedInput``, a
``SecurechanError``, and anything else raised inside a stage is a bug, set
aside and reported as ``internal-error`` naming the stage.

Two sides, against a real relay on 127.0.0.1 and real home folders:

* the attacker's side: junk made from real envelopes (bit flips,
  truncations, extensions, foreign type ids) and random bytes, on the
  contact queue and the private queue: every one is refused with a peer
  reason code, none is reported as ``internal-error``, none is parked, and
  the next real message is delivered;
* the bug's side: a stage raising ``ValueError`` (injected with monkeypatch:
  no bytes can make one) is reported as ``internal-error`` and the envelope
  set aside, not refused as the peer's fault (on the old pipeline it read
  ``error``, was not parked, and the audit log blamed the peer).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.results import Received, Rejected
from securechan.client.stored import StoredRecord
from securechan.protocol.session import Session
from securechan.transport import RelayClient
from tests.adversary import Party, RelayProcess, audit_rejections, b64e, running_relay
from tests.adversary.world import World, world_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


@pytest.fixture
def world(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    """tehran and washington with the handshake done both ways."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        yield w


def run(coro: Any, seconds: float = 150) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


def send(p: Party, to: str, *texts: str) -> None:
    async def go() -> None:
        async with p.channel() as ch:
            for text in texts:
                assert (await ch.send_text(to, text)).pending == 0

    run(go())


def receive(p: Party, passes: int = 1) -> list[Received | Rejected]:
    async def go() -> list[Received | Rejected]:
        out: list[Received | Rejected] = []
        async with p.channel() as ch:
            for _ in range(passes):
                out.extend(await ch.receive())
        return out

    result: list[Received | Rejected] = run(go())
    return result


def shown(items: list[Received | Rejected]) -> list[str]:
    return [x.text for x in items if isinstance(x, Received) and x.text is not None]


def refusals(items: list[Received | Rejected]) -> list[str]:
    return [x.reason for x in items if isinstance(x, Rejected)]


def parked(p: Party) -> list[str]:
    conn = sqlite3.connect(f"file:{p.home / 'client.db'}?mode=ro", uri=True, timeout=10)
    try:
        return [stage for (stage,) in conn.execute("SELECT stage FROM parked ORDER BY rowid")]
    finally:
        conn.close()


def received_envelopes(p: Party) -> list[bytes]:
    """The envelopes ``p`` received and kept (a first message and ratchet
    messages): the attacker's raw material."""

    async def go() -> list[bytes]:
        async with p.channel() as ch:
            out = []
            for m in ch.db.messages(limit=1 << 20):
                envelope = StoredRecord.from_bytes(m.record).envelope
                if m.direction == "in" and envelope is not None:
                    out.append(envelope)
            return out

    found: list[bytes] = run(go())
    return found


def junk_from(envelopes: list[bytes], rng: random.Random, per_envelope: int) -> list[bytes]:
    out: list[bytes] = []
    for data in envelopes:
        for _ in range(per_envelope):
            p = rng.randrange(len(data))
            out.append(data[:p] + bytes([data[p] ^ (1 << rng.randrange(8))]) + data[p + 1 :])
        out += [data[:n] for n in (1, 2, 3, 6, len(data) // 3, len(data) - 1)]
        out += [data + b"\x00", data + data[:40], data[:2] + rng.randbytes(60)]
    out += [b"", rng.randbytes(1), rng.randbytes(33), rng.randbytes(5000)]
    out += [bytes([0x00, t]) + rng.randbytes(200) for t in (0x50, 0x51, 0x60, 0x70, 0xB2)]
    return out


def test_peer_junk_is_refused_never_reported_as_internal_error(world: World) -> None:
    """Attacker bytes on both queues: all refused with a peer reason,
    nothing set aside, and the channel still works."""
    t, w, fw = world.t, world.w, world.front["washington"]
    send(t, "washington", "one", "two")
    assert shown(receive(w)) == ["one", "two"]
    base = received_envelopes(w)
    assert len(base) >= 3  # the first message and ratchet messages
    rng = random.Random(12)  # noqa: S311 - reproducible junk, not keys
    junk = junk_from(base, rng, per_envelope=12)
    for i, data in enumerate(junk):
        fw.inject(data, queue="contact" if i % 2 else "private")
    before = len(audit_rejections(w.home))
    got = receive(w, passes=6)
    assert shown(got) == [], got
    reasons = refusals(got)
    assert reasons, "the junk was not refused"
    assert "internal-error" not in reasons, [x for x in got if isinstance(x, Rejected)][:5]
    assert parked(w) == []
    audited = [r["reason"] for r in audit_rejections(w.home)[before:]]
    assert "internal-error" not in audited
    send(t, "washington", "three")
    assert shown(receive(w)) == ["three"]


def _nth_call(n: int) -> Any:
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    return hit


def test_a_value_error_in_a_stage_is_a_bug_not_a_peer_refusal(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injected with monkeypatch (``Session.receive`` raising
    ValueError for the second message: a bug, no bytes make it). It is
    reported as internal-error naming the stage and the envelope is parked;
    the third message is delivered."""
    t, w = world.t, world.w
    send(t, "washington", "one", "two", "three")
    before = len(audit_rejections(w.home))
    real = Session.receive
    hit = _nth_call(2)

    def receive_(self: Session, data: bytes, *, now: int) -> Any:
        if hit():
            raise ValueError("injected: a bug in the ratchet")
        return real(self, data, now=now)

    monkeypatch.setattr(Session, "receive", receive_)
    got = receive(w)
    monkeypatch.undo()
    assert shown(got) == ["one", "three"], got
    assert refusals(got) == ["internal-error"], got
    [bad] = [x for x in got if isinstance(x, Rejected)]
    assert ": decrypt: ValueError: injected" in bad.error, bad
    assert [r["reason"] for r in audit_rejections(w.home)[before:]] == ["internal-error"]
    assert parked(w) == ["decrypt"]
    assert receive(w) == []  # set aside: not retried


def test_a_value_error_in_the_fetch_stage_is_not_blamed_on_the_relay(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injected with monkeypatch (the fetch of the contact queue
    raising ValueError: a bug in the client, the relay's answers are parsed
    to MalformedInput). Reported as internal-error, not as a relay error;
    the private queue is still received."""
    t, w = world.t, world.w
    contact = world.front["washington"].queue_of("contact")
    real = RelayClient.fetch

    async def fetch(self: RelayClient, rid: bytes, *a: Any, **k: Any) -> Any:
        if b64e(rid) == contact:
            raise ValueError("injected: a bug in the fetch")
        return await real(self, rid, *a, **k)

    send(t, "washington", "one")
    monkeypatch.setattr(RelayClient, "fetch", fetch)
    got = receive(w)
    monkeypatch.undo()
    assert shown(got) == ["one"], got
    assert refusals(got) == ["internal-error"], got
    [bad] = [x for x in got if isinstance(x, Rejected)]
    assert "fetch" in bad.error and "ValueError" in bad.error, bad
