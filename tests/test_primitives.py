"""Composite signatures, AEAD and Argon2id bounds (securechan.primitives)."""

from __future__ import annotations

import pytest

from securechan.errors import BadSignature, MalformedInput, VerificationFailed
from securechan.primitives import (
    ED25519_SIGNATURE_SIZE,
    HYBRID_PUBLIC_KEY_SIZE,
    HYBRID_SIGNATURE_SIZE,
    MLDSA65_PUBLIC_KEY_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    HybridSigningKey,
    HybridVerifyKey,
    KdfParams,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    constant_time_equal,
    sha512,
)

CTX = b"securechan/v1/test"
MSG = b"The delegations agree to meet on the 14th."


@pytest.fixture(scope="module")
def key() -> HybridSigningKey:
    return HybridSigningKey(bytes(range(32)), bytes(range(32, 64)))


@pytest.fixture(scope="module")
def sig(key: HybridSigningKey) -> bytes:
    return key.sign(MSG, context=CTX)


def test_sizes_and_roundtrip(key: HybridSigningKey, sig: bytes) -> None:
    assert len(sig) == HYBRID_SIGNATURE_SIZE == MLDSA65_SIGNATURE_SIZE + ED25519_SIGNATURE_SIZE
    assert len(bytes(key.public_key)) == HYBRID_PUBLIC_KEY_SIZE
    key.public_key.verify(sig, MSG, context=CTX)
    key.public_key.verify_prehashed(sig, sha512(MSG), context=CTX)


def test_keys_are_deterministic_from_seeds(key: HybridSigningKey) -> None:
    again = HybridSigningKey(bytes(range(32)), bytes(range(32, 64)))
    assert again.public_key == key.public_key
    other = HybridSigningKey(bytes(range(32)), bytes(range(1, 33)))
    assert other.public_key != key.public_key
    # The Ed25519 halves agree, the ML-DSA halves do not: equality is over both.
    assert other.public_key.ed25519_bytes == key.public_key.ed25519_bytes


def test_every_single_byte_change_of_the_signature_is_refused(
    key: HybridSigningKey, sig: bytes
) -> None:
    # Covers both halves: positions < 3309 are ML-DSA-65, the rest Ed25519.
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        with pytest.raises(BadSignature):
            key.public_key.verify(bytes(bad), MSG, context=CTX)


def test_every_single_byte_change_of_the_message_is_refused(
    key: HybridSigningKey, sig: bytes
) -> None:
    for i in range(len(MSG)):
        bad = bytearray(MSG)
        bad[i] ^= 0x80
        with pytest.raises(BadSignature):
            key.public_key.verify(sig, bytes(bad), context=CTX)


def test_every_single_byte_change_of_the_public_key_is_refused(
    key: HybridSigningKey, sig: bytes
) -> None:
    raw = bytes(key.public_key)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x04
        try:
            changed = HybridVerifyKey(bytes(bad))
        except MalformedInput:
            continue  # refused before any verification: also fine
        with pytest.raises(BadSignature):
            changed.verify(sig, MSG, context=CTX)


def test_each_half_alone_is_not_enough(key: HybridSigningKey, sig: bytes) -> None:
    other = key.sign(b"another message", context=CTX)
    mldsa_ok_ed_wrong = sig[:MLDSA65_SIGNATURE_SIZE] + other[MLDSA65_SIGNATURE_SIZE:]
    ed_ok_mldsa_wrong = other[:MLDSA65_SIGNATURE_SIZE] + sig[MLDSA65_SIGNATURE_SIZE:]
    for spliced in (mldsa_ok_ed_wrong, ed_ok_mldsa_wrong):
        with pytest.raises(BadSignature):
            key.public_key.verify(spliced, MSG, context=CTX)
    # Stripping the post-quantum half (a downgrade) leaves a wrong length.
    with pytest.raises(BadSignature):
        key.public_key.verify(sig[MLDSA65_SIGNATURE_SIZE:], MSG, context=CTX)
    with pytest.raises(BadSignature):
        key.public_key.verify(sig[:MLDSA65_SIGNATURE_SIZE], MSG, context=CTX)
    # Zeroing either half.
    with pytest.raises(BadSignature):
        key.public_key.verify(
            bytes(MLDSA65_SIGNATURE_SIZE) + sig[MLDSA65_SIGNATURE_SIZE:], MSG, context=CTX
        )
    with pytest.raises(BadSignature):
        key.public_key.verify(sig[:MLDSA65_SIGNATURE_SIZE] + bytes(64), MSG, context=CTX)


def test_a_half_from_another_key_is_refused(key: HybridSigningKey) -> None:
    other = HybridSigningKey(bytes(32), bytes(32))
    s1 = key.sign(MSG, context=CTX)
    s2 = other.sign(MSG, context=CTX)
    with pytest.raises(BadSignature):
        key.public_key.verify(
            s1[:MLDSA65_SIGNATURE_SIZE] + s2[MLDSA65_SIGNATURE_SIZE:], MSG, context=CTX
        )
    with pytest.raises(BadSignature):
        key.public_key.verify(
            s2[:MLDSA65_SIGNATURE_SIZE] + s1[MLDSA65_SIGNATURE_SIZE:], MSG, context=CTX
        )


def test_context_separates_purposes(key: HybridSigningKey, sig: bytes) -> None:
    with pytest.raises(BadSignature):
        key.public_key.verify(sig, MSG, context=b"securechan/v1/document")
    with pytest.raises(BadSignature):
        key.public_key.verify(sig, MSG, context=CTX + b"x")
    with pytest.raises(ValueError, match="context"):
        key.sign(MSG, context=b"x" * 256)
    # The draft allows an empty context; it is still separate from any label.
    empty = key.sign(MSG, context=b"")
    key.public_key.verify(empty, MSG, context=b"")
    with pytest.raises(BadSignature):
        key.public_key.verify(empty, MSG, context=CTX)


def test_public_key_parsing_is_strict() -> None:
    for n in (0, HYBRID_PUBLIC_KEY_SIZE - 1, HYBRID_PUBLIC_KEY_SIZE + 1):
        with pytest.raises(MalformedInput):
            HybridVerifyKey(bytes(n))
    with pytest.raises(TypeError):
        HybridVerifyKey("x" * HYBRID_PUBLIC_KEY_SIZE)  # type: ignore[arg-type]
    assert MLDSA65_PUBLIC_KEY_SIZE + 32 == HYBRID_PUBLIC_KEY_SIZE


def test_signing_key_repr_hides_the_secret(key: HybridSigningKey) -> None:
    assert bytes(range(32)).hex() not in repr(key)
    assert "secret" in repr(key)


def test_aead_roundtrip_and_tamper() -> None:
    k = bytes(range(32))
    sealed = aead_encrypt(k, b"secret seeds", b"header")
    assert aead_decrypt(k, sealed, b"header") == b"secret seeds"
    assert aead_encrypt(k, b"secret seeds", b"header") != sealed  # fresh nonce each time
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(VerificationFailed):
            aead_decrypt(k, bytes(bad), b"header")
    with pytest.raises(VerificationFailed):
        aead_decrypt(k, sealed, b"headeR")
    with pytest.raises(VerificationFailed):
        aead_decrypt(bytes(32), sealed, b"header")
    with pytest.raises(VerificationFailed):
        aead_decrypt(k, sealed[:20], b"header")


def test_argon2id_bounds() -> None:
    salt = bytes(16)
    low = KdfParams(opslimit=2, memlimit=32 * 1024 * 1024)
    with pytest.raises(ValueError, match="64 MiB"):
        argon2id(b"pw", salt, low)
    with pytest.raises(ValueError, match="passes"):
        KdfParams(opslimit=1, memlimit=64 * 1024 * 1024).check()
    with pytest.raises(ValueError, match="64 MiB"):
        KdfParams(opslimit=3, memlimit=8 * 1024**3).check()
    ok = KdfParams(opslimit=2, memlimit=64 * 1024 * 1024)
    a = argon2id(b"pw", salt, ok)
    assert len(a) == 32
    assert a == argon2id(b"pw", salt, ok)
    assert a != argon2id(b"pw2", salt, ok)
    assert a != argon2id(b"pw", bytes([1]) * 16, ok)


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"abcd")
