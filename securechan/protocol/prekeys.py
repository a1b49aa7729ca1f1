"""Prekeys: the signed HPKE keys a first message is encrypted to.

Each identity publishes, through the relay, one *signed prekey* (rotated on a
schedule; old ones are kept for a grace period so first messages already in
flight still open) and a pool of *one-time prekeys* (each usable once, then
deleted, which gives the first message forward secrecy as in Signal's X3DH).
Every prekey is an HPKE ``MLKEM768-X25519`` key, and every prekey record is
signed on its own with the owner's identity key, so the relay can hand out any
one-time key without being able to forge or substitute one (PQXDH signs its
post-quantum one-time keys the same way).

This module is sans-I/O: :class:`PrekeyStore` is the private side as a value
that serialises through ``wire``; the caller stores it (encrypted).
``docs/PROTOCOL.md`` §11 is the normative text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import wire
from securechan.errors import BadSignature, BundleRejected, MalformedInput, UnknownPrekey
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity
from securechan.primitives import (
    HYBRID_KEM_PUBLIC_KEY_SIZE,
    HYBRID_KEM_SEED_SIZE,
    HYBRID_SIGNATURE_SIZE,
    HybridKemKeyPair,
    check_hybrid_kem_public_key,
    random_bytes,
    sha256,
)

__all__ = [
    "GRACE_SECONDS",
    "SIGNED_PREKEY_LIFETIME",
    "Prekey",
    "PrekeyBundle",
    "PrekeyStore",
]

CONTEXT_PREKEY = b"securechan/v1/prekey"
SIGNED_PREKEY_LIFETIME = 7 * 24 * 3600
ONE_TIME_PREKEY_LIFETIME = 90 * 24 * 3600
# A signed prekey still opens first messages this long after it expired.
GRACE_SECONDS = 7 * 24 * 3600
MAX_ONE_TIME = 1000
KIND_SIGNED = 1
KIND_ONE_TIME = 2


@wire.record(0x0040, "PrekeyBody")
@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyBody(wire.Record):
    """The signed part of a prekey."""

    owner: Annotated[bytes, wire.bytes_(1, size=32)]
    kind: Annotated[int, wire.uint(2)]
    prekey_id: Annotated[int, wire.uint(3)]
    public_key: Annotated[bytes, wire.bytes_(4, size=HYBRID_KEM_PUBLIC_KEY_SIZE)]
    created: Annotated[int, wire.uint(5)]
    expires: Annotated[int, wire.uint(6)]


@wire.record(0x0041, "Prekey")
@dataclass(frozen=True, slots=True, kw_only=True)
class _PrekeyRecord(wire.Record):
    # The body stays as its exact bytes: they are what is signed.
    body: Annotated[bytes, wire.nested(1, max_len=2048, of=PrekeyBody)]
    signature: Annotated[bytes, wire.bytes_(2, size=HYBRID_SIGNATURE_SIZE)]


PREKEY_BODY = wire.schema_of(PrekeyBody)
PREKEY = wire.schema_of(_PrekeyRecord)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prekey:
    """A signed public prekey (signed or one-time). Parsing does not verify;
    :meth:`verify` does."""

    owner: Fingerprint
    kind: int
    prekey_id: int
    public_key: bytes
    created: int
    expires: int
    signature: bytes

    def body_bytes(self) -> bytes:
        """The signed bytes."""
        return PrekeyBody(
            owner=self.owner.digest,
            kind=self.kind,
            prekey_id=self.prekey_id,
            public_key=self.public_key,
            created=self.created,
            expires=self.expires,
        ).to_bytes()

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0041)."""
        return _PrekeyRecord(body=self.body_bytes(), signature=self.signature).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Prekey:
        """Decode strictly, without checking the signature.

        The public key is validated here (both halves: FIPS 203 §7.2 and no
        low-order X25519 point, ``primitives.check_hybrid_kem_public_key``):
        a bad one raises :class:`BundleRejected`, even when its owner signed
        it, so it never reaches HPKE.
        """
        rec = _PrekeyRecord.from_bytes(data)
        body = PrekeyBody.from_bytes(rec.body)
        if body.kind not in (KIND_SIGNED, KIND_ONE_TIME):
            raise MalformedInput("unknown prekey kind")
        try:
            check_hybrid_kem_public_key(body.public_key)
        except MalformedInput as e:
            raise BundleRejected(f"the prekey's public key is invalid: {e}") from None
        return cls(
            owner=Fingerprint(body.owner),
            kind=body.kind,
            prekey_id=body.prekey_id,
            public_key=body.public_key,
            created=body.created,
            expires=body.expires,
            signature=rec.signature,
        )

    def verify(self, owner: PublicIdentity, *, kind: int, now: int) -> None:
        """Check owner, kind, signature and validity time.

        Raises :class:`BundleRejected` naming the reason.
        """
        if self.owner != owner.fingerprint:
            raise BundleRejected("the prekey belongs to another identity")
        if self.kind != kind:
            raise BundleRejected("the prekey has the wrong kind")
        try:
            owner.verify(self.signature, self.body_bytes(), context=CONTEXT_PREKEY)
        except BadSignature:
            raise BundleRejected("the prekey's signature does not verify") from None
        if not self.created <= now + 300:  # five minutes of clock skew
            raise BundleRejected("the prekey is from the future")
        if now > self.expires:
            raise BundleRejected("the prekey has expired")

    @property
    def hash(self) -> bytes:
        """SHA-256 of the record, bound into the handshake transcript."""
        return sha256(self.to_bytes())


@wire.record(0x0042, "PrekeyBundle")
@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyBundle(wire.Record):
    """What an initiator fetches: a signed prekey and maybe a one-time prekey.
    Decoding does not check signatures (:meth:`verify` does)."""

    signed_prekey: Annotated[Prekey, wire.nested(1, max_len=8192, of=PREKEY)]
    one_time_prekey: Annotated[Prekey | None, wire.nested(2, max_len=8192, of=PREKEY)] = None

    def verify(self, owner: PublicIdentity, *, now: int) -> None:
        """Check every prekey against the pinned ``owner``; raise
        :class:`BundleRejected` for a substituted, foreign or expired one."""
        self.signed_prekey.verify(owner, kind=KIND_SIGNED, now=now)
        if self.one_time_prekey is not None:
            self.one_time_prekey.verify(owner, kind=KIND_ONE_TIME, now=now)


@wire.record(0x0043, "StoredPrekey")
@dataclass(frozen=True, slots=True, kw_only=True)
class _StoredKey(wire.Record):
    record: Annotated[Prekey, wire.nested(1, max_len=8192, of=PREKEY)]
    seed: Annotated[bytes, wire.bytes_(2, size=HYBRID_KEM_SEED_SIZE)] = field(repr=False)


@wire.record(0x0044, "PrekeyStore")
@dataclass(frozen=True, slots=True, kw_only=True)
class _StoreRecord(wire.Record):
    owner: Annotated[bytes, wire.bytes_(1, size=32)]
    next_id: Annotated[int, wire.uint(2)]
    signed: Annotated[tuple[_StoredKey, ...], wire.list_(3, max_len=64 * 9000, max_items=64)]
    one_time: Annotated[
        tuple[_StoredKey, ...],
        wire.list_(4, max_len=MAX_ONE_TIME * 9000, max_items=MAX_ONE_TIME),
    ]


BUNDLE = wire.schema_of(PrekeyBundle)
_STORED_KEY = wire.schema_of(_StoredKey)
_STORE = wire.schema_of(_StoreRecord)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyStore:
    """The private side of one identity's prekeys, as an immutable value.

    Every change returns a new store; the caller persists it (encrypted)
    *before* publishing new prekeys or using a one-time key, so a crash never
    leaves a published key without its secret, nor a used one-time key alive.
    """

    owner: Fingerprint
    next_id: int = 1
    signed: tuple[_StoredKey, ...] = ()
    one_time: tuple[_StoredKey, ...] = ()

    @classmethod
    def new(cls, identity: Identity) -> PrekeyStore:
        """An empty store for ``identity``."""
        return cls(owner=identity.fingerprint)

    def _make(
        self, identity: Identity, kind: int, now: int, lifetime: int, rand: Callable[[int], bytes]
    ) -> _StoredKey:
        if identity.fingerprint != self.owner:
            raise ValueError("this store belongs to another identity")
        seed = rand(HYBRID_KEM_SEED_SIZE)
        pair = HybridKemKeyPair(seed)
        unsigned = Prekey(
            owner=self.owner,
            kind=kind,
            prekey_id=self.next_id,
            public_key=pair.public,
            created=now,
            expires=now + lifetime,
            signature=b"",
        )
        sig = identity.sign(unsigned.body_bytes(), context=CONTEXT_PREKEY)
        return _StoredKey(record=replace(unsigned, signature=sig), seed=seed)

    def rotate(
        self,
        identity: Identity,
        *,
        now: int,
        lifetime: int = SIGNED_PREKEY_LIFETIME,
        rand: Callable[[int], bytes] = random_bytes,
    ) -> PrekeyStore:
        """Add a new signed prekey and drop those past expiry + grace.
        ``rand`` gives its 96-byte secret seed (the OS CSPRNG unless a test
        injects a source; the signature's ML-DSA randomness is not injectable)."""
        new = self._make(identity, KIND_SIGNED, now, lifetime, rand)
        keep = tuple(k for k in self.signed if now <= k.record.expires + GRACE_SECONDS)
        return replace(self, next_id=self.next_id + 1, signed=(*keep, new)[-64:])

    def add_one_time(
        self,
        identity: Identity,
        count: int,
        *,
        now: int,
        rand: Callable[[int], bytes] = random_bytes,
    ) -> PrekeyStore:
        """Add ``count`` one-time prekeys (the pool holds at most 1000);
        ``rand`` as for :meth:`rotate`."""
        if count < 0 or len(self.one_time) + count > MAX_ONE_TIME:
            raise ValueError(f"the one-time pool holds at most {MAX_ONE_TIME} keys")
        store = self
        added = []
        for _ in range(count):
            key = store._make(identity, KIND_ONE_TIME, now, ONE_TIME_PREKEY_LIFETIME, rand)
            added.append(key)
            store = replace(store, next_id=store.next_id + 1)
        return replace(store, one_time=(*self.one_time, *added))

    def new_pool(
        self,
        identity: Identity,
        count: int,
        *,
        now: int,
        rand: Callable[[int], bytes] = random_bytes,
    ) -> tuple[PrekeyStore, tuple[Prekey, ...]]:
        """A fresh pool of ``count`` one-time prekeys for *one* relay, and the
        store that keeps their secrets.

        Every one-time key is published to exactly one relay, once: a key
        given to two relays (or republished after a relay handed it out) can
        be handed out twice, and the second first message that names it is
        refused as a reuse (PROTOCOL.md §11). Keys of earlier pools stay here
        until they are used or expire, since a first message made from one
        may still be on its way; to make room the expired ones are dropped
        and then, past the pool's bound of 1000, the oldest.
        """
        if count < 0 or count > MAX_ONE_TIME:
            raise ValueError(f"the one-time pool holds at most {MAX_ONE_TIME} keys")
        live = tuple(k for k in self.one_time if now <= k.record.expires)
        room = MAX_ONE_TIME - count
        kept = replace(self, one_time=live[max(0, len(live) - room) :])
        store = kept.add_one_time(identity, count, now=now, rand=rand)
        return store, store.one_time_records()[len(kept.one_time) :]

    def current_signed(self, now: int) -> Prekey:
        """The newest signed prekey that has not expired."""
        live = [k for k in self.signed if now <= k.record.expires]
        if not live:
            raise UnknownPrekey("no current signed prekey: rotate first")
        return live[-1].record

    def one_time_records(self) -> tuple[Prekey, ...]:
        """The public one-time prekeys, for publishing."""
        return tuple(k.record for k in self.one_time)

    def bundle(self, now: int, *, with_one_time: bool = True) -> PrekeyBundle:
        """A bundle as the relay would serve it (first one-time key, if any)."""
        otk = self.one_time[0].record if with_one_time and self.one_time else None
        return PrekeyBundle(signed_prekey=self.current_signed(now), one_time_prekey=otk)

    def signed_key(self, prekey_id: int, *, now: int) -> tuple[Prekey, HybridKemKeyPair]:
        """The signed prekey ``prekey_id`` if still within expiry + grace."""
        for k in self.signed:
            if k.record.prekey_id == prekey_id and now <= k.record.expires + GRACE_SECONDS:
                return k.record, HybridKemKeyPair(k.seed)
        raise UnknownPrekey("unknown or expired signed prekey")

    def take_one_time(
        self, prekey_id: int, *, now: int
    ) -> tuple[PrekeyStore, Prekey, HybridKemKeyPair]:
        """Remove and return one-time prekey ``prekey_id`` (usable once)."""
        for i, k in enumerate(self.one_time):
            if k.record.prekey_id == prekey_id:
                if now > k.record.expires:
                    break
                rest = self.one_time[:i] + self.one_time[i + 1 :]
                return replace(self, one_time=rest), k.record, HybridKemKeyPair(k.seed)
        raise UnknownPrekey("unknown, used or expired one-time prekey")

    def to_bytes(self) -> bytes:
        """Secret: the wire encoding with every prekey seed (store encrypted)."""
        return _StoreRecord(
            owner=self.owner.digest,
            next_id=self.next_id,
            signed=self.signed,
            one_time=self.one_time,
        ).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeyStore:
        """Decode strictly."""
        rec = _StoreRecord.from_bytes(data)
        return cls(
            owner=Fingerprint(rec.owner),
            next_id=rec.next_id,
            signed=rec.signed,
            one_time=rec.one_time,
        )
