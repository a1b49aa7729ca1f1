"""The relay's HTTP and WebSocket API (aiohttp). ``docs/RELAY.md`` is the
contract and ``docs/openapi.yaml`` its machine-readable form.

The relay is trusted with availability only. It stores and forwards opaque
envelopes on one-way queues that are linked to no identity, hands out sealed
prekey blobs it cannot read, and answers every bad request with a clear
status and a JSON error body, never with a crash and never affecting other
queues. Log lines name the route and the outcome, never an id, a key or a
body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from securechan import strict_json
from securechan.audit.note import MAX_NOTE_BYTES
from securechan.audit.receipt import Receipt, encode_hashes
from securechan.errors import BadSignature, MalformedInput, Reason, RelayError, StorageError
from securechan.primitives import Ed25519SigningKey, random_bytes, sha256
from securechan.protocol.relay_auth import (
    MAX_SKEW,
    SignedRequest,
    b64d,
    b64e,
    parse_authorization,
    verify_request,
)
from securechan.relay.connlimit import SampledLog, client_key
from securechan.relay.limits import LogSampler, RateLimiter
from securechan.relay.metrics import RelayMetrics
from securechan.relay.storage import (
    ID_SIZE,
    KEY_SIZE,
    NonceReused,
    NonceUse,
    PutResult,
    QueueFull,
    QueueRecord,
    Quota,
    QuotaExceeded,
    RelayStorage,
    StorageClosed,
)
from securechan.relay.tlog import CosignatureRefused, RelayLog

__all__ = ["RelayConfig", "make_app"]

log = logging.getLogger("securechan.relay")

API_VERSION = "v1"
# storage_reserve_bytes = -1: keep this share of the data disk free, at most
# AUTO_RESERVE bytes (so a small disk is not all reserve).
AUTO_RESERVE = 64 * 1024 * 1024
AUTO_RESERVE_SHARE = 0.05
# How long /readyz says write_failed after a storage error with no commit since.
WRITE_FAILED_FOR = 30.0
# A leaf hash in a query: SHA-256 in lowercase hex, one spelling only.
_LEAF_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Limits and behaviour of one relay (``docs/RELAY.md`` §5)."""

    max_envelope: int = 256 * 1024
    max_depth: int = 10_000
    ttl: int = 30 * 24 * 3600
    fetch_limit: int = 500
    # Sends per second per queue, and per client address (all queues).
    queue_rate: float = 50.0
    queue_burst: int = 200
    client_rate: float = 500.0
    client_burst: int = 1000
    # Prekey bundle claims per contact address (one-time key exhaustion).
    claim_rate: float = 1.0
    claim_burst: int = 20
    create_rate: float = 5.0
    create_burst: int = 50
    body_timeout: float = 15.0
    max_one_time_upload: int = 200
    max_prekey_blob: int = 16 * 1024
    max_ws_per_queue: int = 4
    # Fetch answers (docs/RELAY.md, "Limits"): envelope bytes per answer, how
    # many answers are built and written at once (memory is bounded by about
    # fetch_concurrency x fetch_max_bytes x 1.4, the base64 in JSON), and
    # fetches per second per queue.
    fetch_max_bytes: int = 4 * 1024 * 1024
    fetch_concurrency: int = 8
    fetch_rate: float = 50.0
    fetch_burst: int = 200
    # Byte quotas (docs/RELAY.md, "Limits"; 0: no limit). Envelope bytes held
    # per queue and per sender key (all queues secured with that key); the
    # database's used size overall; the free space the file system keeps for
    # acks, deletes and the WAL (sends that would eat into it are refused,
    # and /readyz says not ready below it); envelope bytes per second per
    # client address.
    queue_max_bytes: int = 256 * 1024 * 1024
    sender_max_bytes: int = 1024 * 1024 * 1024
    storage_max_bytes: int = 0
    storage_reserve_bytes: int = -1  # automatic: 5 % of the data disk, at most 64 MiB
    client_byte_rate: float = 8 * 1024 * 1024
    client_byte_burst: int = 64 * 1024 * 1024
    # Failed authentication (401, 403) per client address: once the budget
    # is spent, the address is answered 429 before any signature is checked.
    auth_failure_rate: float = 2.0
    auth_failure_burst: int = 30
    # Reads (fetches, prekey status) per queue.
    read_rate: float = 100.0
    read_burst: int = 500
    # Nonces of read requests, held in memory for the replay window (not in
    # relay.db: a read changes nothing, docs/RELAY.md §3).
    max_read_nonces: int = 200_000
    # Refusal log lines: at most log_sample per route, status and code in
    # every log_interval seconds, then one summary line.
    log_sample: int = 10
    log_interval: float = 10.0
    # Connection caps (docs/RELAY.md, "Connections"): per client address
    # (IPv4, or IPv6 /64) and overall. 0: sized at start from the fd limit
    # (overall), an eighth of the overall cap (per address).
    max_connections: int = 0
    max_connections_per_client: int = 0
    max_websockets: int = 0
    max_ws_per_client: int = 0
    clock: Callable[[], float] = field(default=time.time)


class _HttpError(RelayError):
    """A refusal on its way to the client (which raises RelayRefused for it);
    ``error_code`` is the API's snake_case code (docs/openapi.yaml)."""

    code = Reason.RELAY_REFUSED

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = code
        self.message = message
        self.retry_after = retry_after


def _error_response(err: _HttpError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return web.json_response(
        {"error": {"code": err.error_code, "message": err.message}},
        status=err.status,
        headers=headers,
    )


class Relay:
    """Handlers and shared state of one relay process."""

    def __init__(
        self,
        storage: RelayStorage,
        key: Ed25519SigningKey,
        config: RelayConfig,
        metrics: RelayMetrics,
        log: RelayLog | None = None,
    ) -> None:
        self.storage = storage
        self.log = log  # the transparency log (docs/AUDIT.md); None: not served
        self.key = key
        self.config = config
        self.metrics = metrics
        self.queue_limit = RateLimiter(rate=config.queue_rate, burst=config.queue_burst)
        self.client_limit = RateLimiter(rate=config.client_rate, burst=config.client_burst)
        self.claim_limit = RateLimiter(rate=config.claim_rate, burst=config.claim_burst)
        self.create_limit = RateLimiter(rate=config.create_rate, burst=config.create_burst)
        self.fetch_limit = RateLimiter(rate=config.fetch_rate, burst=config.fetch_burst)
        self.byte_limit = RateLimiter(
            rate=config.client_byte_rate, burst=max(config.client_byte_burst, config.max_envelope)
        )
        auto = config.storage_reserve_bytes < 0
        reserve = AUTO_RESERVE if auto else (config.storage_reserve_bytes or None)
        self.quota = Quota(
            queue_bytes=config.queue_max_bytes or None,
            sender_bytes=config.sender_max_bytes or None,
            storage_bytes=(
                max(0, config.storage_max_bytes - (reserve or 0))
                if config.storage_max_bytes
                else None
            ),
            free_bytes=reserve,
            free_share=AUTO_RESERVE_SHARE if auto else None,
        )
        # When a storage error was last answered, and the commit count then:
        # /readyz says not ready until a later commit succeeds, or for
        # WRITE_FAILED_FOR seconds (a relay with no traffic comes back).
        self.write_failed: tuple[float, int] | None = None
        # Fetch answers being read, encoded or written (a budget in bytes:
        # each holds at most fetch_max_bytes of envelopes, plus one envelope).
        self.fetch_slots = asyncio.Semaphore(max(1, config.fetch_concurrency))
        self.auth_limit = RateLimiter(
            rate=config.auth_failure_rate, burst=config.auth_failure_burst
        )
        self.read_limit = RateLimiter(rate=config.read_rate, burst=config.read_burst)
        # key + nonce -> expiry, oldest first (expiries are now + a constant).
        self.read_nonces: OrderedDict[bytes, int] = OrderedDict()
        self.refusals = LogSampler(
            logging.getLogger("securechan.relay"),
            per_interval=config.log_sample,
            interval=config.log_interval,
        )
        self.subscribers: dict[bytes, set[web.WebSocketResponse]] = defaultdict(set)
        # Set when shutdown starts: a body still arriving then is answered 503
        # at once (aiohttp stops reading from clients once it is closing).
        self.stopping = asyncio.Event()
        # Set on SIGTERM for the drain period: /healthz answers 503 draining
        # so that a reverse proxy moves traffic away while requests finish.
        self.draining = False
        self.ws_open = 0
        self.ws_by_client: dict[str, int] = {}
        self.ws_refusals = SampledLog("WebSockets")

    # --- helpers --------------------------------------------------------------

    def now(self) -> int:
        return int(self.config.clock())

    def _limit(self, limiter: RateLimiter, key: object, what: str) -> None:
        wait = limiter.allow(key, self.config.clock())
        if wait:
            self.metrics.rate_limited.labels(what).inc()
            raise _HttpError(429, "rate_limited", f"too many {what} requests", retry_after=wait)

    async def _body(self, request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise _HttpError(413, "too_large", f"the body is larger than {limit} bytes")
        if request.content_length == 0 or (
            request.content_length is None and not request.body_exists
        ):
            return b""
        content = request.content
        if content.is_eof() and not self.stopping.is_set():
            # The whole body came with the headers (the usual case for an
            # envelope): take it without a reader task and a timer.
            data = content.read_nowait(-1)
            if len(data) > limit:
                raise _HttpError(413, "too_large", f"the body is larger than {limit} bytes")
            return data
        reader = asyncio.ensure_future(self._read_body(request, limit))
        stop = asyncio.ensure_future(self.stopping.wait())
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
            raise _HttpError(503, "shutting_down", "the relay is stopping", retry_after=5)
        raise _HttpError(408, "timeout", "the request body was too slow")

    @staticmethod
    async def _read_body(request: web.Request, limit: int) -> bytes:
        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _HttpError(413, "too_large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _object(
        body: bytes, required: set[str], optional: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """A JSON object with exactly these keys (no others), or 400."""
        try:
            # _body already bounded the size by the route's own limit.
            data = strict_json.loads(body, max_size=len(body), what="the body")
        except MalformedInput as e:
            raise _HttpError(400, "bad_json", str(e)) from None
        if not isinstance(data, dict) or not required <= set(data) <= (required | set(optional)):
            expected = ", ".join(sorted(required | optional))
            raise _HttpError(400, "bad_request", f"expected a JSON object with {expected}")
        return data

    @staticmethod
    def _position(value: Any, name: str, *, text: bool = False) -> int:
        """A queue position: an integer 0 <= n < 2**63 (in JSON, or as ASCII
        digits in a query string when ``text``), or 400."""
        if text:
            if not (isinstance(value, str) and value.isascii() and value.isdigit()):
                raise _HttpError(400, "bad_query", f"{name} must be a non-negative integer")
            value = int(value) if len(value) <= 19 else 2**63
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            code = "bad_query" if text else "bad_request"
            raise _HttpError(400, code, f"{name} must be an integer from 0 to 2**63-1")
        return value

    def _id(self, request: web.Request, name: str) -> bytes:
        try:
            return b64d(request.match_info[name], size=ID_SIZE)
        except MalformedInput:
            raise _HttpError(400, "bad_id", f"malformed {name}") from None

    async def _authenticate(
        self, request: web.Request, key: bytes, body: bytes, *, read: bool = False
    ) -> None:
        """Check the signature and record the nonce: a ``read`` (a request
        that changes nothing) in memory, any other in relay.db."""
        use, _ = self._verify(request, key, body)
        if read:
            fresh = self._use_read_nonce(use)
        else:
            fresh = await self.storage.use_nonce(key, use.nonce, now=use.now, expires=use.expires)
        if not fresh:
            raise self._replayed(request)

    def _use_read_nonce(self, use: NonceUse) -> bool:
        """Record a read's nonce in memory until it expires; ``False`` if held.
        Bounded: past ``max_read_nonces`` the oldest is forgotten."""
        cache = self.read_nonces
        while cache:
            oldest, expires = next(iter(cache.items()))
            if expires >= use.now:
                break
            del cache[oldest]
        ident = use.key + use.nonce
        if ident in cache:
            return False
        cache[ident] = use.expires
        if len(cache) > self.config.max_read_nonces:
            cache.popitem(last=False)
        return True

    def _auth_failed(self, request: web.Request, reason: str) -> None:
        """Count a refused authentication and spend the address's budget."""
        self.metrics.auth_failures.labels(reason).inc()
        self.auth_limit.allow(request.remote, self.config.clock())

    def _auth_gate(self, request: web.Request) -> None:
        """429 for an address that spent its failed-authentication budget:
        before any lookup or signature check, so a flood of bad signatures
        costs the relay next to nothing."""
        wait = self.auth_limit.blocked(request.remote, self.config.clock())
        if wait:
            self.metrics.rate_limited.labels("auth_failure").inc()
            raise _HttpError(
                429,
                "rate_limited",
                "too many failed authentications from this address",
                retry_after=wait,
            )

    def _verify(self, request: web.Request, key: bytes, body: bytes) -> tuple[NonceUse, bytes]:
        """Check the request's signature (401, 403); the nonce the caller must
        then record, refusing the request if it was recorded before, and
        SHA-256 of the body (hashed once for the signature, reused by the log)."""
        header = request.headers.get("Authorization")
        try:
            req: SignedRequest = parse_authorization(header)
        except MalformedInput as e:
            self._auth_failed(request, "missing" if header is None else "malformed")
            raise _HttpError(401, "unauthenticated", str(e)) from None
        now = self.now()
        try:
            digest = verify_request(key, req, request.method, request.path_qs, body, now=now)
        except BadSignature as e:
            self._auth_failed(request, "stale" if abs(now - req.ts) > MAX_SKEW else "signature")
            raise _HttpError(403, "forbidden", str(e)) from None
        return NonceUse(key=key, nonce=req.nonce, now=now, expires=now + 2 * MAX_SKEW), digest

    def _replayed(self, request: web.Request) -> _HttpError:
        self._auth_failed(request, "replayed")
        return _HttpError(403, "replayed", "this request was already made")

    async def _queue(self, rid: bytes) -> QueueRecord:
        queue = await self.storage.queue_by_rid(rid)
        if queue is None:
            raise _HttpError(404, "no_queue", "no such queue")
        return queue

    # --- routes ---------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        info: dict[str, Any] = {
            "api": API_VERSION,
            "relay_key": b64e(self.key.public),
            "fingerprint": sha256(self.key.public).hex(),
            "max_envelope": self.config.max_envelope,
            "ttl": self.config.ttl,
        }
        if self.log is not None:
            info["log_origin"] = self.log.origin
            info["log_verifier_key"] = self.log.verifier.to_text()
        return web.json_response(info)

    async def healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response(
                {"status": "draining"}, status=503, headers={"Retry-After": "5"}
            )
        return web.json_response({"status": "ok"})

    def not_ready(self) -> list[str]:
        """Why the relay should get no new traffic (empty: ready)."""
        # Not ready as soon as an envelope of the largest size could be
        # refused for space (the storage checks the same sums on each send).
        reasons = []
        room = self.config.max_envelope
        disk = getattr(self.storage, "disk_bytes", lambda: None)()
        reserve = None if disk is None else self.quota.reserve(disk[1])
        if disk is not None and reserve is not None and disk[0] - room < reserve:
            reasons.append("disk_reserve")
        used = getattr(self.storage, "used_bytes", None)
        limit = self.quota.storage_bytes
        if limit is not None and isinstance(used, int) and used + room > limit:
            reasons.append("storage_limit")
        if self.write_failed is not None:
            at, commits = self.write_failed
            if (
                getattr(self.storage, "commits", 0) == commits
                and time.monotonic() - at < WRITE_FAILED_FOR
            ):
                reasons.append("write_failed")
            else:
                self.write_failed = None
        if self.draining:
            reasons.append("draining")
        if self.stopping.is_set():
            reasons.append("stopping")
        return reasons

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness (docs/RELAY.md, "Metrics, health and logs"): 503 while
        sends would be refused for storage; /healthz stays liveness."""
        reasons = self.not_ready()
        if reasons:
            return web.json_response(
                {"status": "not_ready", "reasons": reasons},
                status=503,
                headers={"Retry-After": "5"},
            )
        return web.json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=openapi_text(), content_type="application/yaml")

    async def create_queue(self, request: web.Request) -> web.Response:
        self._limit(self.create_limit, request.remote, "create")
        body = await self._body(request, 4096)
        data = self._object(body, {"recipient_key"}, frozenset({"sender_key", "contact"}))
        try:
            recipient_key = b64d(data["recipient_key"], size=KEY_SIZE)
            raw_sender = data.get("sender_key")
            sender_key = b64d(raw_sender, size=KEY_SIZE) if raw_sender is not None else None
            contact = data.get("contact", False)
            if not isinstance(contact, bool) or (contact and sender_key is not None):
                raise ValueError
        except (ValueError, MalformedInput):
            raise _HttpError(
                400, "bad_request", "expected recipient_key, sender_key, contact"
            ) from None
        # Proof of possession of the recipient key: the request is signed by it.
        await self._authenticate(request, recipient_key, body)
        queue = QueueRecord(
            rid=random_bytes(ID_SIZE),
            sid=random_bytes(ID_SIZE),
            recipient_key=recipient_key,
            sender_key=sender_key,
            contact=contact,
            created=self.now(),
        )
        await self.storage.create_queue(queue)
        self.metrics.queues_created.inc()
        return web.json_response({"rid": b64e(queue.rid), "sid": b64e(queue.sid)}, status=201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        await self._authenticate(request, queue.recipient_key, await self._body(request, 0))
        await self.storage.delete_queue(rid)
        return web.json_response({"deleted": True})

    async def secure_queue(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        body = await self._body(request, 4096)
        await self._authenticate(request, queue.recipient_key, body)
        data = self._object(body, {"sender_key"})
        try:
            sender_key = b64d(data["sender_key"], size=KEY_SIZE)
        except MalformedInput:
            raise _HttpError(400, "bad_request", "expected sender_key") from None
        if queue.contact:
            raise _HttpError(409, "conflict", "a contact address stays open to all senders")
        if queue.sender_key is not None and queue.sender_key != sender_key:
            raise _HttpError(409, "conflict", "the queue is already secured with another key")
        await self.storage.set_sender_key(rid, sender_key)
        return web.json_response({"secured": True})

    async def send(self, request: web.Request) -> web.Response:
        self._limit(self.client_limit, request.remote, "client")
        sid = self._id(request, "sid")
        try:
            msg_id = b64d(request.headers.get("X-Message-Id", ""), size=16)
        except MalformedInput:
            raise _HttpError(400, "bad_message_id", "X-Message-Id must be 16 bytes") from None
        queue = await self.storage.queue_by_sid(sid)
        if queue is None:
            raise _HttpError(404, "no_queue", "no such queue")
        self._limit(self.queue_limit, queue.rid, "queue")
        body = await self._body(request, self.config.max_envelope)
        if not body:
            raise _HttpError(400, "empty", "an envelope is never empty")
        wait = self.byte_limit.allow(request.remote, self.config.clock(), len(body))
        if wait:
            self.metrics.rate_limited.labels("client_bytes").inc()
            raise _HttpError(
                429, "rate_limited", "too many bytes sent from this address", retry_after=wait
            )
        # The nonce is recorded in the same transaction (and commit) as the
        # envelope: a replay is refused and stores nothing.
        nonce: NonceUse | None = None
        digest: bytes | None = None
        if queue.sender_key is not None:
            nonce, digest = self._verify(request, queue.sender_key, body)
        tlog = self.log
        logged: asyncio.Future[Any] | None = None
        if tlog is not None:
            # A new envelope's leaf is appended by the log's writer straight
            # after relay.db's commit (no round trip through the event loop),
            # and the send is answered only when both are committed.
            loop = asyncio.get_running_loop()
            appended = loop.create_future()

            def then(result: PutResult, stored: asyncio.Future[PutResult]) -> bool:
                # On relay.db's writer thread, after its commit.
                nonlocal logged
                if result.duplicate:
                    return False  # answered at once; its receipt is looked up below
                try:
                    tlog.append_from_thread(
                        body, loop, appended, before=(stored, result), digest=digest
                    )
                except StorageClosed:
                    return False  # shutting down: the append below says so
                logged = appended
                return True

        try:
            result = await self.storage.put_envelope(
                queue.rid,
                msg_id,
                body,
                now=self.now(),
                max_depth=self.config.max_depth,
                nonce=nonce,
                then=None if tlog is None else then,
                quota=self.quota,
            )
        except NonceReused:
            raise self._replayed(request) from None
        except QuotaExceeded as e:
            self.metrics.rejected.labels(f"{e.kind}_quota").inc()
            if e.kind in ("queue", "sender"):
                raise _HttpError(
                    429, "quota_exceeded", f"the {e.kind} byte quota is used up", retry_after=60
                ) from None
            raise _HttpError(
                507, "insufficient_storage", "the relay's storage is full", retry_after=60
            ) from None
        except QueueFull:
            self.metrics.rejected.labels("queue_full").inc()
            raise _HttpError(429, "queue_full", "the queue is full", retry_after=60) from None
        self.metrics.envelopes_stored.inc()
        self.metrics.envelope_bytes.observe(len(body))
        reply: dict[str, Any] = {"seq": result.seq, "duplicate": result.duplicate}
        if tlog is not None:
            # Logged before the answer (and before the push): a 2xx means the
            # envelope is both stored and in the log.
            if logged is not None:
                receipt = tlog.receipt_from(await logged)
            else:  # a duplicate, or the log could not be reached from the writer
                receipt = await self._log_receipt(
                    tlog, queue.rid, msg_id, body, result.seq, result.duplicate
                )
            reply["receipt"] = receipt.to_json()
        if not result.duplicate:
            self._notify(queue.rid, result.seq, msg_id, body)
        return web.json_response(reply, status=200 if result.duplicate else 201)

    def _notify(self, rid: bytes, seq: int, msg_id: bytes, body: bytes) -> None:
        if not self.subscribers.get(rid):
            return  # nobody listening: no frame to build (it base64-encodes the body)
        frame = json.dumps(
            {
                "type": "message",
                "seq": seq,
                "msg_id": b64e(msg_id),
                "data": b64e(body),
                "received": self.now(),
            }
        )
        for ws in list(self.subscribers.get(rid, ())):
            if not ws.closed:
                asyncio.get_running_loop().create_task(self._push(ws, frame))

    async def _push(self, ws: web.WebSocketResponse, frame: str) -> None:
        try:
            await asyncio.wait_for(ws.send_str(frame), timeout=10)
        except (ConnectionError, TimeoutError, RuntimeError):
            await ws.close()

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        await self._authenticate(
            request, queue.recipient_key, await self._body(request, 0), read=True
        )
        # Both per-queue limits count only authenticated fetches, so a stranger
        # cannot spend the owner's budget.
        self._limit(self.read_limit, rid, "read")
        self._limit(self.fetch_limit, rid, "fetch")
        if set(request.query) - {"after", "limit"}:
            raise _HttpError(400, "bad_query", "the only parameters are after and limit")
        after = self._position(request.query.get("after", "0"), "after", text=True)
        limit = self._position(request.query.get("limit", "100"), "limit", text=True)
        if limit < 1:
            raise _HttpError(400, "bad_query", "limit must be at least 1")
        limit = min(limit, self.config.fetch_limit)
        budget = self.config.fetch_max_bytes
        try:
            await asyncio.wait_for(self.fetch_slots.acquire(), timeout=self.config.body_timeout)
        except TimeoutError:
            self.metrics.rate_limited.labels("fetch_busy").inc()
            raise _HttpError(503, "busy", "too many fetches at once", retry_after=1) from None
        self.metrics.fetches_active.inc()
        try:
            envelopes = await self.storage.fetch(rid, after=after, limit=limit, max_bytes=budget)
            size = sum(len(e.data) for e in envelopes)
            # "more": the page was cut by the count or (maybe) by the byte
            # budget; the client fetches again after the last seq (the next
            # page may then be empty).
            more = len(envelopes) == limit or size + self.config.max_envelope > budget
            body = json.dumps(
                {
                    "messages": [
                        {
                            "seq": e.seq,
                            "msg_id": b64e(e.msg_id),
                            "data": b64e(e.data),
                            "received": e.received,
                        }
                        for e in envelopes
                    ],
                    "more": more,
                }
            ).encode()
            del envelopes
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
        finally:
            self.metrics.fetches_active.dec()
            self.fetch_slots.release()

    @staticmethod
    async def _send(request: web.Request, response: web.StreamResponse) -> None:
        await response.prepare(request)
        await response.write_eof()

    async def ack(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        body = await self._body(request, 1024)
        await self._authenticate(request, queue.recipient_key, body)
        up_to = self._position(self._object(body, {"up_to"})["up_to"], "up_to")
        deleted = await self.storage.ack(rid, up_to=up_to)
        return web.json_response({"deleted": deleted})

    async def put_prekeys(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        cfg = self.config
        body = await self._body(request, cfg.max_prekey_blob * (cfg.max_one_time_upload + 2))
        await self._authenticate(request, queue.recipient_key, body)
        if not queue.contact:
            raise _HttpError(409, "conflict", "prekeys belong on a contact address")
        data = self._object(body, {"signed"}, frozenset({"one_time", "replace_one_time"}))
        try:
            if not isinstance(data.get("one_time", []), list):
                raise ValueError
            signed = b64d(data["signed"], max_size=cfg.max_prekey_blob)
            one_time = [b64d(x, max_size=cfg.max_prekey_blob) for x in data.get("one_time", [])]
            replace = data.get("replace_one_time", False)
            if not isinstance(replace, bool) or not signed or not all(one_time):
                raise ValueError
            if len(one_time) > cfg.max_one_time_upload:
                raise ValueError
        except (ValueError, KeyError, TypeError, MalformedInput, RecursionError):
            raise _HttpError(
                400, "bad_request", "expected signed, one_time, replace_one_time"
            ) from None
        left = await self.storage.put_prekeys(
            rid, signed=signed, one_time=one_time, replace_one_time=replace
        )
        return web.json_response({"one_time_left": left})

    async def prekey_status(self, request: web.Request) -> web.Response:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        await self._authenticate(
            request, queue.recipient_key, await self._body(request, 0), read=True
        )
        self._limit(self.read_limit, rid, "read")
        return web.json_response({"one_time_left": await self.storage.prekey_count(rid)})

    async def claim_bundle(self, request: web.Request) -> web.Response:
        self._limit(self.client_limit, request.remote, "client")
        sid = self._id(request, "sid")
        await self._body(request, 0)
        queue = await self.storage.queue_by_sid(sid)
        if queue is None or not queue.contact:
            raise _HttpError(404, "no_queue", "no such contact address")
        self._limit(self.claim_limit, sid, "claim")
        claimed = await self.storage.claim_bundle(queue.rid)
        if claimed is None:
            raise _HttpError(404, "no_prekeys", "no prekeys were published here")
        signed, one_time, left = claimed
        return web.json_response(
            {
                "signed": b64e(signed),
                "one_time": b64e(one_time) if one_time is not None else None,
                "one_time_left": left,
            }
        )

    def _ws_refuse(self, status: int, reason: str, message: str) -> web.Response:
        # Answered here, not raised: the refusal is logged sampled, not as
        # one line per request by the error middleware.
        self.ws_refusals.refused(reason)
        self.metrics.connections_refused.labels(f"ws_{reason}").inc()
        return _error_response(_HttpError(status, "too_many_sockets", message, retry_after=5))

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        rid = self._id(request, "rid")
        queue = await self._queue(rid)
        await self._authenticate(request, queue.recipient_key, b"")
        # Looked up with get(): a refused or failed upgrade leaves no entry.
        if len(self.subscribers.get(rid, ())) >= self.config.max_ws_per_queue:
            raise _HttpError(
                429, "too_many_sockets", "too many sockets on this queue", retry_after=5
            )
        client = client_key(request.remote or "")
        cfg = self.config
        if cfg.max_websockets and self.ws_open >= cfg.max_websockets:
            return self._ws_refuse(503, "overall", "the relay has too many sockets")
        if cfg.max_ws_per_client and self.ws_by_client.get(client, 0) >= cfg.max_ws_per_client:
            return self._ws_refuse(429, "per_client", "too many sockets from this address")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        if not ws.can_prepare(request).ok:
            raise _HttpError(400, "not_websocket", "this route takes a WebSocket upgrade")
        # Counted before the upgrade's first await: concurrent upgrades from
        # one address cannot all pass the check above.
        self.ws_open += 1
        self.ws_by_client[client] = self.ws_by_client.get(client, 0) + 1
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
            self.ws_open -= 1
            held = self.ws_by_client.get(client, 0) - 1
            if held > 0:
                self.ws_by_client[client] = held
            else:
                self.ws_by_client.pop(client, None)
            self.metrics.websockets.dec()
        return ws

    # --- transparency log (docs/AUDIT.md, "Relay transparency log") --------------

    async def _log_receipt(
        self, tlog: RelayLog, rid: bytes, msg_id: bytes, body: bytes, seq: int, duplicate: bool
    ) -> Receipt:
        """The receipt of a stored envelope, appending its leaf if the log lacks it."""
        if not duplicate:
            return await tlog.append(body)
        receipt = await tlog.receipt_for(body)
        if receipt is not None:
            return receipt
        # A resend the log does not hold: the relay keeps another body under
        # this msg_id (the receipt is then the stored one's), or a crash came
        # between the storage commit and the log append (append it now).
        held = await self.storage.fetch(rid, after=seq - 1, limit=1)
        if held and held[0].seq == seq and held[0].msg_id == msg_id:
            body = held[0].data
        return await tlog.append(body)

    def _log_or_404(self) -> RelayLog:
        if self.log is None:
            raise _HttpError(404, "no_log", "this relay serves no transparency log")
        return self.log

    def _log_query(self, request: web.Request, names: set[str]) -> dict[str, int]:
        """The query: only parameters among ``names``, each once, each a
        non-negative integer (which ones are required, the caller checks)."""
        if not set(request.query) <= names or len(request.query) != len(set(request.query)):
            raise _HttpError(400, "bad_query", "the parameters are " + ", ".join(sorted(names)))
        return {k: self._position(v, k, text=True) for k, v in request.query.items()}

    def _log_size(self, tlog: RelayLog, size: int) -> None:
        if size > tlog.size:
            raise _HttpError(404, "no_checkpoint", f"the log has not reached size {size}")

    async def log_checkpoint(self, request: web.Request) -> web.Response:
        tlog = self._log_or_404()
        self._limit(self.client_limit, request.remote, "client")
        query = self._log_query(request, {"size"})
        if "size" in query:
            self._log_size(tlog, query["size"])
            note = await tlog.checkpoint_at(query["size"])
        else:
            note = tlog.checkpoint()
        return web.Response(text=note, headers={"Cache-Control": "no-store"})

    async def log_leaf(self, request: web.Request) -> web.Response:
        """The receipt of one leaf, found by its hash: for a recipient, who
        holds the envelope but never saw the send reply."""
        tlog = self._log_or_404()
        self._limit(self.client_limit, request.remote, "client")
        text = request.query.get("hash", "")
        if (
            set(request.query) != {"hash"}
            or len(request.query) != 1
            or not _LEAF_HEX.fullmatch(text)
        ):
            raise _HttpError(
                400, "bad_query", "give hash, the leaf hash in 64 lowercase hex digits"
            )
        receipt = await tlog.receipt_for_leaf(bytes.fromhex(text))
        if receipt is None:
            raise _HttpError(404, "no_leaf", "the log holds no such leaf")
        return web.json_response(receipt.to_json(), headers={"Cache-Control": "no-store"})

    async def log_inclusion(self, request: web.Request) -> web.Response:
        tlog = self._log_or_404()
        self._limit(self.client_limit, request.remote, "client")
        query = self._log_query(request, {"index", "size"})
        if len(query) != 2 or query["index"] >= query["size"]:
            raise _HttpError(400, "bad_query", "give index and size, with index < size")
        self._log_size(tlog, query["size"])
        hashes = await tlog.inclusion_proof(query["index"], query["size"])
        return web.json_response(
            {"index": query["index"], "size": query["size"], "hashes": encode_hashes(hashes)}
        )

    async def log_consistency(self, request: web.Request) -> web.Response:
        tlog = self._log_or_404()
        self._limit(self.client_limit, request.remote, "client")
        query = self._log_query(request, {"old", "new"})
        if len(query) != 2 or query["old"] > query["new"]:
            raise _HttpError(400, "bad_query", "give old and new, with old <= new")
        self._log_size(tlog, query["new"])
        hashes = await tlog.consistency_proof(query["old"], query["new"])
        return web.json_response(
            {"old": query["old"], "new": query["new"], "hashes": encode_hashes(hashes)}
        )

    async def log_cosignature(self, request: web.Request) -> web.Response:
        tlog = self._log_or_404()
        self._limit(self.client_limit, request.remote, "client")
        body = await self._body(request, MAX_NOTE_BYTES)
        try:
            note = await tlog.add_cosignatures(body)
        except CosignatureRefused as e:
            if e.reason == "stale":
                # As tlog-witness add-checkpoint answers a stale old size.
                return web.Response(
                    status=409,
                    body=f"{e.log_size}\n".encode("ascii"),
                    headers={"Content-Type": "text/x.tlog.size"},
                )
            status = {"unknown_witness": 403, "bad_signature": 403, "not_in_log": 422}
            raise _HttpError(status.get(e.reason, 400), e.reason, e.message) from None
        return web.Response(text=note)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes an address over its failed-authentication budget may still use.
_UNGATED = frozenset({"/healthz", "/metrics", "/v1/relay", "/v1/openapi.yaml"})


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
    relay = Relay(storage, key, cfg, metrics or RelayMetrics(), tlog)

    # Labelled metric children, looked up once (labels() costs a lock and a
    # tuple per call). Keys are route templates, methods and statuses: bounded.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[str, Any] = {}

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        started = time.perf_counter()
        try:
            if name not in _UNGATED:
                relay._auth_gate(request)
            response = await handler(request)
        except _HttpError as err:
            response = _error_response(err)
            relay.refusals.log(
                logging.INFO,
                f"{request.method} {name} -> {err.status} {err.error_code}",
                "%s %s -> %d %s",
                request.method,
                name,
                err.status,
                err.error_code,
            )
        except web.HTTPException as exc:  # aiohttp's own (404 route, 405, 413 ...)
            response = _error_response(_HttpError(exc.status, "http", exc.reason))
        except StorageClosed:
            response = _error_response(_HttpError(503, "shutting_down", "the relay is stopping"))
        except StorageError as exc:
            relay.write_failed = (time.monotonic(), getattr(storage, "commits", 0))
            cause = storage_cause(exc)
            relay.refusals.log(
                logging.ERROR,
                f"{request.method} {name} -> 503 storage error: {cause}",
                "%s %s -> 503 storage error: %s",
                request.method,
                name,
                cause,
            )
            response = _error_response(
                _HttpError(503, "storage", "the relay cannot store right now", retry_after=5)
            )
        except ValueError:
            # The storage refuses writes to a queue deleted meanwhile (a race).
            response = _error_response(_HttpError(404, "no_queue", "no such queue"))
        if relay.draining and not response.prepared:
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

    app = web.Application(middlewares=[errors], client_max_size=cfg.max_envelope + 64 * 1024)
    app["relay"] = relay
    r = app.router
    r.add_get("/healthz", relay.healthz)
    r.add_get("/readyz", relay.readyz)
    r.add_get("/metrics", relay.metrics.handler)
    r.add_get("/v1/relay", relay.info)
    r.add_get("/v1/openapi.yaml", relay.openapi)
    r.add_post("/v1/queues", relay.create_queue)
    r.add_delete("/v1/queues/{rid}", relay.delete_queue)
    r.add_put("/v1/queues/{rid}/sender-key", relay.secure_queue)
    r.add_get("/v1/queues/{rid}/messages", relay.fetch)
    r.add_post("/v1/queues/{rid}/ack", relay.ack)
    r.add_get("/v1/queues/{rid}/ws", relay.websocket)
    r.add_put("/v1/queues/{rid}/prekeys", relay.put_prekeys)
    r.add_get("/v1/queues/{rid}/prekeys", relay.prekey_status)
    r.add_post("/v1/send/{sid}", relay.send)
    r.add_post("/v1/contact/{sid}/bundle", relay.claim_bundle)
    if tlog is not None:
        r.add_get("/v1/log/checkpoint", relay.log_checkpoint)
        r.add_get("/v1/log/proof/inclusion", relay.log_inclusion)
        r.add_get("/v1/log/proof/leaf", relay.log_leaf)
        r.add_get("/v1/log/proof/consistency", relay.log_consistency)
        r.add_post("/v1/log/cosignature", relay.log_cosignature)
        relay.metrics.log_size.set_function(lambda: tlog.size)
        relay.metrics.log_commits.set_function(lambda: tlog.commits)
    relay.metrics.ws_queues.set_function(lambda: len(relay.subscribers))
    # Backends that count their commits (SqliteStorage) show group commit at work.
    relay.metrics.db_commits.set_function(lambda: getattr(storage, "commits", 0))
    relay.metrics.db_write_jobs.set_function(lambda: getattr(storage, "write_jobs", 0))
    relay.metrics.storage_used.set_function(lambda: getattr(storage, "used_bytes", 0))
    relay.metrics.storage_free.set_function(
        lambda: getattr(storage, "free_bytes", lambda: None)() or 0
    )
    relay.metrics.reclaimed_pages.set_function(lambda: getattr(storage, "reclaimed_pages", 0))
    relay.metrics.ready.set_function(lambda: 0 if relay.not_ready() else 1)

    relay.metrics.read_nonces.set_function(lambda: len(relay.read_nonces))

    async def close_sockets(app: web.Application) -> None:
        relay.stopping.set()
        relay.refusals.flush()
        for sockets in list(relay.subscribers.values()):
            for ws in list(sockets):
                await ws.close(code=1001, message=b"relay shutting down")

    app.on_shutdown.append(close_sockets)
    return app
