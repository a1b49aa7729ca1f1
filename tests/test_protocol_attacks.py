"""End-to-end attacks on the session protocol (``securechan.protocol``).

Each test plays one attack of ``SECURITY-TESTS.md`` against real sessions made
with :meth:`Session.initiate` / :meth:`Session.accept` (real crypto, no mocks)
and holds the five rules for negative tests that can be checked at this
layer: the error is a :class:`SecurechanError` subclass (the specific one
where the protocol names it), nothing is returned, and the receiver's state
(``Session.to_bytes()``, ``PrekeyStore.to_bytes()``, the ``ReplayGuard``) is
byte-for-byte unchanged, so the original message still goes through.

Where an attack needs a message an honest client would never make (a
forwarded or re-sequenced signed payload), it is built with the low-level
API: ``SignedPayload.sign`` + ``pad`` + ``ratchet_encrypt`` on the sending
session's ratchet state, wrapped with ``wire.encode(session.MESSAGE, ...)``.
:func:`test_low_level_injection_harness_is_sound` shows that a well-formed
message built this way is accepted, so every refusal below is the
protocol's doing and not the harness's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan import wire
from securechan.errors import (
    BadSignature,
    BundleRejected,
    ChainBroken,
    DecryptionFailed,
    MalformedInput,
    MessageRejected,
    Misaddressed,
    Reflected,
    Replay,
    SecurechanError,
    TooFarAhead,
    UnknownPrekey,
    UnknownSender,
    UnsupportedVersion,
    VerificationFailed,
    WrongConversation,
)
from securechan.identity import Identity
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.primitives import (
    HYBRID_SIGNATURE_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MlKemKeyPair,
    X25519KeyPair,
    hkdf_sha256,
    hpke_seal,
    message_open,
    message_seal,
    random_bytes,
    sha256,
)
from securechan.protocol import (
    MessageReceived,
    MessagesMissing,
    OutOfOrder,
    PrekeyStore,
    ReplayGuard,
    Session,
)
from securechan.protocol import handshake as hs
from securechan.protocol import ratchet as ratchet_mod
from securechan.protocol import session as session_mod
from securechan.protocol.padding import pad
from securechan.protocol.payload import (
    CONTEXT_MESSAGE,
    SIGNED_PAYLOAD,
    ZERO_HASH,
    ContentType,
    Payload,
    SignedPayload,
    text_body,
)
from securechan.protocol.prekeys import (
    CONTEXT_PREKEY,
    KIND_ONE_TIME,
    KIND_SIGNED,
    SIGNED_PREKEY_LIFETIME,
)
from securechan.protocol.ratchet import (
    MAX_SKIP,
    MAX_SKIPPED,
    PQ_INTERVAL,
    SKIPPED_TTL,
    RatchetHeader,
    RatchetState,
    RootStep,
    chain_commitment,
    ratchet_decrypt,
    ratchet_encrypt,
)
from tests.conftest import NOW, fixed_identity

ALICE = fixed_identity("alice")
BOB = fixed_identity("bob")
CAROL = fixed_identity("carol")
RELAY = fixed_identity("relay")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What Session.receive may raise (its docstring), and Session.accept.
RECEIVE_ERRORS = (MessageRejected, MalformedInput)
ACCEPT_ERRORS = (MessageRejected, MalformedInput, BadSignature)


# --- helpers ------------------------------------------------------------------


def _contacts(*ids: Identity) -> Callable[[Fingerprint], PublicIdentity | None]:
    table = {i.fingerprint: i.public for i in ids}
    return table.get


def _store(owner: Identity, *, one_time: int = 2, now: int = NOW) -> PrekeyStore:
    return PrekeyStore.new(owner).rotate(owner, now=now).add_one_time(owner, one_time, now=now)


@dataclass
class Pair:
    """An established session: ``a`` initiated to ``b``."""

    a: Session
    b: Session
    store_before: PrekeyStore  # the responder's store before the first message
    store: PrekeyStore  # ... and after
    guard: ReplayGuard
    first: bytes
    first_event: MessageReceived


def _pair(a: Identity = ALICE, b: Identity = BOB, *, text: str = "hello") -> Pair:
    store = _store(b)
    sa, first = Session.initiate(a, b.public, store.bundle(NOW), now=NOW, text=text)
    sb, new_store, guard, events = Session.accept(
        b, store, ReplayGuard(), first, contact=_contacts(a), now=NOW
    )
    assert isinstance(events[0], MessageReceived)
    assert events[0].content == text
    return Pair(sa, sb, store, new_store, guard, first, events[0])


def _flip(data: bytes, pos: int, xor: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1 :]


def _sample(length: int) -> list[int]:
    """Every 37th byte, plus the first and last 64."""
    return sorted(
        {*range(0, length, 37), *range(min(64, length)), *range(max(0, length - 64), length)}
    )


def _parts(message: bytes) -> tuple[RatchetHeader, bytes]:
    rec = wire.decode(session_mod.MESSAGE, message)
    return RatchetHeader.from_bytes(rec["header"]), rec["ciphertext"]


def _rewrap(message: bytes, **changes: object) -> bytes:
    """``message`` with header fields changed (the ciphertext is kept)."""
    header, ciphertext = _parts(message)
    fields: dict[str, object] = {
        name: getattr(header, name)
        for name in ("dh", "kem_pub", "root_ct", "pn", "n", "epoch_ct", "guard")
    }
    fields.update(changes)
    raw = wire.encode(ratchet_mod.HEADER, fields)
    return wire.encode(session_mod.MESSAGE, {"header": raw, "ciphertext": ciphertext})


def _first_chain(message: bytes) -> bytes:
    """The commitment to a ratchet message's chain, as the responder computes it."""
    header, _ = _parts(message)
    return chain_commitment(header.dh, header.kem_pub, header.root_ct)


def _inject(sender: Session, signed: bytes) -> bytes:
    """Ratchet-encrypt arbitrary signed bytes in ``sender``'s session, as a
    malicious or buggy client could (only the ratchet advances)."""
    st = sender._st
    ratchet, header, ciphertext, _ = ratchet_encrypt(st.ratchet, pad(signed), st.transcript_hash)
    sender._st = replace(st, ratchet=ratchet)
    return wire.encode(session_mod.MESSAGE, {"header": header.to_bytes(), "ciphertext": ciphertext})


def _burn(sender: Session, count: int) -> None:
    """Advance ``sender``'s sending chain by ``count`` keys never delivered."""
    st = sender._st
    ratchet = st.ratchet
    for _ in range(count):
        ratchet, _, _, _ = ratchet_encrypt(ratchet, b"", st.transcript_hash)
    sender._st = replace(st, ratchet=ratchet)


def _payload(
    me: Identity,
    session: Session,
    *,
    seq: int,
    prev_hash: bytes,
    text: str = "crafted",
) -> Payload:
    return Payload(
        sender=me.fingerprint,
        recipient=session.peer.fingerprint,
        conversation=session.conversation,
        seq=seq,
        sent_at=NOW,
        content_type=ContentType.TEXT,
        body=text_body(text),
        prev_hash=prev_hash,
    )


def _signed(me: Identity, session: Session, **kw: object) -> bytes:
    return SignedPayload.sign(me, _payload(me, session, **kw)).to_bytes()  # type: ignore[arg-type]


def _refused(
    session: Session, message: bytes, expected: type[SecurechanError], *, now: int = NOW
) -> SecurechanError:
    """Deliver ``message``; it must raise ``expected`` and change nothing."""
    before = session.to_bytes(now=NOW)
    with pytest.raises(expected) as info:
        session.receive(message, now=now)
    assert session.to_bytes(now=NOW) == before
    return info.value


def _texts(events: Iterable[object]) -> list[object]:
    return [e.content for e in events if isinstance(e, MessageReceived)]


# --- the harness itself -----------------------------------------------------


def test_low_level_injection_harness_is_sound() -> None:
    p = _pair()
    signed = _signed(ALICE, p.a, seq=p.a.sent_count + 1, prev_hash=p.a._st.send_last_hash)
    events = p.b.receive(_inject(p.a, signed), now=NOW)
    assert _texts(events) == ["crafted"]
    # And a rewrapped header with no change is the same message.
    m = p.a.send_text("x", now=NOW).envelope
    assert _rewrap(m) == m


# --- the network flips bits ---------------------------------------------------


def test_first_message_every_byte_flip_refused() -> None:
    store = _store(BOB)
    guard = ReplayGuard()
    contact = _contacts(ALICE)
    _, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="hi")
    otk_id = store.bundle(NOW).one_time_prekey.prekey_id  # type: ignore[union-attr]
    before = store.to_bytes()
    seen: dict[str, int] = {}
    wrong: list[tuple[int, int, str]] = []
    for pos in _sample(len(first)):
        for xor in (0xFF, 1 << (pos % 8)):
            try:
                Session.accept(BOB, store, guard, _flip(first, pos, xor), contact=contact, now=NOW)
            except ACCEPT_ERRORS as e:
                seen[type(e).__name__] = seen.get(type(e).__name__, 0) + 1
            except Exception as e:  # reported below
                wrong.append((pos, xor, type(e).__name__))
            else:
                wrong.append((pos, xor, "accepted"))
    assert wrong == []
    assert store.to_bytes() == before
    assert guard.seen == ()
    assert otk_id in [r.prekey_id for r in store.one_time_records()]
    # Every layer was reached: parsing, prekey lookup, HPKE/AEAD.
    assert {"MalformedInput", "DecryptionFailed", "UnknownPrekey"} <= set(seen), seen
    # Nothing was consumed: the genuine first message still opens.
    _, new_store, new_guard, events = Session.accept(
        BOB, store, guard, first, contact=contact, now=NOW
    )
    assert _texts(events) == ["hi"]
    assert otk_id not in [r.prekey_id for r in new_store.one_time_records()]
    assert len(new_guard.seen) == 1


def _flip_all(receiver: Session, message: bytes) -> dict[str, int]:
    before = receiver.to_bytes(now=NOW)
    seen: dict[str, int] = {}
    wrong: list[tuple[int, int, str]] = []
    for pos in _sample(len(message)):
        for xor in (0xFF, 1 << (pos % 8)):
            try:
                receiver.receive(_flip(message, pos, xor), now=NOW)
            except RECEIVE_ERRORS as e:
                seen[type(e).__name__] = seen.get(type(e).__name__, 0) + 1
            except Exception as e:  # reported below
                wrong.append((pos, xor, type(e).__name__))
            else:
                wrong.append((pos, xor, "accepted"))
            if receiver.to_bytes(now=NOW) != before:
                wrong.append((pos, xor, "state changed"))
                return seen
    assert wrong == []
    return seen


def test_ratchet_message_every_byte_flip_refused_same_chain() -> None:
    p = _pair()
    m = p.a.send_text("same chain", now=NOW).envelope
    seen = _flip_all(p.b, m)
    assert {"MalformedInput", "DecryptionFailed"} <= set(seen), seen
    assert _texts(p.b.receive(m, now=NOW)) == ["same chain"]


def test_ratchet_message_every_byte_flip_refused_new_chain() -> None:
    p = _pair()
    p.a.receive(p.b.send_text("reply", now=NOW).envelope, now=NOW)
    m = p.a.send_text("new chain", now=NOW).envelope  # a root step: new DH and KEM keys
    assert _parts(m)[0].pn == 1
    seen = _flip_all(p.b, m)
    assert {"MalformedInput", "DecryptionFailed"} <= set(seen), seen
    assert _texts(p.b.receive(m, now=NOW)) == ["new chain"]


def test_ratchet_message_every_byte_flip_refused_after_epoch_step() -> None:
    p = _pair()
    # The responder's chain has epoch steps (the initiator's first one has none).
    _burn(p.b, PQ_INTERVAL)
    m = p.b.send_text("epoch 1", now=NOW).envelope
    header, _ = _parts(m)
    assert header.n == PQ_INTERVAL and header.epoch_ct is not None
    _flip_all(p.a, m)
    assert _texts(p.a.receive(m, now=NOW)) == ["epoch 1"]


# --- the relay substitutes bundles ------------------------------------------


def test_bundle_signed_by_another_identity_refused_at_initiate() -> None:
    relay_bundle = _store(RELAY).bundle(NOW)
    with pytest.raises(BundleRejected):
        Session.initiate(ALICE, BOB.public, relay_bundle, now=NOW)
    # The same keys, but the records claim Bob as owner: the signature fails.
    spk = relay_bundle.signed_prekey
    claimed = replace(spk, owner=BOB.fingerprint, signature=b"")
    forged = replace(claimed, signature=RELAY.sign(claimed.body_bytes(), context=CONTEXT_PREKEY))
    with pytest.raises(BundleRejected):
        Session.initiate(
            ALICE,
            BOB.public,
            replace(relay_bundle, signed_prekey=forged, one_time_prekey=None),
            now=NOW,
        )


def test_bundle_with_old_expired_signed_prekey_refused_at_initiate() -> None:
    then = NOW - SIGNED_PREKEY_LIFETIME - 1
    old = _store(BOB, now=then).bundle(then, with_one_time=False)
    old.verify(BOB.public, now=then)  # it was genuine once
    with pytest.raises(BundleRejected):
        Session.initiate(ALICE, BOB.public, old, now=NOW)


# --- the relay replays the first message ----------------------------------------


def test_first_message_replay_refused_and_session_not_reset() -> None:
    p = _pair()
    p.b.receive(p.a.send_text("one", now=NOW).envelope, now=NOW)
    p.a.receive(p.b.send_text("ack", now=NOW).envelope, now=NOW)
    session_before = p.b.to_bytes(now=NOW)
    store_before = p.store.to_bytes()
    with pytest.raises(Replay):
        Session.accept(BOB, p.store, p.guard, p.first, contact=_contacts(ALICE), now=NOW + 60)
    assert p.store.to_bytes() == store_before
    assert len(p.guard.seen) == 1
    assert p.b.to_bytes(now=NOW) == session_before
    # Also refused against the store as it was before (a restored backup of
    # the prekeys): the guard is checked first.
    with pytest.raises(Replay):
        Session.accept(
            BOB, p.store_before, p.guard, p.first, contact=_contacts(ALICE), now=NOW + 60
        )
    # Without the guard the one-time key, already used, refuses it.
    with pytest.raises(UnknownPrekey):
        Session.accept(BOB, p.store, ReplayGuard(), p.first, contact=_contacts(ALICE), now=NOW)
    # The ratchet message inside it, replayed into the session: refused.
    inner = hs.FirstMessage.from_bytes(p.first).message
    _refused(p.b, inner, Replay)
    # The existing session keeps working in both directions.
    assert _texts(p.b.receive(p.a.send_text("two", now=NOW).envelope, now=NOW)) == ["two"]
    assert _texts(p.a.receive(p.b.send_text("three", now=NOW).envelope, now=NOW)) == ["three"]


def test_old_envelope_redelivered_after_restart_refused() -> None:
    p = _pair()
    m1 = p.a.send_text("one", now=NOW).envelope
    m2 = p.a.send_text("two", now=NOW).envelope
    p.b.receive(m2, now=NOW)  # m1 still held back: its key is skipped
    p.b.receive(m1, now=NOW)
    # The recipient restarts from its persisted state; the relay re-delivers.
    restarted = Session.from_bytes(BOB, p.b.to_bytes(now=NOW), now=NOW)
    for old in (m1, m2, hs.FirstMessage.from_bytes(p.first).message):
        _refused(restarted, old, Replay)
    assert _texts(restarted.receive(p.a.send_text("three", now=NOW).envelope, now=NOW)) == ["three"]


def test_first_message_replay_without_one_time_key_refused() -> None:
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)  # the pool is exhausted
    _, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW)
    _, store2, guard, _ = Session.accept(
        BOB, store, ReplayGuard(), first, contact=_contacts(ALICE), now=NOW
    )
    before = store2.to_bytes()
    with pytest.raises(Replay):
        Session.accept(BOB, store2, guard, first, contact=_contacts(ALICE), now=NOW + 3600)
    assert store2.to_bytes() == before
    assert len(guard.seen) == 1


def test_signed_prekey_holder_cannot_rewrap_first_message_under_own_ratchet_keys() -> None:
    """Review 2026-12, finding 2. Mallory holds Bob's signed-prekey secret
    (stolen; the relay withholds Bob's one-time prekeys, so Alice's first
    message is sealed to that key). She opens Alice's genuine first message,
    takes Alice's *signed* payload out of the inner ratchet message and
    re-encrypts it under ratchet keys of her own. Bob must refuse it: the
    handshake signature covers Alice's first chain. (Accepted before the fix,
    and then Bob's replies were readable by Mallory.)"""
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)  # no one-time prekey
    _, first_bytes = Session.initiate(
        ALICE, BOB.public, store.bundle(NOW), now=NOW, text="meet at the embassy"
    )
    first = hs.FirstMessage.from_bytes(first_bytes)
    assert first.one_time_prekey_id is None
    # Mallory's loot: Bob's signed prekey, secret halves included.
    spk_record, spk_pair = store.signed_key(first.signed_prekey_id, now=NOW)
    seed_all = spk_pair.seed_bytes_secret()
    spk_kem_seed, spk_dh_secret = seed_all[:64], seed_all[64:]
    spk_kem_pub = spk_record.public_key[:MLKEM768_PUBLIC_KEY_SIZE]
    spk_dh_pub = spk_record.public_key[MLKEM768_PUBLIC_KEY_SIZE:]
    # 1. Open the HPKE and the body, rebuild the transcript Alice signed.
    seed = spk_pair.hpke_open(
        first.hpke, info=hs._info(BOB.fingerprint, KIND_SIGNED, spk_record.prekey_id)
    )
    body_key = hkdf_sha256(seed, salt=sha256(first.hpke), info=hs._BODY_INFO, length=32)
    body = wire.decode(hs.BODY, message_open(body_key, first.sealed_body, first.header_bytes()))
    transcript = hs._transcript(
        initiator=ALICE.fingerprint,
        responder=BOB.fingerprint,
        created=body["created"],
        bundle=store.bundle(NOW, with_one_time=False),
        hpke=first.hpke,
        first_chain=_first_chain(first.message),
    )
    _, rk0, th = hs._keys(seed, first.hpke, transcript)
    # 2. Decrypt Alice's inner message as Bob would: her signed payload.
    header, ciphertext = _parts(first.message)
    bob_view = RatchetState.responder(rk0, dh_secret=spk_dh_secret, kem_seed=spk_kem_seed)
    _, padded, _ = ratchet_decrypt(bob_view, header, ciphertext, th, now=NOW)
    # 3. Re-encrypt it under Mallory's own first chain and swap it in.
    mallory = RatchetState.initiator(
        rk0, peer_dh=spk_dh_pub, peer_kem=spk_kem_pub, first=RootStep.generate(spk_kem_pub)
    )
    mallory, m_header, m_ct, _ = ratchet_encrypt(mallory, padded, th)
    assert m_header.dh != header.dh
    inner = wire.encode(session_mod.MESSAGE, {"header": m_header.to_bytes(), "ciphertext": m_ct})
    forged = replace(first, message=inner).to_bytes()

    before = store.to_bytes()
    with pytest.raises(Misaddressed):
        Session.accept(BOB, store, ReplayGuard(), forged, contact=_contacts(ALICE), now=NOW)
    assert store.to_bytes() == before
    # Alice's genuine first message is still accepted afterwards.
    sb, _, _, events = Session.accept(
        BOB, store, ReplayGuard(), first_bytes, contact=_contacts(ALICE), now=NOW
    )
    assert _texts(events) == ["meet at the embassy"]
    # ... and Mallory, with her chain's keys, cannot read Bob's reply.
    reply_header, reply_ct = _parts(sb.send_text("agreed", now=NOW).envelope)
    with pytest.raises(DecryptionFailed):
        ratchet_decrypt(mallory, reply_header, reply_ct, th, now=NOW)


# --- unknown senders ------------------------------------------------------------


def test_unknown_sender_is_held_then_accepted_after_pinning() -> None:
    store = _store(BOB)
    guard = ReplayGuard()
    _, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="held")
    before = store.to_bytes()
    otk_ids = [r.prekey_id for r in store.one_time_records()]
    for contact in (_contacts(), _contacts(CAROL), lambda fp: CAROL.public):
        with pytest.raises(UnknownSender) as info:
            Session.accept(BOB, store, guard, first, contact=contact, now=NOW)
        ident = info.value.identity
        assert isinstance(ident, PublicIdentity)
        assert ident.fingerprint == ALICE.fingerprint
        assert ident.same_key(ALICE.public)
        assert store.to_bytes() == before
        assert guard.seen == ()
        assert [r.prekey_id for r in store.one_time_records()] == otk_ids
    # The user compares safety numbers and pins Alice: the held message opens.
    session, new_store, new_guard, events = Session.accept(
        BOB, store, guard, first, contact=_contacts(ALICE), now=NOW
    )
    assert _texts(events) == ["held"]
    assert session.peer.same_key(ALICE.public)
    assert len(new_store.one_time) == len(store.one_time) - 1
    assert len(new_guard.seen) == 1


# --- reflection -------------------------------------------------------------------


def test_own_ratchet_message_reflected() -> None:
    p = _pair()
    m = p.a.send_text("to bob", now=NOW).envelope
    _refused(p.a, m, Reflected)
    # The first message's ratchet message too.
    _refused(p.a, hs.FirstMessage.from_bytes(p.first).message, Reflected)
    # And after both sides ratcheted.
    p.b.receive(m, now=NOW)
    reply = p.b.send_text("to alice", now=NOW).envelope
    _refused(p.b, reply, Reflected)
    p.a.receive(reply, now=NOW)
    m2 = p.a.send_text("again", now=NOW).envelope
    _refused(p.a, m2, Reflected)
    assert _texts(p.b.receive(m2, now=NOW)) == ["again"]


def test_own_first_message_to_own_accept_refused() -> None:
    # Alice has her own prekey store, with the same prekey ids as Bob's.
    alice_store = _store(ALICE)
    bob_store = _store(BOB)
    _, first = Session.initiate(ALICE, BOB.public, bob_store.bundle(NOW), now=NOW)
    before = alice_store.to_bytes()
    with pytest.raises(DecryptionFailed):
        Session.accept(
            ALICE, alice_store, ReplayGuard(), first, contact=_contacts(BOB, ALICE), now=NOW
        )
    assert alice_store.to_bytes() == before


# --- forwarding and moving ----------------------------------------------------------


def test_surreptitious_forwarding_refused() -> None:
    ab = _pair(ALICE, BOB)
    bc = _pair(BOB, CAROL)  # Bob initiated to Carol
    events = ab.b.receive(ab.a.send_text("for Bob's eyes only", now=NOW).envelope, now=NOW)
    signed_for_bob = events[0].signed
    # Bob re-encrypts Alice's signed statement to Carol in the Bob-Carol session.
    forwarded = _inject(bc.a, signed_for_bob)
    err = _refused(bc.b, forwarded, Misaddressed)
    assert isinstance(err, MessageRejected)
    # The Bob-Carol session is intact.
    assert _texts(bc.b.receive(bc.a.send_text("hi Carol", now=NOW).envelope, now=NOW)) == [
        "hi Carol"
    ]


def test_handshake_signature_forwarded_to_another_responder_refused() -> None:
    """Bob opens Alice's first message and re-seals her signed handshake to
    Carol (unknown key share): the transcript names Bob and his prekeys."""
    bob_store = _store(BOB)
    _, first_bytes = Session.initiate(ALICE, BOB.public, bob_store.bundle(NOW), now=NOW)
    first = hs.FirstMessage.from_bytes(first_bytes)
    assert first.one_time_prekey_id is not None
    # Bob's view: open the HPKE and the body as accept does.
    _, _, pair = bob_store.take_one_time(first.one_time_prekey_id, now=NOW)
    seed = pair.hpke_open(
        first.hpke, info=hs._info(BOB.fingerprint, KIND_ONE_TIME, first.one_time_prekey_id)
    )
    body_key = hkdf_sha256(seed, salt=sha256(first.hpke), info=hs._BODY_INFO, length=32)
    body = wire.decode(hs.BODY, message_open(body_key, first.sealed_body, first.header_bytes()))
    assert PublicIdentity.from_bytes(body["initiator"]).same_key(ALICE.public)

    # Bob re-seals the same seed to Carol's bundle.
    carol_store = _store(CAROL)
    carol_bundle = carol_store.bundle(NOW)
    otk = carol_bundle.one_time_prekey
    assert otk is not None
    hpke = hpke_seal(
        otk.public_key, seed, info=hs._info(CAROL.fingerprint, KIND_ONE_TIME, otk.prekey_id)
    )
    outer = hs.FirstMessage(
        signed_prekey_id=carol_bundle.signed_prekey.prekey_id,
        one_time_prekey_id=otk.prekey_id,
        hpke=hpke,
        sealed_body=b"",
        message=first.message,
    )
    key = hkdf_sha256(seed, salt=sha256(hpke), info=hs._BODY_INFO, length=32)

    def to_carol(**body_fields: object) -> hs.FirstMessage:
        sealed = message_seal(
            key, wire.encode(hs.BODY, {**body, **body_fields}), outer.header_bytes()
        )
        return replace(outer, sealed_body=sealed)

    def transcript_for_carol(initiator: Identity) -> bytes:
        return hs._transcript(
            initiator=initiator.fingerprint,
            responder=CAROL.fingerprint,
            created=body["created"],
            bundle=carol_bundle,
            hpke=hpke,
            first_chain=_first_chain(first.message),
        )

    contact = _contacts(ALICE, BOB)
    before = carol_store.to_bytes()
    # Control: the construction is sound. Bob in his own name is accepted.
    honest = to_carol(
        initiator=BOB.public.to_bytes(),
        signature=BOB.sign(transcript_for_carol(BOB), context=hs.CONTEXT_HANDSHAKE),
    )
    shake, _, _ = hs.accept(
        CAROL,
        carol_store,
        ReplayGuard(),
        honest,
        contact=contact,
        first_chain=_first_chain(first.message),
        now=NOW,
    )
    assert shake.initiator.same_key(BOB.public)
    # Alice's own signature, forwarded: it names Bob and Bob's prekeys.
    for attempt in (to_carol(), to_carol(signature=body["signature"])):
        with pytest.raises(Misaddressed):
            Session.accept(
                CAROL, carol_store, ReplayGuard(), attempt.to_bytes(), contact=contact, now=NOW
            )
    # Bob impersonating Alice: her identity, his signature over the exact
    # transcript Carol checks.
    forged = to_carol(signature=BOB.sign(transcript_for_carol(ALICE), context=hs.CONTEXT_HANDSHAKE))
    with pytest.raises(Misaddressed):
        Session.accept(
            CAROL, carol_store, ReplayGuard(), forged.to_bytes(), contact=contact, now=NOW
        )
    assert carol_store.to_bytes() == before


def test_first_message_cannot_take_another_sessions_conversation_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 2026-12, finding 5. Carol, a pinned contact of Bob, wants her
    first message to claim the conversation id of Bob's session with Alice
    (which made every later receive of Bob's fail). She controls her own
    random number generator, so she makes every 16-byte draw that id, and
    she tries to put the id into the signed handshake body herself. The id
    is derived from the transcript: neither works. (Before the fix the first
    way gave Bob a second session under Alice's id.)"""
    p = _pair(ALICE, BOB)
    target = p.b.conversation
    assert target == p.a.conversation == hs.conversation_id(p.b.transcript_hash)
    real = hs.random_bytes
    monkeypatch.setattr(hs, "random_bytes", lambda n: target if n == len(target) else real(n))
    sc, first = Session.initiate(CAROL, BOB.public, p.store.bundle(NOW), now=NOW)
    monkeypatch.undo()
    sb, _, _, _ = Session.accept(
        BOB, p.store, p.guard, first, contact=_contacts(ALICE, CAROL), now=NOW
    )
    assert sb.conversation != target
    assert sb.conversation == sc.conversation == hs.conversation_id(sb.transcript_hash)
    # A body that names a conversation is not a body: the field does not exist.
    assert "conversation" not in {f.name for f in hs.BODY.fields}
    assert "conversation" not in {f.name for f in hs.TRANSCRIPT.fields}
    # A stored session whose id was swapped for another one does not load.
    rec = wire.decode(session_mod.SESSION, sb.to_bytes(now=NOW))
    swapped = wire.encode(session_mod.SESSION, {**rec, "conversation": target})
    with pytest.raises(MalformedInput):
        Session.from_bytes(BOB, swapped, now=NOW)


def test_message_signed_for_another_conversation_refused() -> None:
    one = _pair(ALICE, BOB, text="conversation one")
    two = _pair(ALICE, BOB, text="conversation two")
    assert one.a.conversation != two.a.conversation
    events = two.b.receive(two.a.send_text("said in two", now=NOW).envelope, now=NOW)
    signed_in_two = events[0].signed
    moved = _inject(one.a, signed_in_two)
    _refused(one.b, moved, WrongConversation)
    assert _texts(one.b.receive(one.a.send_text("in one", now=NOW).envelope, now=NOW)) == ["in one"]


def test_envelope_moved_into_another_conversation_refused() -> None:
    one = _pair(ALICE, BOB)
    two = _pair(ALICE, BOB)
    m = two.a.send_text("for two", now=NOW).envelope
    _refused(one.b, m, DecryptionFailed)
    assert _texts(two.b.receive(m, now=NOW)) == ["for two"]


# --- sequence rollback and equivocation -------------------------------------------


def test_second_payload_with_used_seq_refused() -> None:
    p = _pair()
    ev = p.b.receive(p.a.send_text("the real two", now=NOW).envelope, now=NOW)[0]
    assert ev.seq == 2
    alt = _signed(ALICE, p.a, seq=2, prev_hash=p.first_event.hash, text="a different two")
    replay = _refused(p.b, _inject(p.a, alt), Replay)
    # The refusal hands over the verified equivocating payload, for the record.
    assert isinstance(replay, Replay) and (replay.seq, replay.signed) == (2, alt)
    # A rollback further back, and to seq 0.
    _refused(p.b, _inject(p.a, _signed(ALICE, p.a, seq=1, prev_hash=ZERO_HASH)), Replay)
    err = _refused(
        p.b, _inject(p.a, _signed(ALICE, p.a, seq=0, prev_hash=ZERO_HASH)), MessageRejected
    )
    assert not isinstance(err, DecryptionFailed)


def test_wrong_prev_hash_refused() -> None:
    p = _pair()
    last = p.b.receive(p.a.send_text("two", now=NOW).envelope, now=NOW)[0]
    for prev in (random_bytes(32), ZERO_HASH, p.first_event.hash):
        bad = _signed(ALICE, p.a, seq=3, prev_hash=prev)
        _refused(p.b, _inject(p.a, bad), ChainBroken)
    good = _signed(ALICE, p.a, seq=3, prev_hash=last.hash, text="three")
    assert _texts(p.b.receive(_inject(p.a, good), now=NOW)) == ["three"]


def test_equivocation_against_a_later_message_refused() -> None:
    p = _pair()
    two = p.a.send_text("two", now=NOW).envelope
    three = p.a.send_text("three", now=NOW).envelope
    hash_one = p.first_event.hash
    events = p.b.receive(three, now=NOW)  # two is held back by the relay
    assert MessagesMissing(from_seq=2, to_seq=2) in events
    # Alice (or her stolen key) now tells a different story for seq 2.
    alt_two = _signed(ALICE, p.a, seq=2, prev_hash=hash_one, text="not what I said")
    _refused(p.b, _inject(p.a, alt_two), ChainBroken)
    events = p.b.receive(two, now=NOW)
    assert _texts(events) == ["two"] and OutOfOrder(seq=2) in events
    # A successor that does not follow a message held "ahead".
    p.a.send_text("four", now=NOW)  # withheld by the relay
    p.b.receive(p.a.send_text("five", now=NOW).envelope, now=NOW)  # seq 5 ahead, 4 missing
    bad_six = _signed(ALICE, p.a, seq=6, prev_hash=random_bytes(32))
    _refused(p.b, _inject(p.a, bad_six), ChainBroken)


# --- denial of service before authentication ------------------------------------------


def _quick_refusal(session: Session, message: bytes, expected: type[SecurechanError]) -> None:
    before = session.to_bytes(now=NOW)
    started = time.perf_counter()
    with pytest.raises(expected):
        session.receive(message, now=NOW)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.050, f"took {elapsed * 1000:.1f} ms"
    assert session.to_bytes(now=NOW) == before


def test_huge_counter_refused_quickly() -> None:
    p = _pair()
    m = p.a.send_text("same chain", now=NOW).envelope  # n = 1 in Alice's first chain
    epoch_ct = random_bytes(MLKEM768_CIPHERTEXT_SIZE)
    nr = p.b._st.ratchet.nr
    for n in (10**9, 2**64 - 1, nr + MAX_SKIP + 1):
        _quick_refusal(p.b, _rewrap(m, n=n, epoch_ct=epoch_ct), TooFarAhead)
    # A new chain (unknown DH key) with a huge n or a huge previous-chain length.
    fresh = X25519KeyPair.generate().public
    _quick_refusal(p.b, _rewrap(m, dh=fresh, n=10**9, epoch_ct=epoch_ct), TooFarAhead)
    _quick_refusal(p.b, _rewrap(m, dh=fresh, n=MAX_SKIP + 1, epoch_ct=epoch_ct), TooFarAhead)
    for pn in (10**9, 2**64 - 1, nr + MAX_SKIP + 1):
        _quick_refusal(p.b, _rewrap(m, dh=fresh, pn=pn, n=0, epoch_ct=None), TooFarAhead)
    # pn is meaningless within the current chain: a huge one is just a forgery.
    _quick_refusal(p.b, _rewrap(m, pn=2**64 - 1), DecryptionFailed)
    assert _texts(p.b.receive(m, now=NOW)) == ["same chain"]


def test_skip_bound_is_exact_and_refusal_still_changes_nothing() -> None:
    p = _pair()
    m = p.a.send_text("x", now=NOW).envelope
    nr = p.b._st.ratchet.nr
    # Exactly MAX_SKIP ahead passes the bound; the keys are derived, the AEAD
    # refuses the forgery, and none of the derived keys is kept.
    forged = _rewrap(m, n=nr + MAX_SKIP, epoch_ct=random_bytes(MLKEM768_CIPHERTEXT_SIZE))
    _refused(p.b, forged, DecryptionFailed)
    assert p.b._st.ratchet.skipped == ()
    assert _texts(p.b.receive(m, now=NOW)) == ["x"]


class _SpyX25519(X25519KeyPair):
    refused: list[bytes] = []  # noqa: RUF012 - a test spy

    def exchange(self, peer_public: bytes) -> bytes:
        try:
            return super().exchange(peer_public)
        except VerificationFailed:
            _SpyX25519.refused.append(peer_public)
            raise


LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def test_garbage_ratchet_key_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratchet_mod, "X25519KeyPair", _SpyX25519)
    _SpyX25519.refused.clear()
    p = _pair()
    p.a.receive(p.b.send_text("reply", now=NOW).envelope, now=NOW)
    m = p.a.send_text("new chain", now=NOW).envelope  # pn matches Bob's count: passes the bounds
    for _ in range(3):
        _refused(p.b, _rewrap(m, dh=random_bytes(32)), DecryptionFailed)
    for point in LOW_ORDER_POINTS:
        _refused(p.b, _rewrap(m, dh=point), MalformedInput)
    # The low-order points are refused when the header is parsed (issue 11,
    # "peer keys"), before any X25519; RFC 7748 §6.1's all-zero check in
    # X25519KeyPair.exchange stays as a second line.
    assert _SpyX25519.refused == []
    assert _texts(p.b.receive(m, now=NOW)) == ["new chain"]


# --- downgrade: stripping the post-quantum half ------------------------------------------


def test_kem_fields_altered_or_zeroed_refused() -> None:
    p = _pair()
    p.a.receive(p.b.send_text("reply", now=NOW).envelope, now=NOW)
    m = p.a.send_text("pq", now=NOW).envelope
    header, _ = _parts(m)
    variants = {
        "kem_pub zeroed": {"kem_pub": bytes(MLKEM768_PUBLIC_KEY_SIZE)},
        # altered in rho (any 32 bytes are a valid rho): still a well-formed key
        "kem_pub altered": {"kem_pub": _flip(header.kem_pub, 1160, 1)},
        "kem_pub of a fresh key": {"kem_pub": MlKemKeyPair.generate().public},
        "root_ct zeroed": {"root_ct": bytes(MLKEM768_CIPHERTEXT_SIZE)},
        "root_ct altered": {"root_ct": _flip(header.root_ct, 500, 4)},
    }
    for name, change in variants.items():
        assert isinstance(_refused(p.b, _rewrap(m, **change), DecryptionFailed), MessageRejected), (
            name
        )
    # A key whose first coefficient is q = 3329 fails FIPS 203 §7.2 when the
    # header is parsed (issue 11, "peer keys").
    over = bytes([0x01, (header.kem_pub[1] & 0xF0) | 0x0D]) + header.kem_pub[2:]
    _refused(p.b, _rewrap(m, kem_pub=over), MalformedInput)
    # A header without its KEM fields does not even parse.
    rec = wire.decode(ratchet_mod.HEADER, header.to_bytes())
    for dropped in ("kem_pub", "root_ct"):
        schema = ratchet_mod.HEADER
        stripped_schema = wire.Schema(
            schema.type_id, schema.name, tuple(f for f in schema.fields if f.name != dropped)
        )
        raw = wire.encode(stripped_schema, {k: v for k, v in rec.items() if k != dropped})
        msg = wire.encode(session_mod.MESSAGE, {"header": raw, "ciphertext": _parts(m)[1]})
        _refused(p.b, msg, MalformedInput)
    assert _texts(p.b.receive(m, now=NOW)) == ["pq"]


def test_epoch_ciphertext_stripped_or_altered_refused() -> None:
    p = _pair()
    _burn(p.b, PQ_INTERVAL)
    m = p.b.send_text("epoch 1", now=NOW).envelope
    header, _ = _parts(m)
    assert header.n >= PQ_INTERVAL and header.epoch_ct is not None
    _refused(p.a, _rewrap(m, epoch_ct=None), DecryptionFailed)
    # Stripped and relabelled as epoch 0 (so that it parses): the epoch-0
    # secret does not open it.
    _refused(p.a, _rewrap(m, epoch_ct=None, n=PQ_INTERVAL - 1), DecryptionFailed)
    _refused(p.a, _rewrap(m, epoch_ct=bytes(MLKEM768_CIPHERTEXT_SIZE)), DecryptionFailed)
    _refused(p.a, _rewrap(m, epoch_ct=header.root_ct), DecryptionFailed)
    _refused(p.a, _rewrap(m, epoch_ct=_flip(header.epoch_ct, 7, 1)), DecryptionFailed)
    assert _texts(p.a.receive(m, now=NOW)) == ["epoch 1"]
    # An epoch ciphertext where none belongs is refused as well: in epoch 0,
    # and anywhere on the initiator's first chain (it has no epoch steps).
    p2 = _pair()
    m2 = p2.a.send_text("epoch 0", now=NOW).envelope
    _refused(p2.b, _rewrap(m2, epoch_ct=random_bytes(MLKEM768_CIPHERTEXT_SIZE)), MalformedInput)
    _burn(p2.a, PQ_INTERVAL)
    m3 = p2.a.send_text("first chain, message 52", now=NOW).envelope
    assert _parts(m3)[0].epoch_ct is None
    _refused(p2.b, _rewrap(m3, epoch_ct=random_bytes(MLKEM768_CIPHERTEXT_SIZE)), DecryptionFailed)
    assert _texts(p2.b.receive(m3, now=NOW)) == ["first chain, message 52"]


def _signature_variants(signed: bytes) -> dict[str, bytes]:
    sp = SignedPayload.from_bytes_unverified(signed)
    payload = sp.payload.to_bytes()
    sig = sp.signature

    def raw(signature: bytes) -> bytes:
        # Built by hand: wire.encode refuses a signature of the wrong size.
        parts = [(1, payload), (2, signature)]
        out = bytes([1]) + SIGNED_PAYLOAD.type_id.to_bytes(2, "big")
        for tag, value in parts:
            out += bytes([tag]) + len(value).to_bytes(4, "big") + value
        return out

    return {
        "truncated by one byte": raw(sig[:-1]),
        "ML-DSA half only": raw(sig[:MLDSA65_SIGNATURE_SIZE]),
        "Ed25519 half only": raw(sig[MLDSA65_SIGNATURE_SIZE:]),
        "ML-DSA half zeroed": raw(bytes(MLDSA65_SIGNATURE_SIZE) + sig[MLDSA65_SIGNATURE_SIZE:]),
        "Ed25519 half zeroed": raw(
            sig[:MLDSA65_SIGNATURE_SIZE] + bytes(HYBRID_SIGNATURE_SIZE - MLDSA65_SIGNATURE_SIZE)
        ),
        "no signature field": raw(b"")[:-(5)],
        "all zero": raw(bytes(HYBRID_SIGNATURE_SIZE)),
        "another context": raw(ALICE.sign(payload, context=CONTEXT_PREKEY)),
        "another signer": raw(CAROL.sign(payload, context=CONTEXT_MESSAGE)),
        "wire version 2": bytes([2]) + signed[1:],
    }


def test_stripped_or_truncated_signature_refused() -> None:
    p = _pair()
    signed = _signed(ALICE, p.a, seq=2, prev_hash=p.first_event.hash, text="signed")
    for name, variant in _signature_variants(signed).items():
        err = _refused(p.b, _inject(p.a, variant), MessageRejected)
        # Authenticated by the ratchet, refused by the signature layer.
        assert not isinstance(err, DecryptionFailed), name
    assert _texts(p.b.receive(_inject(p.a, signed), now=NOW)) == ["signed"]


def test_lowered_wire_version_refused() -> None:
    p = _pair()
    m = p.a.send_text("v1", now=NOW).envelope
    for version in (0, 2, 255):
        _refused(p.b, bytes([version]) + m[1:], UnsupportedVersion)
    header, ciphertext = _parts(m)
    raw = bytes([0]) + header.to_bytes()[1:]
    msg = wire.encode(session_mod.MESSAGE, {"header": raw, "ciphertext": ciphertext})
    _refused(p.b, msg, MalformedInput)
    assert _texts(p.b.receive(m, now=NOW)) == ["v1"]


# --- an insider forcing skipped keys ----------------------------------------------------------


def test_insider_sends_1000_delivers_last() -> None:
    p = _pair()
    sent = [p.a.send_text(f"m{i}", now=NOW).envelope for i in range(MAX_SKIP)]
    events = p.b.receive(sent[-1], now=NOW)
    assert MessagesMissing(from_seq=2, to_seq=MAX_SKIP) in events
    skipped = p.b._st.ratchet.skipped
    assert len(skipped) == MAX_SKIP - 1 <= MAX_SKIP
    # Each held-back message is shown once, reported out of order.
    for i, m in enumerate(sent[:-1]):
        events = p.b.receive(m, now=NOW)
        assert _texts(events) == [f"m{i}"]
        assert OutOfOrder(seq=i + 2) in events
    assert p.b._st.ratchet.skipped == ()
    assert p.b.received_through == MAX_SKIP + 1
    _refused(p.b, sent[0], Replay)


def test_skipped_keys_capped_across_chains() -> None:
    p = _pair()
    lengths = []
    for chain in range(3):
        _burn(p.a, MAX_SKIP - 1)
        p.b.receive(p.a.send_text(f"chain {chain}", now=NOW).envelope, now=NOW)
        lengths.append(len(p.b._st.ratchet.skipped))
        assert lengths[-1] <= MAX_SKIPPED
        p.a.receive(p.b.send_text("ack", now=NOW).envelope, now=NOW)
    assert lengths == [MAX_SKIP - 1, 2 * (MAX_SKIP - 1), MAX_SKIPPED]
    assert len(p.b.to_bytes(now=NOW)) < 1 << 20
    # The per-chain bound: a chain that would skip more than MAX_SKIP is refused.
    _burn(p.a, MAX_SKIP + 1)
    _refused(p.b, p.a.send_text("too far", now=NOW).envelope, TooFarAhead)


def test_skipped_keys_expire() -> None:
    p = _pair()
    held = [p.a.send_text(f"held {i}", now=NOW).envelope for i in range(3)]
    p.b.receive(p.a.send_text("delivered", now=NOW).envelope, now=NOW)
    assert len(p.b._st.ratchet.skipped) == 3
    # Within the TTL a later message keeps them, and they still open.
    p.b.receive(p.a.send_text("later", now=NOW).envelope, now=NOW + SKIPPED_TTL)
    assert len(p.b._st.ratchet.skipped) == 3
    assert _texts(p.b.receive(held[0], now=NOW + SKIPPED_TTL)) == ["held 0"]
    # Past the TTL the next message prunes them; the held ones are refused.
    p.b.receive(p.a.send_text("much later", now=NOW).envelope, now=NOW + SKIPPED_TTL + 1)
    assert p.b._st.ratchet.skipped == ()
    _refused(p.b, held[1], Replay, now=NOW + SKIPPED_TTL + 1)


def test_skipped_key_expires_without_later_traffic() -> None:
    p = _pair()
    held = p.a.send_text("held", now=NOW).envelope
    p.b.receive(p.a.send_text("delivered", now=NOW).envelope, now=NOW)
    assert len(p.b._st.ratchet.skipped) == 1
    # Nothing else arrives; the held message turns up after the TTL. Its key
    # is older than SKIPPED_TTL and must not be used.
    _refused(p.b, held, MessageRejected, now=NOW + SKIPPED_TTL + 1)


# --- fuzz ------------------------------------------------------------------------


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    flip = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
        lambda t: _flip(valid, *t)
    )
    cut = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    insert = st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=8)).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] :]
    )
    return st.one_of(st.binary(max_size=2000), flip, cut, insert)


def test_fuzz_session_receive() -> None:
    p = _pair()
    p.a.receive(p.b.send_text("reply", now=NOW).envelope, now=NOW)
    valid = p.a.send_text("fuzzed", now=NOW).envelope
    before = p.b.to_bytes(now=NOW)

    @given(_mutations(valid))
    @FUZZ
    def run(data: bytes) -> None:
        if data == valid:
            return
        with pytest.raises(RECEIVE_ERRORS):
            p.b.receive(data, now=NOW)
        assert p.b.to_bytes(now=NOW) == before

    run()
    assert _texts(p.b.receive(valid, now=NOW)) == ["fuzzed"]


def test_fuzz_session_accept() -> None:
    store = _store(BOB)
    guard = ReplayGuard()
    _, valid = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW)
    before = store.to_bytes()

    @given(_mutations(valid))
    @FUZZ
    def run(data: bytes) -> None:
        if data == valid:
            return
        with pytest.raises(ACCEPT_ERRORS):
            Session.accept(BOB, store, guard, data, contact=_contacts(ALICE), now=NOW)
        assert store.to_bytes() == before
        assert guard.seen == ()

    run()


def _decoder_fuzz(
    decode: Callable[[bytes], object], encode: Callable[[object], bytes], valid: bytes
) -> None:
    @given(_mutations(valid))
    @FUZZ
    def run(data: bytes) -> None:
        try:
            value = decode(data)
        except SecurechanError:
            return
        # Accepted: then it is the one canonical encoding of what it decoded to.
        assert encode(value) == data

    run()


def test_fuzz_first_message_decoder() -> None:
    _, valid = Session.initiate(ALICE, BOB.public, _store(BOB).bundle(NOW), now=NOW)
    _decoder_fuzz(hs.FirstMessage.from_bytes, lambda v: v.to_bytes(), valid)  # type: ignore[attr-defined]

    @given(st.binary(max_size=3000))
    @FUZZ
    def only_malformed(data: bytes) -> None:
        with pytest.raises(MalformedInput):
            hs.FirstMessage.from_bytes(data)

    only_malformed()


def test_fuzz_ratchet_header_decoder() -> None:
    p = _pair()
    _burn(p.a, PQ_INTERVAL)
    valid = _parts(p.a.send_text("x", now=NOW).envelope)[0].to_bytes()

    def encode(h: object) -> bytes:
        assert isinstance(h, RatchetHeader)
        return replace(h, raw=None).to_bytes()

    _decoder_fuzz(RatchetHeader.from_bytes, encode, valid)

    @given(st.binary(max_size=3000))
    @FUZZ
    def only_malformed(data: bytes) -> None:
        with pytest.raises(MalformedInput):
            RatchetHeader.from_bytes(data)

    only_malformed()


def test_fuzz_session_from_bytes() -> None:
    p = _pair()
    p.b.receive(p.a.send_text("x", now=NOW).envelope, now=NOW)
    valid = p.b.to_bytes(now=NOW)
    assert Session.from_bytes(BOB, valid, now=NOW).to_bytes(now=NOW) == valid
    with pytest.raises(MalformedInput):
        Session.from_bytes(CAROL, valid, now=NOW)  # another identity's session
    _decoder_fuzz(
        lambda d: Session.from_bytes(BOB, d, now=NOW),
        lambda s: s.to_bytes(now=NOW),  # type: ignore[attr-defined]
        valid,
    )


def test_fuzz_prekey_store_from_bytes() -> None:
    valid = _store(BOB, one_time=1).to_bytes()
    _decoder_fuzz(PrekeyStore.from_bytes, lambda s: s.to_bytes(), valid)  # type: ignore[attr-defined]


# --- a sender restored from a backup that received since ------------------------------------


def test_restored_sender_on_a_new_chain_is_opened_and_reported_with_its_payload() -> None:
    """The restored sender receives a reply first, so its next message is on a
    new ratchet chain with a previous-chain length below what Bob received.
    Bob opens it (Signal's DHRatchet skips only up to pn) and the signed
    sequence number, already used, raises Replay carrying the verified payload
    the client compares with the one it kept; nothing in Bob's state moves.
    (Before: DecryptionFailed before decrypting, with no evidence.)"""
    p = _pair()
    p.a.receive(p.b.send_text("reply", now=NOW).envelope, now=NOW)
    p.b.receive(p.a.send_text("one", now=NOW).envelope, now=NOW)
    backup = p.a.to_bytes(now=NOW)
    two = p.a.send_text("two", now=NOW).envelope
    assert _texts(p.b.receive(two, now=NOW)) == ["two"]
    answer = p.b.send_text("answer", now=NOW).envelope
    restored = Session.from_bytes(ALICE, backup, now=NOW)
    assert _texts(restored.receive(answer, now=NOW)) == ["answer"]
    rewritten = restored.send_text("rewritten two", now=NOW).envelope
    header, _ = _parts(rewritten)
    # A new chain whose previous-chain length went backwards (1 < 2).
    assert header.dh != p.b._st.ratchet.dh_remote
    assert header.pn < p.b._st.ratchet.nr
    error = _refused(p.b, rewritten, Replay)
    assert isinstance(error, Replay)
    # The verified evidence: "two"'s sequence number, signed with other content.
    assert error.seq == p.a.sent_count
    assert error.signed is not None and b"rewritten two" in error.signed
