"""Push delivery over WebSockets (aiohttp): subscribers per queue, their caps.

The service tells :meth:`Push.notify` of every new envelope; each open
WebSocket of that queue gets it as one JSON text frame
(``{"type": "message", ...}``, the fields of
:class:`securechan.relay.api.Message`). Sockets are capped per queue, per
client address and overall (``docs/RELAY.md``, "Connections").
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

from aiohttp import WSMsgType, web

from securechan.relay import api
from securechan.relay.api import ApiError
from securechan.relay.connlimit import SampledLog, client_key
from securechan.relay.service import RelayService

__all__ = ["Push"]


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
            async for msg in ws:  # the client only sends pings or closes
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            sockets = self.subscribers.get(rid)
            if sockets is not None:
                sockets.discard(ws)
                if not sockets:
                    self.subscribers.pop(rid, None)
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

    @staticmethod
    async def _push(ws: web.WebSocketResponse, frame: str) -> None:
        try:
            await asyncio.wait_for(ws.send_str(frame), timeout=10)
        except (ConnectionError, TimeoutError, RuntimeError):
            await ws.close()

    async def close_all(self) -> None:
        for sockets in list(self.subscribers.values()):
            for ws in list(sockets):
                await ws.close(code=1001, message=b"relay shutting down")
