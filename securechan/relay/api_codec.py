"""The JSON codec of the relay's API types (:mod:`securechan.relay.api`):
one dataclass per JSON object, whose fields say their JSON spelling
(:func:`jfield`), gives both directions (:func:`to_json`, :func:`from_json`)
and the OpenAPI schema (:mod:`securechan.relay.openapi`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal, TypeVar

from securechan.audit.receipt import Receipt, decode_hashes, encode_hashes
from securechan.errors import MalformedInput
from securechan.protocol.relay_auth import b64d, b64e

__all__ = ["Kind", "Message", "StreamItem", "from_json", "jfield", "to_json"]

ID_SIZE: Final = 16
KEY_SIZE: Final = 32
MAX_POSITION: Final = 2**63 - 1
MAX_BLOB: Final = 1 << 20
"""Largest base64url blob any JSON type takes (the relay's own limits are lower)."""

T = TypeVar("T")

Kind = Literal[
    "int", "bool", "str", "id", "key", "blob", "blobs", "receipt", "hashes", "messages", "items"
]


def jfield(kind: Kind, *, optional: bool = False, doc: str = "", default: Any = None) -> Any:
    """A JSON field: its spelling, whether it may be absent (or ``null`` for
    ids, keys and blobs), and a line for the OpenAPI document."""
    meta = {"kind": kind, "optional": optional, "doc": doc}
    if optional:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(metadata=meta)


def _encode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind in ("id", "key", "blob"):
        return b64e(value)
    if kind == "blobs":
        return [b64e(b) for b in value]
    if kind == "receipt":
        return value.to_json()
    if kind == "hashes":
        return encode_hashes(value)
    if kind in ("messages", "items"):
        return [to_json(m) for m in value]
    return value


def _decode(kind: str, value: Any) -> Any:
    if kind == "int":
        if type(value) is not int or not 0 <= value <= MAX_POSITION:
            raise ValueError
        return value
    if kind == "bool":
        if type(value) is not bool:
            raise ValueError
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError
        return value
    if kind == "id":
        return b64d(value, size=ID_SIZE)
    if kind == "key":
        return b64d(value, size=KEY_SIZE)
    if kind == "blob":
        return b64d(value, max_size=MAX_BLOB)
    if kind == "blobs":
        if not isinstance(value, list):
            raise ValueError
        return tuple(b64d(b, max_size=MAX_BLOB) for b in value)
    if kind == "receipt":
        return Receipt.from_json(value)
    if kind == "hashes":
        return decode_hashes(value)
    if kind == "messages":
        if not isinstance(value, list):
            raise ValueError
        return tuple(from_json(Message, m, exact=False) for m in value)
    if kind == "items":
        if not isinstance(value, list):
            raise ValueError
        return tuple(from_json(StreamItem, m, exact=False) for m in value)
    raise AssertionError(kind)


def to_json(obj: Any) -> dict[str, Any]:
    """The JSON object of one API value (optional fields left out when ``None``,
    except ids, keys and blobs, which are spelled ``null``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata["kind"]
        if value is None and f.metadata["optional"] and kind not in ("id", "key", "blob"):
            continue
        out[f.name] = _encode(kind, value)
    return out


def from_json(cls: type[T], data: Any, *, exact: bool = True) -> T:
    """Parse one API value; :class:`MalformedInput` if ``data`` is not an
    object with every required field, each well formed. ``exact``: no other
    names (how the relay reads requests); a client reading replies passes
    ``False``, so that a newer relay may add fields."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    if not isinstance(data, dict) or (exact and not set(data) <= names):
        raise MalformedInput(f"expected a JSON object with {', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    for f in fields:
        kind, optional = f.metadata["kind"], f.metadata["optional"]
        nullable = optional and kind in ("id", "key", "blob")
        if f.name not in data or (data[f.name] is None and nullable):
            if not optional:
                raise MalformedInput(f"{f.name} is missing")
            continue
        try:
            values[f.name] = _decode(kind, data[f.name])
        except (ValueError, TypeError, MalformedInput, RecursionError):
            raise MalformedInput(f"{f.name} is malformed") from None
    return cls(**values)


# The one API type another type's field holds (FetchReply.messages), so it
# lives with the codec that decodes it; securechan.relay.api re-exports it.
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One envelope in a fetch answer or a WebSocket push."""

    seq: int = jfield("int")
    msg_id: bytes = jfield("id")
    data: bytes = jfield("blob", doc="base64url envelope bytes")
    received: int = jfield("int", doc="Unix time the relay stored it")


# Held by StreamPage.items (securechan.relay.api_streams), so here too.
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StreamItem:
    """One item of a group stream (docs/RELAY.md, "Group streams")."""

    position: int = jfield("int", doc="1, 2, 3... in the stream, no gap")
    blob: bytes = jfield("blob", doc="base64url item bytes, opaque to the relay")
    log_index: int = jfield("int", doc="index of its leaf in the transparency log")
    inclusion: tuple[bytes, ...] | None = jfield(
        "hashes",
        optional=True,
        doc="asked for with size: the RFC 9162 inclusion proof of its leaf in the tree of"
        " that size (absent for a leaf past it)",
    )
