"""JSON-RPC 2.0 frames for the agent's socket (sans-I/O).

One frame is one line of UTF-8 JSON ended by ``\\n`` (newline-delimited
JSON-RPC, as signal-cli's daemon speaks it). This module only turns bytes
into typed requests and responses and back; the server and the clients do
the I/O. Parsing is strict (docs/AGENT.md, Frames):

- a frame is at most :data:`MAX_FRAME` bytes, UTF-8, one JSON object
  (``strict_json``: no duplicate keys, no NaN, bounded nesting);
- a request has exactly ``jsonrpc: "2.0"``, ``method`` (a string of at most
  64 ASCII letters, digits, ``.`` or ``_``), optional ``params`` (an object:
  by-name parameters only) and optional ``id`` (a string of at most 64
  characters or an integer in the signed 53-bit range); without ``id`` it is
  a notification and gets no answer;
- batches (JSON arrays) are refused: one request per line is simpler to
  bound and to audit, and no client here needs them.

Error codes are JSON-RPC's (-32700 parse error, -32600 invalid request,
-32601 method not found, -32602 invalid params, -32603 internal error) and
the agent's own in -32000..-32099 (:class:`AgentErrorCode`).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from securechan.errors import MalformedInput
from securechan.strict_json import loads

__all__ = [
    "MAX_FRAME",
    "AgentErrorCode",
    "Request",
    "Response",
    "RpcError",
    "encode",
    "error_frame",
    "notification_frame",
    "parse_request",
    "parse_response",
    "result_frame",
]

MAX_FRAME = 1024 * 1024
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9._]{0,63}")
_MAX_ID = 2**53 - 1


class AgentErrorCode(enum.IntEnum):
    """The JSON-RPC error codes the agent answers with (docs/AGENT.md)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # The agent's own: a securechan error (data: reason and exit code), the
    # key is not unlocked, too many requests in flight on this connection.
    SECURECHAN_ERROR = -32000
    LOCKED = -32001
    BUSY = -32002


class RpcError(Exception):
    """A request the agent answers with an error frame."""

    def __init__(
        self,
        code: AgentErrorCode,
        message: str,
        *,
        request_id: str | int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.data = data


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: dict[str, Any]
    id: str | int | None  # None: a notification (no answer)
    is_notification: bool


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed answer or notification, as a client sees it."""

    id: str | int | None
    result: Any = None
    error: dict[str, Any] | None = None
    method: str | None = None  # set for a notification from the agent
    params: dict[str, Any] | None = None


def _check_id(value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "id must be a string or an integer")
    if isinstance(value, int) and not -_MAX_ID <= value <= _MAX_ID:
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "id is out of range")
    if isinstance(value, str) and len(value) > 64:
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "id is longer than 64 characters")
    return value


def _object(frame: bytes) -> dict[str, Any]:
    if len(frame) > MAX_FRAME:
        raise RpcError(AgentErrorCode.INVALID_REQUEST, f"frame is larger than {MAX_FRAME} bytes")
    if frame.lstrip().startswith(b"["):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "batches are not supported")
    try:
        obj = loads(frame, max_size=MAX_FRAME, what="the frame")
    except MalformedInput as e:
        raise RpcError(AgentErrorCode.PARSE_ERROR, str(e)) from None
    if not isinstance(obj, dict):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "a frame is one JSON object")
    return obj


def parse_request(frame: bytes) -> Request:
    """One request line (without its newline); raise :class:`RpcError`."""
    obj = _object(frame)
    request_id = obj.get("id")
    has_id = "id" in obj
    rid = _check_id(request_id) if has_id and request_id is not None else None
    if set(obj) - {"jsonrpc", "method", "params", "id"}:
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "unknown member", request_id=rid)
    if obj.get("jsonrpc") != "2.0":
        raise RpcError(AgentErrorCode.INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id=rid)
    method = obj.get("method")
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "bad method name", request_id=rid)
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "params must be an object", request_id=rid)
    return Request(method=method, params=params, id=rid, is_notification=not has_id)


def encode(obj: dict[str, Any]) -> bytes:
    """One frame: compact JSON, ASCII only, and the newline."""
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return line.encode("ascii") + b"\n"


def result_frame(request_id: str | int | None, result: Any) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_frame(error: RpcError) -> bytes:
    body: dict[str, Any] = {"code": int(error.code), "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return encode({"jsonrpc": "2.0", "id": error.request_id, "error": body})


def notification_frame(method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


def parse_response(frame: bytes) -> Response:
    """A line from the agent: an answer (with ``id``) or a notification."""
    obj = _object(frame)
    if obj.get("jsonrpc") != "2.0":
        raise RpcError(AgentErrorCode.INVALID_REQUEST, 'jsonrpc must be "2.0"')
    if "method" in obj:
        method, params = obj["method"], obj.get("params", {})
        if not isinstance(method, str) or not isinstance(params, dict):
            raise RpcError(AgentErrorCode.INVALID_REQUEST, "bad notification")
        return Response(id=None, method=method, params=params)
    if "id" not in obj or ("result" in obj) == ("error" in obj):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "an answer has an id and one outcome")
    rid = obj["id"]
    if rid is not None:
        rid = _check_id(rid)
    error = obj.get("error")
    if error is not None and (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or not isinstance(error.get("message"), str)
    ):
        raise RpcError(AgentErrorCode.INVALID_REQUEST, "bad error object")
    return Response(id=rid, result=obj.get("result"), error=error)
