"""A peer-supplied file name made safe to create in a folder, in any script.

A received file's name is chosen by the sender: ``../../.bashrc``, ``NUL.txt``,
``\\u202egnp.exe`` (shown as ``exe.png``), a name with ESC sequences for the
terminal, 4 KB of ``A``. magic-wormhole's CVE-2026-42448 was such a path. The
name is also a person's: ``Communiqué final — v2 (مسودة).txt`` must stay
readable. :func:`sanitize_filename` keeps every letter, mark and digit of any
script, spaces and punctuation, and replaces only what is unsafe
(docs/CLI.md, "Received file names"):

1. NFC-normalise (one spelling of ``é``, as macOS and Linux users type it);
2. keep only the last path component (``/`` and ``\\`` both separate);
3. replace with ``_``: controls (Cc), format characters (Cf: bidi
   embeddings, overrides, isolates and marks, zero-width space, BOM, tags...)
   but ZWNJ/ZWJ, which Persian and Indic names need (as
   :mod:`securechan.terminal_text` keeps them), line and paragraph separators,
   surrogates, private-use and unassigned code points; the characters Windows
   forbids (``< > : " | ? *``); and look-alikes of a slash (U+2044, U+2215,
   U+29F8, U+FF0F, U+FF3C) so a name cannot pretend to be a path;
4. every other space character becomes a plain space;
5. strip leading dots and spaces (no hidden file, no ``..``) and trailing dots
   and spaces (Windows drops them);
6. at most :data:`MAX_BYTES` bytes of UTF-8, cut between characters, keeping
   an extension of up to 10 characters; room is left for the `` (N)`` that the
   CLI adds to a name already taken, within the usual 255-byte limit;
7. a Windows device name (``CON``, ``NUL``, ``COM1``...; with any extension)
   gets a leading ``_``; an empty result is ``file``.

The result is never empty, ``.`` or ``..``, holds no separator, starts with no
dot, shows nothing :func:`securechan.terminal_text.is_flagged` would escape,
and :func:`sanitize_filename` returns it unchanged (idempotent):
``tests/test_filenames.py`` checks all of it with hypothesis.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_BYTES", "sanitize_filename"]

MAX_BYTES = 200
"""The longest result, in bytes of UTF-8."""

_MAX_EXTENSION = 10
_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}
_WINDOWS_RESERVED = frozenset('<>:"|?*')
_SLASH_LOOKALIKES = frozenset("\u2044\u2215\u29f8\uff0f\uff3c")
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: part of writing Persian, Indic scripts
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _safe_char(char: str) -> str:
    if char in _JOINERS:
        return char
    category = unicodedata.category(char)
    if category in _REFUSED_CATEGORIES:
        return "_"
    if char in _WINDOWS_RESERVED or char in _SLASH_LOOKALIKES:
        return "_"
    if category == "Zs":
        return " "
    return char


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-8 bytes: cut
    between code points, never inside one."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _once(name: str) -> str:
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(_safe_char(c) for c in base).strip(" .")
    stem, dot, ext = clean.rpartition(".")
    if not dot or len(ext) > _MAX_EXTENSION or not ext.strip(" "):
        stem, ext = clean, ""
    room = MAX_BYTES - (len(ext.encode("utf-8")) + 1 if ext else 0)
    # A cut can leave a combining mark or a joiner alone at the end, or a
    # trailing space or dot: strip those too.
    stem = _cut(stem, room).rstrip(" .\u200c\u200d")
    while stem and unicodedata.combining(stem[-1]):
        stem = stem[:-1]
    stem = stem.rstrip(" .") or "file"
    if stem.split(".", 1)[0].strip(" ").upper() in _DEVICES:
        stem = "_" + _cut(stem, room - 1).rstrip(" .")
    out = f"{stem}.{ext}" if ext else stem
    return unicodedata.normalize("NFC", out)


def sanitize_filename(name: str) -> str:
    """A safe, readable file name from a peer-supplied one (the module's
    rules). Pure; never raises for a ``str``."""
    out = _once(name)
    # A second pass is a no-op for almost every name; it settles the rare one
    # whose NFC form changes after a cut (a mark against a new neighbour).
    for _ in range(3):
        again = _once(out)
        if again == out:
            break
        out = again
    return out
