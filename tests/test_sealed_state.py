"""Protocol state at rest (securechan.protocol.sealed): encrypted, bound, rollback-checked."""

from __future__ import annotations

import pytest

from securechan.errors import MalformedInput, MessageRejected, RolledBack, VerificationFailed
from securechan.protocol import PrekeyStore, ReplayGuard, Session
from securechan.protocol.sealed import open_state, seal_state
from tests.conftest import NOW, fixed_identity


@pytest.fixture(scope="module")
def pair() -> tuple[Session, Session]:
    a, b = fixed_identity("tehran"), fixed_identity("washington")
    store = PrekeyStore.new(b).rotate(b, now=NOW).add_one_time(b, 1, now=NOW)
    sa, first = Session.initiate(a, b.public, store.bundle(NOW), now=NOW, text="hi")
    sb, *_ = Session.accept(
        b, store, ReplayGuard(), first, contact={a.fingerprint: a.public}.get, now=NOW
    )
    return sa, sb


def test_storage_key_is_stable_and_per_identity() -> None:
    a = fixed_identity("tehran")
    assert a.storage_key() == fixed_identity("tehran").storage_key()
    assert a.storage_key() != fixed_identity("washington").storage_key()
    assert len(a.storage_key()) == 32
    seeds = a._key.seed_bytes_secret()
    assert a.storage_key() not in seeds


def test_round_trip_and_session_restores(pair: tuple[Session, Session]) -> None:
    sa, _ = pair
    a = fixed_identity("tehran")
    key = a.storage_key()
    blob = seal_state(
        key,
        sa.to_bytes(now=NOW),
        kind="session",
        object_id=sa.conversation,
        generation=sa.generation,
    )
    gen, data = open_state(
        key, blob, kind="session", object_id=sa.conversation, min_generation=sa.generation
    )
    assert gen == sa.generation
    assert Session.from_bytes(a, data, now=NOW).to_bytes(now=NOW) == sa.to_bytes(now=NOW)
    # The state's secrets never appear in the sealed blob.
    assert sa.to_bytes(now=NOW)[:64] not in blob


def test_bound_to_key_kind_object_and_content(pair: tuple[Session, Session]) -> None:
    sa, _ = pair
    key = fixed_identity("tehran").storage_key()
    blob = seal_state(
        key, sa.to_bytes(now=NOW), kind="session", object_id=sa.conversation, generation=3
    )
    with pytest.raises(VerificationFailed):
        open_state(
            fixed_identity("washington").storage_key(),
            blob,
            kind="session",
            object_id=sa.conversation,
        )
    with pytest.raises(VerificationFailed):
        open_state(key, blob, kind="prekeys", object_id=sa.conversation)
    with pytest.raises(VerificationFailed):
        open_state(key, blob, kind="session", object_id=bytes(16))
    for i in range(0, len(blob), max(1, len(blob) // 200)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises((VerificationFailed, MalformedInput)):
            open_state(key, bytes(bad), kind="session", object_id=sa.conversation)
    with pytest.raises(MalformedInput):
        open_state(key, blob + b"\x00", kind="session", object_id=sa.conversation)


def test_rollback_is_detected(pair: tuple[Session, Session]) -> None:
    sa, _ = pair
    key = fixed_identity("tehran").storage_key()
    old_gen = sa.generation
    old = seal_state(
        key, sa.to_bytes(now=NOW), kind="session", object_id=sa.conversation, generation=old_gen
    )
    sa.send_text("a message that advances the state", now=NOW)
    assert sa.generation == old_gen + 1
    new = seal_state(
        key,
        sa.to_bytes(now=NOW),
        kind="session",
        object_id=sa.conversation,
        generation=sa.generation,
    )
    assert (
        open_state(
            key, new, kind="session", object_id=sa.conversation, min_generation=sa.generation
        )[0]
        == sa.generation
    )
    with pytest.raises(RolledBack, match="rollback"):
        open_state(
            key, old, kind="session", object_id=sa.conversation, min_generation=sa.generation
        )


def test_rolled_back_sender_is_caught_by_the_peer(pair: tuple[Session, Session]) -> None:
    """Without the local check, a restored old state re-uses a ratchet position;
    the peer refuses what it makes, so nothing is shown twice or silently replaced."""
    sa, sb = pair
    a = fixed_identity("tehran")
    snapshot = sa.to_bytes(now=NOW)
    first = sa.send_text("original", now=NOW).envelope
    events = sb.receive(first, now=NOW)
    assert events[0].content == "original"
    cloned = Session.from_bytes(a, snapshot, now=NOW)
    forked = cloned.send_text("rewritten", now=NOW).envelope
    before = sb.to_bytes(now=NOW)
    with pytest.raises(MessageRejected):
        sb.receive(forked, now=NOW)
    assert sb.to_bytes(now=NOW) == before


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        seal_state(bytes(32), b"x", kind="other", object_id=b"", generation=0)
