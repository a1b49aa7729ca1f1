"""The agent's group methods (docs/AGENT.md, Methods; docs/CLI.md, Groups).

``groupCreate``, ``groupAdd``, ``groupRemove``, ``groupAdmin``, ``groupLeave``, ``groupRekey``,
``groupList``, ``groupShow``, ``sendGroup`` and ``groupHistory``: each
calls the channel's ``group_*`` method under the channel lock and answers
with the objects ``securechan group ... --json``, ``send --group --json``
and ``history --group --json`` print (``GroupInfo``, ``GroupSent``,
``GroupEntry``). Parameters are checked as the other methods' are
(``-32602`` for an unknown, missing or mistyped one); group entries that
a receive pass applies reach ``receive`` and its notifications as items
with a ``status`` field. The server looks a method up in
:data:`~securechan.agent.methods.METHODS`, then in :data:`GROUP_METHODS`
(this module builds on that one, not the other way round).
"""

from __future__ import annotations

import asyncio
from typing import Any

from securechan.agent.methods import (
    AgentState,
    Handler,
    _absolute,
    _channel,
    _params,
    _read_file,
)
from securechan.agent.rpc import AgentErrorCode, RpcError

__all__ = ["GROUP_METHODS"]


def _names(value: Any, what: str) -> list[str]:
    """A non-empty list of strings (contact names), else -32602."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RpcError(
            AgentErrorCode.INVALID_PARAMS, f"parameter {what!r} must be a non-empty list of names"
        )
    return list(value)


async def _group_create(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, name=(str, True), members=(list, True), admins=(list, False))
    members = _names(p["members"], "members")
    admins = [] if p["admins"] is None else _names(p["admins"], "admins")
    async with state.channel_lock:
        info = await _channel(state).group_create(p["name"], members, admins=admins)
    return info.to_json()


async def _group_add(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True), contacts=(list, True))
    contacts = _names(p["contacts"], "contacts")
    async with state.channel_lock:
        info = await _channel(state).group_add(p["group"], contacts)
    return info.to_json()


async def _group_remove(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True), contacts=(list, True))
    contacts = _names(p["contacts"], "contacts")
    async with state.channel_lock:
        info = await _channel(state).group_remove(p["group"], contacts)
    return info.to_json()


async def _group_admin(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True), contacts=(list, True), revoke=(bool, False))
    contacts = _names(p["contacts"], "contacts")
    async with state.channel_lock:
        info = await _channel(state).group_admin(p["group"], contacts, grant=not p["revoke"])
    return info.to_json()


async def _group_leave(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True))
    async with state.channel_lock:
        info = await _channel(state).group_leave(p["group"])
    return info.to_json()


async def _group_rekey(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True))
    async with state.channel_lock:
        info = await _channel(state).group_rekey(p["group"])
    return info.to_json()


async def _group_list(state: AgentState, params: dict[str, Any]) -> Any:
    _params(params)
    async with state.channel_lock:
        infos = _channel(state).groups()
    return {"items": [info.to_json() for info in infos]}


async def _group_show(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True))
    async with state.channel_lock:
        info = _channel(state).group_show(p["group"])
    return info.to_json()


async def _send_group(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True), text=(str, False), file=(str, False))
    if (p["text"] is None) == (p["file"] is None):
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "give exactly one of 'text' and 'file'")
    if p["text"] is not None:
        from securechan.client.group_parts import check_group_text

        check_group_text(p["text"])  # before anything is signed or posted
    path = None
    if p["file"] is not None:
        path = _absolute(p["file"], "file")
        await asyncio.to_thread(_read_file, path)  # the same size and access checks as send
    async with state.channel_lock:
        ch = _channel(state)
        if path is not None:
            sent = await ch.send_group(p["group"], path=str(path))
        else:
            sent = await ch.send_group(p["group"], text=p["text"])
    return sent.to_json()


async def _group_history(state: AgentState, params: dict[str, Any]) -> Any:
    p = _params(params, group=(str, True), limit=(int, False), before=(str, False))
    limit = p["limit"]
    if limit is not None and limit < 1:
        raise RpcError(AgentErrorCode.INVALID_PARAMS, "limit must be at least 1")
    async with state.channel_lock:
        rows = _channel(state).group_history(
            p["group"], limit=None if limit is None else limit + 1, before=p["before"]
        )
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[-limit:]
    return {"items": [row.to_json() for row in rows], "more": more}


GROUP_METHODS: dict[str, Handler] = {
    "groupCreate": _group_create,
    "groupAdd": _group_add,
    "groupRemove": _group_remove,
    "groupAdmin": _group_admin,
    "groupLeave": _group_leave,
    "groupRekey": _group_rekey,
    "groupList": _group_list,
    "groupShow": _group_show,
    "sendGroup": _send_group,
    "groupHistory": _group_history,
}
