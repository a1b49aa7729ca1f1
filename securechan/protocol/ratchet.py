"""The hybrid Double Ratchet: Signal's Double Ratchet with an ML-KEM-768 step.

This follows Signal's *The Double Ratchet Algorithm* (Perrin, Marlinspike,
rev. 1, 2016; "the spec" below) and adds a post-quantum key encapsulation to
every ratchet step, in the spirit of Apple's PQ3 and Signal's triple ratchet.
``docs/PROTOCOL.md`` §13 is the normative text; in short:

* **Root step** (at every change of sending direction). The sender makes a
  fresh X25519 key pair and a fresh ML-KEM-768 key pair, encapsulates to the
  receiver's newest ML-KEM key, and mixes *both* secrets into the root key::

      rk, ck = HKDF(salt=rk, ikm=X25519(dh_self, dh_remote) || ss_kem,
                    info="securechan/v1/ratchet-root", L=64)

* **Chain step** (every message), as in the spec §5.2::

      mk_base = HMAC-SHA256(ck, 0x01);  ck = HMAC-SHA256(ck, 0x02)

* **Epoch step** (every 50 messages of one chain). A one-way run cannot
  update the root key (the root is a shared sequential state: a one-sided
  update would fork it), so every 50 messages the sender encapsulates afresh to
  the receiver's ML-KEM key and mixes that secret into each message key of the
  epoch::

      mk = HKDF(salt=ss_epoch, ikm=mk_base, info="securechan/v1/ratchet-message")

  Epoch 0 uses the root step's secret. An attacker who copied the sender's
  state must therefore also break ML-KEM (or hold the receiver's decapsulation
  key) to read messages of any later epoch: healing of a *sender-side*
  compromise within a one-way run, and a defence against a quantum adversary
  who can break X25519. A copy of the *receiver's* state holds that
  decapsulation key and is not healed before the receiver sends; mixing the
  epoch secret into the chain would not change that and would break loss
  tolerance (``docs/PROTOCOL.md`` §13). The initiator's first chain has no
  epoch steps (see :meth:`RatchetState.initiator`).

Every header repeats its chain's root ciphertext (and, after epoch 0, the
epoch's ciphertext), so any message of a chain can be opened when earlier ones
were lost, exactly as the spec repeats the ratchet public key.

The state is an immutable value: :func:`ratchet_encrypt` and
:func:`ratchet_decrypt` return a new state and never change the old one, so a
refused message leaves the state exactly as it was. Skipped message keys are
bounded per chain (:data:`MAX_SKIP`), in total (:data:`MAX_SKIPPED`, oldest
evicted first) and in time (:data:`SKIPPED_TTL`). A header that would skip too
far is refused *before* any key agreement or derivation.

The stored form of the state (type 0x0061) is in ``ratchet_record.py``; the
in-memory cache of expanded keys and decapsulated secrets in
``ratchet_cache.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import primitives, wire
from securechan.errors import (
    DecryptionFailed,
    MalformedInput,
    Reflected,
    Replay,
    TooFarAhead,
    VerificationFailed,
)
from securechan.primitives import (
    MESSAGE_REUSE_GUARD_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    X25519_KEY_SIZE,
    MlKemKeyPair,
    X25519KeyPair,
    hkdf_sha256,
    hmac_sha256,
    message_open,
    message_seal,
    mlkem_encapsulate,
    random_bytes,
    sha256,
)
from securechan.protocol.ratchet_cache import Decaps, RatchetCache

__all__ = [
    "MAX_SKIP",
    "MAX_SKIPPED",
    "PQ_INTERVAL",
    "SKIPPED_TTL",
    "Random",
    "RatchetHeader",
    "RatchetState",
    "RootStep",
    "prune",
    "ratchet_decrypt",
    "ratchet_encrypt",
]

Random = Callable[[int], bytes]
"""A source of randomness: ``rand(n)`` returns ``n`` bytes. The default
everywhere is :func:`~securechan.primitives.random_bytes` (the OS CSPRNG);
tests and vectors inject a seeded one to replay a conversation. Only key
*material* is drawn from it; the keys are built from it by ``primitives``."""

MAX_SKIP = 1000
MAX_SKIPPED = 2000
SKIPPED_TTL = 30 * 24 * 3600
PQ_INTERVAL = 50
OWN_DH_KEPT = 8
_ROOT_INFO = b"securechan/v1/ratchet-root"
_MESSAGE_INFO = b"securechan/v1/ratchet-message"
_FIRST_CHAIN_LABEL = b"securechan/v1/handshake-first-chain"


@wire.record(0x0060, "RatchetHeader")
@dataclass(frozen=True, slots=True, kw_only=True)
class RatchetHeader:
    """The cleartext (but authenticated) header of a ratchet message."""

    dh: Annotated[bytes, wire.bytes_(1, size=X25519_KEY_SIZE)]
    kem_pub: Annotated[bytes, wire.bytes_(2, size=MLKEM768_PUBLIC_KEY_SIZE)]
    root_ct: Annotated[bytes, wire.bytes_(3, size=MLKEM768_CIPHERTEXT_SIZE)]
    pn: Annotated[int, wire.uint(4)]
    n: Annotated[int, wire.uint(5)]
    epoch_ct: Annotated[bytes | None, wire.bytes_(6, size=MLKEM768_CIPHERTEXT_SIZE)] = None
    # Fresh random bytes per message: the reuse guard (see ratchet_encrypt).
    guard: Annotated[bytes, wire.bytes_(7, size=MESSAGE_REUSE_GUARD_SIZE)]
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (type 0x0060)."""
        if self.raw is not None:
            return self.raw
        return wire.encode_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetHeader:
        """Decode strictly; an epoch ciphertext is never present in epoch 0
        (whether it must be present after it depends on the chain, see
        :func:`ratchet_decrypt`)."""
        header = wire.decode_record(cls, data, raw=bytes(data))
        # The peer's ratchet keys are validated when parsed (issue 11, "peer
        # keys"): no low-order X25519 point, FIPS 203 §7.2 for ML-KEM.
        primitives.check_x25519_public_key(header.dh)
        primitives.check_mlkem768_public_key(header.kem_pub)
        if header.n < PQ_INTERVAL and header.epoch_ct is not None:
            raise MalformedInput("an epoch ciphertext in epoch 0")
        return header


HEADER = wire.schema_of(RatchetHeader)


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """A message key kept for a message that has not arrived yet."""

    dh: bytes
    n: int
    mk_base: bytes = field(repr=False)
    root_ss: bytes = field(repr=False)  # its chain's epoch-0 secret
    # The decapsulation key its chain's epoch ciphertexts target; None for a
    # chain without epoch steps (the initiator's first chain, see below).
    kem_seed: bytes | None = field(repr=False)
    at: int


@dataclass(frozen=True, slots=True)
class RootStep:
    """The sending half of a root step, made before the root key is known.

    Nothing here depends on the root key (fresh key pairs and an ML-KEM
    encapsulation to the peer's key), so the initiator makes its first
    chain's step *before* it signs the handshake and binds
    :meth:`commitment` into the signed transcript (``docs/PROTOCOL.md``
    §12): the responder then accepts the first chain only from the signer.
    """

    dh: X25519KeyPair
    kem: MlKemKeyPair
    ss: bytes = field(repr=False)
    ct: bytes

    @classmethod
    def generate(cls, peer_kem: bytes, *, rand: Random = random_bytes) -> RootStep:
        """Fresh X25519 and ML-KEM-768 pairs (the X25519 secret, then the
        ML-KEM seed, drawn from ``rand``) and an encapsulation to ``peer_kem``.

        The encapsulation draws its own randomness inside ``cryptography``
        (no API takes it), so ``ct`` and ``ss`` are fresh even with an
        injected ``rand`` (``docs/PROTOCOL.md`` §17)."""
        dh = X25519KeyPair(rand(X25519_KEY_SIZE))
        kem = MlKemKeyPair(rand(MLKEM768_SEED_SIZE))
        ss, ct = mlkem_encapsulate(peer_kem)
        return cls(dh, kem, ss, ct)

    def commitment(self) -> bytes:
        """SHA-256 over the chain's public header fields (see :func:`chain_commitment`)."""
        return chain_commitment(self.dh.public, self.kem.public, self.ct)


def chain_commitment(dh: bytes, kem_pub: bytes, root_ct: bytes) -> bytes:
    """``SHA-256("securechan/v1/handshake-first-chain" || dh || kem_pub || root_ct)``:
    every header field that, with the root key, fixes a sending chain."""
    return sha256(_FIRST_CHAIN_LABEL + dh + kem_pub + root_ct)


@dataclass(frozen=True, slots=True, kw_only=True)
class RatchetState:
    """The whole ratchet state of one party (secret; stored encrypted).

    ``dh_self``/``kem_self`` are the current secrets the peer's next chain will
    target; ``recv_kem_seed`` is the ML-KEM secret the current receiving
    chain's epoch ciphertexts were made for. ``send_pending`` says the next
    send must start a new chain (a root step), done lazily on sending so that
    an unauthenticated message never makes us generate or use keys.
    """

    rk: bytes = field(repr=False)
    dh_self: bytes | None = field(default=None, repr=False)
    kem_self: bytes | None = field(default=None, repr=False)
    # Public halves of dh_self / kem_self, kept so sending costs no key expansion.
    dh_self_pub: bytes | None = None
    kem_self_pub: bytes | None = None
    dh_remote: bytes | None = None
    kem_remote: bytes | None = None
    send_pending: bool = True
    cks: bytes | None = field(default=None, repr=False)
    ns: int = 0
    pn: int = 0
    send_root_ct: bytes | None = None
    send_root_ss: bytes | None = field(default=None, repr=False)
    send_epoch: int = 0
    send_epoch_ct: bytes | None = None
    send_epoch_ss: bytes | None = field(default=None, repr=False)
    ckr: bytes | None = field(default=None, repr=False)
    nr: int = 0
    recv_kem_seed: bytes | None = field(default=None, repr=False)
    # The current receiving chain's epoch-0 secret (its root step's).
    recv_root_ss: bytes | None = field(default=None, repr=False)
    # Whether the current sending / receiving chain has epoch steps: all but
    # the initiator's first chain, which targets the responder's signed
    # prekey, whose secret the responder erases at once (see initiator()).
    send_epochs: bool = True
    recv_epochs: bool = True
    skipped: tuple[Skipped, ...] = ()
    own_dh_recent: tuple[bytes, ...] = ()
    remote_dh_recent: tuple[bytes, ...] = ()

    @classmethod
    def initiator(
        cls, rk: bytes, *, peer_dh: bytes, peer_kem: bytes, first: RootStep
    ) -> RatchetState:
        """Alice: she knows Bob's signed prekey, whose halves are his first
        ratchet keys (spec §3.3, ``RatchetInitAlice``). ``first`` is the root
        step her signed handshake transcript committed to; it is applied here.

        This first chain has no epoch steps: they would encapsulate to the
        signed prekey's ML-KEM key, and the responder erases that secret as
        soon as it has made the receiving root step (review 2026-12, finding
        6), so that no stored session holds a prekey secret."""
        st = cls(rk=rk, dh_remote=peer_dh, kem_remote=peer_kem, send_pending=True)
        return replace(_root_step(st, first), send_epochs=False)

    @classmethod
    def responder(cls, rk: bytes, *, dh_secret: bytes, kem_seed: bytes) -> RatchetState:
        """Bob: his signed prekey's secrets are his first ratchet keys
        (spec §3.3, ``RatchetInitBob``); he sends after Alice's first message."""
        dh_pub = X25519KeyPair(dh_secret).public
        return cls(
            rk=rk,
            dh_self=dh_secret,
            kem_self=kem_seed,
            dh_self_pub=dh_pub,
            kem_self_pub=MlKemKeyPair(kem_seed).public,
            send_pending=False,
            own_dh_recent=(dh_pub,),
        )


def _root_step(st: RatchetState, step: RootStep) -> RatchetState:
    if st.dh_remote is None:
        raise ValueError("this side cannot send before it has received a message")
    dh, kem, ss, ct = step.dh, step.kem, step.ss, step.ct
    rk, cks = _kdf_rk(st.rk, dh.exchange(st.dh_remote), ss)
    return replace(
        st,
        rk=rk,
        dh_self=dh.secret_bytes(),
        kem_self=kem.seed_bytes_secret(),
        dh_self_pub=dh.public,
        kem_self_pub=kem.public,
        send_pending=False,
        cks=cks,
        pn=st.ns,
        ns=0,
        send_root_ct=ct,
        send_root_ss=ss,
        send_epoch=0,
        send_epoch_ct=None,
        send_epoch_ss=ss,
        send_epochs=True,
        own_dh_recent=(*st.own_dh_recent, dh.public)[-OWN_DH_KEPT:],
    )


def _kdf_rk(rk: bytes, dh_out: bytes, kem_ss: bytes) -> tuple[bytes, bytes]:
    okm = hkdf_sha256(dh_out + kem_ss, salt=rk, info=_ROOT_INFO, length=64)
    return okm[:32], okm[32:]


def _kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    return hmac_sha256(ck, b"\x01"), hmac_sha256(ck, b"\x02")


def _message_key(mk_base: bytes, epoch_ss: bytes) -> bytes:
    return hkdf_sha256(mk_base, salt=epoch_ss, info=_MESSAGE_INFO, length=32)


def ratchet_encrypt(
    state: RatchetState,
    plaintext: bytes,
    ad: bytes,
    *,
    cache: RatchetCache | None = None,
    rand: Random = random_bytes,
) -> tuple[RatchetState, RatchetHeader, bytes, bytes]:
    """Encrypt one message. Returns the new state, the header, the ciphertext
    and the message key; the caller MUST persist the new state before sending.

    ``rand`` gives the key material of a root step's new key pairs and the
    reuse guard; ML-KEM encapsulations draw their own randomness.

    **Reuse guard** (after MLS, RFC 9420 §6.3.1): 32 fresh bytes from
    ``rand`` go into the header and salt the derivation of the AEAD key and
    nonce from the message key. A state restored from a backup sends again
    at a ratchet position it already used, with the same message key; the
    guard still makes the AEAD key and nonce new, so the two ciphertexts
    reveal nothing about each other (the peer refuses the second as a
    replay of that position, see :class:`~securechan.errors.Replay`).

    The message key opens this one message and nothing else (every key of a
    chain comes from a one-way KDF step), so the sender may keep it to reveal
    the message later in a statement (``docs/AUDIT.md``, Statements)."""
    st = state
    if st.send_pending or st.cks is None:
        if st.dh_remote is None or st.kem_remote is None:
            raise ValueError("this side cannot send before it has received a message")
        # Root step (spec §3.5, sending half), with an ML-KEM encapsulation.
        step = RootStep.generate(st.kem_remote, rand=rand)
        if cache is not None:
            # The peer's next chain will target these: keep them expanded.
            RatchetCache.put(cache.x25519, step.dh.secret_bytes(), step.dh)
            RatchetCache.put(cache.mlkem, step.kem.seed_bytes_secret(), step.kem)
        st = _root_step(st, step)
    if st.cks is None or st.dh_self is None or st.kem_self is None or st.kem_remote is None:
        raise ValueError("inconsistent ratchet state")  # unreachable
    epoch = st.ns // PQ_INTERVAL if st.send_epochs else 0
    if epoch != st.send_epoch:
        # Epoch step: a fresh encapsulation every PQ_INTERVAL messages.
        ss, ct = mlkem_encapsulate(st.kem_remote)
        st = replace(st, send_epoch=epoch, send_epoch_ct=ct, send_epoch_ss=ss)
    chain, dh_pub, kem_pub = st.cks, st.dh_self_pub, st.kem_self_pub
    if st.send_root_ct is None or st.send_epoch_ss is None or chain is None:
        raise ValueError("inconsistent ratchet state")  # unreachable
    if dh_pub is None or kem_pub is None:
        raise ValueError("inconsistent ratchet state")  # unreachable
    mk_base, next_chain = _kdf_ck(chain)
    header = RatchetHeader(
        dh=dh_pub,
        kem_pub=kem_pub,
        root_ct=st.send_root_ct,
        pn=st.pn,
        n=st.ns,
        epoch_ct=st.send_epoch_ct if epoch > 0 else None,
        guard=rand(MESSAGE_REUSE_GUARD_SIZE),
    )
    # Encoded once, with the codec's checks (the bytes to_bytes() would
    # make), and kept in the header without copying it (replace() costs as
    # much as the encoding).
    raw = wire.encode(
        HEADER,
        {
            "dh": header.dh,
            "kem_pub": header.kem_pub,
            "root_ct": header.root_ct,
            "pn": header.pn,
            "n": header.n,
            "epoch_ct": header.epoch_ct,
            "guard": header.guard,
        },
    )
    object.__setattr__(header, "raw", raw)
    message_key = _message_key(mk_base, st.send_epoch_ss)
    ciphertext = message_seal(message_key, plaintext, ad + raw, reuse_guard=header.guard)
    return replace(st, cks=next_chain, ns=st.ns + 1), header, ciphertext, message_key


def _prune(skipped: tuple[Skipped, ...], now: int) -> tuple[Skipped, ...]:
    live = tuple(s for s in skipped if now - s.at <= SKIPPED_TTL)
    return live[-MAX_SKIPPED:]


def prune(state: RatchetState, now: int) -> RatchetState:
    """``state`` without skipped keys older than :data:`SKIPPED_TTL`.

    Applied on every receive and, by the session, on every write and load
    of the state, so an expired key (and the ML-KEM seed kept with it) does
    not outlive its 30 days when no later message arrives."""
    live = _prune(state.skipped, now)
    return state if live == state.skipped else replace(state, skipped=live)


def _skip(
    skipped: list[Skipped],
    ck: bytes,
    nr: int,
    until: int,
    dh: bytes,
    root_ss: bytes,
    kem_seed: bytes | None,
    now: int,
) -> tuple[bytes, int]:
    while nr < until:
        mk_base, ck = _kdf_ck(ck)
        skipped.append(
            Skipped(dh=dh, n=nr, mk_base=mk_base, root_ss=root_ss, kem_seed=kem_seed, at=now)
        )
        nr += 1
    return ck, nr


def ratchet_decrypt(
    state: RatchetState,
    header: RatchetHeader,
    ciphertext: bytes,
    ad: bytes,
    *,
    now: int,
    cache: RatchetCache | None = None,
) -> tuple[RatchetState, bytes, bytes]:
    """Decrypt one message; return the new state, the plaintext and the
    message key that opened it (kept for statements, see ratchet_encrypt).

    Raises :class:`Reflected` for our own message, :class:`TooFarAhead` for a
    header that would skip more than :data:`MAX_SKIP` keys (checked before any
    key agreement), :class:`Replay` (naming the position) for a position whose
    key was already used, and :class:`DecryptionFailed` otherwise. ``state``
    is never changed; on failure nothing is returned.
    """
    if header.dh in state.own_dh_recent:
        raise Reflected("a message made with our own ratchet key came back to us")
    full_ad = ad + header.to_bytes()
    cache = cache if cache is not None else RatchetCache()
    decaps = Decaps(cache)

    def open_with(mk_base: bytes, root_ss: bytes, kem_seed: bytes | None) -> tuple[bytes, bytes]:
        # A chain without epoch steps (kem_seed None) stays in epoch 0.
        epoch = header.n // PQ_INTERVAL if kem_seed is not None else 0
        if (epoch > 0) != (header.epoch_ct is not None):
            raise DecryptionFailed("the message does not decrypt")
        if kem_seed is not None and header.epoch_ct is not None:
            ss = decaps(kem_seed, header.epoch_ct)
        else:
            ss = root_ss
        key = _message_key(mk_base, ss)
        try:
            return message_open(key, ciphertext, full_ad, reuse_guard=header.guard), key
        except VerificationFailed:
            raise DecryptionFailed("the message does not decrypt") from None

    # 1. A key skipped earlier (spec §3.5, TrySkippedMessageKeys). Expired
    # keys are never used, even if no later message has pruned them yet.
    for i, s in enumerate(state.skipped):
        if s.n == header.n and s.dh == header.dh:
            if now - s.at > SKIPPED_TTL:
                raise Replay("the key for this late message has expired", chain=s.dh, n=s.n)
            plaintext, key = open_with(s.mk_base, s.root_ss, s.kem_seed)
            decaps.commit()
            rest = state.skipped[:i] + state.skipped[i + 1 :]
            return replace(state, skipped=_prune(rest, now)), plaintext, key

    new_chain = header.dh != state.dh_remote
    if new_chain and header.dh in state.remote_dh_recent:
        # A chain we already left: its unused keys are all in `skipped`.
        raise Replay("no key for this message (a replay, or too old)", chain=header.dh, n=header.n)
    # 2. Bounds first: nothing expensive happens for a header that skips too far.
    if new_chain:
        behind = header.pn - state.nr if state.ckr is not None else 0
        if behind > MAX_SKIP or header.n > MAX_SKIP:
            raise TooFarAhead("the header would skip too many message keys")
    elif header.n - state.nr > MAX_SKIP:
        raise TooFarAhead("the header would skip too many message keys")
    if not new_chain and header.n < state.nr:
        # This position's key was used: a relay's replay, or a sender
        # restored from a backup. The caller tells them apart with the key
        # it kept for (header.dh, header.n) (opening.open_ratchet_message).
        raise Replay("no key for this message (a replay, or too old)", chain=header.dh, n=header.n)

    skipped = list(state.skipped)
    st = state
    if new_chain:
        dh_self, kem_self = state.dh_self, state.kem_self
        if dh_self is None or kem_self is None:
            raise DecryptionFailed("no key for this message")
        # A previous-chain length below what we received on that chain is
        # never sent by an honest peer: it is a sender restored from a
        # backup that received since (it skips nothing here). Signal's
        # DHRatchet only skips up to pn; we do the same and go on, so that
        # the message is opened and its signed sequence number, which went
        # backwards, reports the rollback with evidence (the session
        # refuses it; nothing is committed).
        if st.ckr is not None and st.dh_remote is not None and st.recv_root_ss is not None:
            ckr, nr = _skip(
                skipped,
                st.ckr,
                st.nr,
                header.pn,
                st.dh_remote,
                st.recv_root_ss,
                st.recv_kem_seed if st.recv_epochs else None,
                now,
            )
            st = replace(st, ckr=ckr, nr=nr)
        # Root step, receiving half (spec §3.5, DHRatchet), with ML-KEM.
        try:
            dh_out = cache.x25519_pair(dh_self).exchange(header.dh)
        except VerificationFailed:
            raise DecryptionFailed("the message does not decrypt") from None
        ss = decaps(kem_self, header.root_ct)
        rk, ckr = _kdf_rk(st.rk, dh_out, ss)
        # The responder's first chain (it has never received): our keys are
        # the signed prekey's. That chain has no epoch steps, so nothing
        # needs the prekey's secrets any more: erase them from the session.
        first = state.dh_remote is None
        st = replace(
            st,
            rk=rk,
            ckr=ckr,
            nr=0,
            dh_remote=header.dh,
            kem_remote=header.kem_pub,
            recv_kem_seed=None if first else kem_self,
            recv_root_ss=ss,
            recv_epochs=not first,
            dh_self=None if first else st.dh_self,
            kem_self=None if first else st.kem_self,
            send_pending=True,
            remote_dh_recent=(
                (*st.remote_dh_recent, st.dh_remote)[-OWN_DH_KEPT:]
                if st.dh_remote is not None
                else st.remote_dh_recent
            ),
        )
    if st.ckr is None or st.dh_remote is None or st.recv_root_ss is None:
        raise DecryptionFailed("no key for this message")
    kem_seed = st.recv_kem_seed if st.recv_epochs else None
    if st.recv_epochs and kem_seed is None:
        raise DecryptionFailed("no key for this message")  # unreachable
    ckr, nr = _skip(skipped, st.ckr, st.nr, header.n, st.dh_remote, st.recv_root_ss, kem_seed, now)
    mk_base, ckr = _kdf_ck(ckr)
    plaintext, key = open_with(mk_base, st.recv_root_ss, kem_seed)
    decaps.commit()
    return replace(st, ckr=ckr, nr=nr + 1, skipped=_prune(tuple(skipped), now)), plaintext, key
