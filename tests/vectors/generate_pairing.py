"""Generate tests/vectors/pairing.json: pairing by a spoken code (docs/PROTOCOL.md §19).

Run: ``python tests/vectors/generate_pairing.py`` (writes the JSON next to this file).

Deterministic: the SPAKE2 scalars come from a counter-mode SHA-256 stream
of a public label (PUBLIC TEST DATA) instead of os.urandom, and the "cards"
are fixed byte strings (a real card's ML-DSA signature is randomised, and
the transcript hash only needs the card bytes). AEAD nonces are drawn
inside primitives, so sealed cards are not vectors; the keys they are
sealed under are.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from securechan.pake import Spake2  # noqa: E402
from securechan.protocol.pair_code import parse_code  # noqa: E402
from securechan.protocol.pairing import (  # noqa: E402
    confirmation,
    key_schedule,
    transcript_hash,
)

OUT = Path(__file__).resolve().parent / "pairing.json"
CODE = "7-istanbul-revenge-guitarist-python-sardonic"
WRONG = "7-istanbul-revenge-guitarist-python-saturday"
CARD_A = b"securechan pairing vector: card of A"
CARD_B = b"securechan pairing vector: card of B"


class stream:
    """A deterministic byte source: SHA-256(label || counter) blocks."""

    def __init__(self, label: str) -> None:
        self.label = label.encode()
        self.buf = b""
        self.n = 0

    def __call__(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += hashlib.sha256(self.label + self.n.to_bytes(8, "big")).digest()
            self.n += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def build() -> dict[str, Any]:
    password = parse_code(CODE).password()
    a = Spake2("A", password, entropy=stream("securechan/v1/pair/vector/A"))
    b = Spake2("B", password, entropy=stream("securechan/v1/pair/vector/B"))
    pake_a, pake_b = a.message(), b.message()
    key_a, key_b = a.finish(pake_b), b.finish(pake_a)
    assert key_a == key_b
    wrong = Spake2("B", parse_code(WRONG).password(), entropy=stream("securechan/v1/pair/vector/B"))
    wrong_key = wrong.finish(
        Spake2("A", password, entropy=stream("securechan/v1/pair/vector/A")).message()
    )
    keys = key_schedule(key_a, pake_a, pake_b)
    th = transcript_hash(pake_a, pake_b, CARD_A, CARD_B)
    return {
        "source": "tests/vectors/generate_pairing.py (python-spake2 0.9; docs/PROTOCOL.md §19)",
        "code": CODE,
        "password": password.decode("ascii"),
        "entropy_labels": ["securechan/v1/pair/vector/A", "securechan/v1/pair/vector/B"],
        "pake_a": pake_a.hex(),
        "pake_b": pake_b.hex(),
        "key": key_a.hex(),
        "wrong_code": WRONG,
        "key_b_with_wrong_code": wrong_key.hex(),
        "th_pake": keys.th_pake.hex(),
        "card_key_a": keys.card_key["A"].hex(),
        "card_key_b": keys.card_key["B"].hex(),
        "confirm_key_a": keys.confirm_key["A"].hex(),
        "confirm_key_b": keys.confirm_key["B"].hex(),
        "card_a": CARD_A.hex(),
        "card_b": CARD_B.hex(),
        "th": th.hex(),
        "confirm_a": confirmation(keys, "A", th).hex(),
        "confirm_b": confirmation(keys, "B", th).hex(),
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
