"""Every cryptographic primitive securechan uses, and the only module that
imports ``cryptography`` or ``nacl`` (a test enforces this).

Nothing here is invented. The module composes:

* **Ed25519** (RFC 8032) from libsodium via PyNaCl. libsodium's verifier is
  strict (it refuses non-canonical encodings and small-order points, as RFC
  8032 §5.1.7 allows), and measured faster than OpenSSL's here: 1.7x for
  signing, 2.0x for verifying (``bench/bench_signatures.py``).
* **ML-DSA-65** (FIPS 204) from ``cryptography`` >= 50 (OpenSSL 3.5); plain
  **ML-DSA-44** for C2SP tlog-cosignature's type 0x06 cosignatures.
* The **composite ML-DSA-65 + Ed25519** signature of the IETF LAMPS draft
  *Composite ML-DSA for use in X.509 PKI and CMS*
  (draft-ietf-lamps-pq-composite-sigs, the ``id-MLDSA65-Ed25519-SHA512``
  algorithm; ``docs/PROTOCOL.md`` §4 gives the revision and section).
  A composite signature is valid only when *both* component signatures verify.
* **Argon2id** (RFC 9106) and **XChaCha20-Poly1305** (libsodium's IETF AEAD)
  from PyNaCl, for keys at rest.
* SHA-256 / SHA-512 from ``hashlib``, HMAC-SHA256 from ``hmac`` and
  constant-time comparison from ``hmac.compare_digest``; HKDF-SHA256
  (RFC 5869) from ``cryptography``.
* For sessions: **X25519** (RFC 7748), **ML-KEM-768** (FIPS 203) and **HPKE**
  (RFC 9180) with the hybrid ``MLKEM768-X25519`` KEM, HKDF-SHA256 and
  ChaCha20-Poly1305, all from ``cryptography``; message keys are used once
  with ChaCha20-Poly1305 (RFC 8439), key and nonce derived from the message
  key as Signal's Double Ratchet specification recommends (§5.2).

Randomness is drawn here (``os.urandom``) and never passed in, except for
explicit seeds used to derive keys deterministically for test vectors.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
import nacl.pwhash as _pwhash
from cryptography.exceptions import InvalidSignature as _InvalidSignature
from cryptography.exceptions import InvalidTag as _InvalidTag
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives import hpke as _hpke
from cryptography.hazmat.primitives.asymmetric import mldsa as _mldsa
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
from cryptography.hazmat.primitives.asymmetric import x25519 as _x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305 as _ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF as _HKDF

from securechan.errors import BadSignature, MalformedInput, VerificationFailed

__all__ = [
    "AEAD_KEY_SIZE",
    "AEAD_OVERHEAD",
    "ARGON2_SALT_SIZE",
    "COMPOSITE_LABEL",
    "COMPOSITE_PREFIX",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "HPKE_ENC_SIZE",
    "HPKE_OVERHEAD",
    "HYBRID_KEM_PUBLIC_KEY_SIZE",
    "HYBRID_KEM_SEED_SIZE",
    "HYBRID_PUBLIC_KEY_SIZE",
    "HYBRID_SIGNATURE_SIZE",
    "KDF_INTERACTIVE",
    "KDF_MODERATE",
    "KDF_SENSITIVE",
    "KEM_SHARED_SECRET_SIZE",
    "MESSAGE_AEAD_OVERHEAD",
    "MESSAGE_REUSE_GUARD_SIZE",
    "MLDSA44_PUBLIC_KEY_SIZE",
    "MLDSA44_SIGNATURE_SIZE",
    "MLDSA65_PUBLIC_KEY_SIZE",
    "MLDSA65_SIGNATURE_SIZE",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "SEED_SIZE",
    "X25519_KEY_SIZE",
    "Ed25519SigningKey",
    "Hasher",
    "HybridKemKeyPair",
    "HybridSigningKey",
    "HybridVerifyKey",
    "KdfParams",
    "MlDsa44SigningKey",
    "MlKemKeyPair",
    "X25519KeyPair",
    "aead_decrypt",
    "aead_encrypt",
    "argon2id",
    "check_ed25519_public_key",
    "check_hybrid_kem_public_key",
    "check_mldsa44_public_key",
    "check_mlkem768_public_key",
    "check_x25519_public_key",
    "constant_time_equal",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "hpke_seal",
    "message_open",
    "message_seal",
    "mldsa44_verify",
    "mlkem_encapsulate",
    "random_bytes",
    "sha256",
    "sha256_prefixed",
    "sha512",
    "sha512_hasher",
]

ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MLDSA65_PUBLIC_KEY_SIZE = 1952
MLDSA65_SIGNATURE_SIZE = 3309
SEED_SIZE = 32
HYBRID_PUBLIC_KEY_SIZE = MLDSA65_PUBLIC_KEY_SIZE + ED25519_PUBLIC_KEY_SIZE
HYBRID_SIGNATURE_SIZE = MLDSA65_SIGNATURE_SIZE + ED25519_SIGNATURE_SIZE

# The composite draft's domain separators: the fixed prefix is shared by all
# composite algorithms, the label names this one (draft §2.2 and §7).
COMPOSITE_PREFIX = b"CompositeAlgorithmSignatures2025"
COMPOSITE_LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"

AEAD_KEY_SIZE = 32
_AEAD_NONCE_SIZE = 24
AEAD_OVERHEAD = _AEAD_NONCE_SIZE + 16


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest (32 bytes)."""
    return hashlib.sha256(data).digest()


def sha512(data: bytes) -> bytes:
    """SHA-512 digest (64 bytes)."""
    return hashlib.sha512(data).digest()


class Hasher(Protocol):
    """An incremental hash (the subset of ``hashlib`` objects we use)."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def sha512_hasher() -> Hasher:
    """An incremental SHA-512, for hashing large files in chunks."""
    return hashlib.sha512()


def sha256_prefixed(prefix: bytes) -> Callable[[], Hasher]:
    """A maker of incremental SHA-256 states that already absorbed ``prefix``.

    Each call returns a new, independent hash (a copy of one state fed
    ``prefix`` once): ``h = make(); h.update(a); h.update(b); h.digest()`` is
    ``sha256(prefix + a + b)``. Copying a state costs less than setting one up
    (OpenSSL 3 looks the algorithm up for every new hash), and no
    concatenation is built; for 33- and 65-byte messages, the Merkle tree's
    ``0x00`` leaf and ``0x01`` node hashes, that is most of the cost.
    """
    return hashlib.sha256(bytes(prefix)).copy


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return hmac.compare_digest(a, b)


# --- peer public key validation ----------------------------------------------
#
# Every public key a peer or a relay supplies is checked here when it is
# parsed, so a bad key is a MalformedInput at the parse site and never a
# ValueError (or a silently weak exchange) later.

_P25519 = 2**255 - 19
# The u-coordinates of the points of order 1, 2, 4 and 8 on Curve25519 and
# its twist (libsodium's ``has_small_order`` blocklist, as residues mod p;
# the two order-8 values are from RFC 7748 §6.1's discussion and libsodium).
# X25519 with any of them gives the all-zero shared secret that RFC 7748
# §6.1 says to refuse; tests/test_primitives.py checks every one does.
_X25519_LOW_ORDER_U = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def check_x25519_public_key(public_key: bytes) -> None:
    """Refuse an X25519 public key that is not 32 bytes or has low order.

    RFC 7748 §5 ignores the top bit and reduces u mod p, so non-canonical
    encodings of the blocked points (u + p, top bit set) are refused too.
    Raises :class:`MalformedInput`.
    """
    if not isinstance(public_key, bytes) or len(public_key) != X25519_KEY_SIZE:
        raise MalformedInput("an X25519 public key is 32 bytes")
    u = (int.from_bytes(public_key, "little") & ((1 << 255) - 1)) % _P25519
    if u in _X25519_LOW_ORDER_U:
        raise MalformedInput("an X25519 public key has low order")


def check_mlkem768_public_key(public_key: bytes) -> None:
    """FIPS 203 §7.2 input checks on an ML-KEM-768 encapsulation key.

    The length check (1184 bytes) is done here; the modulus check (every
    12-bit coefficient of the encoded vector below q = 3329) is done by
    OpenSSL when ``cryptography`` loads the key (tests/test_primitives.py
    checks that 3328 is accepted and 3329 refused at every position we
    try). Raises :class:`MalformedInput`.
    """
    if not isinstance(public_key, bytes) or len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
        raise MalformedInput("an ML-KEM-768 public key is 1184 bytes")
    if not _mlkem768_key_loads(public_key):
        raise MalformedInput("an ML-KEM-768 public key fails the FIPS 203 modulus check")


@functools.lru_cache(maxsize=256)
def _mlkem768_key_loads(public_key: bytes) -> bool:
    # Loading costs ~90 us (OpenSSL also expands the matrix); every message of
    # a ratchet chain repeats the same key, so remember recent answers (public
    # keys only, nothing secret).
    try:
        _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return True


def check_hybrid_kem_public_key(public_key: bytes) -> None:
    """Check an HPKE ``MLKEM768-X25519`` public key: both halves."""
    if not isinstance(public_key, bytes) or len(public_key) != HYBRID_KEM_PUBLIC_KEY_SIZE:
        raise MalformedInput("a hybrid KEM public key is 1216 bytes")
    check_mlkem768_public_key(public_key[:MLKEM768_PUBLIC_KEY_SIZE])
    check_x25519_public_key(public_key[MLKEM768_PUBLIC_KEY_SIZE:])


def check_ed25519_public_key(public_key: bytes) -> None:
    """Refuse an Ed25519 public key that is not a canonical point of the
    prime-order subgroup, or has small order (libsodium's
    ``crypto_core_ed25519_is_valid_point``; RFC 8032 §5.1.7 lets a verifier
    refuse these, and libsodium's verifier would refuse every signature
    under them anyway). Raises :class:`MalformedInput`."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise MalformedInput("an Ed25519 public key is 32 bytes")
    if not _sodium.crypto_core_ed25519_is_valid_point(public_key):
        raise MalformedInput("an Ed25519 public key is not a valid point")


# --- composite ML-DSA-65 + Ed25519 signatures --------------------------------


def _composite_message(prehash: bytes, context: bytes) -> bytes:
    """M' = Prefix || Label || len(ctx) || ctx || PH(M), with PH = SHA-512."""
    if len(prehash) != 64:
        raise ValueError("the pre-hash is a 64-byte SHA-512 digest")
    if not isinstance(context, bytes) or len(context) > 255:
        raise ValueError("the context is at most 255 bytes")
    return COMPOSITE_PREFIX + COMPOSITE_LABEL + bytes([len(context)]) + context + prehash


class HybridVerifyKey:
    """A composite ML-DSA-65 + Ed25519 public key.

    Its byte form is ``mldsa65_pk (1952) || ed25519_pk (32)``, the draft's
    serialisation. Equality is constant-time over that form.
    """

    __slots__ = ("_ed25519", "_mldsa", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes):
            raise TypeError("a public key is bytes")
        if len(raw) != HYBRID_PUBLIC_KEY_SIZE:
            raise MalformedInput("a hybrid public key is 1984 bytes")
        try:
            self._mldsa = _mldsa.MLDSA65PublicKey.from_public_bytes(raw[:MLDSA65_PUBLIC_KEY_SIZE])
        except ValueError:
            raise MalformedInput("invalid ML-DSA-65 public key") from None
        check_ed25519_public_key(raw[MLDSA65_PUBLIC_KEY_SIZE:])
        self._ed25519 = raw[MLDSA65_PUBLIC_KEY_SIZE:]
        self._raw = raw

    def __bytes__(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HybridVerifyKey):
            return NotImplemented
        return constant_time_equal(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    @property
    def ed25519_bytes(self) -> bytes:
        """The Ed25519 half (32 bytes)."""
        return self._ed25519

    @property
    def mldsa65_bytes(self) -> bytes:
        """The ML-DSA-65 half (1952 bytes)."""
        return self._raw[:MLDSA65_PUBLIC_KEY_SIZE]

    def verify(self, signature: bytes, message: bytes, *, context: bytes) -> None:
        """Verify ``signature`` over ``message`` made for ``context``.

        Raises :class:`BadSignature` unless both halves verify.
        """
        self.verify_prehashed(signature, sha512(message), context=context)

    def verify_prehashed(self, signature: bytes, prehash: bytes, *, context: bytes) -> None:
        """Verify a signature over a message whose SHA-512 is ``prehash``."""
        m_prime = _composite_message(prehash, context)
        if not isinstance(signature, bytes) or len(signature) != HYBRID_SIGNATURE_SIZE:
            raise BadSignature("signature has the wrong length")
        mldsa_sig = signature[:MLDSA65_SIGNATURE_SIZE]
        ed_sig = signature[MLDSA65_SIGNATURE_SIZE:]
        # Both halves are always checked, so the time taken does not tell which
        # half failed; the result is the AND of both.
        ok = True
        try:
            self._mldsa.verify(mldsa_sig, m_prime, COMPOSITE_LABEL)
        except _InvalidSignature:
            ok = False
        try:
            _sodium.crypto_sign_open(ed_sig + m_prime, self._ed25519)
        except (_nacl_exc.BadSignatureError, _nacl_exc.ValueError):
            ok = False
        if not ok:
            raise BadSignature("signature does not verify")


class HybridSigningKey:
    """A composite ML-DSA-65 + Ed25519 private key, held as two 32-byte seeds.

    The seeds are the whole secret (FIPS 204 and RFC 8032 both expand keys
    from a 32-byte seed); they are exposed only through
    :meth:`seed_bytes_secret`, for the encrypted keystore.
    """

    __slots__ = ("_ed_sk", "_mldsa_sk", "_public", "_seeds")

    def __init__(self, ed25519_seed: bytes, mldsa65_seed: bytes) -> None:
        if len(ed25519_seed) != SEED_SIZE or len(mldsa65_seed) != SEED_SIZE:
            raise ValueError("seeds are 32 bytes each")
        ed_pk, self._ed_sk = _sodium.crypto_sign_seed_keypair(bytes(ed25519_seed))
        self._mldsa_sk = _mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(mldsa65_seed))
        self._seeds = (bytes(ed25519_seed), bytes(mldsa65_seed))
        self._public = HybridVerifyKey(self._mldsa_sk.public_key().public_bytes_raw() + ed_pk)

    @classmethod
    def generate(cls) -> HybridSigningKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(random_bytes(SEED_SIZE), random_bytes(SEED_SIZE))

    def __repr__(self) -> str:
        return "HybridSigningKey(<secret>)"

    @property
    def public_key(self) -> HybridVerifyKey:
        """The matching public key."""
        return self._public

    def seed_bytes_secret(self) -> tuple[bytes, bytes]:
        """The (Ed25519, ML-DSA-65) seeds. Secret: only for encrypted storage."""
        return self._seeds

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """Sign ``message`` for ``context`` (a ``securechan/v1/...`` label)."""
        return self.sign_prehashed(sha512(message), context=context)

    def sign_prehashed(self, prehash: bytes, *, context: bytes) -> bytes:
        """Sign a message given its SHA-512 (for large, streamed documents)."""
        m_prime = _composite_message(prehash, context)
        mldsa_sig = self._mldsa_sk.sign(m_prime, COMPOSITE_LABEL)
        ed_sig = _sodium.crypto_sign(m_prime, self._ed_sk)[:ED25519_SIGNATURE_SIZE]
        return mldsa_sig + ed_sig


# --- keys at rest ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KdfParams:
    """Argon2id cost parameters (libsodium's ``opslimit``/``memlimit``)."""

    opslimit: int
    memlimit: int

    # Bounds enforced when reading a key file: below the floor would be a
    # downgrade, above the ceiling a denial of service.
    MIN_MEMLIMIT = 64 * 1024 * 1024
    MAX_MEMLIMIT = 4 * 1024 * 1024 * 1024
    MIN_OPSLIMIT = 2
    MAX_OPSLIMIT = 16

    def check(self) -> None:
        """Raise ``ValueError`` unless the parameters are within bounds."""
        if not self.MIN_MEMLIMIT <= self.memlimit <= self.MAX_MEMLIMIT:
            raise ValueError("Argon2id memory must be 64 MiB .. 4 GiB")
        if not self.MIN_OPSLIMIT <= self.opslimit <= self.MAX_OPSLIMIT:
            raise ValueError("Argon2id passes must be 2 .. 16")


KDF_INTERACTIVE = KdfParams(
    opslimit=_pwhash.argon2id.OPSLIMIT_INTERACTIVE,
    memlimit=_pwhash.argon2id.MEMLIMIT_INTERACTIVE,
)
KDF_MODERATE = KdfParams(
    opslimit=_pwhash.argon2id.OPSLIMIT_MODERATE,
    memlimit=_pwhash.argon2id.MEMLIMIT_MODERATE,
)
KDF_SENSITIVE = KdfParams(
    opslimit=_pwhash.argon2id.OPSLIMIT_SENSITIVE,
    memlimit=_pwhash.argon2id.MEMLIMIT_SENSITIVE,
)
ARGON2_SALT_SIZE = _pwhash.argon2id.SALTBYTES


def argon2id(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Derive a 32-byte key from a passphrase with Argon2id (RFC 9106)."""
    params.check()
    if len(salt) != ARGON2_SALT_SIZE:
        raise ValueError("Argon2id salt is 16 bytes")
    return bytes(
        _pwhash.argon2id.kdf(
            AEAD_KEY_SIZE,
            passphrase,
            salt,
            opslimit=params.opslimit,
            memlimit=params.memlimit,
        )
    )


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305: returns ``nonce (24) || ciphertext || tag (16)``.

    The nonce is random (192 bits, so random nonces never collide in practice).
    """
    if len(key) != AEAD_KEY_SIZE:
        raise ValueError("AEAD keys are 32 bytes")
    nonce = random_bytes(_AEAD_NONCE_SIZE)
    ct = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    return nonce + bytes(ct)


def aead_decrypt(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open :func:`aead_encrypt`'s output; raise :class:`VerificationFailed`.

    The tag is checked before any plaintext is released.
    """
    if len(key) != AEAD_KEY_SIZE:
        raise ValueError("AEAD keys are 32 bytes")
    if len(sealed) < AEAD_OVERHEAD:
        raise VerificationFailed("ciphertext too short")
    nonce, ct = sealed[:_AEAD_NONCE_SIZE], sealed[_AEAD_NONCE_SIZE:]
    try:
        return bytes(_sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, aad, nonce, key))
    except _nacl_exc.CryptoError:
        raise VerificationFailed("decryption failed") from None


# --- session primitives --------------------------------------------------------

X25519_KEY_SIZE = 32
MLKEM768_SEED_SIZE = 64
MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
KEM_SHARED_SECRET_SIZE = 32
HYBRID_KEM_PUBLIC_KEY_SIZE = MLKEM768_PUBLIC_KEY_SIZE + X25519_KEY_SIZE
HYBRID_KEM_SEED_SIZE = MLKEM768_SEED_SIZE + X25519_KEY_SIZE
# HPKE's encapsulation for MLKEM768-X25519: ML-KEM ciphertext || X25519 ephemeral.
HPKE_ENC_SIZE = MLKEM768_CIPHERTEXT_SIZE + X25519_KEY_SIZE
HPKE_OVERHEAD = HPKE_ENC_SIZE + 16
MESSAGE_AEAD_OVERHEAD = 16
MESSAGE_REUSE_GUARD_SIZE = 32
_HPKE_SUITE = _hpke.Suite(
    _hpke.KEM.MLKEM768_X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.CHACHA20_POLY1305
)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), the Double Ratchet's chain KDF."""
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-and-expand."""
    return _HKDF(algorithm=_hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


class X25519KeyPair:
    """An X25519 key pair (RFC 7748) built from a 32-byte secret."""

    __slots__ = ("_sk", "public")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != X25519_KEY_SIZE:
            raise ValueError("X25519 secrets are 32 bytes")
        self._sk = _x25519.X25519PrivateKey.from_private_bytes(secret)
        self.public = self._sk.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519KeyPair:
        """A fresh key pair."""
        return cls(random_bytes(X25519_KEY_SIZE))

    def __repr__(self) -> str:
        return "X25519KeyPair(<secret>)"

    def secret_bytes(self) -> bytes:
        """The 32-byte secret, for encrypted session state only."""
        return self._sk.private_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519(secret, peer). Raises :class:`VerificationFailed` for a
        low-order peer key whose output is all zeros (RFC 7748 §6.1)."""
        check_x25519_public_key(peer_public)
        try:
            shared = self._sk.exchange(_x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise VerificationFailed("X25519 with a low-order point") from None
        if shared == bytes(32):  # pragma: no cover - OpenSSL already refuses
            raise VerificationFailed("X25519 with a low-order point")
        return shared


class MlKemKeyPair:
    """An ML-KEM-768 (FIPS 203) decapsulation key built from a 64-byte seed."""

    __slots__ = ("_seed", "_sk", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != MLKEM768_SEED_SIZE:
            raise ValueError("ML-KEM-768 seeds are 64 bytes")
        self._seed = bytes(seed)
        self._sk = _mlkem.MLKEM768PrivateKey.from_seed_bytes(self._seed)
        self.public = self._sk.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> MlKemKeyPair:
        """A fresh key pair."""
        return cls(random_bytes(MLKEM768_SEED_SIZE))

    def __repr__(self) -> str:
        return "MlKemKeyPair(<secret>)"

    def seed_bytes_secret(self) -> bytes:
        """The 64-byte seed, for encrypted session state only."""
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret. ML-KEM decapsulation never fails on a
        well-sized ciphertext (implicit rejection gives a random-looking
        secret), so a forged ciphertext is caught later by the AEAD."""
        if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
            raise MalformedInput("an ML-KEM-768 ciphertext is 1088 bytes")
        return self._sk.decapsulate(ciphertext)


def mlkem_encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to an ML-KEM-768 key: returns (shared secret, ciphertext)."""
    check_mlkem768_public_key(public_key)
    try:
        pk = _mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise MalformedInput("invalid ML-KEM-768 public key") from None
    shared, ct = pk.encapsulate()
    return shared, ct


class HybridKemKeyPair:
    """An HPKE ``MLKEM768-X25519`` recipient key (a prekey).

    Public form: ``mlkem768_pk (1184) || x25519_pk (32)``; secret form: the
    64-byte ML-KEM seed followed by the 32-byte X25519 secret.
    """

    __slots__ = ("_hpke_sk", "_mlkem", "_x25519", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != HYBRID_KEM_SEED_SIZE:
            raise ValueError("hybrid KEM seeds are 96 bytes")
        self._mlkem = MlKemKeyPair(seed[:MLKEM768_SEED_SIZE])
        self._x25519 = X25519KeyPair(seed[MLKEM768_SEED_SIZE:])
        self._hpke_sk = _hpke.MLKEM768X25519PrivateKey(self._mlkem._sk, self._x25519._sk)
        self.public = self._mlkem.public + self._x25519.public

    @classmethod
    def generate(cls) -> HybridKemKeyPair:
        """A fresh key pair."""
        return cls(random_bytes(HYBRID_KEM_SEED_SIZE))

    def __repr__(self) -> str:
        return "HybridKemKeyPair(<secret>)"

    def seed_bytes_secret(self) -> bytes:
        """The 96-byte seed, for encrypted storage only."""
        return self._mlkem.seed_bytes_secret() + self._x25519.secret_bytes()

    def hpke_open(self, sealed: bytes, *, info: bytes) -> bytes:
        """Open an :func:`hpke_seal` output; raise :class:`VerificationFailed`."""
        if len(sealed) < HPKE_OVERHEAD:
            raise VerificationFailed("HPKE ciphertext too short")
        # The sender's ephemeral X25519 key (the tail of enc) is a peer key
        # too: refuse a low-order one before any work, with the same opaque
        # error as every other HPKE failure.
        try:
            check_x25519_public_key(sealed[MLKEM768_CIPHERTEXT_SIZE:HPKE_ENC_SIZE])
        except MalformedInput:
            raise VerificationFailed("HPKE decryption failed") from None
        try:
            return _HPKE_SUITE.decrypt(sealed, self._hpke_sk, info=info)
        except (_InvalidTag, ValueError):
            raise VerificationFailed("HPKE decryption failed") from None


def hpke_seal(public_key: bytes, plaintext: bytes, *, info: bytes) -> bytes:
    """RFC 9180 single-shot base-mode encryption to a hybrid KEM public key.

    Output: ``enc (1120) || ciphertext || tag (16)``.
    """
    check_hybrid_kem_public_key(public_key)
    try:
        pk = _hpke.MLKEM768X25519PublicKey(
            _mlkem.MLKEM768PublicKey.from_public_bytes(public_key[:MLKEM768_PUBLIC_KEY_SIZE]),
            _x25519.X25519PublicKey.from_public_bytes(public_key[MLKEM768_PUBLIC_KEY_SIZE:]),
        )
    except ValueError:
        raise MalformedInput("invalid hybrid KEM public key") from None
    try:
        return bytes(_HPKE_SUITE.encrypt(plaintext, pk, info=info))
    except ValueError:  # pragma: no cover - the key checks above come first
        raise MalformedInput("invalid hybrid KEM public key") from None


_MESSAGE_KEY_INFO = b"securechan/v1/message-key"


def _message_aead(message_key: bytes, reuse_guard: bytes) -> tuple[_ChaCha20Poly1305, bytes]:
    # One key per message (Double Ratchet spec §5.2): derive the AEAD key and
    # nonce from it, so the nonce can never repeat under one key. The reuse
    # guard (fresh random bytes per message, carried in the authenticated
    # header; cf. MLS RFC 9420 §6.3.1) is the HKDF salt: a sender restored
    # from a backup that reuses a message key still gets a fresh key+nonce.
    if len(message_key) != 32:
        raise ValueError("message keys are 32 bytes")
    if len(reuse_guard) != MESSAGE_REUSE_GUARD_SIZE:
        raise ValueError("reuse guards are 32 bytes")
    okm = hkdf_sha256(message_key, salt=reuse_guard, info=_MESSAGE_KEY_INFO, length=44)
    return _ChaCha20Poly1305(okm[:32]), okm[32:]


def message_seal(
    message_key: bytes, plaintext: bytes, aad: bytes, *, reuse_guard: bytes = bytes(32)
) -> bytes:
    """Encrypt with a single-use 32-byte message key (ChaCha20-Poly1305).

    ``reuse_guard`` (32 bytes) salts the key+nonce derivation; pass fresh
    random bytes wherever the same message key could ever be used twice."""
    aead, nonce = _message_aead(message_key, reuse_guard)
    return aead.encrypt(nonce, plaintext, aad)


def message_open(
    message_key: bytes, ciphertext: bytes, aad: bytes, *, reuse_guard: bytes = bytes(32)
) -> bytes:
    """Decrypt :func:`message_seal`'s output; raise :class:`VerificationFailed`."""
    aead, nonce = _message_aead(message_key, reuse_guard)
    if len(ciphertext) < MESSAGE_AEAD_OVERHEAD:
        raise VerificationFailed("ciphertext too short")
    try:
        return aead.decrypt(nonce, ciphertext, aad)
    except _InvalidTag:
        raise VerificationFailed("decryption failed") from None


# --- plain Ed25519 (relay and witness keys: C2SP signed notes) -----------------


class Ed25519SigningKey:
    """A plain Ed25519 key (RFC 8032), for formats that fix the algorithm
    (C2SP signed-note, tlog-cosignature). Identities use the composite key."""

    __slots__ = ("_sk", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError("Ed25519 seeds are 32 bytes")
        self.public, self._sk = _sodium.crypto_sign_seed_keypair(bytes(seed))

    @classmethod
    def generate(cls) -> Ed25519SigningKey:
        """A fresh key."""
        return cls(random_bytes(SEED_SIZE))

    def __repr__(self) -> str:
        return "Ed25519SigningKey(<secret>)"

    def seed_bytes_secret(self) -> bytes:
        """The 32-byte seed, for encrypted or 0600 storage only."""
        return bytes(_sodium.crypto_sign_ed25519_sk_to_seed(self._sk))

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature."""
        return bytes(_sodium.crypto_sign(message, self._sk)[:ED25519_SIGNATURE_SIZE])


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Strict Ed25519 verification; raise :class:`BadSignature`."""
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE or len(signature) != ED25519_SIGNATURE_SIZE:
        raise BadSignature("bad Ed25519 key or signature length")
    try:
        _sodium.crypto_sign_open(signature + message, public_key)
    except (_nacl_exc.BadSignatureError, _nacl_exc.ValueError):
        raise BadSignature("signature does not verify") from None


# --- plain ML-DSA-44 (C2SP tlog-cosignature type 0x06) -------------------------

MLDSA44_PUBLIC_KEY_SIZE = 1312
MLDSA44_SIGNATURE_SIZE = 2420


class MlDsa44SigningKey:
    """A plain ML-DSA-44 key (FIPS 204, pure ML-DSA, empty context), for the
    one format that fixes it: C2SP tlog-cosignature's type 0x06 cosignatures.
    Held as its 32-byte seed (FIPS 204 ``ML-DSA.KeyGen_internal``'s xi)."""

    __slots__ = ("_seed", "_sk", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError("ML-DSA-44 seeds are 32 bytes")
        self._seed = bytes(seed)
        self._sk = _mldsa.MLDSA44PrivateKey.from_seed_bytes(self._seed)
        self.public = self._sk.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> MlDsa44SigningKey:
        """A fresh key."""
        return cls(random_bytes(SEED_SIZE))

    def __repr__(self) -> str:
        return "MlDsa44SigningKey(<secret>)"

    def seed_bytes_secret(self) -> bytes:
        """The 32-byte seed, for encrypted or 0600 storage only."""
        return self._seed

    def sign(self, message: bytes) -> bytes:
        """A 2420-byte ML-DSA-44 signature (hedged, empty context)."""
        return self._sk.sign(message)


def check_mldsa44_public_key(public_key: bytes) -> None:
    """Raise :class:`MalformedInput` unless ``public_key`` is an ML-DSA-44 key."""
    if not isinstance(public_key, bytes) or len(public_key) != MLDSA44_PUBLIC_KEY_SIZE:
        raise MalformedInput("an ML-DSA-44 public key is 1312 bytes")
    try:
        _mldsa.MLDSA44PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise MalformedInput("invalid ML-DSA-44 public key") from None


def mldsa44_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """ML-DSA-44 verification (FIPS 204, empty context); raise :class:`BadSignature`."""
    if len(public_key) != MLDSA44_PUBLIC_KEY_SIZE or len(signature) != MLDSA44_SIGNATURE_SIZE:
        raise BadSignature("bad ML-DSA-44 key or signature length")
    try:
        _mldsa.MLDSA44PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (_InvalidSignature, ValueError):
        raise BadSignature("signature does not verify") from None
