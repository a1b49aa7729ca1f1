"""Pairing by a spoken code, sans-I/O: SPAKE2, sealed contact cards, key confirmation.

Two parties who share a short code (:mod:`securechan.protocol.pair_code`)
come out with each other's signed contact card, each sure that the card it
got is the one the code's other holder sent. ``docs/PROTOCOL.md``,
"Pairing", is the normative text; in short, each side sends three messages
through the relay's mailbox, in phases:

1. ``PAKE``: its SPAKE2 message (:mod:`securechan.pake`), the password being
   the whole code. Both derive the key ``K`` (equal only if the codes were).
2. ``CARD``: its own contact card, sealed (XChaCha20-Poly1305) under a key
   derived from ``K`` and the PAKE transcript for its side.
3. ``CONFIRM``: HMAC-SHA256, under its side's confirmation key, of the
   transcript hash ``TH``, which covers both PAKE messages and the SHA-256 of
   both cards (in the A, B order).

A side accepts only when the peer's card opens, verifies (self-signed), is
not its own, and the peer's confirmation matches ``TH``. Every failure,
whatever the cause (a wrong code, a tampered, replayed or reordered message,
a message from another run), is one :class:`PairingFailed`, and is final: a
failed run is never resumed, so a code buys at most one PAKE attempt.

The machine does no I/O and draws its randomness only in the PAKE and the
AEAD nonces (inside :mod:`securechan.primitives`); the client moves bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from securechan.errors import MalformedInput, PairingFailed, VerificationFailed
from securechan.identity.keys import Fingerprint
from securechan.pake import PAKE_MESSAGE_SIZE, Spake2
from securechan.primitives import (
    AEAD_OVERHEAD,
    aead_decrypt,
    aead_encrypt,
    constant_time_equal,
    hkdf_sha256,
    hmac_sha256,
    sha256,
)
from securechan.protocol.address import ContactCard
from securechan.protocol.pair_code import PairingCode

__all__ = [
    "MAX_CARD",
    "MAX_MESSAGE",
    "PairKeys",
    "Pairing",
    "Phase",
    "card_aad",
    "confirmation",
    "key_schedule",
    "parse_pair_message",
    "transcript_hash",
]

MAGIC: Final = b"SCP1"
"""First bytes of every pairing message: securechan pairing, version 1."""
MAX_CARD: Final = 32768
"""The largest contact card that pairing carries (as ``Contact.card``)."""
CONFIRM_SIZE: Final = 32
MAX_MESSAGE: Final = len(MAGIC) + 1 + MAX_CARD + AEAD_OVERHEAD

# Context strings (docs/PROTOCOL.md, "Pairing", all of them).
_TH_PAKE: Final = b"securechan/v1/pair/pake-transcript"
_TH: Final = b"securechan/v1/pair/transcript"
_CARD_KEY: Final = b"securechan/v1/pair/card-key/"
_CONFIRM_KEY: Final = b"securechan/v1/pair/confirm-key/"
_CARD_AAD: Final = b"securechan/v1/pair/card/"

Side = Literal["A", "B"]


class Phase(enum.IntEnum):
    """The mailbox phase of each message, and its type byte."""

    PAKE = 1
    CARD = 2
    CONFIRM = 3


@dataclass(frozen=True, slots=True)
class PairMessage:
    phase: Phase
    payload: bytes


def parse_pair_message(data: bytes, expected: Phase) -> PairMessage:
    """A mailbox body of the ``expected`` phase, its length checked exactly
    (PAKE, CONFIRM) or bounded (CARD). Anything else is :class:`PairingFailed`."""
    if not isinstance(data, bytes) or not 5 <= len(data) <= MAX_MESSAGE:
        raise PairingFailed("the pairing exchange was tampered with or the code is wrong")
    if data[:4] != MAGIC or data[4] != expected:
        raise PairingFailed("the pairing exchange was tampered with or the code is wrong")
    payload = data[5:]
    size = {Phase.PAKE: PAKE_MESSAGE_SIZE, Phase.CONFIRM: CONFIRM_SIZE}.get(expected)
    if (size is not None and len(payload) != size) or (
        expected == Phase.CARD and len(payload) < AEAD_OVERHEAD + 1
    ):
        raise PairingFailed("the pairing exchange was tampered with or the code is wrong")
    return PairMessage(expected, payload)


@dataclass(frozen=True, slots=True)
class PairKeys:
    """The keys of one run, from the PAKE key and both PAKE messages (§19.3)."""

    th_pake: bytes
    card_key: dict[str, bytes]
    confirm_key: dict[str, bytes]


def key_schedule(key: bytes, pake_a: bytes, pake_b: bytes) -> PairKeys:
    """docs/PROTOCOL.md §19.3 steps 2-3 (pure: the vectors check it)."""
    th_pake = sha256(_TH_PAKE + _lv(pake_a) + _lv(pake_b))

    def derive(label: bytes, side: str) -> bytes:
        return hkdf_sha256(key, salt=th_pake, info=label + side.encode(), length=32)

    return PairKeys(
        th_pake=th_pake,
        card_key={x: derive(_CARD_KEY, x) for x in ("A", "B")},
        confirm_key={x: derive(_CONFIRM_KEY, x) for x in ("A", "B")},
    )


def transcript_hash(pake_a: bytes, pake_b: bytes, card_a: bytes, card_b: bytes) -> bytes:
    """``TH`` of §19.3 step 5, over both PAKE messages and both card hashes."""
    return sha256(_TH + _lv(pake_a) + _lv(pake_b) + sha256(card_a) + sha256(card_b))


def confirmation(keys: PairKeys, side: str, th: bytes) -> bytes:
    """Side ``side``'s CONFIRM payload."""
    return hmac_sha256(keys.confirm_key[side], th)


def card_aad(side: str, th_pake: bytes) -> bytes:
    return _CARD_AAD + side.encode() + th_pake


def _frame(phase: Phase, payload: bytes) -> bytes:
    return MAGIC + bytes([phase]) + payload


def _lv(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class _State(enum.Enum):
    WAIT_PAKE = "wait-pake"
    WAIT_CARD = "wait-card"
    WAIT_CONFIRM = "wait-confirm"
    DONE = "done"
    FAILED = "failed"


class Pairing:
    """One side of one pairing run.

    ``side`` is ``"A"`` (made the code) or ``"B"`` (typed it); ``own_card``
    is our signed contact card. Send what :meth:`outgoing` returns, in
    order; feed each peer message to :meth:`receive` with the phase it
    came in (:attr:`expecting`). After :attr:`done`, :attr:`peer_card` is the
    verified card to pin. Any error is final (:attr:`failed`).
    """

    def __init__(self, side: Side, code: PairingCode, own_card: bytes) -> None:
        if side not in ("A", "B"):
            raise ValueError("side is 'A' or 'B'")
        if len(own_card) > MAX_CARD:
            raise ValueError("our contact card is too large to pair with")
        self.side: Side = side
        self._peer: Side = "B" if side == "A" else "A"
        self._own_card = own_card
        self._own_fp = ContactCard.from_bytes(own_card).identity.fingerprint
        self._pake = Spake2(side, code.password())
        self._state = _State.WAIT_PAKE
        self._out: list[tuple[Phase, bytes]] = [
            (Phase.PAKE, _frame(Phase.PAKE, self._pake.message()))
        ]
        self._pakes: tuple[bytes, bytes] = (b"", b"")
        self._keys: PairKeys | None = None
        self._peer_card_bytes = b""
        self._peer_card: ContactCard | None = None
        self._expected_confirm = b""

    # --- what the driver reads --------------------------------------------------

    @property
    def expecting(self) -> Phase | None:
        """The phase of the peer message we wait for (None when finished)."""
        return {
            _State.WAIT_PAKE: Phase.PAKE,
            _State.WAIT_CARD: Phase.CARD,
            _State.WAIT_CONFIRM: Phase.CONFIRM,
        }.get(self._state)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        return self._state is _State.FAILED

    @property
    def peer_card(self) -> ContactCard:
        """The peer's verified card; only after :attr:`done`."""
        if self._state is not _State.DONE or self._peer_card is None:
            raise PairingFailed("the pairing has not succeeded")
        return self._peer_card

    @property
    def peer_card_bytes(self) -> bytes:
        self.peer_card  # noqa: B018 - raises unless done
        return self._peer_card_bytes

    @property
    def peer_card_unconfirmed(self) -> ContactCard | None:
        """The peer's card once it opened and its self-signature verified,
        before the key confirmation: for a local check (can we pin it?)
        before our own confirmation goes out. Not to be pinned from."""
        if self._state in (_State.WAIT_CONFIRM, _State.DONE):
            return self._peer_card
        return None

    def abort(self) -> None:
        """Fail the run from outside (a local refusal); final."""
        self._state = _State.FAILED
        self._out = []

    def outgoing(self) -> list[tuple[Phase, bytes]]:
        """Messages to post now (each once), with their phase."""
        out, self._out = self._out, []
        return out

    # --- the machine ------------------------------------------------------------

    def receive(self, phase: Phase, data: bytes) -> None:
        """Take the peer's message of ``phase``; :class:`PairingFailed` (final)."""
        if self._state in (_State.DONE, _State.FAILED) or phase != self.expecting:
            self._state = _State.FAILED
            raise PairingFailed("the pairing exchange is out of order")
        try:
            msg = parse_pair_message(data, phase)
            if phase == Phase.PAKE:
                self._on_pake(msg.payload)
            elif phase == Phase.CARD:
                self._on_card(msg.payload)
            else:
                self._on_confirm(msg.payload)
        except PairingFailed:
            self._state = _State.FAILED
            raise

    def _on_pake(self, payload: bytes) -> None:
        key = self._pake.finish(payload)
        mine = self._pake.message()
        self._pakes = (mine, payload) if self.side == "A" else (payload, mine)
        keys = self._keys = key_schedule(key, *self._pakes)
        sealed = aead_encrypt(
            keys.card_key[self.side], self._own_card, aad=card_aad(self.side, keys.th_pake)
        )
        self._out.append((Phase.CARD, _frame(Phase.CARD, sealed)))
        self._state = _State.WAIT_CARD

    def _on_card(self, sealed: bytes) -> None:
        keys = self._keys
        if keys is None:  # unreachable: WAIT_CARD comes after the PAKE
            raise PairingFailed("the pairing exchange is out of order")
        try:
            card_bytes = aead_decrypt(
                keys.card_key[self._peer], sealed, aad=card_aad(self._peer, keys.th_pake)
            )
        except VerificationFailed:
            # The usual face of a wrong code: the keys differ.
            raise PairingFailed(
                "the code is wrong, or the exchange was tampered with; nothing was pinned"
            ) from None
        try:
            card = ContactCard.from_bytes(card_bytes)
        except (MalformedInput, VerificationFailed):
            raise PairingFailed("the peer's contact card does not verify") from None
        if card.identity.fingerprint == self._own_fp:
            raise PairingFailed("the peer sent our own contact card back")
        cards = (self._own_card, card_bytes) if self.side == "A" else (card_bytes, self._own_card)
        th = transcript_hash(*self._pakes, *cards)
        mine = confirmation(keys, self.side, th)
        self._expected_confirm = confirmation(keys, self._peer, th)
        self._peer_card, self._peer_card_bytes = card, card_bytes
        self._out.append((Phase.CONFIRM, _frame(Phase.CONFIRM, mine)))
        self._state = _State.WAIT_CONFIRM

    def _on_confirm(self, tag: bytes) -> None:
        if not constant_time_equal(tag, self._expected_confirm):
            self._peer_card = None
            raise PairingFailed("the peer's key confirmation does not match; nothing was pinned")
        self._state = _State.DONE

    @property
    def peer_fingerprint(self) -> Fingerprint:
        return self.peer_card.identity.fingerprint
