"""Prekeys (securechan.protocol.prekeys): the store, bundles and their checks.

The relay serves bundles, so every check here is one the initiator relies on
against a relay that substitutes, replays or forges them: a bundle is good
only if each record is signed by the pinned owner, for prekeys, with the
right kind, and is valid now. The store is an immutable value; every refusal
leaves it byte-for-byte as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.errors import (
    BundleRejected,
    MalformedInput,
    SecurechanError,
    UnknownPrekey,
)
from securechan.identity import Identity
from securechan.primitives import (
    HYBRID_SIGNATURE_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    HybridKemKeyPair,
    random_bytes,
)
from securechan.protocol import Prekey, PrekeyBundle, PrekeyStore, ReplayGuard, Session
from securechan.protocol.payload import CONTEXT_MESSAGE
from securechan.protocol.prekeys import (
    CONTEXT_PREKEY,
    GRACE_SECONDS,
    KIND_ONE_TIME,
    KIND_SIGNED,
    MAX_ONE_TIME,
    ONE_TIME_PREKEY_LIFETIME,
    SIGNED_PREKEY_LIFETIME,
)
from tests.conftest import NOW, fixed_identity

ALICE = fixed_identity("alice")
BOB = fixed_identity("bob")
CAROL = fixed_identity("carol")
RELAY = fixed_identity("relay")

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _store(owner: Identity = BOB, *, now: int = NOW, one_time: int = 3) -> PrekeyStore:
    return PrekeyStore.new(owner).rotate(owner, now=now).add_one_time(owner, one_time, now=now)


BOB_STORE = _store()


def _contacts(*ids: Identity) -> Callable[..., object]:
    table = {i.fingerprint: i.public for i in ids}
    return table.get


def _mutate(data: bytes, pos: int, xor: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1 :]


# --- the store ---------------------------------------------------------------


def test_rotate_makes_a_signed_prekey_of_the_owner() -> None:
    store = PrekeyStore.new(BOB)
    assert store.signed == ()
    with pytest.raises(UnknownPrekey):
        store.current_signed(NOW)
    rotated = store.rotate(BOB, now=NOW)
    spk = rotated.current_signed(NOW)
    assert spk.owner == BOB.fingerprint
    assert spk.kind == KIND_SIGNED
    assert spk.created == NOW
    assert spk.expires == NOW + SIGNED_PREKEY_LIFETIME
    spk.verify(BOB.public, kind=KIND_SIGNED, now=NOW)
    # The old value is untouched (immutable store).
    assert store.signed == ()
    again = rotated.rotate(BOB, now=NOW + 10)
    assert again.current_signed(NOW + 10).prekey_id != spk.prekey_id
    assert again.current_signed(NOW + 10).public_key != spk.public_key
    assert len(again.signed) == 2


def test_add_one_time_and_bundle() -> None:
    store = _store(one_time=3)
    records = store.one_time_records()
    assert len(records) == 3
    ids = [r.prekey_id for r in records] + [store.current_signed(NOW).prekey_id]
    assert len(set(ids)) == 4, "prekey ids are unique within a store"
    for r in records:
        assert r.kind == KIND_ONE_TIME
        assert r.expires == NOW + ONE_TIME_PREKEY_LIFETIME
        r.verify(BOB.public, kind=KIND_ONE_TIME, now=NOW)
    bundle = store.bundle(NOW)
    assert bundle.signed_prekey == store.current_signed(NOW)
    assert bundle.one_time_prekey == records[0]
    bundle.verify(BOB.public, now=NOW)
    assert store.bundle(NOW, with_one_time=False).one_time_prekey is None
    assert PrekeyStore.new(BOB).rotate(BOB, now=NOW).bundle(NOW).one_time_prekey is None
    assert PrekeyBundle.from_bytes(bundle.to_bytes()) == bundle


def test_store_misuse_is_value_error() -> None:
    store = PrekeyStore.new(BOB)
    with pytest.raises(ValueError, match="another identity"):
        store.rotate(ALICE, now=NOW)
    with pytest.raises(ValueError, match="another identity"):
        store.add_one_time(ALICE, 1, now=NOW)
    with pytest.raises(ValueError, match="at most"):
        store.add_one_time(BOB, -1, now=NOW)
    with pytest.raises(ValueError, match="at most"):
        store.add_one_time(BOB, MAX_ONE_TIME + 1, now=NOW)


def test_take_one_time_is_usable_once() -> None:
    store = _store(one_time=2)
    before = store.to_bytes()
    first_id = store.one_time[0].record.prekey_id
    new_store, record, pair = store.take_one_time(first_id, now=NOW)
    assert record.prekey_id == first_id
    assert pair.public == record.public_key
    assert [r.prekey_id for r in new_store.one_time_records()] == [
        store.one_time[1].record.prekey_id
    ]
    assert store.to_bytes() == before  # taking returns a new store
    after = new_store.to_bytes()
    with pytest.raises(UnknownPrekey):
        new_store.take_one_time(first_id, now=NOW)
    assert new_store.to_bytes() == after
    # A signed prekey id is not a one-time id.
    with pytest.raises(UnknownPrekey):
        store.take_one_time(store.current_signed(NOW).prekey_id, now=NOW)
    with pytest.raises(UnknownPrekey):
        store.take_one_time(10**9, now=NOW)
    assert store.to_bytes() == before


def test_expired_one_time_key_is_refused() -> None:
    store = _store(one_time=1)
    before = store.to_bytes()
    otk = store.one_time[0].record
    store.take_one_time(otk.prekey_id, now=otk.expires)  # the last valid second
    with pytest.raises(UnknownPrekey):
        store.take_one_time(otk.prekey_id, now=otk.expires + 1)
    assert store.to_bytes() == before


def test_signed_prekey_kept_for_grace_period_then_gone() -> None:
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)
    spk = store.current_signed(NOW)
    expires = spk.expires
    assert store.current_signed(expires) == spk
    # Past expiry it is no longer offered...
    with pytest.raises(UnknownPrekey):
        store.current_signed(expires + 1)
    # ...but still opens first messages already in flight, until expiry + grace.
    for t in (expires + 1, expires + GRACE_SECONDS):
        record, pair = store.signed_key(spk.prekey_id, now=t)
        assert record == spk
        assert pair.public == spk.public_key
    before = store.to_bytes()
    with pytest.raises(UnknownPrekey):
        store.signed_key(spk.prekey_id, now=expires + GRACE_SECONDS + 1)
    assert store.to_bytes() == before
    # Rotation keeps it through the grace period and drops it afterwards.
    kept = store.rotate(BOB, now=expires + GRACE_SECONDS)
    assert spk in [k.record for k in kept.signed]
    dropped = store.rotate(BOB, now=expires + GRACE_SECONDS + 1)
    assert spk not in [k.record for k in dropped.signed]
    assert len(dropped.signed) == 1


def test_first_message_opens_during_grace_and_not_after() -> None:
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)
    spk = store.current_signed(NOW)
    _, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="late")
    # Bob rotates on schedule; the message was delayed by the relay.
    later = store.rotate(BOB, now=spk.expires)
    guard = ReplayGuard()
    contact = _contacts(ALICE)
    _, _, _, events = Session.accept(
        BOB, later, guard, first, contact=contact, now=spk.expires + GRACE_SECONDS
    )
    assert events[0].content == "late"
    too_late = spk.expires + GRACE_SECONDS + 1
    before = later.to_bytes()
    with pytest.raises(UnknownPrekey):
        Session.accept(BOB, later, guard, first, contact=contact, now=too_late)
    assert later.to_bytes() == before
    assert guard.seen == ()


def test_store_round_trip() -> None:
    store = _store(one_time=2).rotate(BOB, now=NOW + 100)
    blob = store.to_bytes()
    restored = PrekeyStore.from_bytes(blob)
    assert restored == store
    assert restored.to_bytes() == blob
    # The restored secrets open a first message made to the original bundle.
    _, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW + 100), now=NOW + 100)
    _, new_store, _, _ = Session.accept(
        BOB, restored, ReplayGuard(), first, contact=_contacts(ALICE), now=NOW + 100
    )
    assert len(new_store.one_time) == 1


def test_store_of_another_identity_cannot_be_loaded_as_ours() -> None:
    # The store names its owner; a loaded store keeps it, so a swapped file
    # cannot pass as Bob's (the session layer compares owners).
    carol_store = PrekeyStore.from_bytes(_store(CAROL, one_time=0).to_bytes())
    assert carol_store.owner == CAROL.fingerprint != BOB.fingerprint
    with pytest.raises(ValueError, match="another identity"):
        carol_store.rotate(BOB, now=NOW)


# --- bundle verification ------------------------------------------------------


def _forge(record: Prekey, signer: Identity, **changes: object) -> Prekey:
    """``record`` with ``changes``, signed (for prekeys) by ``signer``."""
    unsigned = replace(record, **changes, signature=b"")  # type: ignore[arg-type]
    return replace(unsigned, signature=signer.sign(unsigned.body_bytes(), context=CONTEXT_PREKEY))


SPK = BOB_STORE.current_signed(NOW)
OTK = BOB_STORE.one_time_records()[0]
RELAY_KEY = HybridKemKeyPair.generate().public
_OTHER_STORE = _store(CAROL, one_time=1)


def _bad_bundles() -> dict[str, PrekeyBundle]:
    sig = SPK.signature
    ed_only = bytes(MLDSA65_SIGNATURE_SIZE) + sig[MLDSA65_SIGNATURE_SIZE:]
    ml_only = sig[:MLDSA65_SIGNATURE_SIZE] + bytes(HYBRID_SIGNATURE_SIZE - MLDSA65_SIGNATURE_SIZE)
    relay_store = _store(RELAY, one_time=1)
    return {
        "unsigned (zero signature)": PrekeyBundle(
            signed_prekey=replace(SPK, signature=bytes(HYBRID_SIGNATURE_SIZE))
        ),
        "empty signature": PrekeyBundle(signed_prekey=replace(SPK, signature=b"")),
        "garbage signature": PrekeyBundle(
            signed_prekey=replace(SPK, signature=random_bytes(HYBRID_SIGNATURE_SIZE))
        ),
        "Ed25519 half only": PrekeyBundle(signed_prekey=replace(SPK, signature=ed_only)),
        "ML-DSA half only": PrekeyBundle(signed_prekey=replace(SPK, signature=ml_only)),
        "key substituted after signing": PrekeyBundle(
            signed_prekey=replace(SPK, public_key=RELAY_KEY)
        ),
        "expiry extended after signing": PrekeyBundle(
            signed_prekey=replace(SPK, expires=SPK.expires + 10**6)
        ),
        "signed by the relay in Bob's name": PrekeyBundle(
            signed_prekey=_forge(SPK, RELAY, public_key=RELAY_KEY)
        ),
        "the relay's own bundle": relay_store.bundle(NOW),
        "another user's genuine bundle": _OTHER_STORE.bundle(NOW),
        "foreign one-time key with Bob's signed key": PrekeyBundle(
            signed_prekey=SPK, one_time_prekey=_OTHER_STORE.one_time_records()[0]
        ),
        "one-time key signed by the relay": PrekeyBundle(
            signed_prekey=SPK, one_time_prekey=_forge(OTK, RELAY, public_key=RELAY_KEY)
        ),
        "one-time key presented as the signed key": PrekeyBundle(signed_prekey=OTK),
        "signed key presented as a one-time key": PrekeyBundle(
            signed_prekey=SPK, one_time_prekey=SPK
        ),
        "Bob's signature under another context": PrekeyBundle(
            signed_prekey=replace(
                SPK, signature=BOB.sign(SPK.body_bytes(), context=CONTEXT_MESSAGE)
            )
        ),
        "signed key re-signed with the wrong kind": PrekeyBundle(
            signed_prekey=_forge(SPK, BOB, kind=KIND_ONE_TIME)
        ),
    }


BAD_BUNDLES = _bad_bundles()


@pytest.mark.parametrize("name", sorted(BAD_BUNDLES))
def test_bundle_verify_refuses(name: str) -> None:
    bundle = BAD_BUNDLES[name]
    before = BOB_STORE.to_bytes()
    with pytest.raises(BundleRejected):
        bundle.verify(BOB.public, now=NOW)
    # The initiator refuses it too, before making anything.
    with pytest.raises(BundleRejected):
        Session.initiate(ALICE, BOB.public, bundle, now=NOW)
    assert BOB_STORE.to_bytes() == before


def test_bundle_verify_time_window() -> None:
    bundle = BOB_STORE.bundle(NOW)
    bundle.verify(BOB.public, now=NOW)
    bundle.verify(BOB.public, now=SPK.expires)  # last valid second
    with pytest.raises(BundleRejected):
        bundle.verify(BOB.public, now=SPK.expires + 1)
    # Five minutes of clock skew are allowed, no more.
    bundle.verify(BOB.public, now=NOW - 300)
    with pytest.raises(BundleRejected):
        bundle.verify(BOB.public, now=NOW - 301)


def test_bundle_from_the_future_refused() -> None:
    future = _store(now=NOW + 3600, one_time=0).bundle(NOW + 3600)
    with pytest.raises(BundleRejected):
        future.verify(BOB.public, now=NOW)
    with pytest.raises(BundleRejected):
        Session.initiate(ALICE, BOB.public, future, now=NOW)
    future.verify(BOB.public, now=NOW + 3600)


def test_expired_one_time_key_in_bundle_refused() -> None:
    # A relay that hoards one-time keys and serves a stale one.
    t = OTK.expires + 1
    fresh_spk = BOB_STORE.rotate(BOB, now=t).current_signed(t)
    stale = PrekeyBundle(signed_prekey=fresh_spk, one_time_prekey=OTK)
    with pytest.raises(BundleRejected):
        stale.verify(BOB.public, now=t)
    PrekeyBundle(signed_prekey=fresh_spk).verify(BOB.public, now=t)


# --- decoders -----------------------------------------------------------------


@given(st.binary(max_size=4000))
@FUZZ
def test_prekey_decoders_random_bytes_only_malformed(data: bytes) -> None:
    for decoder in (Prekey.from_bytes, PrekeyBundle.from_bytes, PrekeyStore.from_bytes):
        try:
            decoder(data)
        except MalformedInput:
            continue
        except SecurechanError as e:  # pragma: no cover - a failure report
            pytest.fail(f"{decoder.__qualname__} raised {type(e).__name__}")
        pytest.fail(f"{decoder.__qualname__} accepted random bytes")  # pragma: no cover


def _header_prefixed(type_id: int) -> st.SearchStrategy[bytes]:
    # Random bodies behind a valid record header, to get past the first check.
    return st.binary(max_size=3000).map(lambda b: bytes([1]) + type_id.to_bytes(2, "big") + b)


@given(st.one_of(_header_prefixed(0x0041), _header_prefixed(0x0042), _header_prefixed(0x0044)))
@FUZZ
def test_prekey_decoders_random_records_only_malformed(data: bytes) -> None:
    for decoder in (Prekey.from_bytes, PrekeyBundle.from_bytes, PrekeyStore.from_bytes):
        try:
            decoder(data)
        except MalformedInput:
            continue
        except SecurechanError as e:  # pragma: no cover - a failure report
            pytest.fail(f"{decoder.__qualname__} raised {type(e).__name__}")
        # An empty store body (no fields) is not valid either: fields are required.
        pytest.fail(f"{decoder.__qualname__} accepted {data[:16].hex()}")  # pragma: no cover


BUNDLE_BYTES = BOB_STORE.bundle(NOW).to_bytes()


@given(st.data())
@FUZZ
def test_bundle_single_byte_change_never_verifies(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(BUNDLE_BYTES) - 1))
    xor = data.draw(st.integers(1, 255))
    bad = _mutate(BUNDLE_BYTES, pos, xor)
    try:
        bundle = PrekeyBundle.from_bytes(bad)
    except (MalformedInput, BundleRejected):  # BundleRejected: an invalid key at parse time
        return
    with pytest.raises(BundleRejected):
        bundle.verify(BOB.public, now=NOW)


STORE_BYTES = _store(one_time=1).to_bytes()


@given(st.data())
@FUZZ
def test_store_decoder_single_byte_change(data: st.DataObject) -> None:
    # The store is secret and stored encrypted, so only parsing is at stake:
    # a change is refused with MalformedInput or decodes to a different store.
    pos = data.draw(st.integers(0, len(STORE_BYTES) - 1))
    xor = data.draw(st.integers(1, 255))
    bad = _mutate(STORE_BYTES, pos, xor)
    try:
        store = PrekeyStore.from_bytes(bad)
    except (MalformedInput, BundleRejected):  # BundleRejected: a key fails validation
        return
    assert store.to_bytes() == bad  # canonical: one encoding per store
