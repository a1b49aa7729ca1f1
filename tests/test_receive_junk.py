"""Work before authentication on the receive path (issue 11, the class
"Work before authentication").

The attacker holds washington's contact card and no key at all: it posts
garbage envelopes to washington's contact address on a real relay process
(127.0.0.1), exactly as ``RelayClient.send`` does for anyone. The tests
count the expensive operations washington's ``receive`` performs (ratchet
decryption attempts, HPKE opens) by wrapping them, and check that:

* a ratchet envelope whose ratchet key no session expects costs a lookup,
  never a decryption attempt, and is never retried on later passes;
* a first message naming a prekey id washington does not hold costs a
  lookup, not a decapsulation;
* held envelopes are capped (count and bytes), and a flood costs a bounded
  number of audit entries per reason, not one per envelope;
* where a new chain *is* possible on the contact queue (a session whose
  private queue grant is still pending), the failed attempts per pass are
  capped and the rest of the queue waits, unacknowledged, for the next pass;
* honest messages sent after the flood are delivered on the same pass.

Before the fix every garbage envelope was tried against every session and
held, then retried against every session on every later pass.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from securechan import wire
from securechan.client import channel as channel_mod
from securechan.client.results import Received, Rejected
from securechan.primitives import HybridKemKeyPair, MlKemKeyPair, X25519KeyPair, random_bytes
from securechan.protocol import handshake as hs
from securechan.protocol import ratchet
from securechan.protocol import session as session_mod
from securechan.protocol.address import ContactCard
from securechan.transport import RelayClient
from tests.adversary import Party, RelayProcess, audit_rejections, running_relay
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


def run(coro: Any, seconds: float = 180) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


def garbage_ratchet() -> bytes:
    """A well-formed ratchet envelope with a fresh, valid ratchet key and
    ML-KEM key (so it passes the parse-time key checks, which refuse random
    bytes as a key), counters at the skip limit and random ciphertexts: what
    anyone can make."""
    n = ratchet.MAX_SKIP
    header = wire.encode(
        ratchet.HEADER,
        {
            "dh": X25519KeyPair.generate().public,
            "kem_pub": MlKemKeyPair.generate().public,
            "root_ct": random_bytes(1088),
            "pn": ratchet.MAX_SKIP,
            "n": n,
            "epoch_ct": random_bytes(1088) if n >= ratchet.PQ_INTERVAL else None,
            "guard": random_bytes(32),
        },
    )
    return wire.encode(session_mod.MESSAGE, {"header": header, "ciphertext": random_bytes(1200)})


def garbage_first() -> bytes:
    """A well-formed first message naming prekey ids nobody published."""
    first = hs.FirstMessage(
        signed_prekey_id=2**31 + 7,
        one_time_prekey_id=2**31 + 9,
        hpke=random_bytes(hs.HPKE_OVERHEAD + hs._SEED_SIZE),
        sealed_body=random_bytes(6000),
        message=garbage_ratchet(),
    )
    return first.to_bytes()


# The relay gives each client address its own share and rate on a contact
# address (docs/RELAY.md, "Contact addresses"), so the attacker posts from
# several loopback addresses, PER_ADDRESS envelopes from each (under the
# default burst), as a flood now has to.
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 40)]
PER_ADDRESS = 40


def post(card: ContactCard, envelopes: list[bytes]) -> None:
    """The attacker: only the contact card, no sender key."""

    async def go() -> None:
        for address in card.addresses:
            for k in range(0, len(envelopes), PER_ADDRESS):
                local = ATTACKERS[(k // PER_ADDRESS) % len(ATTACKERS)]
                connector = aiohttp.TCPConnector(local_addr=(local, 0))
                async with (
                    aiohttp.ClientSession(connector=connector) as s,
                    RelayClient(address.relay, session=s) as relay,
                ):
                    for data in envelopes[k : k + PER_ADDRESS]:
                        await relay.send(address.sid, data, random_bytes(16), sender=None)

    run(go())


def card_of(holder: Party, name: str) -> ContactCard:
    return ContactCard.from_bytes(holder.keystore.contacts.get(name).card or b"")


def send(p: Party, to: str, *texts: str) -> None:
    async def go() -> None:
        async with p.channel() as ch:
            for text in texts:
                assert (await ch.send_text(to, text)).pending == 0

    run(go())


def receive(p: Party) -> list[Received | Rejected]:
    async def go() -> list[Received | Rejected]:
        async with p.channel() as ch:
            return await ch.receive()

    result: list[Received | Rejected] = run(go())
    return result


def shown(items: list[Received | Rejected]) -> list[str]:
    return [x.text for x in items if isinstance(x, Received) and x.text is not None]


class Work:
    """Counts the expensive operations of the receive path (the real ones
    run: the wrappers only count)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decrypts = 0
        self.hpke_opens = 0
        real_decrypt = session_mod.ratchet_decrypt
        real_open = HybridKemKeyPair.hpke_open

        def decrypt(*a: Any, **k: Any) -> Any:
            self.decrypts += 1
            return real_decrypt(*a, **k)

        def hpke_open(key: HybridKemKeyPair, *a: Any, **k: Any) -> Any:
            self.hpke_opens += 1
            return real_open(key, *a, **k)

        monkeypatch.setattr(session_mod, "ratchet_decrypt", decrypt)
        monkeypatch.setattr(HybridKemKeyPair, "hpke_open", hpke_open)

    def reset(self) -> None:
        self.decrypts = self.hpke_opens = 0


def held(p: Party) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{p.home / 'client.db'}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM held"
        n, size = conn.execute(query).fetchone()
        return int(n), int(size)
    finally:
        conn.close()


def test_garbage_ratchet_envelopes_cost_a_lookup_and_are_never_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 garbage ratchet envelopes on the contact queue: no decryption is
    attempted for any of them, on this pass or the next; at most MAX_HELD
    are held; the refused rest costs AUDIT_EACH + 1 audit entries; tehran's texts sent
    after the flood are shown on the first pass."""
    t, w = world.t, world.w
    card = card_of(t, "washington")
    post(card, [garbage_ratchet() for _ in range(300)])
    send(t, "washington", "after the flood")
    before = len(audit_rejections(w.home))
    work = Work(monkeypatch)
    got = receive(w) + receive(w)  # the fetch limit is 200 a pass
    assert shown(got) == ["after the flood"], got
    assert work.decrypts == 1, work.decrypts  # tehran's text, nothing else
    count, size = held(w)
    assert count <= channel_mod.MAX_HELD and size <= channel_mod.MAX_HELD_BYTES
    assert count == channel_mod.MAX_HELD  # the rest was refused, not held
    # 44 refused: AUDIT_EACH one by one, the rest in one entry.
    refused = [x for x in got if isinstance(x, Rejected)]
    each = channel_mod.AUDIT_EACH
    assert [x.reason for x in refused] == ["decryption-failed"] * (each + 1), refused
    assert refused[-1].error.startswith(f"{300 - 256 - each} more envelopes: "), refused[-1]
    assert len(audit_rejections(w.home)) - before == each + 1
    # Held garbage is not retried on later passes.
    work.reset()
    send(t, "washington", "later")
    assert shown(receive(w)) == ["later"]
    assert work.decrypts == 1, work.decrypts


def test_first_message_naming_an_unknown_prekey_costs_no_decapsulation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 first messages naming prekey ids washington never published are
    refused by a lookup: no HPKE open, no decryption; AUDIT_EACH audit
    entries and one for the rest."""
    t, w = world.t, world.w
    post(card_of(t, "washington"), [garbage_first() for _ in range(50)])
    send(t, "washington", "still here")
    before = len(audit_rejections(w.home))
    work = Work(monkeypatch)
    got = receive(w)
    assert shown(got) == ["still here"], got
    assert work.hpke_opens == 0 and work.decrypts == 1, (work.hpke_opens, work.decrypts)
    each = channel_mod.AUDIT_EACH
    refused = [x for x in got if isinstance(x, Rejected)]
    assert [x.reason for x in refused] == ["unknown-prekey"] * (each + 1), got
    assert refused[-1].error.startswith(f"{50 - each} more envelopes: "), refused[-1]
    assert [r["reason"] for r in audit_rejections(w.home)[before:]] == ["unknown-prekey"] * (
        each + 1
    )
    assert held(w) == (0, 0)


@pytest.fixture
def pending_grant(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    """washington accepted tehran's first message but could not create its
    private queue (its relay refused), then answered: tehran's next chain
    may legitimately arrive on washington's contact queue, so a garbage
    envelope there could be for that session and must be tried."""
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as world:
        world.introduce("tehran", "washington", hello=False)
        t, w, fw = world.t, world.w, world.front["washington"]
        send(t, "washington", "first contact")
        fw.fail("create", status=503, times=-1)
        assert shown(receive(w)) == ["first contact"]
        send(w, "tehran", "answer before the grant")
        yield world


def test_unauthenticated_attempts_are_capped_per_pass(
    pending_grant: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a new chain is possible on the contact queue, each garbage
    envelope is a real attempt; at most UNAUTH_TRIES fail per pass, the rest
    of the queue waits (unacknowledged) for the next pass; every pass makes
    progress, and a genuine message behind the flood still arrives."""
    t, w = pending_grant.t, pending_grant.w
    tries = channel_mod.UNAUTH_TRIES
    post(card_of(t, "washington"), [garbage_ratchet() for _ in range(tries * 2 + 4)])
    assert shown(receive(t)) == ["answer before the grant"]
    send(t, "washington", "reply on a new chain")
    work = Work(monkeypatch)
    passes: list[int] = []
    texts: list[str] = []
    for _ in range(6):
        work.reset()
        texts += shown(receive(w))
        passes.append(work.decrypts)
        if texts:
            break
    assert texts == ["reply on a new chain"], (texts, passes)
    assert all(n <= tries + 1 for n in passes), passes
    assert len(passes) >= 3, passes  # the flood took several bounded passes
