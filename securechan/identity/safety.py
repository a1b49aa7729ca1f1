"""Safety numbers: one value two parties compare out of band.

Follows Signal's numeric fingerprint (libsignal ``NumericFingerprintGenerator``,
version 2 iteration scheme): for each identity,

    d = SHA-512(0x0000 || LABEL || fp)
    repeat 5200 times: d = SHA-512(d || fp)

where ``fp`` is the identity's 32-byte :class:`Fingerprint` and LABEL is
``securechan/v1/safety-number``. The first 30 bytes of ``d`` give six 5-digit
groups (each 5-byte big-endian chunk mod 100000). The two 30-digit halves are
sorted and joined, so both parties see the same 60 digits, shown as 12 groups
of 5. The 5200 iterations make finding a colliding key ~2^12 times dearer.

The spoken form reads 14 more bytes of each party's own ``d`` (bytes 30..43,
112 bits, disjoint from the digits' bytes) with the PGP word list (Juola and
Zimmermann, 1995), the halves in the same order as the digits: 28 words, 14
per party. Even positions use the two-syllable list, odd positions the
three-syllable list, so a swapped, missed or repeated word is heard as wrong;
14 is even, so a party's words are the same whichever half it is.

Why each half separately: a man-in-the-middle gives Alice a key M_b and Bob a
key M_a, and wins if what Alice hears for (A, M_b) equals what Bob hears for
(M_a, B). When the spoken form is one hash of *both* halves, he varies M_a and
M_b independently and needs only a birthday collision (2^64 tries each side
for 128 bits). When each party's half is encoded on its own, he must hit
``half(M_b) == half(B)`` and ``half(M_a) == half(A)``: two second preimages,
2^112 * 5200 hashes each for the words and ~2^99.6 * 5200 for the digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from securechan.errors import UsageError
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.primitives import constant_time_equal, sha512

__all__ = ["SafetyNumber", "safety_number"]

_LABEL = b"securechan/v1/safety-number"
_ITERATIONS = 5200
# 14 bytes (112 bits) of each party's own hash; an even count, so the
# two-/three-syllable alternation of a party's words does not depend on
# whether its half comes first.
_WORDS_PER_PARTY = 14
_WORD_COUNT = 2 * _WORDS_PER_PARTY


@cache
def _word_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("securechan.identity").joinpath("pgp_words.txt").read_text("ascii")
    even, odd = [], []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        _, e, o = line.split()
        even.append(e.lower())
        odd.append(o.lower())
    if len(even) != 256 or len(set(even) | set(odd)) != 512:
        raise RuntimeError("pgp_words.txt is damaged")  # a packaging bug
    return tuple(even), tuple(odd)


class _Half:
    """One party's part: 30 digits and 14 spoken bytes, from one iterated hash."""

    __slots__ = ("digits", "spoken")

    def __init__(self, fp: Fingerprint) -> None:
        d = sha512(b"\x00\x00" + _LABEL + fp.digest)
        for _ in range(_ITERATIONS):
            d = sha512(d + fp.digest)
        self.digits = "".join(
            f"{int.from_bytes(d[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
        )
        self.spoken = d[30 : 30 + _WORDS_PER_PARTY]


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The safety number of a pair of identities: 60 digits and 28 words.

    ``spoken`` holds the 28 bytes the words encode: 14 from each party's own
    hash, in the same order as the digits' halves.
    """

    digits: str
    spoken: bytes

    def __str__(self) -> str:
        return " ".join(self.digits[i : i + 5] for i in range(0, 60, 5))

    @property
    def words(self) -> tuple[str, ...]:
        """The spoken form: 28 PGP words, 14 for each party (112 bits each)."""
        even, odd = _word_lists()
        return tuple((even if i % 2 == 0 else odd)[b] for i, b in enumerate(self.spoken))

    @property
    def words_text(self) -> str:
        """The spoken form as one line: four groups of seven words, the first
        two groups one party's half and the last two the other's."""
        w = self.words
        return " / ".join(" ".join(w[i : i + 7]) for i in range(0, len(w), 7))

    def matches(self, text: str) -> bool:
        """True if ``text`` is this number, as digits or as words.

        Spaces, dashes and slashes are ignored; words are case-insensitive.
        Raises :class:`UsageError` when ``text`` is neither form.
        """
        tokens = [t for t in re.split(r"[\s/\-]+", text.strip().lower()) if t]
        if tokens and all(t.isdigit() for t in tokens):
            given = "".join(tokens)
            if len(given) != 60:
                raise UsageError("a safety number is 60 digits")
            return constant_time_equal(given.encode(), self.digits.encode())
        if tokens and all(t.isalpha() and t.isascii() for t in tokens):
            if len(tokens) != _WORD_COUNT:
                raise UsageError(f"the spoken safety number is {_WORD_COUNT} words")
            return constant_time_equal(" ".join(tokens).encode(), " ".join(self.words).encode())
        raise UsageError(f"give the safety number as 60 digits or as {_WORD_COUNT} words")


def safety_number(a: PublicIdentity | Fingerprint, b: PublicIdentity | Fingerprint) -> SafetyNumber:
    """The order-independent safety number of two identities."""
    fa = a.fingerprint if isinstance(a, PublicIdentity) else a
    fb = b.fingerprint if isinstance(b, PublicIdentity) else b
    low, high = sorted((_Half(fa), _Half(fb)), key=lambda h: (h.digits, h.spoken))
    return SafetyNumber(low.digits + high.digits, low.spoken + high.spoken)
