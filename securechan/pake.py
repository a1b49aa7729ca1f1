"""The password-authenticated key exchange for pairing: SPAKE2 over Ed25519.

The second module (after ``primitives.py``) that touches a cryptographic
library: it wraps the ``spake2`` package (python-spake2 0.9, MIT, the PAKE
magic-wormhole has used since 2016), and only this module may import it
(``tests/test_layers.py``). It is at the primitives layer.

What the package is, honestly (``docs/PROTOCOL.md`` §"Pairing", "Choices"):

* SPAKE2 (Abdalla-Pointcheval 2005) with the Ed25519 group, M and N made by
  hashing seeds to the group, the password mapped to a scalar with HKDF.
  It predates RFC 9382 and is **not byte-compatible with it**: RFC 9382 fixes
  other M/N points and a length-prefixed transcript fed to a KDF with key
  confirmation; python-spake2 hashes
  ``SHA256(pw) || SHA256(idA) || SHA256(idB) || X || Y || K``. The security
  argument of SPAKE2 is the same; securechan adds its own key confirmation
  over a transcript hash (protocol/pairing.py).
* The group arithmetic is pure Python on big integers: **not constant
  time**. The timing of ``start()`` depends on the password scalar. Why that
  is accepted for a one-shot code, and what CPace over libsodium would buy,
  is in docs/PROTOCOL.md and docs/THREAT-MODEL.md.

Every failure of the exchange (a malformed or low-order element, a message
from the wrong side, a reflected message) is one :class:`PairingFailed`,
raised ``from None``: the peer learns nothing from which check failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from securechan.errors import PairingFailed

__all__ = ["PAKE_MESSAGE_SIZE", "Spake2"]

PAKE_MESSAGE_SIZE: Final = 33
"""One side byte (``A`` or ``B``) and one compressed Ed25519 element."""

_ID_A: Final = b"securechan/v1/pair/A"
_ID_B: Final = b"securechan/v1/pair/B"


class Spake2:
    """One side of one SPAKE2 run: :meth:`message` once, :meth:`finish` once.

    ``side`` is ``"A"`` for the party that made the code, ``"B"`` for the one
    that typed it; ``password`` is the whole normalised code.
    """

    __slots__ = ("_finished", "_message", "_state")

    def __init__(
        self,
        side: Literal["A", "B"],
        password: bytes,
        *,
        entropy: Callable[[int], bytes] | None = None,
    ) -> None:
        from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]  # loaded when pairing

        if side not in ("A", "B"):
            raise ValueError("side is 'A' or 'B'")
        if not isinstance(password, bytes) or not password:
            raise ValueError("the password is non-empty bytes")
        cls = SPAKE2_A if side == "A" else SPAKE2_B
        # ``entropy`` replaces os.urandom for the ephemeral scalar: test
        # vectors only (tests/vectors/pairing.json).
        extra = {"entropy_f": entropy} if entropy is not None else {}
        self._state = cls(password, idA=_ID_A, idB=_ID_B, **extra)
        self._message: bytes = self._state.start()
        self._finished = False

    def message(self) -> bytes:
        """Our PAKE message (33 bytes), to send to the peer."""
        return self._message

    def finish(self, peer_message: bytes) -> bytes:
        """The 32-byte shared key from the peer's message.

        A wrong password is *not* detected here (both sides get a key, the
        keys differ): the caller's key confirmation finds it. Raises
        :class:`PairingFailed` for a message that is not a valid element
        from the other side, and on a second call.
        """
        if self._finished:
            raise PairingFailed("the pairing exchange was already finished")
        self._finished = True
        if not isinstance(peer_message, bytes) or len(peer_message) != PAKE_MESSAGE_SIZE:
            raise PairingFailed("the peer's pairing message is malformed")
        try:
            key = self._state.finish(peer_message)
        except Exception:  # the package raises its own errors and ValueError/AssertionError
            raise PairingFailed("the peer's pairing message is malformed") from None
        if not isinstance(key, bytes) or len(key) != 32:
            raise PairingFailed("the pairing exchange failed")
        return key
