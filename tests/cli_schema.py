"""The JSON Schema of every ``--json`` line (docs/cli-json.schema.json).

``validate(line_object, types)`` checks one printed object against the
schema of one of the named result types. The validator is jsonschema-rs
(JSON Schema draft 2020-12, in the [test] extra; schemathesis already
depends on it), so the schema file is standard and usable by any consumer,
not a private format read by a home-made checker.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "cli-json.schema.json"

__all__ = ["SCHEMA_FILE", "schema", "validate"]


@cache
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return data


@cache
def _validator(types: tuple[str, ...]) -> Any:
    whole = dict(schema())
    whole["anyOf"] = [{"$ref": f"#/$defs/{t}"} for t in types]
    return jsonschema_rs.validator_for(whole)


def validate(obj: dict[str, Any], *types: str) -> None:
    """``obj`` is a valid object of one of ``types`` (AssertionError if not)."""
    for t in types:
        assert t in schema()["$defs"], f"no schema for {t}"
    errors = [e.message for e in _validator(tuple(types)).iter_errors(obj)]
    if errors:
        # Say which field of the closest type is wrong.
        for t in types:
            one = [e.message for e in _validator((t,)).iter_errors(obj)]
            errors.append(f"as {t}: {one}")
    assert not errors, f"{obj!r} is no {' or '.join(types)}: {errors}"
