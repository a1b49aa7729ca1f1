"""``docs/openapi.yaml``, generated from the relay's API description.

The document is made from :data:`securechan.relay.api.ROUTES` and the JSON
types of :mod:`securechan.relay.api` (their fields give the schemas), so it
cannot drift from what the server, the client and the malicious relay use.
``tests/test_relay_openapi.py`` checks the committed file equals what this
module makes. After changing the API, regenerate it with::

    python -m securechan.relay.openapi --write

(PyYAML, a test dependency, renders it; the relay itself only serves the
committed file.)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Final

from securechan.relay import api
from securechan.relay.config import RelayConfig

__all__ = ["DOCUMENT", "document", "render"]

DOCUMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

_INFO = """\
One-way queues linked to no identity (SimpleX style): a queue has a
receive id (`rid`, used with the recipient key) and a send id (`sid`,
open to anyone while the queue is a public contact address, else used
with the queue's sender key). Requests that act on a queue carry an
`Authorization: SC1 ts=..., nonce=..., sig=...` header: an Ed25519
signature over "securechan/v1/relay-request", method, path and query,
the SHA-256 of the body, the time and a nonce (docs/RELAY.md §3). All
ids and keys are base64url without padding. Every error answers with a
JSON body `{"error": {"code": ..., "message": ...}}`.
Generated from securechan/relay/api.py (python -m securechan.relay.openapi --write).
"""

_RECEIPT_DOC = """\
Where the relay's transparency log holds the envelope (docs/AUDIT.md,
"Relay transparency log"). The leaf is SHA-256(0x00 || "securechan/v1/envelope"
|| SHA-256(envelope)); the checkpoint is a C2SP signed note by the log key
(tlog-checkpoint) whose tree includes it; the inclusion proof (RFC 9162,
leaf side first) leads from the leaf to the checkpoint's root.
"""

_ID = "^[A-Za-z0-9_-]{22}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(f: dataclasses.Field[Any]) -> dict[str, Any]:
    kind = f.metadata["kind"]
    table: dict[str, dict[str, Any]] = {
        "int": {"type": "integer", "minimum": 0},
        "bool": {"type": "boolean"},
        "str": {"type": "string"},
        "id": _ref("Id"),
        "key": _ref("Key"),
        "blob": {"type": "string"},
        "blobs": {"type": "array", "items": {"type": "string"}},
        "receipt": _ref("Receipt"),
        "hashes": {"type": "array", "maxItems": 65, "items": _ref("Hash")},
        "messages": {"type": "array", "items": _ref("Message")},
        "items": {"type": "array", "items": _ref("StreamItem")},
    }
    schema = table[kind]
    if f.metadata["optional"] and kind in ("id", "key", "blob"):
        schema = {"oneOf": [schema, {"type": "null"}]}
    if f.metadata["doc"]:
        schema = {**schema, "description": f.metadata["doc"]}
    return schema


def _type_schema(cls: type, *, request: bool) -> dict[str, Any]:
    fields = dataclasses.fields(cls)
    out: dict[str, Any] = {"type": "object"}
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):  # not dataclass's own
        out["description"] = " ".join(doc.split())
    required = [f.name for f in fields if not f.metadata["optional"]]
    if required:
        out["required"] = required
    if request:
        out["additionalProperties"] = False
    out["properties"] = {f.name: _field_schema(f) for f in fields}
    return out


def _types() -> dict[str, tuple[type, bool]]:
    """Every JSON type the routes name, by name: (type, is a request)."""
    found: dict[str, tuple[type, bool]] = {
        "Message": (api.Message, False),
        "StreamItem": (api.StreamItem, False),
    }
    for r in api.ROUTES:
        if isinstance(r.body, type):
            found[r.body.__name__] = (r.body, True)
        if isinstance(r.reply, type) and r.reply.__name__ != "Receipt":
            found[r.reply.__name__] = (r.reply, False)
    return found


def _components() -> dict[str, Any]:
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": sorted({*api.ERRORS, "http"})},
                    "message": {"type": "string"},
                },
            }
        },
    }
    schemas: dict[str, Any] = {
        "Id": {"type": "string", "pattern": _ID},
        "Key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
        "Error": error,
        "Hash": {
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]{43}=$",
            "description": "A 32-byte SHA-256 hash in standard padded base64"
            " (RFC 4648 §4), as in C2SP checkpoints.",
        },
        "Receipt": {
            "type": "object",
            "description": _RECEIPT_DOC,
            "required": ["leaf_index", "checkpoint", "inclusion_proof"],
            "additionalProperties": False,
            "properties": {
                "leaf_index": {"type": "integer", "minimum": 0},
                "checkpoint": {
                    "type": "string",
                    "description": "The signed note text, cosignatures included.",
                },
                "inclusion_proof": {"type": "array", "maxItems": 64, "items": _ref("Hash")},
            },
        },
    }
    for name, (cls, request) in sorted(_types().items()):
        schemas[name] = _type_schema(cls, request=request)
    json_error = {"application/json": {"schema": _ref("Error")}}
    return {
        "securitySchemes": {
            "SC1": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "SC1 request signature by the queue's recipient or sender key.",
            }
        },
        "parameters": {
            **{
                name: {"name": name, "in": "path", "required": True, "schema": _ref("Id")}
                for name in ("rid", "sid")
            },
            "tile": {
                "name": "tile",
                "in": "path",
                "required": True,
                "description": "The rest of the path, slashes included (c2sp.org/tlog-tiles).",
                "schema": {"type": "string", "maxLength": 155},
            },
            "stream": {
                "name": "stream",
                "in": "path",
                "required": True,
                "description": "A group stream id: 32 bytes, base64url without padding.",
                "schema": _ref("Key"),
            },
        },
        "schemas": schemas,
        "responses": {
            "Error": {
                "description": "The request was refused; see the code.",
                "content": json_error,
            },
            "RateLimited": {
                "description": "Too many requests, a full queue or quota, or the relay is"
                " stopping or cannot store right now (503, 507). Retry after the header's"
                " seconds.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": json_error,
            },
        },
    }


def _status_object(value: str, *, reasons: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"status": {"type": "string", "const": value}}
    required = ["status"]
    if reasons:
        reason_names = ["disk_reserve", "storage_limit", "write_failed", "draining", "stopping"]
        props["reasons"] = {"type": "array", "items": {"type": "string", "enum": reason_names}}
        required.append("reasons")
    schema = {"type": "object", "required": required, "properties": props}
    return {"application/json": {"schema": schema}}


_RETRY = {"Retry-After": {"schema": {"type": "integer"}}}

# Answers that are not the usual JSON error: documented here, by route and status.
_SPECIAL: Final[dict[tuple[str, int], dict[str, Any]]] = {
    ("healthz", 200): {"description": "The relay is up.", "content": _status_object("ok")},
    ("healthz", 503): {
        "description": "Draining after SIGTERM (drain_seconds): requests are still served,"
        " but a proxy should send new traffic elsewhere. Carries Retry-After.",
        "headers": _RETRY,
        "content": _status_object("draining"),
    },
    ("readyz", 200): {
        "description": "Ready to take envelopes.",
        "content": _status_object("ready"),
    },
    ("readyz", 503): {
        "description": "Not ready: an envelope of max_envelope bytes could be refused for"
        " space, a commit failed, the relay is draining after SIGTERM, or it is stopping."
        " Fetches, acks and deletes are still served.",
        "headers": _RETRY,
        "content": _status_object("not_ready", reasons=True),
    },
    ("log_cosignature", 409): {
        "description": "The checkpoint is no longer recent, or older than the witness's last"
        " cosignature here; cosign a newer one. As in tlog-witness, the body is the log's"
        " current tree size and a newline.",
        "content": {
            "text/x.tlog.size": {"schema": {"type": "string", "pattern": "^(0|[1-9][0-9]*)\\n$"}}
        },
    },
}


def _content(reply: type | str) -> dict[str, Any] | None:
    if isinstance(reply, type):
        return {"application/json": {"schema": _ref(reply.__name__)}}
    return {
        "text": {"text/plain": {"schema": {"type": "string"}}},
        "metrics": {"text/plain": {"schema": {"type": "string"}}},
        "yaml": {"application/yaml": {"schema": {"type": "object"}}},
        "octets": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }.get(reply)


def _limit(route: api.Route) -> int:
    limit = route.limit
    return getattr(RelayConfig(), limit) if isinstance(limit, str) else limit


def _operation(route: api.Route) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary}
    if route.auth in ("recipient", "owner"):
        op["security"] = [{"SC1": []}]
    params: list[dict[str, Any]] = [
        {"$ref": f"#/components/parameters/{name}"}
        for name in ("rid", "sid", "tile", "stream")
        if "{" + name + "}" in route.path
    ]
    for q in route.query:
        schema: dict[str, Any] = {"type": "string", "pattern": q.pattern}
        if q.pattern is None:
            schema = {"type": "integer", "minimum": q.minimum}
            if q.maximum is not None:
                schema["maximum"] = q.maximum
        params.append({"name": q.name, "in": "query", "required": q.required, "schema": schema})
    for h in route.headers:
        params.append({"name": h, "in": "header", "required": True, "schema": _ref("Id")})
    if params:
        op["parameters"] = params
    body: dict[str, Any] | None
    if isinstance(route.body, type):
        body = {"application/json": {"schema": _ref(route.body.__name__)}}
    elif route.body == "octets":
        octets = {"type": "string", "format": "binary", "maxLength": _limit(route)}
        body = {"application/octet-stream": {"schema": octets}}
    elif route.body == "text":
        body = {"text/plain": {"schema": {"type": "string", "maxLength": _limit(route)}}}
    else:
        body = None
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    responses: dict[str, Any] = {}
    for status, meaning in route.ok.items():
        special = _SPECIAL.get((route.name, status))
        if special is not None:
            responses[str(status)] = special
            continue
        answer: dict[str, Any] = {"description": meaning}
        content = _content(route.reply)
        if content is not None:
            answer["content"] = content
        responses[str(status)] = answer
    for status in sorted(route.refusals):
        special = _SPECIAL.get((route.name, status))
        if special is not None:
            responses[str(status)] = special
        else:
            name = "RateLimited" if status in (429, 503, 507) else "Error"
            responses[str(status)] = {"$ref": f"#/components/responses/{name}"}
    op["responses"] = responses
    return op


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document as a dict."""
    paths: dict[str, dict[str, Any]] = {}
    for r in api.ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "securechan relay",
            "version": "1",
            "summary": "Store-and-forward relay for end-to-end encrypted envelopes.",
            "description": _INFO,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8470"}],
        "components": _components(),
        "paths": paths,
    }


def render() -> str:
    """The document as YAML text (needs PyYAML)."""
    import yaml  # type: ignore[import-untyped]  # a test dependency: regenerating needs it

    class Dumper(yaml.SafeDumper):  # type: ignore[misc]
        """Multi-line text as YAML blocks (``|``), as a person would write it."""

    def text(dumper: Any, value: str) -> Any:
        # Blocks for multi-line text; statuses as "200" (a line-based reader
        # in the tests takes double quotes or none).
        style = "|" if "\n" in value else '"' if value.isdigit() else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(document(), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=88)
    return str(body)


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--write"]:
        DOCUMENT.write_text(text, "utf-8")
        return 0
    if argv[1:] == ["--check"]:
        return 0 if DOCUMENT.read_text("utf-8") == text else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
