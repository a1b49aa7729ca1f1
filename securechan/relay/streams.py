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
(400); a stream holds at most ``stream_max_items`` items (409
``stream_full``, for good: items are never deleted); posts spend the
client address's request and byte rates as sends do, and the stream's own
rate (``queue_rate``); reads the client address's request rate and the
stream's read rate. An unknown stream reads as an empty one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from securechan.relay import api
from securechan.relay.api import ApiError
from securechan.relay.api_streams import MAX_STREAM_PAGE
from securechan.relay.storage import QuotaExceeded, StreamFull, StreamPut

if TYPE_CHECKING:
    from securechan.relay.guard import Call
    from securechan.relay.service import RelayService

__all__ = ["StreamService"]


class StreamService:
    """The stream operations of one :class:`RelayService` (its storage, log,
    limits and metrics)."""

    def __init__(self, service: RelayService) -> None:
        self.service = service

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
        if await svc.storage.stream_length(stream_id) >= config.stream_max_items:
            # Full for good: only a resend of a held item is answered, and
            # nothing new is logged (log_index 0 is never stored: the
            # storage refuses the put before it would be).
            held = await self._put(stream_id, body, 0, now)
            receipt = await tlog.receipt_for(body)
            if receipt is None:  # held items were logged before they were stored
                raise ApiError("storage", "the relay cannot answer right now", retry_after=5)
            return api.StreamPostReply(position=held.position, receipt=receipt)
        # A full store refuses before the log grows (the storage checks again).
        if {"disk_reserve", "storage_limit"} & set(svc.not_ready()):
            svc.metrics.rejected.labels("storage_quota").inc()
            raise ApiError("insufficient_storage", "the relay's storage is full", retry_after=60)
        # Logged first (see the module docstring), the leaf's index stored with it.
        receipt = await tlog.append(body)
        put = await self._put(stream_id, body, receipt.leaf_index, now)
        if put.log_index != receipt.leaf_index:  # leaves are unique by content
            receipt = await tlog.receipt_for(body) or receipt
        return api.StreamPostReply(position=put.position, receipt=receipt)

    async def _put(self, stream_id: bytes, body: bytes, log_index: int, now: int) -> StreamPut:
        svc = self.service
        try:
            return await svc.storage.put_stream_item(
                stream_id,
                body,
                log_index=log_index,
                now=now,
                max_items=svc.config.stream_max_items,
                quota=svc.quota,
            )
        except StreamFull:
            svc.metrics.rejected.labels("stream_full").inc()
            raise ApiError("stream_full", "the stream is full") from None
        except QuotaExceeded as e:
            svc.metrics.rejected.labels(f"{e.kind}_quota").inc()
            raise ApiError(
                "insufficient_storage", "the relay's storage is full", retry_after=60
            ) from None

    async def fetch(self, stream_id: bytes, after: int, limit: int) -> api.StreamPage:
        """Items after ``after`` (an unknown stream: none), at most ``limit``,
        read in one of the relay's fetch slots (answers in memory stay bounded)."""
        svc = self.service
        guard = svc.guard
        guard.limit(guard.read_limit, stream_id, "read")
        limit = min(limit, MAX_STREAM_PAGE)
        try:
            await asyncio.wait_for(svc.fetch_slots.acquire(), timeout=svc.config.body_timeout)
        except TimeoutError:
            svc.metrics.rate_limited.labels("fetch_busy").inc()
            raise ApiError("busy", "too many fetches at once", retry_after=1) from None
        try:
            items = await svc.storage.fetch_stream(stream_id, after=after, limit=limit)
        finally:
            svc.fetch_slots.release()
        return api.StreamPage(
            items=tuple(
                api.StreamItem(position=i.position, blob=i.data, log_index=i.log_index)
                for i in items
            ),
            more=len(items) == limit,
        )
