"""The agent's JSON-RPC methods over one :class:`Channel` (docs/AGENT.md, Methods).

Every method takes by-name parameters, checked strictly (an unknown, missing
or mistyped one is ``-32602``), and returns JSON: the same objects the CLI
prints with ``--json`` (``SendResult``, ``Received``/``Rejected``,
``HistoryEntry``, ``Status``, ``StatementExported``). Work on the channel is
serialised by one lock: the channel is not for concurrent use, and the
background receiver (:mod:`securechan.agent.receiver`) shares it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from securechan.agent.keycache import KeyCache
from securechan.agent.rpc import AgentErrorCode, RpcError
from securechan.errors import StorageError, UsageError

if TYPE_CHECKING:
    from securechan.client.channel import Channel
    from securechan.client.group_results import GroupEntry
    from securechan.client.results import Received, Rejected

__all__ = ["METHODS", "AgentState", "AgentStatus", "Handler"]

# What the agent reads from a file named by `send`: the CLI's file limit.
MAX_SEND_FILE = 64 * 1024 * 1024
# Received items the background receiver keeps for the next `receive` call;
# past this many bytes of files it stops fetching (the relay keeps the rest).
MAX_PENDING_BYTES = 256 * 1024 * 1024


@dataclass
class AgentState:
    """What the methods share: the key cache, the channel lock, the items
    received in the background and not yet handed to a `receive` call."""

    home: Path
    keys: KeyCache
    version: str
    channel_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[Received | Rejected | GroupEntry] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0

    def pending_bytes(self) -> int:
        return sum(len(getattr(item, "file_data", None) or b"") for item in self.pending)


Handler = Callable[[AgentState, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """The agent's ``status`` (``securechan agent status --json``): the
    channel's ``status --json`` object when unlocked, and with ``flush`` the
    relays that did not answer (URL -> why)."""

    home: str
    pid: int
    locked: bool
    expires_in: int
    idle_ttl: float
    max_ttl: float
    pending: int
    channel: dict[str, Any] | None = None
    relay_errors: dict[str, str] | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "home",
        "pid",
        "locked",
        "expires_in",
        "idle_ttl",
        "max_ttl",
        "pending",
        "channel",
        "relay_errors",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset({"relay_errors"})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "home": self.home,
            "pid": self.pid,
            "locked": self.locked,
            "expires_in": self.expires_in,
            "idle_ttl": self.idle_ttl,
            "max_ttl": self.max_ttl,
            "pending": self.pending,
            "channel": self.channel,
        }
        if self.relay_errors is not None:
            out["relay_errors"] = dict(self.relay_errors)
        return out


def _params(params: dict[str, Any], **spec: tuple[type, bool]) -> dict[str, Any]:
    """Check ``params`` against ``name=(type, required)``; raise -32602."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RpcError(AgentErrorCode.INVALID_PARAMS, f"unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        if name not in params or params[name] is None:
            if required:
                raise RpcError(AgentErrorCode.INVALID_PARAMS, f"missing parameter {name!r}")
            out[name] = None
            continue
        value = params[name]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise RpcError(
                AgentErrorCode.INVALID_PARAMS, f"parameter {name!r} must be a {kind.__name__}"
            )
        out[name] = value
    return out


def _absolute(value: str, what: str) -> Path:
    if "\x00" in value or not os.path.isabs(value):
        raise UsageError(f"{what} must be an absolute path")
    return Path(value)


async def _version(state: AgentState, params: dict[str, Any]) -> Any:
    _params(params)
    return {"version": state.version, "protocol": 1}


async def _status(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, flush=(bool, False))
    channel: dict[str, Any] | None = None
    failures: dict[str, str] | None = None
    if not state.keys.locked:
        from securechan.client.results import Status

        async with state.channel_lock:
            # Reading the status is not a use of the key: it does not restart
            # the idle clock; posting the outbox first (flush, as the status
            # command does) is.
            ch = state.keys.get(touch=bool(p["flush"]))
            if p["flush"]:
                # As the status command: post the outbox, ask every relay.
                await ch.flush_outbox()
                failures = await ch.unreachable_relays()
            info = {**ch.status(), "unreachable": sorted(failures or {})}
            channel = Status.from_mapping(info).to_json()
    return AgentStatus(
        home=str(state.home),
        pid=os.getpid(),
        locked=state.keys.locked,
        expires_in=round(state.keys.expires_in()),
        idle_ttl=state.keys.idle_ttl,
        max_ttl=state.keys.max_ttl,
        pending=len(state.pending),
        channel=channel,
        relay_errors=failures,
    ).to_json()


async def _unlock(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, passphrase=(str, True))
    await state.keys.unlock(p["passphrase"])
    return {"locked": False, "expires_in": round(state.keys.expires_in())}


async def _lock(state: AgentState, params: dict[str, Any]) -> Any:
    _params(params)
    async with state.channel_lock:
        was = await state.keys.lock()
    return {"locked": True, "was_unlocked": was}


async def _stop(state: AgentState, params: dict[str, Any]) -> Any:
    _params(params)
    state.stop.set()
    return {"stopping": True}


def _channel(state: AgentState) -> Channel:
    return state.keys.get()


async def _send(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, contact=(str, True), text=(str, False), file=(str, False))
    if (p["text"] is None) == (p["file"] is None):
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "give exactly one of 'text' and 'file'")
    async with state.channel_lock:
        ch = _channel(state)
        verified = ch.keystore.contacts.get(p["contact"]).verified
        if p["text"] is not None:
            result = await ch.send_text(p["contact"], p["text"])
        else:
            path = _absolute(p["file"], "file")
            data = await asyncio.to_thread(_read_file, path)
            result = await ch.send_file(p["contact"], path.name, data)
    # `verified` besides the send --json fields: the CLI warns when it is false.
    return {**result.to_json(), "verified": verified}


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SEND_FILE + 1)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_SEND_FILE:
        raise UsageError(f"{path} is larger than {MAX_SEND_FILE} bytes")
    return data


async def _receive(state: AgentState, params: dict[str, Any]) -> Any:
    """What the background receiver kept since the last call, then one more
    pass; files are written into ``download`` (default: not written, their
    ``file`` is null and they are dropped, so pass it when you expect files)."""
    from securechan.client.downloads import save_download
    from securechan.client.results import Received

    p = _params(params, download=(str, False))
    folder = _absolute(p["download"], "download") if p["download"] is not None else None
    async with state.channel_lock:
        ch = _channel(state)
        fresh = await ch.receive()
        left_waiting = list(ch.left_waiting)
        items = [*state.pending, *fresh]
        state.pending.clear()
        state.drained.set()
        group_files: list[str] = []
        if folder is not None:  # group files made whole by these items (docs/CLI.md, Groups)
            from securechan.cli.group import GroupFileSaver

            saver = GroupFileSaver(folder)
            group_files = [p for p in (saver.save(ch, i) for i in items) if p is not None]
    out = []
    for item in items:
        if not isinstance(item, Received):  # a refusal, or a group record (GroupEntry)
            out.append(item.to_json())
            continue
        saved = None
        if item.file_data is not None and folder is not None:
            saved = await asyncio.to_thread(
                save_download, folder, item.file_name or "file", item.file_data
            )
        out.append(item.to_json(file=str(saved) if saved else None))
    return {"items": out, "left_waiting": left_waiting, "group_files": group_files}


async def _history(state: AgentState, params: dict[str, Any]) -> Any:
    from securechan.client.results import HistoryEntry

    p = _params(params, contact=(str, False), limit=(int, False), before=(str, False))
    if p["limit"] is not None and p["limit"] < 1:
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "limit must be at least 1")
    async with state.channel_lock:
        rows, more = _channel(state).history_page(
            p["contact"], limit=p["limit"], before=p["before"]
        )
    return {"items": [HistoryEntry(*row).to_json() for row in rows], "more": more}


async def _statement_export(state: AgentState, params: dict[str, Any]) -> Any:
    from securechan.audit.statement import message_id
    from securechan.cli.results import StatementExported
    from securechan.client.policy import witnessed_statement

    p = _params(params, message_id=(str, True), output=(str, True))
    output = _absolute(p["output"], "output")
    async with state.channel_lock:
        st, witnessed = await witnessed_statement(_channel(state), p["message_id"])
    text = st.to_text()
    try:
        with open(output, "x", encoding="ascii", newline="\n") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{output} exists; choose another name") from None
    except OSError as e:
        raise StorageError(f"cannot write {output}: {e.strerror}") from None
    return StatementExported(
        file=str(output),
        message_id=message_id(st.signed),
        log=st.placement is not None,
        witnessed=witnessed,
        delivery_receipt=st.receipt is not None,
    ).to_json()


METHODS: dict[str, Handler] = {
    "version": _version,
    "status": _status,
    "unlock": _unlock,
    "lock": _lock,
    "stop": _stop,
    "send": _send,
    "receive": _receive,
    "history": _history,
    "statementExport": _statement_export,
}
