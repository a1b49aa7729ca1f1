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

import json
import math
import re
from itertools import accumulate

from securechan.errors import MalformedInput

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "loads"]

# Our deepest format (a relay answer carrying a receipt) nests five levels.
DEFAULT_MAX_DEPTH = 32

# A JSON string, closed or not (so the scan never backtracks: an unclosed
# string runs to the end, and the parser refuses it afterwards). Possessive
# quantifiers keep it linear on any input.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# A \u escape naming a UTF-16 surrogate: only then can a lone one appear.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(MalformedInput):
    """Raised inside the parser's hooks; turned into MalformedInput (with
    the input's name) by :func:`loads`."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused("a name appears twice in one object")
    return obj


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number is out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, strict=True
)


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than ``max_depth`` (strings
    ignored). Linear time, all of it in C: no Python loop per byte."""
    outside = _STRING.sub("", text)
    if outside.count("[") + outside.count("{") <= max_depth:
        return False  # fewer openings than the bound: cannot nest deeper
    brackets = _NOT_BRACKET.sub("", outside)
    return max(accumulate(map(_STEP.__getitem__, brackets))) > max_depth


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
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
            raise MalformedInput(f"{what} is larger than {max_size} bytes")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedInput(f"{what} is not UTF-8 text") from None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("loads() takes bytes or str")
    if len(data) > max_size:
        raise MalformedInput(f"{what} is larger than {max_size} bytes")
    data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        raise MalformedInput(f"{what} starts with a byte order mark")
    if b"\x00" in data:
        # Never in JSON text (raw control characters are not allowed even
        # in strings): the sign of UTF-16 or UTF-32 without a BOM.
        raise MalformedInput(f"{what} is not UTF-8 JSON text (it holds a NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{what} is not UTF-8 text") from None
    if _too_deep(text, max_depth):
        raise MalformedInput(f"{what} nests deeper than {max_depth} levels")
    try:
        value = _DECODER.decode(text)
    except _Refused as e:
        raise MalformedInput(f"{what} is not strict JSON: {e}") from None
    except (ValueError, RecursionError):
        # json.JSONDecodeError, and ValueError from int() past Python's
        # digit limit. RecursionError cannot happen after the depth scan
        # but is caught so a bad bound can never become a crash.
        raise MalformedInput(f"{what} is not JSON") from None
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(value):
        raise MalformedInput(f"{what} is not strict JSON: a lone surrogate escape")
    return value
