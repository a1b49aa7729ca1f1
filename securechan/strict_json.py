"""The one JSON reader of securechan: strict, bounded, UTF-8 only.

Every JSON document securechan reads comes from someone who may be hostile
(a client posting to the relay, a relay answering a client, a state file on
a disk someone else can write). Python's ``json.loads`` is lenient where an
attacker profits from leniency, so every entry point goes through
:func:`loads` instead (a test fails on any other ``json.loads`` in the
package):

* **UTF-8 only** (RFC 8259 §8.1). ``json.loads`` of bytes guesses UTF-16 and
  UTF-32 from the first bytes, so a body that a UTF-8 filter in front of the
  relay reads as harmless can mean something else here. A byte order mark,
  invalid UTF-8 and escapes that leave a lone surrogate (``"\\ud800"``) are
  refused.
* **Duplicate names refused** (RFC 8259 §4 leaves them undefined; RFC 7493
  I-JSON §2.3 forbids them). ``json.loads`` keeps the last, so two readers of
  one document could each see a different value.
* **No NaN, Infinity or overflowing numbers** (not JSON, RFC 8259 §6).
* **Bounded**: the caller names the largest size it accepts, and nesting
  deeper than ``max_depth`` is refused by a linear scan *before* parsing, so
  a megabyte of ``[`` costs one scan, not a ``RecursionError`` deep inside
  the parser.

Anything refused raises :class:`~securechan.errors.MalformedInput` with a
message naming what was read and why, never echoing the bytes.
"""

from __future__ import annotations

from itertools import accumulate

# Light to import (the thin command line reads the agent's answers here,
# docs/AGENT.md): the parser is CPython's C scanner, the one json.JSONDecoder
# runs; re (the nesting and surrogate scans), the json package and the error
# classes are loaded only when a document needs them.
try:
    from _json import make_scanner as _c_scanner

    _make_scanner: Callable[[Any], Callable[[str, int], tuple[Any, int]]] | None = _c_scanner
except ImportError:  # not CPython: json.JSONDecoder's pure-Python scanner
    _make_scanner = None

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from securechan.errors import MalformedInput

__all__ = ["DEFAULT_MAX_DEPTH", "loads"]

# Our deepest format (a relay answer carrying a receipt) nests five levels.
DEFAULT_MAX_DEPTH = 32

_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_WHITESPACE = " \t\n\r"  # JSON's four (RFC 8259 section 2), as json.decoder's
_INFINITIES = (float("inf"), float("-inf"))


class _Patterns:
    """The scans' regular expressions, compiled on first use."""

    def __init__(self) -> None:
        import re

        # A JSON string, closed or not (so the scan never backtracks: an
        # unclosed string runs to the end, and the parser refuses it
        # afterwards). Possessive quantifiers keep it linear on any input.
        self.string = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
        self.not_bracket = re.compile(r"[^\[\]{}]++")
        # A \u escape naming a UTF-16 surrogate: only then can a lone one appear.
        self.surrogate_escape = re.compile(r"\\u[dD][89a-fA-F]")
        self.surrogate = re.compile("[\ud800-\udfff]")


_patterns: list[_Patterns] = []


def _re() -> _Patterns:
    if not _patterns:
        _patterns.append(_Patterns())
    return _patterns[0]


def _malformed(message: str) -> MalformedInput:
    from securechan.errors import MalformedInput

    return MalformedInput(message)


class _Refused(ValueError):
    """Raised inside the parser's hooks; turned into MalformedInput (with
    the input's name) by :func:`loads`. Never leaves this module."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused("a name appears twice in one object")
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if value in _INFINITIES:  # "1e999"; NaN is no number literal
        raise _Refused("a number is out of range")
    return value


class _Settings:
    """What the C scanner reads from its context: json.JSONDecoder's
    attributes, set as securechan's reader wants them."""

    strict = True  # no raw control characters inside strings
    object_hook = None
    object_pairs_hook = staticmethod(_pairs)
    parse_float = staticmethod(_float)
    parse_int = int
    parse_constant = staticmethod(_constant)


def _python_decoder() -> Callable[[str], Any]:
    import json

    decoder = json.JSONDecoder(
        object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, strict=True
    )
    return decoder.decode


def _scanner() -> Callable[[str], Any]:
    if _make_scanner is None:
        return _python_decoder()
    scan = _make_scanner(_Settings)

    def decode(text: str) -> Any:
        # json.JSONDecoder.decode, without its whitespace regex.
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = scan(text, start)
        except StopIteration:
            raise ValueError("no JSON value") from None
        if text[end:].strip(_WHITESPACE):
            raise ValueError("extra data after the JSON value")
        return value

    return decode


_decode = _scanner()


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than ``max_depth`` (strings
    ignored). Linear time, all of it in C: no Python loop per byte."""
    if text.count("[") + text.count("{") <= max_depth:
        return False  # fewer openings than the bound, strings included
    patterns = _re()
    outside = patterns.string.sub("", text)
    if outside.count("[") + outside.count("{") <= max_depth:
        return False  # fewer openings than the bound: cannot nest deeper
    brackets = patterns.not_bracket.sub("", outside)
    return max(accumulate(map(_STEP.__getitem__, brackets))) > max_depth


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _re().surrogate.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def loads(
    data: bytes | str,
    *,
    max_size: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    what: str = "the input",
) -> Any:
    """Parse one JSON document strictly (see the module docstring).

    ``data`` is UTF-8 bytes (a ``str`` is encoded first, and refused if it
    holds a lone surrogate); ``max_size`` bounds its length in bytes and
    ``max_depth`` its nesting. ``what`` names the document in the error.
    Raises :class:`MalformedInput`.
    """
    if max_size < 0 or max_depth < 1:
        raise ValueError("max_size must be >= 0 and max_depth >= 1")
    if isinstance(data, str):
        if len(data) > max_size:  # each character is at least one byte
            raise _malformed(f"{what} is larger than {max_size} bytes")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed(f"{what} is not UTF-8 text") from None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("loads() takes bytes or str")
    if len(data) > max_size:
        raise _malformed(f"{what} is larger than {max_size} bytes")
    data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        raise _malformed(f"{what} starts with a byte order mark")
    if b"\x00" in data:
        # Never in JSON text (raw control characters are not allowed even
        # in strings): the sign of UTF-16 or UTF-32 without a BOM.
        raise _malformed(f"{what} is not UTF-8 JSON text (it holds a NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not UTF-8 text") from None
    if _too_deep(text, max_depth):
        raise _malformed(f"{what} nests deeper than {max_depth} levels")
    try:
        value = _decode(text)
    except _Refused as e:
        raise _malformed(f"{what} is not strict JSON: {e}") from None
    except (ValueError, RecursionError):
        # json.JSONDecodeError, and ValueError from int() past Python's
        # digit limit. RecursionError cannot happen after the depth scan
        # but is caught so a bad bound can never become a crash.
        raise _malformed(f"{what} is not JSON") from None
    if (
        ("\\ud" in text or "\\uD" in text)
        and _re().surrogate_escape.search(text)
        and _has_surrogate(value)
    ):
        raise _malformed(f"{what} is not strict JSON: a lone surrogate escape")
    return value
