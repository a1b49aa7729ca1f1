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

The spoken form encodes the first 16 bytes of
``SHA-256(WORDS_LABEL || low_half || high_half)`` (the halves as ASCII digits)
with the PGP word list (Juola and Zimmermann, 1995): even positions use the
two-syllable list, odd positions the three-syllable list, so a swapped, missed
or repeated word is heard as wrong. 16 words carry 128 bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from securechan.errors import MalformedInput
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.primitives import constant_time_equal, sha256, sha512

__all__ = ["SafetyNumber", "safety_number"]

_LABEL = b"securechan/v1/safety-number"
_WORDS_LABEL = b"securechan/v1/safety-words"
_ITERATIONS = 5200
_WORD_COUNT = 16


def _half(fp: Fingerprint) -> str:
    d = sha512(b"\x00\x00" + _LABEL + fp.digest)
    for _ in range(_ITERATIONS):
        d = sha512(d + fp.digest)
    return "".join(f"{int.from_bytes(d[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


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


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The 60-digit safety number of a pair of identities."""

    digits: str

    def __str__(self) -> str:
        return " ".join(self.digits[i : i + 5] for i in range(0, 60, 5))

    @property
    def words(self) -> tuple[str, ...]:
        """The spoken form: 16 PGP words."""
        data = sha256(_WORDS_LABEL + self.digits.encode("ascii"))[:_WORD_COUNT]
        even, odd = _word_lists()
        return tuple((even if i % 2 == 0 else odd)[b] for i, b in enumerate(data))

    @property
    def words_text(self) -> str:
        """The spoken form as one line, four words a group."""
        w = self.words
        return " / ".join(" ".join(w[i : i + 4]) for i in range(0, len(w), 4))

    def matches(self, text: str) -> bool:
        """True if ``text`` is this number, as digits or as words.

        Spaces, dashes and slashes are ignored; words are case-insensitive.
        Raises :class:`MalformedInput` when ``text`` is neither form.
        """
        tokens = [t for t in re.split(r"[\s/\-]+", text.strip().lower()) if t]
        if tokens and all(t.isdigit() for t in tokens):
            given = "".join(tokens)
            if len(given) != 60:
                raise MalformedInput("a safety number is 60 digits")
            return constant_time_equal(given.encode(), self.digits.encode())
        if tokens and all(t.isalpha() and t.isascii() for t in tokens):
            if len(tokens) != _WORD_COUNT:
                raise MalformedInput(f"the spoken safety number is {_WORD_COUNT} words")
            return constant_time_equal(" ".join(tokens).encode(), " ".join(self.words).encode())
        raise MalformedInput("give the safety number as 60 digits or as 16 words")


def safety_number(a: PublicIdentity | Fingerprint, b: PublicIdentity | Fingerprint) -> SafetyNumber:
    """The order-independent safety number of two identities."""
    fa = a.fingerprint if isinstance(a, PublicIdentity) else a
    fb = b.fingerprint if isinstance(b, PublicIdentity) else b
    low, high = sorted((_half(fa), _half(fb)))
    return SafetyNumber(low + high)
