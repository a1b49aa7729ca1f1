"""Talking to a running ``securechan agent`` (docs/AGENT.md, Library).

:class:`AgentClient` (blocking, standard library only: what the thin CLI
uses, so a command through the agent imports no cryptography and no aiohttp)
and :class:`AsyncAgentClient` (asyncio) call the agent's JSON-RPC methods
``call`` returns a method's raw result: the JSON object ``--json`` prints
(``Channel``'s result types' ``to_json()``); the named methods
(``send_text``, ``receive``, ``history``, ``status``...) return ``Channel``'s
result types themselves (client/agent_results.py, imported on their first
call: it loads the cryptography, so the thin CLI uses ``call`` only). An error answer is raised
as the securechan error of its reason (``data.reason``; a class whose
constructor takes more than a message is raised as its nearest base that
takes one), :class:`AgentLocked` for a locked agent, and
:class:`AgentUnavailable` when no agent answers or it breaks the protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from securechan import errors
from securechan.client.agent_socket import MAX_ANSWER, AgentAnswer, AgentConnection, NoAgent
from securechan.errors import AgentLocked, AgentUnavailable, MalformedInput, SecurechanError
from securechan.json_text import dumps
from securechan.strict_json import loads

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator
    from typing import Any, NoReturn

    from securechan.client.agent_results import History
    from securechan.client.results import (
        AgentStatus,
        Cancelled,
        ContactInfo,
        QueuedMessage,
        Received,
        Rejected,
        SendResult,
        StatementExported,
    )
    from securechan.protocol.address import ContactCard

__all__ = ["MAX_ANSWER", "AgentClient", "AsyncAgentClient", "raise_for"]

_LOCKED = -32001
_SECURECHAN = -32000


def _error_class(reason: str) -> type[SecurechanError]:
    for value in vars(errors).values():
        if (
            isinstance(value, type)
            and issubclass(value, SecurechanError)
            and str(value.code) == reason
        ):
            cls: type[SecurechanError] = value
            while "__init__" in vars(cls) and cls is not SecurechanError:
                cls = cls.__mro__[1]
            return cls
    return SecurechanError


def raise_for(error: dict[str, Any]) -> NoReturn:
    """Raise the securechan error an error object stands for."""
    code, message = error.get("code"), str(error.get("message", "agent error"))
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    if code == _LOCKED:
        raise AgentLocked(message)
    if code == _SECURECHAN and isinstance(data, dict) and isinstance(data.get("reason"), str):
        raised = _error_class(data["reason"])(message)
        # The CLI's exit code for it, as the agent computed it (docs/AGENT.md).
        exit_code = data.get("exit")
        raised.exit_code = exit_code if isinstance(exit_code, int) else None  # type: ignore[attr-defined]
        raise raised
    raise AgentUnavailable(f"the agent answered an error: {message} ({code})")


def _default_path(home: Path | None) -> Path:
    from securechan.client.agent_paths import socket_path

    if home is None:
        from securechan.home import default_home

        home = default_home()
    return socket_path(home)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        obj = loads(line, max_size=MAX_ANSWER, what="the agent's answer")
    except MalformedInput as e:
        raise AgentUnavailable(str(e)) from None
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise AgentUnavailable("the agent sent something that is not JSON-RPC 2.0")
    return obj


def _answer(
    obj: dict[str, Any], request_id: int, notifications: list[tuple[str, dict[str, Any]]]
) -> tuple[bool, Any]:
    """One line read while waiting for the answer to ``request_id``: a
    notification is queued (``(False, None)``), the answer returned as
    ``(True, result)`` or raised."""
    if "method" in obj:
        notifications.append((str(obj["method"]), dict(obj.get("params") or {})))
        return False, None
    if obj.get("id") != request_id:
        raise AgentUnavailable("the agent answered another request")
    if "error" in obj:
        raise_for(obj["error"] if isinstance(obj["error"], dict) else {})
    return True, obj.get("result")


def _frame(method: str, params: dict[str, Any], request_id: int) -> bytes:
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return dumps(body).encode("ascii") + b"\n"


class AgentClient:
    """A blocking connection to the agent of ``home`` (or the socket ``path``),
    on :class:`~securechan.client.agent_socket.AgentConnection`."""

    def __init__(
        self, home: Path | None = None, *, path: Path | None = None, timeout: float | None = None
    ) -> None:
        self.path = path if path is not None else _default_path(home)
        try:
            self._conn = AgentConnection(os.fspath(self.path), timeout=timeout)
        except NoAgent as e:
            raise AgentUnavailable(str(e)) from None
        self.notifications = self._conn.notifications

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _read(self) -> dict[str, Any]:
        try:
            return self._conn.read()
        except NoAgent as e:
            raise AgentUnavailable(str(e)) from None

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method``; return its result or raise (see the module)."""
        try:
            return self._conn.call(method, **params)
        except AgentAnswer as e:
            raise_for({"code": e.code, "message": e.message, "data": e.data})
        except NoAgent as e:
            raise AgentUnavailable(str(e)) from None

    def call_notified(
        self, method: str, params: dict[str, Any], notified: Callable[[str, dict[str, Any]], None]
    ) -> Any:
        """:meth:`call`, handing each notification that comes before the
        answer to ``notified`` at once (``pair``'s ``pairingCode``)."""
        try:
            request_id = self._conn.send(method, params)
        except NoAgent as e:
            raise AgentUnavailable(str(e)) from None
        while True:
            obj = self._read()
            if "method" in obj:
                notified(str(obj["method"]), dict(obj.get("params") or {}))
                continue
            answered, result = _answer(obj, request_id, self.notifications)
            if answered:
                return result

    def subscribe(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``subscribeReceive``, then every notification as (method, params)."""
        self.call("subscribeReceive")
        while True:
            while self.notifications:
                yield self.notifications.pop(0)
            obj = self._read()
            if "method" in obj:
                yield str(obj["method"]), dict(obj.get("params") or {})

    def next_notification(self, timeout: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """The next notification (after ``call("subscribeReceive")``), or
        None when ``timeout`` seconds pass without one."""
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.notifications:
                return self.notifications.pop(0)
            # A whole line may already be buffered; else wait for the socket.
            if deadline is not None and b"\n" not in self._conn._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._conn._sock], [], [], left)[0]:
                    return None
            obj = self._read()
            if "method" in obj:
                return str(obj["method"]), dict(obj.get("params") or {})

    # The methods of docs/AGENT.md, named as the library's Channel names them
    # and returning Channel's result types (client/agent_results.py, loaded
    # on first use: it brings the cryptography; `call` stays light).
    def status(self) -> AgentStatus:
        from securechan.client.agent_results import agent_status

        return agent_status(self.call("status"))

    def unlock(self, passphrase: str) -> Any:
        return self.call("unlock", passphrase=passphrase)

    def lock(self) -> Any:
        return self.call("lock")

    def stop(self) -> Any:
        return self.call("stop")

    def send_text(self, contact: str, text: str) -> SendResult:
        from securechan.client.agent_results import send_result

        return send_result(self.call("send", contact=contact, text=text))

    def send_file(self, contact: str, path: Path) -> SendResult:
        from securechan.client.agent_results import send_result

        return send_result(self.call("send", contact=contact, file=os.path.abspath(path)))

    def receive(self, download: Path | None = None) -> list[Received | Rejected]:
        from securechan.client.agent_results import received_item

        folder = os.path.abspath(download) if download is not None else None
        return [received_item(x) for x in self.call("receive", download=folder)["items"]]

    def history(self, contact: str | None = None) -> History:
        from securechan.client.agent_results import history_rows

        return history_rows(self.call("history", contact=contact)["items"])

    def statement_export(self, message_id: str, output: Path) -> StatementExported:
        from securechan.client.agent_results import statement_exported

        out = os.path.abspath(output)
        return statement_exported(self.call("statementExport", message_id=message_id, output=out))

    def pair(
        self,
        relay_url: str | None = None,
        *,
        code: str | None = None,
        words: int | None = None,
        name: str | None = None,
        on_code: Callable[[str], None] | None = None,
    ) -> ContactInfo:
        """As :meth:`Channel.pair`, but returns the contact as
        :class:`ContactInfo` (with its safety number): the agent pinned it."""
        from securechan.client.agent_results import contact_info

        def notified(method: str, params: dict[str, Any]) -> None:
            if method == "pairingCode" and on_code is not None:
                on_code(str(params.get("code")))

        params = {"relay": relay_url, "code": code, "words": words, "name": name}
        return contact_info(self.call_notified("pair", params, notified))

    def register(self, relay_url: str, *, pin_fingerprint: bytes | None = None) -> ContactCard:
        """As :meth:`Channel.register`; the agent then listens on the new queues."""
        from securechan.client.agent_results import contact_card

        pin = pin_fingerprint.hex() if pin_fingerprint is not None else None
        return contact_card(self.call("register", relays=[relay_url], fingerprint=pin))

    def queued(self) -> list[QueuedMessage]:
        """As :meth:`Channel.queued` (``securechan outbox``)."""
        from securechan.client.agent_results import queued_messages

        return queued_messages(self.call("outbox"))

    def cancel(self, message_id: str) -> Cancelled:
        """As :meth:`Channel.cancel` (``securechan outbox cancel``)."""
        from securechan.client.agent_results import cancelled

        return cancelled(self.call("outboxCancel", message_id=message_id))

    def rekey(self, name: str) -> int:
        """As :meth:`Channel.rekey`: how many sessions were retired."""
        return int(self.call("contactRekey", contact=name)["retired"])

    def set_policy(
        self, relay_url: str, witnesses: list[str], required: int | None = None
    ) -> dict[str, Any]:
        """``policy set``: ``witnesses`` are key lines; the ``--json`` object."""
        result: dict[str, Any] = self.call(
            "policySet", relay=relay_url, witnesses=list(witnesses), require=required
        )
        return result

    def policies(self) -> list[dict[str, Any]]:
        """``policy show``: one ``--json`` object per registered relay."""
        items: list[dict[str, Any]] = self.call("policyShow")["items"]
        return items


class AsyncAgentClient:
    """The asyncio twin of :class:`AgentClient`: ``await AsyncAgentClient.connect(home)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self.notifications: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    async def connect(
        cls, home: Path | None = None, *, path: Path | None = None
    ) -> AsyncAgentClient:
        import asyncio

        where = path if path is not None else _default_path(home)
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(where), limit=MAX_ANSWER)
        except OSError as e:
            raise AgentUnavailable(f"no agent at {where}: {e.strerror or e}") from None
        return cls(reader, writer)

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _line(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (OSError, ValueError) as e:
            raise AgentUnavailable(f"the agent connection failed: {e}") from None
        if not line.endswith(b"\n"):
            raise AgentUnavailable("the agent closed the connection")
        return _decode(line)

    async def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        self._writer.write(_frame(method, params, request_id))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise AgentUnavailable(f"the agent connection failed: {e}") from None
        while True:
            answered, result = _answer(await self._line(), request_id, self.notifications)
            if answered:
                return result

    async def next_notification(self) -> tuple[str, dict[str, Any]]:
        """The next notification (after ``await call("subscribeReceive")``)."""
        while not self.notifications:
            obj = await self._line()
            if "method" in obj:
                return str(obj["method"]), dict(obj.get("params") or {})
        return self.notifications.pop(0)

    # The same typed methods as AgentClient's.
    async def status(self) -> AgentStatus:
        from securechan.client.agent_results import agent_status

        return agent_status(await self.call("status"))

    async def unlock(self, passphrase: str) -> Any:
        return await self.call("unlock", passphrase=passphrase)

    async def lock(self) -> Any:
        return await self.call("lock")

    async def stop(self) -> Any:
        return await self.call("stop")

    async def send_text(self, contact: str, text: str) -> SendResult:
        from securechan.client.agent_results import send_result

        return send_result(await self.call("send", contact=contact, text=text))

    async def send_file(self, contact: str, path: Path) -> SendResult:
        from securechan.client.agent_results import send_result

        return send_result(await self.call("send", contact=contact, file=os.path.abspath(path)))

    async def receive(self, download: Path | None = None) -> list[Received | Rejected]:
        from securechan.client.agent_results import received_item

        folder = os.path.abspath(download) if download is not None else None
        answer = await self.call("receive", download=folder)
        return [received_item(x) for x in answer["items"]]

    async def history(self, contact: str | None = None) -> History:
        from securechan.client.agent_results import history_rows

        return history_rows((await self.call("history", contact=contact))["items"])

    async def statement_export(self, message_id: str, output: Path) -> StatementExported:
        from securechan.client.agent_results import statement_exported

        out = os.path.abspath(output)
        answer = await self.call("statementExport", message_id=message_id, output=out)
        return statement_exported(answer)

    async def register(
        self, relay_url: str, *, pin_fingerprint: bytes | None = None
    ) -> ContactCard:
        from securechan.client.agent_results import contact_card

        pin = pin_fingerprint.hex() if pin_fingerprint is not None else None
        return contact_card(await self.call("register", relays=[relay_url], fingerprint=pin))

    async def queued(self) -> list[QueuedMessage]:
        from securechan.client.agent_results import queued_messages

        return queued_messages(await self.call("outbox"))

    async def cancel(self, message_id: str) -> Cancelled:
        from securechan.client.agent_results import cancelled

        return cancelled(await self.call("outboxCancel", message_id=message_id))

    async def rekey(self, name: str) -> int:
        return int((await self.call("contactRekey", contact=name))["retired"])

    async def set_policy(
        self, relay_url: str, witnesses: list[str], required: int | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "policySet", relay=relay_url, witnesses=list(witnesses), require=required
        )
        return result

    async def policies(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self.call("policyShow"))["items"]
        return items
