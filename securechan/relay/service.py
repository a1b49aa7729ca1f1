"""The relay's protocol, without HTTP: queues, sends, fetches, acks, prekeys,
each behind its request signature, rate limits and quotas.

:class:`RelayService` takes typed requests (:mod:`securechan.relay.api`)
and a :class:`Call` (who asked, and what they signed), and answers typed
replies or raises :class:`~securechan.relay.api.ApiError`. It imports no
HTTP library (``tests/test_layers.py`` checks): :mod:`securechan.relay.app`
is the aiohttp layer that parses requests into these calls and renders the
answers, and another front end (or a test) can drive the same service.
Signatures, nonces and rate limits are checked by its
:class:`~securechan.relay.guard.Guard` (``service.guard``).

**Store, then log.** A send is answered only when its envelope is committed
to ``relay.db`` and its leaf to the transparency log (:meth:`RelayService.send`
awaits one, then the other). A crash between the two leaves an envelope
stored but not logged and not acknowledged; the log's start-up repair
(:meth:`securechan.relay.tlog.RelayLog.repair`) and the sender's resend
(the duplicate path) log it. A send cancelled between the two (at shutdown)
marks the log dirty, so that the next start repairs instead of trusting a
clean-stop mark.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from securechan.audit.receipt import Receipt
from securechan.primitives import Ed25519SigningKey, random_bytes, sha256
from securechan.relay import api
from securechan.relay.config import AUTO_RESERVE, AUTO_RESERVE_SHARE, WRITE_FAILED_FOR, RelayConfig
from securechan.relay.connlimit import client_key
from securechan.relay.fairness import ContactFairness, ShareExceeded
from securechan.relay.guard import Call, Guard
from securechan.relay.limits import LogSampler
from securechan.relay.metrics import RelayMetrics
from securechan.relay.storage import (
    ID_SIZE,
    NonceReused,
    NonceUse,
    QueueFull,
    QueueRecord,
    Quota,
    QuotaExceeded,
    RelayStorage,
)
from securechan.relay.tlog import RelayLog

__all__ = ["Call", "RelayService"]

ApiError = api.ApiError


def make_quota(config: RelayConfig) -> Quota:
    """The byte quotas of ``config`` (``docs/RELAY.md``, "Limits")."""
    auto = config.storage_reserve_bytes < 0
    reserve = AUTO_RESERVE if auto else (config.storage_reserve_bytes or None)
    return Quota(
        queue_bytes=config.queue_max_bytes or None,
        sender_bytes=config.sender_max_bytes or None,
        storage_bytes=(
            max(0, config.storage_max_bytes - (reserve or 0)) if config.storage_max_bytes else None
        ),
        free_bytes=reserve,
        free_share=AUTO_RESERVE_SHARE if auto else None,
    )


class RelayService:
    """The relay's operations and shared state (limits, nonces, readiness)."""

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
        self.guard = Guard(storage, config, metrics)
        self.quota = make_quota(config)
        self.contact = ContactFairness(
            max_depth=config.max_depth,
            max_bytes=config.queue_max_bytes or None,
            share=config.contact_share,
            rate=config.contact_sender_rate,
            burst=config.contact_sender_burst,
            ttl=config.ttl,
        )
        # When a storage error was last answered, and the commit count then:
        # /readyz says not ready until a later commit succeeds, or for
        # WRITE_FAILED_FOR seconds (a relay with no traffic comes back).
        self.write_failed: tuple[float, int] | None = None
        # Fetch answers being read, encoded or written (a budget in bytes:
        # each holds at most fetch_max_bytes of envelopes, plus one envelope).
        self.fetch_slots = asyncio.Semaphore(max(1, config.fetch_concurrency))
        self.refusals = LogSampler(
            logging.getLogger("securechan.relay"),
            per_interval=config.log_sample,
            interval=config.log_interval,
        )
        # Set when shutdown starts; the draining flag on SIGTERM (docs/RELAY.md).
        self.stopping = asyncio.Event()
        self.draining = False
        # Told of every new envelope (the HTTP layer pushes it to WebSockets).
        self.on_stored: Callable[[bytes, api.Message], None] | None = None

    async def queue(self, rid: bytes) -> QueueRecord:
        queue = await self.storage.queue_by_rid(rid)
        if queue is None:
            raise ApiError("no_queue", "no such queue")
        return queue

    async def owned_queue(self, call: Call, rid: bytes, *, read: bool = False) -> QueueRecord:
        """The queue ``rid``, once the call is signed by its recipient key."""
        queue = await self.queue(rid)
        await self.guard.authenticate(call, queue.recipient_key, read=read)
        return queue

    # --- health ------------------------------------------------------------------------

    def info(self) -> api.RelayInfo:
        return api.RelayInfo(
            api=api.API_VERSION,
            relay_key=self.key.public,
            fingerprint=sha256(self.key.public).hex(),
            max_envelope=self.config.max_envelope,
            ttl=self.config.ttl,
            log_origin=None if self.log is None else self.log.origin,
            log_verifier_key=None if self.log is None else self.log.verifier.to_text(),
            log_mldsa44_verifier_key=None if self.log is None else self.log.pq_verifier.to_text(),
        )

    def storage_failed(self) -> None:
        """A storage error was answered: not ready until the next commit."""
        self.write_failed = (time.monotonic(), getattr(self.storage, "commits", 0))

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

    # --- queues --------------------------------------------------------------------------

    async def create_queue(self, call: Call, req: api.CreateQueueRequest) -> api.CreateQueueReply:
        if req.contact and req.sender_key is not None:
            raise ApiError("bad_request", "expected recipient_key, sender_key, contact")
        # Proof of possession of the recipient key: the request is signed by it.
        await self.guard.authenticate(call, req.recipient_key)
        queue = QueueRecord(
            rid=random_bytes(ID_SIZE),
            sid=random_bytes(ID_SIZE),
            recipient_key=req.recipient_key,
            sender_key=req.sender_key,
            contact=req.contact,
            created=self.guard.now(),
        )
        await self.storage.create_queue(queue)
        self.metrics.queues_created.inc()
        return api.CreateQueueReply(rid=queue.rid, sid=queue.sid)

    async def delete_queue(self, call: Call, queue: QueueRecord) -> api.DeleteReply:
        await self.guard.authenticate(call, queue.recipient_key)
        await self.storage.delete_queue(queue.rid)
        self.contact.forget(queue.rid)
        return api.DeleteReply(deleted=True)

    async def secure_queue(
        self, call: Call, queue: QueueRecord, req: api.SecureQueueRequest
    ) -> api.SecuredReply:
        """Secure ``queue`` (already looked up and authenticated)."""
        if queue.contact:
            raise ApiError("conflict", "a contact address stays open to all senders")
        if queue.sender_key is not None and queue.sender_key != req.sender_key:
            raise ApiError("conflict", "the queue is already secured with another key")
        await self.storage.set_sender_key(queue.rid, req.sender_key)
        return api.SecuredReply(secured=True)

    # --- envelopes ------------------------------------------------------------------------

    async def send_queue(self, sid: bytes, remote: str | None = None) -> QueueRecord:
        """The queue a send from ``remote`` goes to, within its rates: on a
        contact address first the sender address's own (relay/fairness.py),
        then the queue's shared one."""
        queue = await self.storage.queue_by_sid(sid)
        if queue is None:
            raise ApiError("no_queue", "no such queue")
        if queue.contact:
            self._contact_rate(queue.rid, client_key(remote or ""))
        self.guard.limit(self.guard.queue_limit, queue.rid, "queue")
        return queue

    def _contact_rate(self, rid: bytes, sender: str) -> None:
        wait = self.contact.allow_rate(rid, sender, self.config.clock())
        if wait:
            self.metrics.rate_limited.labels("contact_sender").inc()
            raise ApiError(
                "rate_limited", "too many sends to this contact address", retry_after=wait
            )

    async def send(self, call: Call, queue: QueueRecord, msg_id: bytes) -> api.SendReply:
        """Store ``call.body`` on ``queue``, then log it; the reply once both
        are committed (a resend of a held envelope: the original's)."""
        body = call.body
        if not body:
            raise ApiError("empty", "an envelope is never empty")
        wait = self.guard.byte_limit.allow(call.remote, self.config.clock(), len(body))
        if wait:
            self.metrics.rate_limited.labels("client_bytes").inc()
            raise ApiError(
                "rate_limited", "too many bytes sent from this address", retry_after=wait
            )
        # The nonce is recorded in the same transaction (and commit) as the
        # envelope: a replay is refused and stores nothing.
        nonce: NonceUse | None = None
        digest: bytes | None = None
        if queue.sender_key is not None:
            nonce, digest = self.guard.verify(call, queue.sender_key)
        tlog = self.log
        # A contact address: each client address has its own share of it
        # (relay/fairness.py), reserved before the store.
        sender = client_key(call.remote or "") if queue.contact else None
        try:
            result = await self.contact.put(
                queue.rid,
                sender,
                len(body),
                self.guard.now(),
                self.storage.put_envelope(
                    queue.rid,
                    msg_id,
                    body,
                    now=self.guard.now(),
                    max_depth=self.config.max_depth,
                    nonce=nonce,
                    quota=self.quota,
                ),
            )
        except NonceReused:
            raise self.guard.replayed(call) from None
        except ShareExceeded:
            self.metrics.rejected.labels("contact_share").inc()
            raise ApiError(
                "quota_exceeded",
                "this address's share of the contact address is used up",
                retry_after=60,
            ) from None
        except QuotaExceeded as e:
            self.metrics.rejected.labels(f"{e.kind}_quota").inc()
            if e.kind in ("queue", "sender"):
                raise ApiError(
                    "quota_exceeded", f"the {e.kind} byte quota is used up", retry_after=60
                ) from None
            raise ApiError(
                "insufficient_storage", "the relay's storage is full", retry_after=60
            ) from None
        except QueueFull:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError("queue_full", "the queue is full", retry_after=60) from None
        except asyncio.CancelledError:
            # The commit may still happen: the next start must not skip repair.
            if tlog is not None:
                tlog.mark_dirty()
            raise
        self.metrics.envelopes_stored.inc()
        self.metrics.envelope_bytes.observe(len(body))
        receipt: Receipt | None = None
        if tlog is not None:
            # Logged before the answer (and before the push): a 2xx means the
            # envelope is both stored and in the log.
            if not result.duplicate:
                receipt = await tlog.append(body, digest=digest)
            else:
                receipt = await self._log_duplicate(tlog, queue.rid, msg_id, body, result.seq)
        if not result.duplicate and self.on_stored is not None:
            self.on_stored(
                queue.rid,
                api.Message(seq=result.seq, msg_id=msg_id, data=body, received=self.guard.now()),
            )
        return api.SendReply(seq=result.seq, duplicate=result.duplicate, receipt=receipt)

    async def _log_duplicate(
        self, tlog: RelayLog, rid: bytes, msg_id: bytes, body: bytes, seq: int
    ) -> Receipt:
        """The receipt of a resent envelope, appending its leaf if the log lacks it."""
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

    async def fetch_admit(self, call: Call, queue: QueueRecord) -> None:
        """A fetch's signature and per-queue rates (before its query is read)."""
        await self.guard.authenticate(call, queue.recipient_key, read=True)
        # Both per-queue limits count only authenticated fetches, so a stranger
        # cannot spend the owner's budget.
        self.guard.limit(self.guard.read_limit, queue.rid, "read")
        self.guard.limit(self.guard.fetch_limit, queue.rid, "fetch")

    @asynccontextmanager
    async def fetch(self, rid: bytes, after: int, limit: int) -> AsyncIterator[api.FetchReply]:
        """A page of envelopes after ``after`` (the fetch admitted by
        :meth:`fetch_admit`), held in one of the fetch slots until the caller
        has written it (so answers in memory stay bounded)."""
        limit = min(limit, self.config.fetch_limit)
        budget = self.config.fetch_max_bytes
        try:
            await asyncio.wait_for(self.fetch_slots.acquire(), timeout=self.config.body_timeout)
        except TimeoutError:
            self.metrics.rate_limited.labels("fetch_busy").inc()
            raise ApiError("busy", "too many fetches at once", retry_after=1) from None
        self.metrics.fetches_active.inc()
        try:
            envelopes = await self.storage.fetch(rid, after=after, limit=limit, max_bytes=budget)
            size = sum(len(e.data) for e in envelopes)
            # "more": the page was cut by the count or (maybe) by the byte
            # budget; the client fetches again after the last seq (the next
            # page may then be empty).
            more = len(envelopes) == limit or size + self.config.max_envelope > budget
            yield api.FetchReply(
                messages=tuple(
                    api.Message(seq=e.seq, msg_id=e.msg_id, data=e.data, received=e.received)
                    for e in envelopes
                ),
                more=more,
            )
        finally:
            self.metrics.fetches_active.dec()
            self.fetch_slots.release()

    async def ack(self, call: Call, rid: bytes, req: api.AckRequest) -> api.AckReply:
        """Delete envelopes up to ``req.up_to`` (``call`` already authenticated)."""
        deleted = await self.storage.ack(rid, up_to=req.up_to)
        self.contact.acked(rid, req.up_to)
        return api.AckReply(deleted=deleted)

    # --- prekeys ----------------------------------------------------------------------------

    async def put_prekeys(self, queue: QueueRecord, req: api.PrekeysRequest) -> api.PrekeyCount:
        """Publish prekeys on ``queue`` (already authenticated and checked
        with :meth:`prekeys_allowed`)."""
        cfg = self.config
        if (
            not req.signed
            or len(req.signed) > cfg.max_prekey_blob
            or len(req.one_time) > cfg.max_one_time_upload
            or not all(0 < len(b) <= cfg.max_prekey_blob for b in req.one_time)
        ):
            raise ApiError("bad_request", "expected signed, one_time, replace_one_time")
        left = await self.storage.put_prekeys(
            queue.rid,
            signed=req.signed,
            one_time=list(req.one_time),
            replace_one_time=req.replace_one_time,
        )
        return api.PrekeyCount(one_time_left=left)

    @staticmethod
    def prekeys_allowed(queue: QueueRecord) -> None:
        if not queue.contact:
            raise ApiError("conflict", "prekeys belong on a contact address")

    async def prekey_status(self, call: Call, queue: QueueRecord) -> api.PrekeyCount:
        await self.guard.authenticate(call, queue.recipient_key, read=True)
        self.guard.limit(self.guard.read_limit, queue.rid, "read")
        return api.PrekeyCount(one_time_left=await self.storage.prekey_count(queue.rid))

    async def claim_bundle(self, call: Call, sid: bytes) -> api.BundleReply:
        queue = await self.storage.queue_by_sid(sid)
        if queue is None or not queue.contact:
            raise ApiError("no_queue", "no such contact address")
        self.guard.limit(self.guard.claim_limit, sid, "claim")
        claimed = await self.storage.claim_bundle(queue.rid)
        if claimed is None:
            raise ApiError("no_prekeys", "no prekeys were published here")
        signed, one_time, left = claimed
        return api.BundleReply(signed=signed, one_time=one_time, one_time_left=left)
