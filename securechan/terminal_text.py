"""Untrusted text, rendered for a person reading a terminal.

Message text, file names, contact and relay names, relay error bodies and
statement contents are chosen by someone else (a contact, a stranger with a
contact card, the relay, whoever wrote a file). Printed raw, they drive the
terminal: ESC starts ANSI/ECMA-48 sequences (colours, cursor moves, OSC 0 sets
the window title, OSC 52 writes the clipboard), CR and BS overwrite what the
tool printed, Unicode bidi controls reorder a line (Trojan Source,
CVE-2021-42574), and a newline followed by ``[12:00] washington (verified)
...`` imitates one of the tool's own lines.

Two pure functions close that:

* :func:`inline` renders text on one line: every control character, line
  break and flagged invisible character becomes a visible escape;
* :func:`block` renders multi-line content: the same escapes, but each line
  break (LF, or CR LF) is kept and the next line starts with
  :data:`CONTINUATION` (``"  | "``), which no line of the tool's own starts
  with. Whatever the text holds, it cannot start a line that looks like the
  tool's.

Given the terminal's width, both also cut a line before the terminal would
wrap it (and go on after :data:`CONTINUATION`), so padding cannot push text to
the start of a screen line either. Unicode 14 (this Python's database)
classifies the characters; ``tests/test_terminal_text.py`` checks the list.

What is made visible (docs/CLI.md, "How untrusted text is shown"):

* C0 controls U+0000-U+001F (ESC, BEL, CR, BS, TAB, NUL...), DEL U+007F and
  the C1 controls U+0080-U+009F (CSI, OSC, NEL...) as ``\\xNN``;
* as ``<U+XXXX>``: the line and paragraph separators U+2028/U+2029, lone
  surrogates, and every Unicode format character (category Cf): the bidi
  embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069,
  U+200E, U+200F, U+061C), zero-width space and word joiner, U+FEFF, the soft
  hyphen, tag characters... except those that are part of writing a script:
  ZWNJ and ZWJ (U+200C, U+200D; Persian, Indic scripts, emoji sequences) and
  the visible prepended concatenation marks (U+0600-U+0605 and the like).

Every other character, of any script, is kept as it is. Nothing here imports
the rest of securechan: the CLI and the demo use it (tests/test_layers.py).
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    import re

__all__ = ["CONTINUATION", "block", "escape", "inline", "is_flagged"]

CONTINUATION = "  | "
"""What starts each continuation line of a :func:`block`: never the start of
one of the tool's own lines."""

# Unicode format characters (category Cf, Unicode 15) made visible. Kept (not
# listed): U+200C ZWNJ and U+200D ZWJ, which Persian, Indic scripts and emoji
# need, and the prepended concatenation marks U+0600-0605, U+06DD, U+070F,
# U+0890-0891, U+08E2, U+110BD, U+110CD and the Egyptian hieroglyph format
# controls U+13430-1343F, which are drawn as part of their script.
# tests/test_terminal_text.py checks this list against unicodedata.
_FORMAT = (
    "\u00ad"  # soft hyphen: invisible, hides a difference ("cease\u00adfire")
    "\u061c"  # ARABIC LETTER MARK (bidi)
    "\u180e"  # MONGOLIAN VOWEL SEPARATOR (zero width)
    "\u200b"  # ZERO WIDTH SPACE
    "\u200e\u200f"  # LRM, RLM (bidi marks)
    "\u202a-\u202e"  # LRE, RLE, PDF, LRO, RLO (bidi embeddings and overrides)
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u206f"  # LRI, RLI, FSI, PDI (bidi isolates), deprecated format chars
    "\ufeff"  # zero width no-break space (BOM)
    "\ufff9-\ufffb"  # interlinear annotation
    "\U0001bca0-\U0001bca3"  # shorthand format controls
    "\U0001d173-\U0001d17a"  # musical symbol format controls
    "\U000e0001\U000e0020-\U000e007f"  # tag characters (invisible text)
)
_C0_C1 = "\x00-\x1f\x7f-\x9f"
_SEPARATORS = "\u2028\u2029"
_SURROGATES = "\ud800-\udfff"
_CLASS = f"[{_C0_C1}{_SEPARATORS}{_SURROGATES}{_FORMAT}]"
_compiled: list[re.Pattern[str]] = []


def _flagged() -> re.Pattern[str]:
    """The flagged characters' pattern, compiled on first use: text that
    :meth:`str.isprintable` passes holds none (every flagged character is a
    control, a separator, a surrogate or a format character, none of which
    is printable), so the thin command line printing plain text never loads
    ``re``."""
    if not _compiled:
        import re

        _compiled.append(re.compile(_CLASS))
    return _compiled[0]


def escape(char: str) -> str:
    """The visible form of one flagged character: ``\\x1b`` for a C0/C1
    control or DEL, ``<U+202E>`` for any other."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    return f"<U+{code:04X}>"


def is_flagged(char: str) -> bool:
    """Whether :func:`inline` replaces this character by its escape."""
    return not char.isprintable() and _flagged().fullmatch(char) is not None


def inline(text: str, *, width: int | None = None, indent: int = 0) -> str:
    """``text`` on one line, safe to print: every flagged character (line
    breaks included) replaced by its visible escape, everything else kept.

    With ``width`` (the terminal's columns) the result is also cut, as
    :func:`block` does, where the terminal would have wrapped it."""
    if width is None:
        if text.isprintable():
            return text  # nothing to escape (see _flagged)
        return _flagged().sub(lambda m: escape(m.group()), text)
    return _fit([text], width, indent)


def block(text: str, *, width: int | None = None, indent: int = 0) -> str:
    """``text`` over several lines, safe to print after the tool's own head
    (``"head: " + block(text)``): line breaks (LF or CR LF) are kept and each
    continuation line starts with :data:`CONTINUATION`; everything else as
    :func:`inline`.

    With ``width`` (the terminal's columns; ``indent``: how many the head
    already takes on the first line), every line is also cut before the
    terminal would wrap it, and goes on after :data:`CONTINUATION`: a long
    line padded to wrap at the right place cannot start a screen line with
    text of its own either. Widths are over-estimated (every character but
    printable ASCII counts two columns), so the cut comes early, never late."""
    lines = _lines(text)
    if width is None:
        return ("\n" + CONTINUATION).join(inline(line) for line in lines)
    return _fit(lines, width, indent)


def _lines(text: str) -> list[str]:
    """``text`` split at each LF or CR LF (a lone CR stays, to be escaped)."""
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines[:-1]] + lines[-1:]


def _fit(lines: list[str], width: int, indent: int) -> str:
    # Keep off the last column (some terminals wrap on writing it), and always
    # leave room for some text after the prefix, whatever the width.
    room = max(width - 1, len(CONTINUATION) + 16)
    out: list[str] = []
    used = indent
    for number, line in enumerate(lines):
        if number:
            out.append("\n" + CONTINUATION)
            used = len(CONTINUATION)
        for char in line:
            shown = escape(char) if is_flagged(char) else char
            cost = len(shown) if shown.isascii() else 2
            if used + cost > room and used > len(CONTINUATION):
                out.append("\n" + CONTINUATION)
                used = len(CONTINUATION)
            out.append(shown)
            used += cost
    return "".join(out)
