"""The agent's socket for a process that must start fast (docs/AGENT.md).

One blocking connection to a running agent: :class:`AgentConnection` sends
newline-delimited JSON-RPC 2.0 requests and reads the answers. It is what
:class:`~securechan.client.agent_client.AgentClient` is built on and what
the thin command line (:mod:`securechan.cli.fast`) uses directly, so it
imports only what such a process can afford: the C ``_socket`` module
(``socket.py`` builds enums of every constant at import), the light JSON
writer and the strict reader, and no securechan error class: failures are
:class:`AgentAnswer` (the agent answered an error) and :class:`NoAgent`
(nobody answers, or the connection broke), which the library maps onto the
error tree and the command line onto exit codes.
"""

from __future__ import annotations

try:
    import _socket as _sockets  # the C module behind socket.py
except ImportError:  # not CPython
    import socket as _sockets  # type: ignore[no-redef]

from securechan.json_text import dumps
from securechan.strict_json import loads

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_ANSWER", "AgentAnswer", "AgentConnection", "NoAgent"]

MAX_ANSWER = 64 * 1024 * 1024
_CHUNK = 65536


class NoAgent(Exception):
    """No agent answers on the socket, or the connection broke, or what came
    back is not JSON-RPC 2.0."""


class AgentAnswer(Exception):
    """The agent answered a request with an error object (docs/AGENT.md,
    Errors): its ``code``, ``message`` and ``data`` (a dict, maybe empty)."""

    def __init__(self, code: object, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _reason(error: object) -> AgentAnswer:
    body = error if isinstance(error, dict) else {}
    data = body.get("data")
    return AgentAnswer(
        body.get("code"),
        str(body.get("message", "agent error")),
        data if isinstance(data, dict) else {},
    )


class AgentConnection:
    """A blocking connection to the agent listening on ``path``."""

    def __init__(self, path: str, *, timeout: float | None = None) -> None:
        self.path = path
        self._sock = _sockets.socket(_sockets.AF_UNIX, _sockets.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise NoAgent(f"no agent at {path}: {e.strerror or e}") from None
        self._buffer = bytearray()
        self._scanned = 0  # no newline in self._buffer[:self._scanned]
        self._next_id = 1
        self.notifications: list[tuple[str, dict[str, Any]]] = []

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> dict[str, Any]:
        """The next line from the agent: a JSON-RPC 2.0 object."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = self._buffer[: end + 1]
                del self._buffer[: end + 1]
                self._scanned = 0
                break
            self._scanned = len(self._buffer)
            if len(self._buffer) > MAX_ANSWER:
                raise NoAgent(f"the agent's answer is larger than {MAX_ANSWER} bytes")
            try:
                chunk = self._sock.recv(_CHUNK)
            except OSError as e:
                raise NoAgent(f"the agent connection failed: {e}") from None
            if not chunk:
                raise NoAgent("the agent closed the connection")
            self._buffer += chunk
        try:
            obj = loads(bytes(line), max_size=MAX_ANSWER, what="the agent's answer")
        except Exception as e:
            from securechan.errors import MalformedInput  # only now: it costs start-up

            if not isinstance(e, MalformedInput):
                raise
            raise NoAgent(str(e)) from None
        if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
            raise NoAgent("the agent sent something that is not JSON-RPC 2.0")
        return obj

    def send(self, method: str, params: dict[str, Any]) -> int:
        """Send one request; its id."""
        request_id = self._next_id
        self._next_id += 1
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            self._sock.sendall(dumps(body).encode("ascii") + b"\n")
        except OSError as e:
            raise NoAgent(f"the agent connection failed: {e}") from None
        return request_id

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method``: its result, or :class:`AgentAnswer` for an error
        answer. Notifications read meanwhile are kept in :attr:`notifications`."""
        request_id = self.send(method, params)
        while True:
            obj = self.read()
            if "method" in obj:
                self.notifications.append((str(obj["method"]), dict(obj.get("params") or {})))
                continue
            if obj.get("id") != request_id:
                raise NoAgent("the agent answered another request")
            if "error" in obj:
                raise _reason(obj["error"])
            return obj.get("result")
