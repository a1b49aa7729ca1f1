"""atheris harness: statement files (``securechan statement verify``).

Each input goes, as text and as bytes, to ``Statement.from_text`` and
``Statement.from_bytes``; whatever parses then goes through
``verify_statement`` (with and without a trusted relay key). Invariants:
only ``SecurechanError`` subclasses escape; a parsed statement re-encodes to
exactly the input (one spelling per statement); and nothing but the seed
statement itself (or another genuine one) verifies.

Seeds: a real statement written by ``securechan demo --keep DIR``
(``DIR/statement.txt``), as text and as its wire record:

    python fuzz/fuzz_statement.py --make-seeds DIR/statement.txt
    python fuzz/fuzz_statement.py -max_total_time=600 fuzz/corpus/statement fuzz/seeds/statement
"""

from __future__ import annotations

import sys
from pathlib import Path

from _fixtures import check, run

from securechan.armor import dearmor
from securechan.audit.statement import ARMOR_LABEL, Statement, verify_statement
from securechan.errors import SecurechanError

SEEDS = Path(__file__).resolve().parent / "seeds" / "statement"


def _verify(st: Statement) -> None:
    try:
        verify_statement(st)
    except SecurechanError:
        return
    # A statement that verifies must be one a real exporter made: its file
    # form is canonical and parses back to the same statement.
    check(Statement.from_text(st.to_text()) == st, "a verified statement does not round-trip")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        st = Statement.from_text(text)
    except SecurechanError:
        pass
    else:
        check(st.to_text() == text, "from_text accepted a non-canonical file")
        _verify(st)
    try:
        st = Statement.from_bytes(data)
    except SecurechanError:
        return
    check(st.to_bytes() == data, "from_bytes accepted a non-canonical record")
    _verify(st)


def _make_seeds(path: str) -> None:
    text = Path(path).read_text("ascii")
    SEEDS.mkdir(parents=True, exist_ok=True)
    (SEEDS / "statement.txt").write_text(text, "ascii")
    body = dearmor(text, ARMOR_LABEL, allowed_headers=frozenset({"Message", "From", "To"})).body
    (SEEDS / "statement.bin").write_bytes(body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        _make_seeds(sys.argv[2])
    else:
        run(test_one_input)
