"""Received file names (issue 13): kept in any script when safe, fuzzed for
what must never happen, and end to end through ``send --file`` and
``receive --download`` between two real console-script processes and a real
relay process."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from securechan.filenames import MAX_BYTES, sanitize_filename
from securechan.terminal_text import is_flagged
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import Pair

relay, pristine, people, pair = e2e.relay, e2e.pristine, e2e.people, e2e.pair

DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}
COMMUNIQUE = "Communiqué final — v2 (مسودة).txt"


@pytest.mark.parametrize(
    "name",
    [
        COMMUNIQUE,
        "Протокол встречи.pdf",
        "会议纪要 2026.docx",
        "मसौदा समझौता.txt",
        "می‌خواهم.txt",  # a ZWNJ inside a Persian word
        "Draft communique v2.docx",
        "a-b_c.tar.gz",
        "Ünïcödé [final] & more, 100%.odt",
    ],
)
def test_readable_names_are_kept(name: str) -> None:
    assert sanitize_filename(name) == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Communique\u0301.txt", "Communiqué.txt"),  # NFD in, NFC out
        ("\u202egnp.exe", "_gnp.exe"),  # a bidi override
        ("report\u2066x\u2069.pdf", "report_x_.pdf"),  # isolates
        ("evil\x1b]0;title\x07.txt", "evil_]0;title_.txt"),
        ("a\u200bb.txt", "a_b.txt"),  # zero-width space
        ("..\u2215..\u2215etc", "_._etc"),  # a division slash is no separator
        ("what?: <a|b>*.txt", "what__ _a_b__.txt"),  # Windows-reserved
        ("../../.bashrc", "bashrc"),
        ("NUL.tar.gz", "_NUL.tar.gz"),
        ("\u00a0spaced\u3000name", "spaced name"),  # other spaces become plain ones
    ],
)
def test_only_the_unsafe_is_replaced(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


def test_a_long_name_is_cut_between_characters() -> None:
    name = "م" * 300 + ".txt"  # two bytes a letter
    clean = sanitize_filename(name)
    assert clean.endswith(".txt")
    assert len(clean.encode("utf-8")) <= MAX_BYTES
    assert clean == "م" * ((MAX_BYTES - 4) // 2) + ".txt"


def _check(clean: str) -> None:
    assert clean
    assert "/" not in clean and "\\" not in clean
    assert clean not in {".", ".."} and not clean.startswith(".")
    assert clean == clean.rstrip(" ."), clean  # Windows drops trailing dots and spaces
    assert clean.split(".", 1)[0].rstrip(" ").upper() not in DEVICES, clean
    assert len(clean.encode("utf-8")) <= MAX_BYTES
    assert not any(is_flagged(c) for c in clean), ascii(clean)
    assert unicodedata.is_normalized("NFC", clean)
    assert sanitize_filename(clean) == clean  # idempotent


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=400))
@example("\ud800.txt")
@example("a" * 199 + "\u0301.txt")
@example("e\u0301" * 150)
@example("\u1100\u1161\u11a8" * 80)  # Hangul jamo: NFC composes them
def test_fuzz_never_unsafe(name: str) -> None:
    _check(sanitize_filename(name))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["..", ".", "x", "\\", "/", "\u202e", " ", "é", "NUL"]), max_size=12)
)
def test_fuzz_never_escapes_the_folder(parts: list[str]) -> None:
    clean = sanitize_filename("".join(parts))
    _check(clean)
    folder = Path("/srv/downloads")
    assert (folder / clean).resolve().parent == folder.resolve()


def test_unicode_file_name_end_to_end(pair: Pair, tmp_path: Path) -> None:
    """tehran sends a file named in French and Arabic; washington's
    ``receive --download`` saves it under the same name, in the folder."""
    t, w = pair.t, pair.w
    e2e._start_conversation(t, w)
    src = tmp_path / "out" / COMMUNIQUE
    src.parent.mkdir()
    src.write_bytes(b"the agreed wording")
    t.ok("send", "washington", "--file", src)
    folder = tmp_path / "downloads"
    items = w.items("receive", "--download", folder)
    files = [x for x in items if x.get("type") == "file"]
    assert len(files) == 1, items
    saved = Path(files[0]["file"])
    assert saved.name == COMMUNIQUE
    assert saved.parent == folder
    assert sorted(os.listdir(folder)) == [COMMUNIQUE]
    assert saved.read_bytes() == b"the agreed wording"
