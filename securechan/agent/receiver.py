"""The agent's background receiving (docs/AGENT.md, Receiving).

While the key is unlocked the agent keeps one WebSocket per receive queue
(the relay pushes a wake-up when an envelope arrives) and runs a receive pass
on each wake-up, and every ``poll`` seconds anyway. What a pass returns is
kept for the next ``receive`` call and sent at once to every subscriber
(``subscribeReceive``) as a ``receive`` notification; an attack the pass
detected (split view, gap, replay, a rolled-back peer) is such an item, with
its ``rejected`` reason. Everything a pass returns is already committed in
``client.db`` (history) before the relay is told to drop it, so a crash of
the agent loses nothing the relay acknowledged to the sender.

A relay that cannot be reached is reported to subscribers
(``relayUnavailable``) and retried with exponential backoff from 1 s to 60 s.
While the key is locked nothing is fetched: envelopes wait at the relay.
Past ``MAX_PENDING_BYTES`` of files not yet collected, fetching pauses until
a ``receive`` call drains them (the relay keeps the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from securechan.agent.methods import MAX_PENDING_BYTES, AgentState
from securechan.errors import AgentLocked, MalformedInput, Reason, RelayError, SecurechanError

if TYPE_CHECKING:
    from securechan.client.channel import Channel
    from securechan.client.group_results import GroupEntry
    from securechan.client.results import Received, Rejected

__all__ = ["BACKOFF_MAX", "Receiver"]

_RELAY_REASONS = frozenset({Reason.RELAY_ERROR, Reason.RELAY_UNAVAILABLE})


def _relay_down(item: object) -> bool:
    return getattr(item, "relay", None) is not None or (
        getattr(item, "reason", None) in _RELAY_REASONS
    )


BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0

Notify = Callable[[str, dict[str, Any]], None]


class Receiver:
    def __init__(self, state: AgentState, notify: Notify, *, poll: float = 30.0) -> None:
        self._state = state
        self._notify = notify
        self._poll = poll
        self._wake = asyncio.Event()

    async def run(self) -> None:
        state = self._state
        backoff = BACKOFF_MIN
        while not state.stop.is_set():
            # A lock or an unlock sets `changed`: the loops below end on it and
            # come back here, where it is observed and cleared.
            state.keys.changed.clear()
            try:
                channel = state.keys.get(touch=False)
            except AgentLocked:
                await self._wait(state.keys.changed, None)
                continue
            if state.pending_bytes() > MAX_PENDING_BYTES:
                state.drained.clear()
                await self._wait(state.drained, None)
                continue
            listeners = self._listen(channel)
            try:
                while not state.stop.is_set() and not state.keys.changed.is_set():
                    try:
                        async with state.channel_lock:
                            if state.keys.locked:
                                break
                            items = await channel.receive()
                    except RelayError as e:
                        self._notify("relayUnavailable", {"error": str(e), "retry_in": backoff})
                        await self._wait(None, backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    # A relay a pass could not reach is reported as an item
                    # (the pass goes on with the other relays): an outage,
                    # not an envelope; reported to subscribers, retried.
                    down = [i for i in items if _relay_down(i)]
                    self._publish([i for i in items if not _relay_down(i)])
                    if down:
                        error = getattr(down[0], "error", "a relay cannot be reached")
                        self._notify("relayUnavailable", {"error": error, "retry_in": backoff})
                        await self._wait(None, backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    backoff = BACKOFF_MIN
                    if state.pending_bytes() > MAX_PENDING_BYTES:
                        break
                    self._wake.clear()
                    await self._wait(self._wake, self._poll)
            except SecurechanError as e:
                # A local failure (the database): reported, retried later.
                self._notify("error", {"error": str(e), "reason": str(e.code)})
                await self._wait(None, BACKOFF_MAX)
            finally:
                for task in listeners:
                    task.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)

    def _publish(self, items: list[Received | Rejected | GroupEntry]) -> None:
        from securechan.client.results import Received

        for item in items:
            self._state.pending.append(item)
            if isinstance(item, Received):
                self._notify("receive", {"item": item.to_json(file=None)})
            else:
                self._notify("receive", {"item": item.to_json()})

    async def _wait(self, event: asyncio.Event | None, timeout: float | None) -> None:
        """Until ``event``, a lock or unlock, the agent stops, or ``timeout``."""
        state = self._state
        events = {state.stop, state.keys.changed} | ({event} if event is not None else set())
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _listen(self, channel: Channel) -> list[asyncio.Task[None]]:
        """One WebSocket per receive queue; each push wakes the loop."""
        from securechan.primitives import Ed25519SigningKey

        async def listen(relay_url: str, rid: bytes, secret: bytes) -> None:
            while not self._state.stop.is_set():
                try:
                    relay = await channel.relay(relay_url)
                    async for _ in relay.subscribe(rid, Ed25519SigningKey(secret)):
                        self._wake.set()
                except (RelayError, MalformedInput):
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._state.stop.wait(), timeout=self._poll)

        return [asyncio.create_task(listen(q.relay, q.rid, q.secret)) for q in channel.db.queues()]
