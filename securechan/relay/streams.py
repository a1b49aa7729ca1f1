"""Group streams on the relay (docs/RELAY.md, "Group streams"; GROUPS-SPEC §1):
one sequencer for each group epoch's records, without HTTP.

A stream is named by a 32-byte id that only the group's members can derive;
the relay sees opaque blobs (sealed group records) and never a group id,
a name or an identity. It numbers the blobs of a stream 1, 2, 3... in
arrival order and logs each one as it logs an envelope (leaf
``"securechan/v1/envelope" || SHA-256(blob)``, docs/AUDIT.md), so a member
can prove where an item stands in the relay's one append-only history.

**Log, then store.** A post appends the blob's leaf to the transparency
log first (committed), then stores the item with that leaf's index
(committed), then answers: a 200 means both are durable. A crash between
the two leaves a leaf whose item was never stored and never acknowledged:
harmless (the log holds a hash of bytes nobody was promised), and the
poster's resend finds the leaf already logged (leaves are unique by
content) and stores the item then. So no start-up repair is needed for
streams, unlike envelopes (:meth:`securechan.relay.tlog.RelayLog.repair`).

**Limits.** A blob is at most ``stream_max_blob`` bytes (413), never empty
(400); a stream holds at most ``stream_max_items`` items and
``stream_max_bytes`` bytes (409 ``stream_full``, for good: items are never
deleted); the relay holds at most ``max_streams`` streams and
``streams_max_bytes`` stream bytes (507 ``insufficient_storage``), each item
charged its blob and :data:`~securechan.relay.storage.STREAM_ITEM_OVERHEAD`;
posts spend the client address's request and byte rates as sends do, the
stream's own rate (``queue_rate``) and, when they open a stream, the
address's creation rate (``create_rate``, a bucket of its own); reads the
client address's request rate and the stream's read rate. Every bound and
the relay's storage limits are checked **before** the blob is logged (and
again when it is stored), so refused posts do not grow the log. An unknown
stream reads as an empty one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from securechan.errors import LimitReached
from securechan.relay import api
from securechan.relay.api import ApiError
from securechan.relay.api_streams import MAX_STREAM_PAGE
from securechan.relay.storage import (
    QuotaExceeded,
    StreamFull,
    StreamLimits,
    StreamPut,
)

if TYPE_CHECKING:
    from securechan.relay.guard import Call
    from securechan.relay.service import RelayService

__all__ = ["StreamService"]

_FULL_MESSAGES = {
    "streams": "the relay holds its most group streams: no new stream now",
    "stream_bytes": "the relay's group streams hold their most bytes",
}


class StreamService:
    """The stream operations of one :class:`RelayService` (its storage, log,
    limits and metrics)."""

    def __init__(self, service: RelayService) -> None:
        self.service = service

    def limits(self) -> StreamLimits:
        """The stream bounds of the relay's config (0: no bound)."""
        c = self.service.config
        return StreamLimits(
            max_items=c.stream_max_items,
            max_bytes=c.stream_max_bytes or None,
            max_streams=c.max_streams or None,
            total_bytes=c.streams_max_bytes or None,
        )

    async def post(self, call: Call, stream_id: bytes) -> api.StreamPostReply:
        """Append ``call.body`` to the stream: its position and log receipt."""
        svc = self.service
        guard, config = svc.guard, svc.config
        body = call.body
        if not body:
            raise ApiError("empty", "a stream item is never empty")
        guard.limit(guard.queue_limit, stream_id, "stream")
        wait = guard.byte_limit.allow(call.remote, config.clock(), len(body))
        if wait:
            svc.metrics.rate_limited.labels("client_bytes").inc()
            raise ApiError(
                "rate_limited", "too many bytes sent from this address", retry_after=wait
            )
        tlog = svc.log
        if tlog is None:  # the routes are served only with a log
            raise ApiError("no_log", "this relay keeps no transparency log")
        now = guard.now()
        limits = self.limits()
        usage = await svc.storage.stream_usage(stream_id)
        refused = usage.refusal(limits, len(body))
        if refused is not None:
            # Nothing new is logged: only a resend of a held item is answered.
            held = await svc.storage.held_stream_item(stream_id, body)
            if held is None:
                raise self._refusal(refused)
            receipt = await tlog.receipt_for(body)
            if receipt is None:  # held items were logged before they were stored
                raise ApiError("storage", "the relay cannot answer right now", retry_after=5)
            return api.StreamPostReply(position=held.position, receipt=receipt)
        if usage.items == 0:
            # Opening a stream spends the address's creation budget (its
            # own bucket, at create_rate), as creating a queue does.
            guard.limit(guard.create_limit, ("stream", call.remote), "create")
        # A full store refuses before the log grows (the storage checks again).
        used, limit = usage.used_bytes, svc.quota.storage_bytes
        full = used is not None and limit is not None and used + len(body) > limit
        if full or {"disk_reserve", "storage_limit"} & set(svc.not_ready()):
            svc.metrics.rejected.labels("storage_quota").inc()
            raise ApiError("insufficient_storage", "the relay's storage is full", retry_after=60)
        # Logged first (see the module docstring), the leaf's index stored with it.
        receipt = await tlog.append(body)
        put = await self._put(stream_id, body, receipt.leaf_index, now, limits)
        if put.log_index != receipt.leaf_index:  # leaves are unique by content
            receipt = await tlog.receipt_for(body) or receipt
        return api.StreamPostReply(position=put.position, receipt=receipt)

    def _refusal(self, e: LimitReached) -> ApiError:
        """The answer to a refused post, counted."""
        metrics = self.service.metrics
        if isinstance(e, StreamFull):
            metrics.rejected.labels("stream_full").inc()
            return ApiError("stream_full", str(e))
        kind = e.kind if isinstance(e, QuotaExceeded) else "storage"
        metrics.rejected.labels(f"{kind}_quota").inc()
        message = _FULL_MESSAGES.get(kind, "the relay's storage is full")
        return ApiError("insufficient_storage", message, retry_after=60)

    async def _put(
        self, stream_id: bytes, body: bytes, log_index: int, now: int, limits: StreamLimits
    ) -> StreamPut:
        svc = self.service
        try:
            return await svc.storage.put_stream_item(
                stream_id,
                body,
                log_index=log_index,
                now=now,
                max_items=limits.max_items,
                quota=svc.quota,
                limits=limits,
            )
        except (StreamFull, QuotaExceeded) as e:
            raise self._refusal(e) from None

    async def fetch(
        self, stream_id: bytes, after: int, limit: int, size: int | None = None
    ) -> api.StreamPage:
        """Items after ``after`` (an unknown stream: none), at most ``limit``,
        read in one of the relay's fetch slots (answers in memory stay
        bounded); with ``size``, each item whose leaf is in the tree of that
        size with its inclusion proof (computed in one read of the log)."""
        svc = self.service
        guard = svc.guard
        guard.limit(guard.read_limit, stream_id, "read")
        limit = min(limit, MAX_STREAM_PAGE)
        if size is not None:
            if svc.log is None:
                raise ApiError("no_log", "this relay keeps no transparency log")
            if not 1 <= size <= svc.log.size:
                raise ApiError("no_checkpoint", f"the log has not reached size {size}")
        try:
            await asyncio.wait_for(svc.fetch_slots.acquire(), timeout=svc.config.body_timeout)
        except TimeoutError:
            svc.metrics.rate_limited.labels("fetch_busy").inc()
            raise ApiError("busy", "too many fetches at once", retry_after=1) from None
        try:
            items = await svc.storage.fetch_stream(stream_id, after=after, limit=limit)
            proofs: dict[int, list[bytes]] = {}
            if size is not None and svc.log is not None and items:
                wanted = {i.log_index for i in items if i.log_index < size}
                proofs = await svc.log.inclusion_proofs(wanted, size)
        finally:
            svc.fetch_slots.release()
        return api.StreamPage(
            items=tuple(
                api.StreamItem(
                    position=i.position,
                    blob=i.data,
                    log_index=i.log_index,
                    inclusion=None if i.log_index not in proofs else tuple(proofs[i.log_index]),
                )
                for i in items
            ),
            more=len(items) == limit,
        )
