"""The first message: a post-quantum hybrid, mutually authenticated handshake.

The initiator sends one message; there is no round trip (as in Signal's
X3DH/PQXDH). It is built from standard parts (``docs/PROTOCOL.md`` §12):

1. ``hpke = HPKE.Seal(pk_R, seed, info)``: RFC 9180 base mode with the hybrid
   ``MLKEM768-X25519`` KEM, HKDF-SHA256 and ChaCha20-Poly1305, to the
   responder's one-time prekey when the bundle has one, else to its signed
   prekey. ``seed`` is 32 fresh random bytes; ``info`` binds the responder's
   fingerprint and the prekey used.
2. The initiator signs the **transcript**: both fingerprints, the time,
   the hashes of the prekey records it used, the prekey ids, and the whole
   ``hpke`` output (so the HPKE encapsulation is covered by the signature),
   and a hash of its first ratchet chain's keys (so no one else's chain can
   carry its signature).
3. ``body = (initiator identity, time, signature)`` is
   encrypted under ``HKDF(seed, salt=SHA-256(hpke), "securechan/v1/handshake-body")``.
   Only the responder can open it, so the relay learns neither who is talking
   nor what is said.
4. Both sides derive ``rk0 = HKDF(seed, salt=SHA-256(transcript),
   "securechan/v1/handshake-root")`` for the ratchet, and use
   ``SHA-256(transcript)`` as the associated data of every later message, so
   both identities are bound into every key (no unknown key share). The
   conversation id is derived from the same hash (:func:`conversation_id`).

The responder refuses a replayed first message (it keeps the hashes of
handshakes it has accepted), a prekey it does not hold (substituted, used or
expired), a transcript whose prekey hashes are not its own records, a
signature that does not verify, an initiator that is itself, and an initiator
that is not a pinned contact (:class:`UnknownSender` carries the verified
identity, so the caller can refuse or hold the message for the user).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated

from securechan import wire
from securechan.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedInput,
    Misaddressed,
    Reflected,
    Replay,
    UnknownSender,
    VerificationFailed,
)
from securechan.identity.keys import PUBLIC_IDENTITY, Fingerprint, Identity, PublicIdentity
from securechan.primitives import (
    HPKE_OVERHEAD,
    HYBRID_SIGNATURE_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    hkdf_sha256,
    hpke_seal,
    message_open,
    message_seal,
    random_bytes,
    sha256,
)
from securechan.protocol.prekeys import KIND_ONE_TIME, KIND_SIGNED, PrekeyBundle, PrekeyStore
from securechan.protocol.ratchet import Random, RootStep

__all__ = [
    "CONTEXT_HANDSHAKE",
    "FirstMessage",
    "Handshake",
    "ReplayGuard",
    "SessionBinding",
    "accept",
    "conversation_id",
    "initiate",
    "transcript_hash",
    "verify_transcript",
]

CONTEXT_HANDSHAKE = b"securechan/v1/handshake"
_BODY_INFO = b"securechan/v1/handshake-body"
_ROOT_INFO = b"securechan/v1/handshake-root"
_CONVERSATION_LABEL = b"securechan/v1/conversation-id"
_SEED_SIZE = 32
CONVERSATION_ID_SIZE = 16
# Accepted-handshake hashes are kept this long: past it, the prekeys they
# could have used are gone, so a replay fails anyway.
REPLAY_MEMORY = 120 * 24 * 3600
MAX_REPLAY_ENTRIES = 100_000


@wire.record(0x0050, "HandshakeTranscript")
@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeTranscript(wire.Record):
    """What the initiator signs: both parties, the prekeys used, the HPKE
    encapsulation and the first chain's commitment."""

    initiator: Annotated[bytes, wire.bytes_(1, size=32)]
    responder: Annotated[bytes, wire.bytes_(2, size=32)]
    # Tag 3 (an initiator-chosen conversation id) is retired: the id is
    # derived from this transcript (conversation_id), review 2026-12 #5.
    created: Annotated[int, wire.uint(4)]
    signed_prekey_id: Annotated[int, wire.uint(5)]
    signed_prekey_hash: Annotated[bytes, wire.bytes_(6, size=32)]
    one_time_prekey_id: Annotated[int | None, wire.uint(7)] = None
    one_time_prekey_hash: Annotated[bytes | None, wire.bytes_(8, size=32)] = None
    hpke: Annotated[bytes, wire.bytes_(9, size=HPKE_OVERHEAD + _SEED_SIZE)]
    first_chain: Annotated[bytes, wire.bytes_(10, size=32)]


@wire.record(0x0051, "HandshakeBody")
@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeBody(wire.Record):
    """The sealed body of a first message: who the initiator is, and its
    signature over the transcript."""

    initiator: Annotated[bytes, wire.nested(1, max_len=8192, of=PUBLIC_IDENTITY)]
    # Tag 2 (the conversation id) is retired, as in the transcript.
    created: Annotated[int, wire.uint(3)]
    signature: Annotated[bytes, wire.bytes_(4, size=HYBRID_SIGNATURE_SIZE)]


@wire.record(0x0053, "ReplayGuard")
@dataclass(frozen=True, slots=True, kw_only=True)
class _ReplayGuardRecord(wire.Record):
    # 40 bytes per entry: a 32-byte digest and the u64 time it may go.
    seen: Annotated[bytes, wire.bytes_(1, max_len=MAX_REPLAY_ENTRIES * 40)]


@wire.record(0x0052, "FirstMessage")
@dataclass(frozen=True, slots=True, kw_only=True)
class FirstMessage(wire.Record):
    """The outer first message: what the relay sees (no identity in clear)."""

    signed_prekey_id: Annotated[int, wire.uint(1)]
    one_time_prekey_id: Annotated[int | None, wire.uint(2)]
    hpke: Annotated[bytes, wire.bytes_(3, size=HPKE_OVERHEAD + _SEED_SIZE)]
    sealed_body: Annotated[bytes, wire.bytes_(4, max_len=16384)]
    message: Annotated[bytes, wire.bytes_(5, max_len=1 << 20)]

    def header_bytes(self) -> bytes:
        """The associated data of the sealed body: everything but the body."""
        return replace(self, sealed_body=b"", message=b"").to_bytes()


TRANSCRIPT = wire.schema_of(HandshakeTranscript)
BODY = wire.schema_of(HandshakeBody)
FIRST = wire.schema_of(FirstMessage)
_GUARD = wire.schema_of(_ReplayGuardRecord)


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    """What both sides know after the handshake, to start the ratchet."""

    initiator: PublicIdentity
    responder: PublicIdentity
    conversation: bytes
    root_key: bytes
    transcript_hash: bytes
    # The signed prekey's public halves: the responder's first ratchet keys.
    peer_dh: bytes
    peer_kem: bytes
    # Initiator only: the first chain's root step, committed to in the transcript.
    first_step: RootStep | None = None
    # Responder only: the signed prekey's secrets.
    dh_secret: bytes | None = None
    kem_seed: bytes | None = None
    # The HandshakeTranscript record and the initiator's signature over it:
    # public to both parties, kept so that a statement can show a third party
    # which session a message belongs to (verify_transcript).
    transcript: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayGuard:
    """Hashes of accepted handshakes, with the time each may be forgotten."""

    seen: tuple[tuple[bytes, int], ...] = ()

    def check(self, digest: bytes) -> None:
        """Raise :class:`Replay` if this handshake was accepted before."""
        if any(d == digest for d, _ in self.seen):
            raise Replay("this first message was already accepted")

    def add(self, digest: bytes, *, now: int) -> ReplayGuard:
        """Remember ``digest``; forget entries past their time."""
        live = tuple((d, t) for d, t in self.seen if t >= now)
        return ReplayGuard(seen=(*live, (digest, now + REPLAY_MEMORY))[-MAX_REPLAY_ENTRIES:])

    def to_bytes(self) -> bytes:
        """The wire encoding (type 0x0053): persist it with the prekey store."""
        return _ReplayGuardRecord(
            seen=b"".join(d + t.to_bytes(8, "big") for d, t in self.seen)
        ).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayGuard:
        """Decode strictly."""
        raw = _ReplayGuardRecord.from_bytes(data).seen
        if len(raw) % 40:
            raise MalformedInput("bad replay guard")
        return cls(
            seen=tuple(
                (raw[i : i + 32], int.from_bytes(raw[i + 32 : i + 40], "big"))
                for i in range(0, len(raw), 40)
            )
        )


def _info(responder: Fingerprint, kind: int, prekey_id: int) -> bytes:
    return CONTEXT_HANDSHAKE + responder.digest + bytes([kind]) + prekey_id.to_bytes(8, "big")


def _transcript(
    *,
    initiator: Fingerprint,
    responder: Fingerprint,
    created: int,
    bundle: PrekeyBundle,
    hpke: bytes,
    first_chain: bytes,
) -> bytes:
    otk = bundle.one_time_prekey
    return HandshakeTranscript(
        initiator=initiator.digest,
        responder=responder.digest,
        created=created,
        signed_prekey_id=bundle.signed_prekey.prekey_id,
        signed_prekey_hash=bundle.signed_prekey.hash,
        one_time_prekey_id=otk.prekey_id if otk else None,
        one_time_prekey_hash=otk.hash if otk else None,
        hpke=hpke,
        first_chain=first_chain,
    ).to_bytes()


def conversation_id(transcript_hash: bytes) -> bytes:
    """``SHA-256("securechan/v1/conversation-id" || SHA-256(transcript))[:16]``.

    Derived, never chosen: a peer cannot make its first message claim the id
    of another session (review 2026-12, finding 5); two sessions share an id
    only if their transcripts collide in 128 bits."""
    return sha256(_CONVERSATION_LABEL + transcript_hash)[:CONVERSATION_ID_SIZE]


def _keys(seed: bytes, hpke: bytes, transcript: bytes) -> tuple[bytes, bytes, bytes]:
    body_key = hkdf_sha256(seed, salt=sha256(hpke), info=_BODY_INFO, length=32)
    th = sha256(transcript)
    root = hkdf_sha256(seed, salt=th, info=_ROOT_INFO, length=32)
    return body_key, root, th


def initiate(
    me: Identity,
    peer: PublicIdentity,
    bundle: PrekeyBundle,
    *,
    now: int,
    rand: Random = random_bytes,
) -> tuple[Handshake, FirstMessage]:
    """Start a session with the pinned contact ``peer`` using ``bundle``.

    ``rand`` gives the first chain's key material and the 32-byte handshake
    seed; the HPKE encapsulation, the ML-KEM encapsulation and the ML-DSA
    signature draw their own randomness inside ``cryptography``.

    Raises :class:`BundleRejected` for a bundle not signed by ``peer``, or
    expired. Returns the handshake and a first message whose ``message``
    field is still empty (the session fills in the first ratchet message).
    """
    bundle.verify(peer, now=now)
    if peer.fingerprint == me.fingerprint:
        raise ValueError("a session with oneself is not supported")
    target = bundle.one_time_prekey or bundle.signed_prekey
    kind = KIND_ONE_TIME if bundle.one_time_prekey else KIND_SIGNED
    spk = bundle.signed_prekey.public_key
    # The first chain's root step does not depend on the root key: make it
    # now, so the signature covers the keys the responder's replies will use.
    first_step = RootStep.generate(spk[:MLKEM768_PUBLIC_KEY_SIZE], rand=rand)
    seed = rand(_SEED_SIZE)
    hpke = hpke_seal(target.public_key, seed, info=_info(peer.fingerprint, kind, target.prekey_id))
    transcript = _transcript(
        initiator=me.fingerprint,
        responder=peer.fingerprint,
        created=now,
        bundle=bundle,
        hpke=hpke,
        first_chain=first_step.commitment(),
    )
    body_key, root, th = _keys(seed, hpke, transcript)
    signature = me.sign(transcript, context=CONTEXT_HANDSHAKE)
    body = HandshakeBody(
        initiator=me.public.to_bytes(), created=now, signature=signature
    ).to_bytes()
    outer = FirstMessage(
        signed_prekey_id=bundle.signed_prekey.prekey_id,
        one_time_prekey_id=bundle.one_time_prekey.prekey_id if bundle.one_time_prekey else None,
        hpke=hpke,
        sealed_body=b"",
        message=b"",
    )
    outer = replace(outer, sealed_body=message_seal(body_key, body, outer.header_bytes()))
    return (
        Handshake(
            initiator=me.public,
            responder=peer,
            conversation=conversation_id(th),
            root_key=root,
            transcript_hash=th,
            peer_dh=spk[MLKEM768_PUBLIC_KEY_SIZE:],
            peer_kem=spk[:MLKEM768_PUBLIC_KEY_SIZE],
            first_step=first_step,
            transcript=transcript,
            signature=signature,
        ),
        outer,
    )


def accept(
    me: Identity,
    store: PrekeyStore,
    guard: ReplayGuard,
    first: FirstMessage,
    *,
    contact: Callable[[Fingerprint], PublicIdentity | None],
    first_chain: bytes,
    now: int,
) -> tuple[Handshake, PrekeyStore, ReplayGuard]:
    """Open and check a first message (the ratchet message inside is left to
    the session). ``first_chain`` is the :func:`~securechan.protocol.ratchet.chain_commitment`
    of the inner ratchet message's header, as received: the signature must
    cover it, so only the signer's own ratchet keys start the session.
    Returns the handshake and the new prekey store and guard, which the
    caller persists only once the whole first message is accepted.

    Raises :class:`Replay`, :class:`UnknownPrekey`, :class:`DecryptionFailed`,
    :class:`MalformedInput`, :class:`BadSignature`, :class:`Reflected`,
    :class:`Misaddressed` or :class:`UnknownSender`; nothing is consumed.
    """
    digest = sha256(first.hpke)
    guard.check(digest)
    spk_record, spk_pair = store.signed_key(first.signed_prekey_id, now=now)
    if first.one_time_prekey_id is not None:
        new_store, otk_record, target = store.take_one_time(first.one_time_prekey_id, now=now)
        kind, target_id = KIND_ONE_TIME, otk_record.prekey_id
    else:
        new_store, otk_record, target = store, None, spk_pair
        kind, target_id = KIND_SIGNED, spk_record.prekey_id
    try:
        seed = target.hpke_open(first.hpke, info=_info(me.fingerprint, kind, target_id))
    except VerificationFailed:
        raise DecryptionFailed("the first message does not decrypt") from None
    if len(seed) != _SEED_SIZE:
        raise MalformedInput("bad handshake seed")
    body_key = hkdf_sha256(seed, salt=sha256(first.hpke), info=_BODY_INFO, length=32)
    try:
        body_bytes = message_open(body_key, first.sealed_body, first.header_bytes())
    except VerificationFailed:
        raise DecryptionFailed("the first message does not decrypt") from None
    body = HandshakeBody.from_bytes(body_bytes)
    initiator = PublicIdentity.from_bytes(body.initiator)
    if initiator.fingerprint == me.fingerprint:
        raise Reflected("our own first message came back to us")
    bundle = PrekeyBundle(signed_prekey=spk_record, one_time_prekey=otk_record)
    transcript = _transcript(
        initiator=initiator.fingerprint,
        responder=me.fingerprint,
        created=body.created,
        bundle=bundle,
        hpke=first.hpke,
        first_chain=first_chain,
    )
    try:
        initiator.verify(body.signature, transcript, context=CONTEXT_HANDSHAKE)
    except BadSignature:
        # The transcript names us, our own prekey records and the first
        # chain's keys: a signature made for another responder or bundle, or
        # re-wrapped under someone else's ratchet keys, fails here.
        raise Misaddressed("the handshake was not signed for us and this bundle") from None
    pinned = contact(initiator.fingerprint)
    if pinned is None or not pinned.same_key(initiator):
        raise UnknownSender(
            f"first message from {initiator.name} ({initiator.fingerprint}), "
            "who is not a pinned contact",
            identity=initiator,
        )
    _, root, th = _keys(seed, first.hpke, transcript)
    seed_all = spk_pair.seed_bytes_secret()
    return (
        Handshake(
            initiator=pinned,
            responder=me.public,
            conversation=conversation_id(th),
            root_key=root,
            transcript_hash=th,
            peer_dh=spk_record.public_key[MLKEM768_PUBLIC_KEY_SIZE:],
            peer_kem=spk_record.public_key[:MLKEM768_PUBLIC_KEY_SIZE],
            dh_secret=seed_all[MLKEM768_SEED_SIZE:],
            kem_seed=seed_all[:MLKEM768_SEED_SIZE],
            transcript=transcript,
            signature=body.signature,
        ),
        new_store,
        guard.add(digest, now=now),
    )


# --- the session a transcript names (for statements, docs/AUDIT.md) -----------


def transcript_hash(transcript: bytes) -> bytes:
    """The hash of a HandshakeTranscript record: the associated-data prefix
    of every message of its session (step 4 of the module docstring)."""
    return sha256(transcript)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionBinding:
    """A verified transcript: who started the session with whom, its
    conversation id and its transcript hash."""

    initiator: PublicIdentity
    responder: PublicIdentity
    conversation: bytes
    transcript_hash: bytes


def verify_transcript(
    transcript: bytes, signature: bytes, parties: tuple[PublicIdentity, PublicIdentity]
) -> SessionBinding:
    """Check that ``transcript`` is a handshake between exactly the two
    ``parties`` (in either role), signed by the one it names as initiator.

    Raises :class:`MalformedInput` for a record that does not parse,
    :class:`VerificationFailed` when it names anyone else (a third party, or
    one party twice), and :class:`BadSignature` when the initiator's
    signature (context ``securechan/v1/handshake``) does not verify.
    """
    rec = HandshakeTranscript.from_bytes(transcript)
    first, second = parties
    if first.fingerprint == second.fingerprint:
        raise VerificationFailed("a session is between two different identities")
    by_digest = {first.fingerprint.digest: first, second.fingerprint.digest: second}
    initiator = by_digest.get(rec.initiator)
    responder = by_digest.get(rec.responder)
    if initiator is None or responder is None or initiator is responder:
        raise VerificationFailed("the handshake transcript names someone else")
    try:
        initiator.verify(signature, transcript, context=CONTEXT_HANDSHAKE)
    except BadSignature:
        raise BadSignature("the initiator's signature on the handshake does not verify") from None
    return SessionBinding(
        initiator=initiator,
        responder=responder,
        conversation=conversation_id(transcript_hash(transcript)),
        transcript_hash=transcript_hash(transcript),
    )
