"""Reading what ``--json`` prints: NDJSON (docs/CLI.md, "JSON output").

Every line is one compact JSON object, printed in the one canonical form
(sorted keys, no spaces, ASCII): a line that is an array, is indented, or
spans lines fails here, so a test reading a command's JSON also checks it is
NDJSON.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ndjson", "one"]


def ndjson(text: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON stream (none for empty output)."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        obj = json.loads(line)
        assert isinstance(obj, dict), f"line {n} is not a JSON object: {line[:80]!r}"
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert line == canonical, f"line {n} is not one compact object: {line[:80]!r}"
        out.append(obj)
    if text:
        assert text.endswith("\n"), "the last line has no line end"
    return out


def one(text: str) -> dict[str, Any]:
    """The single object a one-result command prints."""
    items = ndjson(text)
    assert len(items) == 1, f"expected one JSON line, got {len(items)}"
    return items[0]
