"""The ratchet's in-memory cache: expanded keys and decapsulated secrets.

A root step expands the same X25519 and ML-KEM keys again and again (our
keys until the peer answers, the peer's chains while we skip through them),
and ML-KEM decapsulation is the most expensive step of receiving. This
cache keeps a few of each per session. It is never persisted and never
needed for correctness: dropping it at any time only costs time. Secrets
decapsulated while opening a message enter it only once that message is
accepted (:meth:`Decaps.commit`), so a refused message changes nothing.
"""

from __future__ import annotations

from typing import TypeVar

from securechan.primitives import MlKemKeyPair, X25519KeyPair, sha256

__all__ = ["Decaps", "RatchetCache"]

_T = TypeVar("_T")


class RatchetCache:
    """Per-session, in-memory only: decapsulated secrets and expanded key
    objects, so a root step does not expand the same ML-KEM or X25519 key
    twice. Bounded; never persisted; safe to drop at any time."""

    _MAX = 16

    def __init__(self) -> None:
        self.ss: dict[bytes, bytes] = {}
        self.mlkem: dict[bytes, MlKemKeyPair] = {}
        self.x25519: dict[bytes, X25519KeyPair] = {}

    @staticmethod
    def put(table: dict[bytes, _T], key: bytes, value: _T) -> None:
        """Keep ``value`` in ``table``, evicting the oldest beyond the bound."""
        table[key] = value
        while len(table) > RatchetCache._MAX:
            del table[next(iter(table))]

    def mlkem_pair(self, seed: bytes) -> MlKemKeyPair:
        """The ML-KEM-768 key pair of ``seed``, expanded once."""
        pair = self.mlkem.get(seed)
        if pair is None:
            pair = MlKemKeyPair(seed)
            self.put(self.mlkem, seed, pair)
        return pair

    def x25519_pair(self, secret: bytes) -> X25519KeyPair:
        """The X25519 key pair of ``secret``, expanded once."""
        pair = self.x25519.get(secret)
        if pair is None:
            pair = X25519KeyPair(secret)
            self.put(self.x25519, secret, pair)
        return pair


class Decaps:
    """ML-KEM decapsulation through the cache; new secrets are kept only
    once the message they opened is accepted (:meth:`commit`)."""

    def __init__(self, cache: RatchetCache) -> None:
        self.cache = cache
        self.new: dict[bytes, bytes] = {}

    def __call__(self, kem_seed: bytes, ct: bytes) -> bytes:
        key = sha256(kem_seed + ct)
        hit = self.cache.ss.get(key) or self.new.get(key)
        if hit is None:
            hit = self.cache.mlkem_pair(kem_seed).decapsulate(ct)
            self.new[key] = hit
        return hit

    def commit(self) -> None:
        """The message was accepted: keep its new secrets in the cache."""
        for k, v in self.new.items():
            RatchetCache.put(self.cache.ss, k, v)
