"""Injectable randomness (issue 12, item 2): the session draws every random
byte it can from one source given like the clock, so a conversation replays.

Two runs of the same conversation with the same injected sources and clock
must agree on everything the protocol code draws: every ratchet key (the
X25519 secret and ML-KEM seed of each root step), every reuse guard, the file
ids, the handshake seed; hence every header's ``dh``, ``kem_pub``, ``pn``,
``n`` and ``guard``, the first message's prekey ids, every payload's
``seq``, ``sent_at``, content and carried checkpoints, and every envelope's
length.

What ``cryptography`` does not let us inject, and so differs between runs
(``docs/PROTOCOL.md`` §17): the ML-KEM-768 encapsulations (``root_ct``,
``epoch_ct``), the HPKE encapsulation of the first message (``hpke``) and
the hedged ML-DSA-65 half of every signature. Everything computed from them
differs with them: the root and message keys (the ML-KEM secrets are mixed
into both), hence every ratchet ciphertext and the first message's
``sealed_body``; the conversation id (from the transcript, which holds
``hpke``); and the hashes of signed records: ``prev_hash`` from seq 2 on
and a receipt's ``chain_hash``.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

from securechan import primitives
from securechan.protocol import MessageReceived, PrekeyStore, ReplayGuard, Session, ratchet
from securechan.protocol import handshake as hs
from securechan.protocol.handshake import FirstMessage
from securechan.protocol.payload import CHUNK_SIZE, ContentType, Receipt, SignedPayload
from securechan.protocol.ratchet import PQ_INTERVAL, RatchetHeader
from securechan.protocol.session import RatchetMessage
from tests.conftest import NOW, fixed_identity

ALICE = fixed_identity("tehran")
BOB = fixed_identity("washington")
STORE = PrekeyStore.new(BOB).rotate(BOB, now=NOW).add_one_time(BOB, 1, now=NOW)


class Seeded:
    """A deterministic stand-in for the OS CSPRNG, for tests only:
    SHAKE-256 over a seed and a call counter. PUBLIC TEST DATA."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return hashlib.shake_256(self.seed + self.calls.to_bytes(8, "big")).digest(n)


@dataclass(frozen=True)
class Run:
    envelopes: list[bytes]
    payloads: list[SignedPayload]


def _conversation(seed: bytes | None) -> Run:
    """Alice's first message, texts both ways (root steps), a two-chunk file,
    a run past an epoch step, and restarts from the stored state; every
    envelope delivered in order. ``seed`` None: the default randomness."""
    ra = Seeded(seed + b"/A") if seed is not None else primitives.random_bytes
    rb = Seeded(seed + b"/B") if seed is not None else primitives.random_bytes
    t = NOW
    sa, first = Session.initiate(ALICE, BOB.public, STORE.bundle(t), now=t, text="A1", rand=ra)
    contacts = {ALICE.fingerprint: ALICE.public}
    sb, _, _, events = Session.accept(
        BOB, STORE, ReplayGuard(), first, contact=contacts.get, now=t, rand=rb
    )
    envelopes = [first]
    payloads = [_payload(e) for e in events if isinstance(e, MessageReceived)]

    def deliver(sender: Session, receiver: Session, envelope: bytes) -> None:
        envelopes.append(envelope)
        for e in receiver.receive(envelope, now=t):
            if isinstance(e, MessageReceived):
                payloads.append(_payload(e))

    for i in range(2):
        t += 1
        deliver(sa, sb, sa.send_text(f"A{i + 2}", now=t).envelope)
    t += 1
    deliver(sb, sa, sb.send_text("B1: a root step", now=t).envelope)
    # A restart on both sides, with the source handed in again.
    sa = Session.from_bytes(ALICE, sa.to_bytes(now=t), now=t, rand=ra)
    sb = Session.from_bytes(BOB, sb.to_bytes(now=t), now=t, rand=rb)
    t += 1
    for chunk in sa.send_file("annex.bin", bytes(range(256)) * (CHUNK_SIZE // 200), now=t):
        deliver(sa, sb, chunk.envelope)
    # Alice's second chain has epoch steps: cross one.
    for i in range(PQ_INTERVAL + 2):
        deliver(sa, sb, sa.send_text(f"run {i}", now=t).envelope)
    t += 1
    deliver(sb, sa, sb.send_receipt(now=t).envelope)
    deliver(sa, sb, sa.send_text("after the receipt", now=t).envelope)
    return Run(envelopes, payloads)


def _payload(event: MessageReceived) -> SignedPayload:
    return SignedPayload.from_bytes_unverified(event.signed)


def _header(envelope: bytes) -> RatchetHeader:
    return RatchetHeader.from_bytes(RatchetMessage.from_bytes(envelope).header)


def _injected(h: RatchetHeader) -> tuple[bytes, bytes, int, int, bytes]:
    return (h.dh, h.kem_pub, h.pn, h.n, h.guard)


def test_same_injected_randomness_and_clock_replay_the_conversation() -> None:
    one, two = _conversation(b"seed"), _conversation(b"seed")
    assert len(one.envelopes) == len(two.envelopes) == 1 + 2 + 1 + 2 + PQ_INTERVAL + 2 + 2
    # Every envelope has the same length (padding is deterministic).
    assert [len(e) for e in one.envelopes] == [len(e) for e in two.envelopes]
    f1, f2 = FirstMessage.from_bytes(one.envelopes[0]), FirstMessage.from_bytes(two.envelopes[0])
    assert (f1.signed_prekey_id, f1.one_time_prekey_id) == (
        f2.signed_prekey_id,
        f2.one_time_prekey_id,
    )
    # Not injectable: HPKE's encapsulation, and what is keyed by it.
    assert f1.hpke != f2.hpke and f1.sealed_body != f2.sealed_body
    inner = [f1.message, *one.envelopes[1:]], [f2.message, *two.envelopes[1:]]
    headers = [[_header(e) for e in run] for run in inner]
    assert [_injected(h) for h in headers[0]] == [_injected(h) for h in headers[1]]
    epochs = 0
    for h1, h2, e1, e2 in zip(*headers, *inner, strict=True):
        # Not injectable: the ML-KEM encapsulations, and every ciphertext
        # (its key holds their secrets).
        assert h1.root_ct != h2.root_ct
        assert (h1.epoch_ct is None) == (h2.epoch_ct is None)
        if h1.epoch_ct is not None:
            epochs += 1
            assert h1.epoch_ct != h2.epoch_ct
        assert RatchetMessage.from_bytes(e1).ciphertext != RatchetMessage.from_bytes(e2).ciphertext
    assert epochs == 4  # messages 50..53 of Alice's second chain
    # The payloads: the same but for the conversation id, prev_hash (from
    # seq 2) and the hedged signatures.
    assert len(one.payloads) == len(two.payloads) == len(one.envelopes)
    for p1, p2 in zip(one.payloads, two.payloads, strict=True):
        a, b = p1.payload, p2.payload
        assert (a.seq, a.sent_at, a.content_type, a.checkpoints) == (
            b.seq,
            b.sent_at,
            b.content_type,
            b.checkpoints,
        )
        if a.content_type is ContentType.RECEIPT:
            # A receipt's chain hash is the hash of a signed record.
            ra, rb = Receipt.from_bytes(a.body), Receipt.from_bytes(b.body)
            assert ra.up_to_seq == rb.up_to_seq and ra.chain_hash != rb.chain_hash
        else:
            assert a.body == b.body
        assert a.conversation != b.conversation and p1.signature != p2.signature
        assert (a.prev_hash == b.prev_hash) == (a.seq == 1)


def test_another_seed_or_the_default_source_gives_fresh_keys() -> None:
    seeded = _conversation(b"seed")
    for other in (_conversation(b"another seed"), _conversation(None)):
        for e1, e2 in zip(seeded.envelopes[1:], other.envelopes[1:], strict=True):
            h1, h2 = _header(e1), _header(e2)
            assert h1.guard != h2.guard and h1.dh != h2.dh and h1.kem_pub != h2.kem_pub


def test_the_default_source_is_the_os_csprng() -> None:
    """No protocol entry point that draws randomness defaults to anything but
    ``primitives.random_bytes`` (``os.urandom``)."""
    entry_points = [
        Session.__init__,
        Session.initiate,
        Session.accept,
        Session.from_bytes,
        hs.initiate,
        ratchet.ratchet_encrypt,
        ratchet.RootStep.generate,
        PrekeyStore.rotate,
        PrekeyStore.add_one_time,
        PrekeyStore.new_pool,
    ]
    for fn in entry_points:
        default = inspect.signature(fn).parameters["rand"].default
        assert default is primitives.random_bytes, fn.__qualname__
    assert inspect.getsource(primitives.random_bytes).rstrip().endswith("return os.urandom(n)")


def test_prekeys_from_the_same_source_are_the_same_keys() -> None:
    """Signed and one-time prekey secrets come from the injected source too;
    only their signatures (hedged ML-DSA) differ between runs."""

    def store(seed: bytes) -> PrekeyStore:
        rand = Seeded(seed)
        s = PrekeyStore.new(BOB).rotate(BOB, now=NOW, rand=rand)
        return s.new_pool(BOB, 3, now=NOW, rand=rand)[0]

    one, two, other = store(b"p"), store(b"p"), store(b"q")
    assert one.to_bytes() != two.to_bytes()  # the signatures

    def keys(s: PrekeyStore) -> list[tuple[int, bytes, bytes]]:
        return [(k.record.prekey_id, k.record.public_key, k.seed) for k in (*s.signed, *s.one_time)]

    assert keys(one) == keys(two) and len(keys(one)) == 4
    assert {k[1] for k in keys(one)}.isdisjoint(k[1] for k in keys(other))
