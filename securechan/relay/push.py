"""Push delivery over WebSockets (aiohttp): subscribers per queue, their caps.

The service tells :meth:`Push.notify` of every new envelope; each open
WebSocket of that queue gets it as one JSON text frame
(``{"type": "message", ...}``, the fields of
:class:`securechan.relay.api.Message`). Sockets are capped per queue, per
client address and overall (``docs/RELAY.md``, "Connections").

With several relay processes on one PostgreSQL database, a send may be
taken by another process than the one holding the receiver's WebSocket:
a storage that hears other processes' sends (``on_wake``, as
:class:`~securechan.relay.pg_store.PgStorage` has) calls :meth:`Push.wake`
with the queue's tag (:func:`~securechan.relay.wake.queue_tag`) and the
envelope's seq; if this process holds a socket of that queue, it fetches
that one envelope from the database and pushes it like its own sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable

from aiohttp import WSMsgType, web

from securechan.errors import StorageError
from securechan.relay import api
from securechan.relay.api import ApiError
from securechan.relay.connlimit import SampledLog, client_key
from securechan.relay.service import RelayService
from securechan.relay.wake import queue_tag

__all__ = ["Push"]

log = logging.getLogger("securechan.relay")


class Push:
    """The open WebSockets of one relay, by queue."""

    def __init__(self, service: RelayService) -> None:
        self.service = service
        self.config = service.config
        self.metrics = service.metrics
        self.subscribers: dict[bytes, set[web.WebSocketResponse]] = defaultdict(set)
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.refusals = SampledLog("WebSockets")
        # Queues with sockets here, by their wake-up tag; deliveries of
        # other processes' sends in flight.
        self.tags: dict[str, bytes] = {}
        self._wakes: set[asyncio.Task[None]] = set()
        on_wake: Callable[[Callable[[str, int], None]], None] | None = getattr(
            service.storage, "on_wake", None
        )
        if on_wake is not None:
            on_wake(self.wake)

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        # Answered here, not raised: the refusal is logged sampled, not as
        # one line per request by the error middleware.
        self.refusals.refused(reason)
        self.metrics.connections_refused.labels(f"ws_{reason}").inc()
        err = ApiError("too_many_sockets", message, retry_after=5, status=status)
        return web.json_response(err.to_json(), status=status, headers={"Retry-After": "5"})

    async def serve(self, request: web.Request, rid: bytes) -> web.StreamResponse:
        """Upgrade ``request`` (already authenticated for ``rid``) and hold the
        socket open until the client or the relay closes it."""
        # Looked up with get(): a refused or failed upgrade leaves no entry.
        if len(self.subscribers.get(rid, ())) >= self.config.max_ws_per_queue:
            raise ApiError("too_many_sockets", "too many sockets on this queue", retry_after=5)
        client = client_key(request.remote or "")
        cfg = self.config
        if cfg.max_websockets and self.open >= cfg.max_websockets:
            return self._refuse(503, "overall", "the relay has too many sockets")
        if cfg.max_ws_per_client and self.by_client.get(client, 0) >= cfg.max_ws_per_client:
            return self._refuse(429, "per_client", "too many sockets from this address")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        if not ws.can_prepare(request).ok:
            raise ApiError("not_websocket", "this route takes a WebSocket upgrade")
        # Counted before the upgrade's first await: concurrent upgrades from
        # one address cannot all pass the check above.
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self.metrics.websockets.inc()
        try:
            await ws.prepare(request)
            self.subscribers[rid].add(ws)
            self.tags[queue_tag(rid)] = rid
            async for msg in ws:  # the client only sends pings or closes
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            sockets = self.subscribers.get(rid)
            if sockets is not None:
                sockets.discard(ws)
                if not sockets:
                    self.subscribers.pop(rid, None)
                    self.tags.pop(queue_tag(rid), None)
            self.open -= 1
            held = self.by_client.get(client, 0) - 1
            if held > 0:
                self.by_client[client] = held
            else:
                self.by_client.pop(client, None)
            self.metrics.websockets.dec()
        return ws

    def notify(self, rid: bytes, message: api.Message) -> None:
        """Push a new envelope to the queue's sockets (none: nothing built)."""
        if not self.subscribers.get(rid):
            return  # nobody listening: no frame to build (it base64-encodes the body)
        frame = json.dumps({"type": "message", **api.to_json(message)})
        for ws in list(self.subscribers.get(rid, ())):
            if not ws.closed:
                asyncio.get_running_loop().create_task(self._push(ws, frame))

    def wake(self, tag: str, seq: int) -> None:
        """Another process stored envelope ``seq`` in the queue tagged ``tag``:
        push it to this process's sockets of that queue (none: nothing read)."""
        rid = self.tags.get(tag)
        if rid is None or not self.subscribers.get(rid):
            return
        task = asyncio.get_running_loop().create_task(self._deliver(rid, seq))
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _deliver(self, rid: bytes, seq: int) -> None:
        try:
            held = await self.service.storage.fetch(rid, after=seq - 1, limit=1)
        except StorageError as exc:  # the receiver still polls: it is not lost
            log.warning("push: cannot read an envelope another process stored: %s", exc)
            return
        if held and held[0].seq == seq:  # not acknowledged meanwhile
            e = held[0]
            self.notify(
                rid, api.Message(seq=e.seq, msg_id=e.msg_id, data=e.data, received=e.received)
            )

    @staticmethod
    async def _push(ws: web.WebSocketResponse, frame: str) -> None:
        try:
            await asyncio.wait_for(ws.send_str(frame), timeout=10)
        except (ConnectionError, TimeoutError, RuntimeError):
            await ws.close()

    async def close_all(self) -> None:
        for task in list(self._wakes):
            task.cancel()
        for sockets in list(self.subscribers.values()):
            for ws in list(sockets):
                await ws.close(code=1001, message=b"relay shutting down")
