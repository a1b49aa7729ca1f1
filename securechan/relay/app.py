"""The relay's HTTP and WebSocket layer (aiohttp): parse, call the service, render.

The routes come from :data:`securechan.relay.api.ROUTES` (the one
description of the API; ``docs/openapi.yaml`` is generated from it), the
work from :class:`securechan.relay.service.RelayService`. This module only
reads bodies (bounded, with a timeout), turns paths, queries, headers and
JSON into typed calls, and renders the replies and errors; a handler that
does more than that belongs in the service. ``docs/RELAY.md`` ("How the
relay is built") has the picture.

Every bad request gets a clear status and a JSON error body, never a crash;
log lines name the route and the outcome, never an id, a key or a body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from securechan import strict_json
from securechan.errors import MalformedInput, StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64d
from securechan.relay import api, tlog_tiles
from securechan.relay.api import ApiError
from securechan.relay.api_streams import MAX_STREAM_PAGE
from securechan.relay.config import RelayConfig
from securechan.relay.log_service import LogService
from securechan.relay.metrics import RelayMetrics
from securechan.relay.pairing import PairingService
from securechan.relay.push import Push
from securechan.relay.service import Call, RelayService
from securechan.relay.storage import ID_SIZE, STREAM_ID_SIZE, RelayStorage, StorageClosed
from securechan.relay.streams import StreamService
from securechan.relay.tlog import RelayLog

__all__ = ["RELAY", "Relay", "RelayConfig", "make_app", "openapi_text", "storage_cause"]

log = logging.getLogger("securechan.relay")

T = TypeVar("T")
# A leaf hash in a query: SHA-256 in lowercase hex, one spelling only.
_LEAF_HEX = re.compile(r"[0-9a-f]{64}")


def _error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return web.json_response(err.to_json(), status=err.status, headers=headers)


def _json(reply: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.json_response(api.to_json(reply), status=status, **kw)


def _position(value: str, name: str) -> int:
    """A queue position in a query string: ASCII digits, 0 <= n < 2**63, or 400."""
    if not (isinstance(value, str) and value.isascii() and value.isdigit()):
        raise ApiError("bad_query", f"{name} must be a non-negative integer")
    if len(value) > 19 or int(value) >= 2**63:
        raise ApiError("bad_query", f"{name} must be an integer from 0 to 2**63-1")
    return int(value)


def _query(request: web.Request, names: set[str]) -> dict[str, int]:
    """Only parameters among ``names``, each once, each a non-negative
    integer (which ones are required, the caller checks)."""
    if not set(request.query) <= names or len(request.query) != len(set(request.query)):
        raise ApiError("bad_query", "the parameters are " + ", ".join(sorted(names)))
    return {k: _position(v, k) for k, v in request.query.items()}


class Relay:
    """The HTTP handlers of one relay process, over its :class:`RelayService`."""

    def __init__(self, service: RelayService, push: Push) -> None:
        self.service = service
        self.logs = LogService(service)
        self.push = push
        self.config = service.config
        self.metrics = service.metrics
        self.pairing = PairingService()  # in memory, this process only (docs/RELAY.md)
        self.streams = StreamService(service)

    # The state an operator's code and the tests look at lives in the service.
    @property
    def draining(self) -> bool:
        return self.service.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.service.draining = value

    @property
    def ws_refusals(self) -> Any:
        return self.push.refusals

    # --- parsing ---------------------------------------------------------------

    async def _body(self, request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise ApiError("too_large", f"the body is larger than {limit} bytes")
        if request.content_length == 0 or (
            request.content_length is None and not request.body_exists
        ):
            return b""
        content = request.content
        stopping = self.service.stopping
        if content.is_eof() and not stopping.is_set():
            # The whole body came with the headers (the usual case for an
            # envelope): take it without a reader task and a timer.
            data = content.read_nowait(-1)
            if len(data) > limit:
                raise ApiError("too_large", f"the body is larger than {limit} bytes")
            return data
        reader = asyncio.ensure_future(self._read_body(request, limit))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, stop},
                timeout=self.config.body_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()
        if reader in done:
            return reader.result()
        reader.cancel()
        if stop in done:
            raise ApiError("shutting_down", "the relay is stopping", retry_after=5)
        raise ApiError("timeout", "the request body was too slow")

    @staticmethod
    async def _read_body(request: web.Request, limit: int) -> bytes:
        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise ApiError("too_large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _parse(cls: type[T], body: bytes) -> T:
        """A JSON request body of type ``cls`` (exactly its fields), or 400."""
        try:
            # _body already bounded the size by the route's own limit.
            data = strict_json.loads(body, max_size=len(body), what="the body")
        except MalformedInput as e:
            raise ApiError("bad_json", str(e)) from None
        try:
            return api.from_json(cls, data)
        except MalformedInput as e:
            raise ApiError("bad_request", str(e)) from None

    @staticmethod
    def _id(request: web.Request, name: str, size: int = ID_SIZE) -> bytes:
        try:
            return b64d(request.match_info[name], size=size)
        except MalformedInput:
            raise ApiError("bad_id", f"malformed {name}") from None

    @staticmethod
    def _call(request: web.Request, body: bytes = b"") -> Call:
        return Call(
            remote=request.remote,
            method=request.method,
            target=request.path_qs,
            authorization=request.headers.get("Authorization"),
            body=body,
        )

    # --- health ------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        return _json(self.service.info())

    async def healthz(self, request: web.Request) -> web.Response:
        if self.service.draining:
            return web.json_response(
                {"status": "draining"}, status=503, headers={"Retry-After": "5"}
            )
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness (docs/RELAY.md, "Metrics, health and logs"): 503 while
        sends would be refused for storage; /healthz stays liveness."""
        reasons = self.service.not_ready()
        if reasons:
            return web.json_response(
                {"status": "not_ready", "reasons": reasons},
                status=503,
                headers={"Retry-After": "5"},
            )
        return web.json_response({"status": "ready"})

    async def metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=openapi_text(), content_type="application/yaml")

    # --- queues --------------------------------------------------------------------

    async def create_queue(self, request: web.Request) -> web.Response:
        svc = self.service
        svc.guard.limit(svc.guard.create_limit, request.remote, "create")
        body = await self._body(request, 4096)
        req = self._parse(api.CreateQueueRequest, body)
        return _json(await svc.create_queue(self._call(request, body), req), status=201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        queue = await self.service.queue(self._id(request, "rid"))
        call = self._call(request, await self._body(request, 0))
        return _json(await self.service.delete_queue(call, queue))

    async def secure_queue(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self.service.queue(rid)
        body = await self._body(request, 4096)
        await self.service.guard.authenticate(self._call(request, body), queue.recipient_key)
        req = self._parse(api.SecureQueueRequest, body)
        return _json(await self.service.secure_queue(self._call(request, body), queue, req))

    # --- envelopes --------------------------------------------------------------------

    async def send(self, request: web.Request) -> web.Response:
        svc = self.service
        svc.guard.limit(svc.guard.client_limit, request.remote, "client")
        sid = self._id(request, "sid")
        try:
            msg_id = b64d(request.headers.get("X-Message-Id", ""), size=16)
        except MalformedInput:
            raise ApiError("bad_message_id", "X-Message-Id must be 16 bytes") from None
        queue = await svc.send_queue(sid, request.remote)
        body = await self._body(request, self.config.max_envelope)
        reply = await svc.send(self._call(request, body), queue, msg_id)
        return _json(reply, status=200 if reply.duplicate else 201)

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        rid = self._id(request, "rid")
        queue = await self.service.queue(rid)
        await self.service.fetch_admit(self._call(request, await self._body(request, 0)), queue)
        if set(request.query) - {"after", "limit"}:
            raise ApiError("bad_query", "the only parameters are after and limit")
        after = _position(request.query.get("after", "0"), "after")
        limit = _position(request.query.get("limit", "100"), "limit")
        if limit < 1:
            raise ApiError("bad_query", "limit must be at least 1")
        async with self.service.fetch(rid, after, limit) as page:
            body = json.dumps(api.to_json(page)).encode()
            del page
            self.metrics.fetch_bytes.observe(len(body))
            response = web.Response(body=body, content_type="application/json")
            del body
            # Written while the slot is held, so the answers in memory stay
            # bounded; a reader too slow to take it loses its connection.
            try:
                await asyncio.wait_for(self._send(request, response), self.config.body_timeout)
            except (TimeoutError, ConnectionError):
                if request.transport is not None:
                    request.transport.close()
            return response

    @staticmethod
    async def _send(request: web.Request, response: web.StreamResponse) -> None:
        await response.prepare(request)
        await response.write_eof()

    async def ack(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self.service.queue(rid)
        body = await self._body(request, 1024)
        await self.service.guard.authenticate(self._call(request, body), queue.recipient_key)
        req = self._parse(api.AckRequest, body)
        return _json(await self.service.ack(self._call(request, body), rid, req))

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        rid = self._id(request, "rid")
        await self.service.owned_queue(self._call(request), rid)
        return await self.push.serve(request, rid)

    # --- prekeys ------------------------------------------------------------------------

    async def put_prekeys(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self.service.queue(rid)
        body = await self._body(request, self.config.prekey_upload_bytes)
        await self.service.guard.authenticate(self._call(request, body), queue.recipient_key)
        self.service.prekeys_allowed(queue)
        req = self._parse(api.PrekeysRequest, body)
        return _json(await self.service.put_prekeys(queue, req))

    async def prekey_status(self, request: web.Request) -> web.Response:
        queue = await self.service.queue(self._id(request, "rid"))
        call = self._call(request, await self._body(request, 0))
        return _json(await self.service.prekey_status(call, queue))

    async def claim_bundle(self, request: web.Request) -> web.Response:
        svc = self.service
        svc.guard.limit(svc.guard.client_limit, request.remote, "client")
        sid = self._id(request, "sid")
        await self._body(request, 0)
        return _json(await svc.claim_bundle(self._call(request), sid))

    # --- pairing mailbox (docs/RELAY.md, "Pairing mailbox"; relay/pairing.py) -----

    async def pair_open(self, request: web.Request) -> web.Response:
        await self._body(request, 0)
        nameplate, token = self.pairing.open(request.remote)
        return _json(api.PairOpenReply(nameplate=nameplate, token=token), status=201)

    async def pair_join(self, request: web.Request) -> web.Response:
        req = self._parse(api.PairJoinRequest, await self._body(request, 1024))
        token = self.pairing.join(request.remote, req.nameplate)
        return _json(api.PairOpenReply(nameplate=req.nameplate, token=token))

    async def pair_put(self, request: web.Request) -> web.Response:
        req = self._parse(api.PairPutRequest, await self._body(request, 65536))
        self.pairing.put(req.nameplate, req.token, req.phase, req.body)
        return _json(api.PairPutReply(stored=True))

    async def pair_get(self, request: web.Request) -> web.Response:
        req = self._parse(api.PairGetRequest, await self._body(request, 1024))
        # A short long-poll: the answer comes as soon as the other side posts.
        for _ in range(100):
            body = self.pairing.get(req.nameplate, req.token, req.phase)
            if body is not None or self.service.stopping.is_set():
                break
            await asyncio.sleep(0.05)
        return _json(api.PairGetReply(body=body))

    async def pair_close(self, request: web.Request) -> web.Response:
        req = self._parse(api.PairCloseRequest, await self._body(request, 1024))
        deleted = self.pairing.close(req.nameplate, req.token, req.ok)
        return _json(api.PairCloseReply(deleted=deleted))

    # --- group streams (docs/RELAY.md, "Group streams"; relay/streams.py) ---------

    async def stream_post(self, request: web.Request) -> web.Response:
        svc = self.service
        svc.guard.limit(svc.guard.client_limit, request.remote, "client")
        stream_id = self._id(request, "stream", STREAM_ID_SIZE)
        body = await self._body(request, self.config.stream_max_blob)
        return _json(await self.streams.post(self._call(request, body), stream_id))

    async def stream_fetch(self, request: web.Request) -> web.Response:
        svc = self.service
        svc.guard.limit(svc.guard.client_limit, request.remote, "client")
        stream_id = self._id(request, "stream", STREAM_ID_SIZE)
        await self._body(request, 0)
        query = _query(request, {"after", "limit", "size"})
        limit = query.get("limit", MAX_STREAM_PAGE)
        if not 1 <= limit <= MAX_STREAM_PAGE:
            raise ApiError("bad_query", f"limit must be 1 to {MAX_STREAM_PAGE}")
        page = self.streams.fetch(stream_id, query.get("after", 0), limit, query.get("size"))
        return _json(await page)

    # --- transparency log (docs/AUDIT.md, "Relay transparency log") -----------------

    async def log_checkpoint(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        query = _query(request, {"size"})
        note = await self.logs.log_checkpoint(query.get("size"))
        return web.Response(text=note, headers={"Cache-Control": "no-store"})

    async def tiles_checkpoint(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        note = await self.logs.log_checkpoint(None)
        return web.Response(text=note, headers={"Cache-Control": tlog_tiles.CHECKPOINT_CACHE})

    async def tiles_tile(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        path = request.match_info["tile"]
        data, full = await self.logs.tiles_tile(path)
        cache = tlog_tiles.FULL_CACHE if full else tlog_tiles.PARTIAL_CACHE
        response = web.Response(
            body=data, content_type="application/octet-stream", headers={"Cache-Control": cache}
        )
        if path.startswith("entries/"):  # the spec: SHOULD be compressed (if asked)
            response.enable_compression()
        return response

    async def log_leaf(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        text = request.query.get("hash", "")
        if (
            set(request.query) != {"hash"}
            or len(request.query) != 1
            or not _LEAF_HEX.fullmatch(text)
        ):
            raise ApiError("bad_query", "give hash, the leaf hash in 64 lowercase hex digits")
        receipt = await self.logs.log_leaf(bytes.fromhex(text))
        return web.json_response(receipt.to_json(), headers={"Cache-Control": "no-store"})

    async def log_inclusion(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        query = _query(request, {"index", "size"})
        if len(query) != 2:
            raise ApiError("bad_query", "give index and size, with index < size")
        return _json(await self.logs.log_inclusion(query["index"], query["size"]))

    async def log_consistency(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        query = _query(request, {"old", "new"})
        if len(query) != 2:
            raise ApiError("bad_query", "give old and new, with old <= new")
        return _json(await self.logs.log_consistency(query["old"], query["new"]))

    async def log_cosignature(self, request: web.Request) -> web.Response:
        self.logs.admit(self._call(request))
        body = await self._body(request, int(api.route("log_cosignature").limit))
        answer = await self.logs.log_cosignature(body)
        if isinstance(answer, int):
            # As tlog-witness add-checkpoint answers a stale old size.
            return web.Response(
                status=409,
                body=f"{answer}\n".encode("ascii"),
                headers={"Content-Type": "text/x.tlog.size"},
            )
        return web.Response(text=answer)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RELAY = web.AppKey("relay", Relay)
"""The application's :class:`Relay` (``app[RELAY]``)."""


def storage_cause(exc: BaseException) -> str:
    """The root cause of a storage error in the operator's words (SQLite's
    or the system's message, e.g. "database or disk is full (SQLITE_FULL)",
    "database is locked (SQLITE_BUSY)"): never a key, id or body."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, sqlite3.Error):
        name = getattr(root, "sqlite_errorname", None)
        return f"{root} ({name})" if name else type(root).__name__
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    if isinstance(root, StorageError):
        return str(root)  # the relay's own words
    return type(root).__name__


def openapi_text() -> str:
    """The OpenAPI document: packaged with the wheel (from docs/openapi.yaml),
    or read from the source tree in an editable install."""
    packaged = resources.files("securechan.relay").joinpath("openapi.yaml")
    if packaged.is_file():
        return packaged.read_text("utf-8")
    return (Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text("utf-8")


def _middleware(relay: Relay, storage: RelayStorage) -> Any:
    """Errors to JSON answers, the failed-authentication gate, metrics."""
    svc = relay.service
    ungated = frozenset(r.path for r in api.ROUTES if not r.gated)
    # Labelled metric children, looked up once (labels() costs a lock and a
    # tuple per call). Keys are route templates, methods and statuses: bounded.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[str, Any] = {}

    def refused(request: web.Request, name: str, level: int, what: str) -> None:
        key = f"{request.method} {name} -> {what}"
        svc.refusals.log(level, key, "%s %s -> %s", request.method, name, what)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        started = time.perf_counter()
        try:
            if name not in ungated:
                svc.guard.auth_gate(request.remote)
            response = await handler(request)
        except ApiError as err:
            response = _error_response(err)
            refused(request, name, logging.INFO, f"{err.status} {err.api_code}")
        except web.HTTPException as exc:  # aiohttp's own (404 route, 405, 413 ...)
            response = _error_response(ApiError("http", exc.reason, status=exc.status))
        except StorageClosed:
            response = _error_response(ApiError("shutting_down", "the relay is stopping"))
        except StorageError as exc:
            svc.storage_failed()
            refused(request, name, logging.ERROR, f"503 storage error: {storage_cause(exc)}")
            response = _error_response(
                ApiError("storage", "the relay cannot store right now", retry_after=5)
            )
        except ValueError:
            # The storage refuses writes to a queue deleted meanwhile (a race).
            response = _error_response(ApiError("no_queue", "no such queue"))
        if svc.draining and not response.prepared:
            response.force_close()  # keep-alive clients reconnect (through the proxy)
        key = (request.method, name, response.status)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = relay.metrics.requests.labels(key[0], name, str(key[2]))
        counter.inc()
        timer = timers.get(name)
        if timer is None:
            timer = timers[name] = relay.metrics.latency.labels(name)
        timer.observe(time.perf_counter() - started)
        return response

    return errors


def _gauges(relay: Relay, storage: RelayStorage, tlog: RelayLog | None) -> None:
    m, svc = relay.metrics, relay.service
    if tlog is not None:
        m.log_size.set_function(lambda: tlog.size)
        m.log_commits.set_function(lambda: tlog.commits)
    m.ws_queues.set_function(lambda: len(relay.push.subscribers))
    # Backends that count their commits (SqliteStorage) show group commit at work.
    m.db_commits.set_function(lambda: getattr(storage, "commits", 0))
    m.db_write_jobs.set_function(lambda: getattr(storage, "write_jobs", 0))
    m.storage_used.set_function(lambda: getattr(storage, "used_bytes", 0))
    m.storage_free.set_function(lambda: getattr(storage, "free_bytes", lambda: None)() or 0)
    m.reclaimed_pages.set_function(lambda: getattr(storage, "reclaimed_pages", 0))
    m.ready.set_function(lambda: 0 if svc.not_ready() else 1)
    m.read_nonces.set_function(lambda: len(svc.guard.read_nonces))


def make_app(
    storage: RelayStorage,
    key: Ed25519SigningKey,
    config: RelayConfig | None = None,
    metrics: RelayMetrics | None = None,
    *,
    tlog: RelayLog | None = None,
) -> web.Application:
    """The relay application. The caller owns ``storage`` and ``tlog`` (and
    closes them); without ``tlog`` the relay serves no transparency log."""
    cfg = config or RelayConfig()
    service = RelayService(storage, key, cfg, metrics or RelayMetrics(), tlog)
    push = Push(service)
    relay = Relay(service, push)
    service.on_stored = push.notify
    app = web.Application(
        middlewares=[_middleware(relay, storage)], client_max_size=cfg.max_envelope + 64 * 1024
    )
    app[RELAY] = relay
    handlers: Mapping[str, Handler] = {
        r.name: getattr(relay, "metrics_text" if r.name == "metrics" else r.name)
        for r in api.ROUTES
    }
    for r in api.ROUTES:
        if r.log and tlog is None:
            continue
        if r.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(api.aiohttp_path(r), handlers[r.name])
        else:
            app.router.add_route(r.method, r.path, handlers[r.name])
    _gauges(relay, storage, tlog)

    async def close_sockets(app: web.Application) -> None:
        service.stopping.set()
        service.refusals.flush()
        await push.close_all()

    app.on_shutdown.append(close_sockets)
    return app
