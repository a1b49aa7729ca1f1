"""securechan.terminal_text: what untrusted text may do to a terminal.

The properties, for any string: the rendered form holds no C0/C1 control, no
DEL, no bidi or other flagged format character, no line or paragraph
separator, and no line break except the renderer's own, each followed by the
continuation prefix; printable text of any script comes out unchanged; and,
given the terminal's width, no rendered line is long enough to wrap.
"""

from __future__ import annotations

import sys
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.terminal_text import CONTINUATION, block, escape, inline, is_flagged

# Format characters kept on purpose: they are part of writing a script.
KEPT_FORMAT = {
    0x200C,  # ZWNJ (Persian, Indic scripts)
    0x200D,  # ZWJ (Indic scripts, emoji sequences)
    *range(0x0600, 0x0606),  # prepended concatenation marks (visible)
    0x06DD,
    0x070F,
    0x0890,
    0x0891,
    0x08E2,
    0x110BD,
    0x110CD,
    *range(0x13430, 0x13440),  # Egyptian hieroglyph format controls
}
BIDI = [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069]
BIDI += [0x200E, 0x200F, 0x061C]

# Every code point, including lone surrogates (they reach us through
# surrogateescape'd file names).
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=sys.maxunicode))
# Text of any script with nothing to flag.
printable = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf")))


def must_flag(code: int) -> bool:
    cat = unicodedata.category(chr(code))
    return cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and code not in KEPT_FORMAT)


def assert_harmless(line: str) -> None:
    bad = [f"U+{ord(c):04X}" for c in line if must_flag(ord(c))]
    assert not bad, (line, bad)


def test_the_flagged_set_is_every_control_separator_and_format_character() -> None:
    """Checked against this Python's Unicode database, code point by code point."""
    wrong = [hex(c) for c in range(sys.maxunicode + 1) if is_flagged(chr(c)) != must_flag(c)]
    assert wrong == []


def test_what_a_hostile_contact_sends_is_shown_visibly() -> None:
    hostile = (
        "\x1b]0;PWNED\x07\x1b]52;c;ZXZpbA==\x07\x1b[31mred\x1b[0m\rover\x08\x7f\x00"
        "\x9b2J\x9d0;t\x9c\u0085\u202egnp.exe\u202c\u2066x\u2069\u200e\u200f\u061c"
        "\u200b\ufeff\u2028\u2029\U000e0041"
    )
    assert inline(hostile) == (
        "\\x1b]0;PWNED\\x07\\x1b]52;c;ZXZpbA==\\x07\\x1b[31mred\\x1b[0m\\x0dover\\x08\\x7f\\x00"
        "\\x9b2J\\x9d0;t\\x9c\\x85<U+202E>gnp.exe<U+202C><U+2066>x<U+2069><U+200E><U+200F>"
        "<U+061C><U+200B><U+FEFF><U+2028><U+2029><U+E0041>"
    )
    for code in BIDI:
        assert inline(chr(code)) == f"<U+{code:04X}>"


def test_a_newline_cannot_start_a_line_of_the_tools() -> None:
    forged = "ok\n[2026-12-04T12:00:00Z] washington (verified) #9: forged"
    assert inline(forged) == "ok\\x0a[2026-12-04T12:00:00Z] washington (verified) #9: forged"
    assert block(forged) == (
        "ok\n" + CONTINUATION + "[2026-12-04T12:00:00Z] washington (verified) #9: forged"
    )
    # CR LF is one line break; a lone CR is shown.
    assert block("a\r\nb\rc\n") == f"a\n{CONTINUATION}b\\x0dc\n{CONTINUATION}"


def test_scripts_emoji_and_joiners_are_kept() -> None:
    text = "صلح می‌خواهیم — שלום — मित्र — 和平 — 👩‍👩‍👧 — ۰۱۲ — e\u0301"
    assert inline(text) == text
    assert block(text) == text


def test_surrogates_are_shown_not_crashed_on() -> None:
    assert inline("a\udcff") == "a<U+DCFF>"
    inline("a\udcff").encode("utf-8")


@settings(max_examples=500)
@given(any_text)
def test_inline_is_one_harmless_line(text: str) -> None:
    out = inline(text)
    assert "\n" not in out
    assert_harmless(out)
    assert inline(out) == out  # idempotent: escapes are plain text
    out.encode("utf-8")  # always printable: no lone surrogate left


@settings(max_examples=500)
@given(any_text)
def test_block_marks_every_continuation_line(text: str) -> None:
    lines = block(text).split("\n")
    assert len(lines) == text.count("\n") + 1
    for line in lines:
        assert_harmless(line)
    for line in lines[1:]:
        assert line.startswith(CONTINUATION)


@settings(max_examples=300)
@given(printable)
def test_printable_text_round_trips(text: str) -> None:
    assert inline(text) == text
    assert block(text) == text.replace("\n", "\n" + CONTINUATION)


@settings(max_examples=300)
@given(any_text)
def test_escapes_decode_back_to_the_text(text: str) -> None:
    """Visible, and still exact: each escape names its character."""
    rebuilt = []
    for char in text:
        rebuilt.append(escape(char) if is_flagged(char) else char)
    assert inline(text) == "".join(rebuilt)


def columns(line: str) -> int:
    """The renderer's bound: printable ASCII one column, anything else two."""
    return sum(1 if c.isascii() else 2 for c in line)


@settings(max_examples=300)
@given(any_text, st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=60))
def test_no_rendered_line_wraps_on_the_terminal(text: str, width: int, indent: int) -> None:
    """Padding cannot push text to the start of a screen line either: with
    the terminal's width, every line fits (the first after the tool's head)."""
    room = max(width - 1, len(CONTINUATION) + 16)
    for fitted in (block(text, width=width, indent=indent), inline(text, width=width)):
        lines = fitted.split("\n")
        for line in lines[1:]:
            assert line.startswith(CONTINUATION)
            assert_harmless(line)
            # A line may run over only by the one character it could not split.
            assert columns(line) <= room or columns(line[:-1]) <= len(CONTINUATION)
    lines = block(text, width=width, indent=indent).split("\n")
    assert indent + columns(lines[0]) <= room or len(lines[0]) <= 1 or indent >= room
    # Nothing lost or added: take out the cuts and it is the block again.
    unwrapped = "".join(line.removeprefix(CONTINUATION) for line in lines)
    assert unwrapped == "".join(line.removeprefix(CONTINUATION) for line in block(text).split("\n"))


def test_a_padded_line_is_cut_before_the_terminal_wraps_it() -> None:
    head = "[2026-12-04T12:00:00Z] tehran (verified) #3: "
    pad = "x" * (80 - len(head))
    forged = pad + "[2026-12-04T12:00:00Z] washington (verified) #9: forged"
    lines = (head + block(forged, width=80, indent=len(head))).split("\n")
    assert all(len(line) <= 79 for line in lines)
    assert all(line.startswith(CONTINUATION) for line in lines[1:])
