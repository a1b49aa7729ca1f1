"""Compact JSON text, light to import: what ``--json`` prints and what the
thin command line sends the agent (docs/AGENT.md).

:func:`dumps` is exactly ``json.dumps(value, sort_keys=True,
ensure_ascii=True, separators=(",", ":"), allow_nan=False)`` (tested), but
it does not import the json package, which loads ``re`` and costs a
command through the agent a few milliseconds of its start-up: strings are
escaped by the same C function json uses. Standard library only; no
securechan module.
"""

from __future__ import annotations

try:
    from _json import encode_basestring_ascii as _quote
except ImportError:  # not CPython
    import json.encoder

    _quote = json.encoder.encode_basestring_ascii

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps"]

_INFINITIES = (float("inf"), float("-inf"))


def dumps(value: Any) -> str:
    """One line of compact JSON, keys sorted, ASCII only (``\\uXXXX``
    escapes), no NaN or infinity (ValueError), as json.dumps with those
    settings; a value of another type raises TypeError as json.dumps does."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 500:
        raise ValueError("nested too deeply")  # json.dumps: RecursionError
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in _INFINITIES:
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        out.append(float.__repr__(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            # json.dumps turns numbers and the constants into keys; nothing
            # securechan prints has such keys, so leave it to json.
            import json

            out.append(
                json.dumps(
                    value,
                    sort_keys=True,
                    ensure_ascii=True,
                    separators=(",", ":"),
                    allow_nan=False,
                )
            )
            return
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
