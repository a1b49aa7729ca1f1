"""The agent's methods for the commands that write the home's client
database besides sending and receiving (docs/AGENT.md, Methods):
``register``, ``outbox``, ``outboxCancel``, ``policySet``, ``policyShow``
and ``contactRekey``.

Before these existed the commands refused while an agent ran (the agent
holds the only writer of ``client.db``); now each calls the same client
function the in-process command calls, under the channel lock, and answers
with the object the command prints with ``--json`` (``policyShow`` and
``outbox`` wrap theirs in ``items``, as ``history`` does), so the command
line prints the same either way.

``register`` changes the queues the background receiver holds WebSockets
on: it sets the key cache's ``changed`` event, which makes the receiver
close its listeners and open one per queue again (as after an unlock),
so a message to a new address is pushed at once, without a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from securechan.agent.rpc import AgentErrorCode, RpcError
from securechan.errors import NotFound, RelayError, UsageError
from securechan.timestamps import iso_utc

__all__ = ["HOME_METHODS"]

# ``state`` is agent/methods.py's AgentState: that module imports this one
# (at a method's first call), so this one does not import it back.
Handler = Callable[[Any, dict[str, Any]], Awaitable[Any]]


def _params(params: dict[str, Any], **spec: tuple[type, bool]) -> dict[str, Any]:
    """Check ``params`` against ``name=(type, required)``; raise -32602
    (the rule of agent/methods.py's checker, for these methods)."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RpcError(AgentErrorCode.INVALID_PARAMS, f"unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        value = params.get(name)
        if value is None:
            if required:
                raise RpcError(AgentErrorCode.INVALID_PARAMS, f"missing parameter {name!r}")
            out[name] = None
        elif (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise RpcError(
                AgentErrorCode.INVALID_PARAMS, f"parameter {name!r} must be a {kind.__name__}"
            )
        else:
            out[name] = value
    return out


def _channel(state: Any) -> Any:
    """The unlocked channel (a use of the key: restarts the idle clock)."""
    return state.keys.get()


def _strings(value: Any, what: str, *, empty: bool) -> list[str]:
    """A list of strings (non-empty unless ``empty``), else -32602."""
    if (
        not isinstance(value, list)
        or (not value and not empty)
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise RpcError(
            AgentErrorCode.INVALID_PARAMS, f"parameter {what!r} must be a list of strings"
        )
    return list(value)


def _fingerprint(text: str | None) -> bytes | None:
    """The relay fingerprint as ``register --relay-fingerprint`` reads it."""
    if text is None:
        return None
    wanted = text.strip().lower().replace(" ", "")
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise UsageError("a relay fingerprint is 64 hex digits")
    return bytes.fromhex(wanted)


async def _register(state: Any, params: dict[str, Any]) -> Any:
    """``register``: each relay in turn (``Channel.register``), then the
    receiver listens on the new queues."""
    p = _params(params, relays=(list, True), fingerprint=(str, False))
    relays = _strings(p["relays"], "relays", empty=False)
    if p["fingerprint"] is not None and len(relays) != 1:
        raise UsageError("--relay-fingerprint goes with exactly one --relay")
    pin = _fingerprint(p["fingerprint"])
    async with state.channel_lock:
        ch = _channel(state)
        try:
            card = None
            for url in relays:
                card = await ch.register(url, pin_fingerprint=pin)
            if card is None:  # pragma: no cover - _strings refused an empty list
                raise UsageError("give at least one relay")
            keys = ch.relay_fingerprints()
        finally:
            # New queues (even after a partial failure): listen on them now.
            state.keys.changed.set()
    return {
        "relays": [a.relay for a in card.addresses],
        "relay_fingerprints": {a.relay: keys.get(a.relay) for a in card.addresses},
        "card": card.to_text(),
    }


async def _outbox(state: Any, params: dict[str, Any]) -> Any:
    _params(params)
    async with state.channel_lock:
        ch = _channel(state)
        items, now = ch.queued(), ch.now()
    return {"items": [item.to_json() for item in items], "now": iso_utc(now)}


async def _outbox_cancel(state: Any, params: dict[str, Any]) -> Any:
    p = _params(params, message_id=(str, True))
    async with state.channel_lock:
        done = _channel(state).cancel(p["message_id"])
    return done.to_json()


def _policy_json(
    relay: str,
    witnesses: list[str],
    required: int,
    *,
    error: str | None = None,
    witnessed: Any = None,
) -> dict[str, Any]:
    """A relay's policy as ``policy set|show --json`` prints it (the
    command line's ``PolicyInfo``, built here from the same fields)."""
    out: dict[str, Any] = {
        "relay": relay,
        "witnesses": witnesses,
        "required": required if witnesses else 0,
    }
    if error is not None:
        out["error"] = error
    if witnessed is not None:
        out["witnessed_size"] = witnessed.checkpoint.size
        out["cosigned_by"] = [
            {"witness": c.cosigner.name, "at": iso_utc(c.timestamp)} for c in witnessed.cosignatures
        ]
    return out


async def _policy_set(state: Any, params: dict[str, Any]) -> Any:
    from securechan.audit.note import VerifierKey
    from securechan.client.policy import set_policy

    p = _params(params, relay=(str, True), witnesses=(list, True), require=(int, False))
    lines = _strings(p["witnesses"], "witnesses", empty=True)
    keys = [VerifierKey.from_text(k.strip()) for k in lines]
    async with state.channel_lock:
        ch = _channel(state)
        if p["relay"] not in ch.relays() + ch.known_logs():
            raise NotFound(f"{p['relay']} is none of your or your contacts' relays")
        done = set_policy(ch, p["relay"], keys, p["require"])
    return _policy_json(done.relay, [k.to_text() for k in done.witnesses], done.required)


async def _policy_show(state: Any, params: dict[str, Any]) -> Any:
    """Each registered relay's policy and the newest checkpoint that met it
    (fetched now); a relay that does not answer has its ``error``."""
    from securechan.client.policy import get_policy, refresh_witnessed

    _params(params)
    out = []
    async with state.channel_lock:
        ch = _channel(state)
        for relay_url in ch.relays():
            policy = get_policy(ch, relay_url)
            if policy is None:
                out.append(_policy_json(relay_url, [], 0))
                continue
            error, witnessed = None, None
            try:
                witnessed = await refresh_witnessed(ch, relay_url)
            except RelayError as e:
                error = str(e)
            witnesses = [k.to_text() for k in policy.witnesses]
            out.append(
                _policy_json(
                    relay_url, witnesses, policy.required, error=error, witnessed=witnessed
                )
            )
    return {"items": out}


async def _contact_rekey(state: Any, params: dict[str, Any]) -> Any:
    p = _params(params, contact=(str, True))
    async with state.channel_lock:
        count = _channel(state).rekey(p["contact"])
    return {"contact": p["contact"], "retired": count}


HOME_METHODS: dict[str, Handler] = {
    "register": _register,
    "outbox": _outbox,
    "outboxCancel": _outbox_cancel,
    "policySet": _policy_set,
    "policyShow": _policy_show,
    "contactRekey": _contact_rekey,
}
