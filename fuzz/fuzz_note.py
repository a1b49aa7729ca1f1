"""atheris harness: signed notes, checkpoints, cosignatures and note keys.

Each input goes, as bytes and as text (undecodable bytes kept as lone
surrogates), to every parser of ``securechan.audit``:
``SignedNote.from_text_unverified``, ``Checkpoint.from_text``, ``open_note``,
``open_checkpoint``, ``open_cosigned_checkpoint``, ``add_cosignature`` (the
input as the cosignature line), ``VerifierKey.from_text``,
``NoteSigner.from_text_secret`` and ``NoteSignature.from_line``.

Invariants: only ``SecurechanError`` subclasses escape, and whatever a
parser accepts is the one canonical spelling of what it returned
(``to_text()`` / ``to_line()`` / ``to_text_secret()`` give the input back).

    python fuzz/fuzz_note.py -max_total_time=600 fuzz/corpus/note fuzz/seeds/note
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _fixtures import (
    CHECKPOINT,
    LOG_KEY,
    LOG_NAME,
    LOG_VKEY,
    WITNESS_VKEY,
    check,
    run,
)

from securechan.audit.checkpoint import (
    Checkpoint,
    add_cosignature,
    open_checkpoint,
    open_cosigned_checkpoint,
    sign_checkpoint,
)
from securechan.audit.note import NoteSignature, NoteSigner, SignedNote, VerifierKey, open_note
from securechan.errors import SecurechanError

SIGNED = sign_checkpoint(LOG_KEY, LOG_NAME, CHECKPOINT)

# (parser, canonical spelling of what it returned, or None)
TEXT_OR_BYTES: list[tuple[Callable[[Any], Any], Callable[[Any], str] | None]] = [
    (SignedNote.from_text_unverified, lambda v: v.to_text()),
    (Checkpoint.from_text, lambda v: v.to_text()),
    (lambda d: open_note(d, [LOG_VKEY, WITNESS_VKEY]), None),
    (lambda d: open_checkpoint(d, LOG_VKEY), None),
    (lambda d: open_cosigned_checkpoint(d, LOG_VKEY, [WITNESS_VKEY], required=1), None),
]
TEXT_ONLY: list[tuple[Callable[[str], Any], Callable[[Any], str] | None]] = [
    (lambda t: add_cosignature(SIGNED, t, WITNESS_VKEY), None),
    (VerifierKey.from_text, lambda v: v.to_text()),
    (NoteSigner.from_text_secret, lambda v: v.to_text_secret()),
    (NoteSignature.from_line, lambda v: v.to_line().removesuffix("\n")),
]


def _try(parse: Callable[[Any], Any], spell: Callable[[Any], str] | None, data: Any) -> None:
    try:
        value = parse(data)
    except SecurechanError:
        return
    if spell is not None:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        check(spell(value) == text, f"{parse!r} accepted a non-canonical spelling")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for parse, spell in TEXT_OR_BYTES:
        _try(parse, spell, data)
        _try(parse, spell, text)
    for parse, spell in TEXT_ONLY:
        _try(parse, spell, text)


if __name__ == "__main__":
    run(test_one_input)
