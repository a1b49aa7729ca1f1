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
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securechan.agent.keycache import KeyCache
from securechan.agent.rpc import AgentErrorCode, RpcError
from securechan.errors import StorageError, UsageError

if TYPE_CHECKING:
    from securechan.client.channel import Channel
    from securechan.client.group_results import GroupEntry
    from securechan.client.results import Received, Rejected

__all__ = ["METHODS", "REQUESTER", "AgentState", "Handler"]

# What the agent reads from a file named by `send`: the CLI's file limit.
MAX_SEND_FILE = 64 * 1024 * 1024
# How long a relay checkpoint the agent verified as the relay's newest (the
# previous send's receipt, or the last refresh) stands in for the fetch
# before the next message is signed (client/logview.py, RelayLogs.fresh_for;
# docs/AUDIT.md, "Split views between parties"). A command run without the
# agent fetches before every message.
CHECKPOINT_FRESH = 10.0
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
    # Whether `pending` got what an earlier agent received and no `receive`
    # call took (client/unshown.py): done once, before this agent's first pass.
    restored: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    # What the background passes do with a first message from a sender not
    # pinned (`agent start --unknown`): the channel's policy, reported by
    # `status` so that `receive --unknown hold` knows whether it is served.
    unknown_senders: str = "refuse"

    def pending_bytes(self) -> int:
        return sum(len(getattr(item, "file_data", None) or b"") for item in self.pending)


Handler = Callable[[AgentState, dict[str, Any]], Awaitable[Any]]

# A notification to the connection whose request is being answered (set by
# the server for each request): `pair` hands the new code to its caller,
# and to no one else, before the pairing ends.
REQUESTER: ContextVar[Callable[[str, dict[str, Any]], Awaitable[None]] | None] = ContextVar(
    "securechan_agent_requester", default=None
)


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
    from securechan.client.results import AgentStatus, Status

    p = _params(params, flush=(bool, False))
    channel: Status | None = None
    failures: dict[str, str] | None = None
    if not state.keys.locked:
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
            channel = Status.from_mapping(info)
    return AgentStatus(
        home=str(state.home),
        pid=os.getpid(),
        locked=state.keys.locked,
        expires_in=round(state.keys.expires_in()),
        idle_ttl=state.keys.idle_ttl,
        max_ttl=state.keys.max_ttl,
        unknown_senders=state.unknown_senders,
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


def restore(state: AgentState, ch: Channel) -> None:
    """Put first in ``pending`` what is stored after the shown cursor: what
    an earlier agent received and no ``receive`` call took (it crashed or
    stopped). Once per agent process, under the channel lock, before its
    first receive pass (after it, everything after the cursor is in
    ``pending`` already)."""
    if state.restored:
        return
    from securechan.client.unshown import start_cursor, unshown

    state.pending[:0] = unshown(ch.db, ch.keystore.contacts.find, start_cursor(ch.db))
    state.restored = True


async def _send(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, contact=(str, True), text=(str, False), file=(str, False))
    if (p["text"] is None) == (p["file"] is None):
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "give exactly one of 'text' and 'file'")
    async with state.channel_lock:
        ch = _channel(state)
        ch.logs.fresh_for = CHECKPOINT_FRESH
        if p["text"] is not None:
            result = await ch.send_text(p["contact"], p["text"])
        else:
            path = _absolute(p["file"], "file")
            ch.keystore.contacts.get(p["contact"])  # an unknown name before reading the file
            data = await asyncio.to_thread(_read_file, path)
            result = await ch.send_file(p["contact"], path.name, data)
        # The contact as the send read it (contacts.json is read once a send).
        contact = ch.outbox.last_contact
        verified = contact.verified if contact is not None else False
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
    from securechan.client.unshown import mark_shown

    p = _params(params, download=(str, False))
    folder = _absolute(p["download"], "download") if p["download"] is not None else None
    async with state.channel_lock:
        ch = _channel(state)
        restore(state, ch)
        fresh = await ch.receive()
        left_waiting = list(ch.left_waiting)
        items = [*state.pending, *fresh]
        # Everything stored so far is in `items`: the cursor moves past it
        # (on disk) as `pending` is emptied (in memory).
        mark_shown(ch.db)
        state.pending.clear()
        state.drained.set()
        group_files: list[str] = []
        if folder is not None:  # group files made whole by these items (docs/CLI.md, Groups)
            from securechan.client.downloads import GroupFileSaver

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
    from securechan.client.policy import export_statement

    p = _params(params, message_id=(str, True), output=(str, True))
    output = _absolute(p["output"], "output")
    async with state.channel_lock:
        result = await export_statement(_channel(state), p["message_id"], output)
    return result.to_json()


async def _pair(state: AgentState, params: dict[str, Any]) -> Any:
    """``securechan pair`` through the agent. Without ``code``: a new code
    goes to the caller as a ``pairingCode`` notification, then the agent
    waits (up to 5 minutes) for the other side. The channel lock is held
    only to take the channel and its relay connection, not while waiting:
    sends and receiving go on meanwhile (the pairing pins the contact in
    contacts.json, under its own file lock, and writes the audit log)."""
    from securechan.client.results import ContactInfo
    from securechan.identity.safety import safety_number

    p = _params(
        params, code=(str, False), relay=(str, False), words=(int, False), name=(str, False)
    )
    words = 5 if p["words"] is None else p["words"]
    if p["code"] is not None and p["words"] is not None:
        raise UsageError("'words' goes with making a code, not with joining one")
    if not 2 <= words <= 16:
        raise UsageError("a code has 2 to 16 words")
    tell = REQUESTER.get()
    sent: list[asyncio.Future[None]] = []

    def on_code(text: str) -> None:
        if tell is not None:
            sent.append(asyncio.ensure_future(tell("pairingCode", {"code": text})))

    async with state.channel_lock:
        ch = _channel(state)
        url = p["relay"] or next(iter(ch.relays()), None)
        if url is not None:
            await ch.relay(url)  # opened here, not by two tasks at once
    contact = await ch.pair(url, code=p["code"], words=words, name=p["name"], on_code=on_code)
    await asyncio.gather(*sent, return_exceptions=True)
    return ContactInfo.of(contact, safety_number(ch.identity.public, contact.identity)).to_json()


def _home_method(name: str) -> Handler:
    """A method of agent/home_methods.py (register, outbox, policy, rekey),
    imported at its first call: that module builds on this one."""

    async def call(state: AgentState, params: dict[str, Any]) -> Any:
        from securechan.agent.home_methods import HOME_METHODS

        return await HOME_METHODS[name](state, params)

    return call


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
    "pair": _pair,
    **{
        name: _home_method(name)
        for name in (
            "register",
            "outbox",
            "outboxCancel",
            "policySet",
            "policyShow",
            "contactRekey",
        )
    },
}
