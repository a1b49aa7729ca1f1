"""The client side of the relay API (aiohttp): ``docs/RELAY.md``.

:class:`RelayClient` speaks to one relay. Every request that acts on a queue
is signed (``protocol/relay_auth.py``). Failures are retried with exponential
backoff and full jitter (AWS Architecture Blog, "Exponential Backoff and
Jitter"): connection errors, timeouts, 5xx and 429 (honouring Retry-After).
Sends are idempotent: the caller fixes the message id, so a retry after a lost
reply is stored once by the relay, and the recipient drops duplicates by id
anyway. 4xx answers other than 408/429 are not retried and raise
:class:`RelayRefused`; exhausting the retries raises :class:`RelayUnavailable`.

The transparency log's routes (``docs/AUDIT.md``) are here too: send
receipts (:meth:`RelayClient.send_with_receipt`), checkpoints, proofs and
witness cosignatures. They are parsed strictly but verified by nobody here:
the caller checks signatures and proofs (``securechan.audit.receipt``).

This module does I/O only: it moves opaque bytes and never sees a plaintext.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from securechan import strict_json
from securechan.audit.note import MAX_NOTE_BYTES
from securechan.audit.receipt import Receipt, decode_hashes
from securechan.errors import MalformedInput, RelayRefused, RelayUnavailable
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64d, b64e, sign_request

__all__ = [
    "CosignatureReply",
    "FetchedEnvelope",
    "QueueIds",
    "RelayClient",
    "RetryPolicy",
    "SendReply",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to try: attempts, first delay, cap, per-request timeout."""

    attempts: int = 6
    base: float = 0.2
    cap: float = 5.0
    timeout: float = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueIds:
    """A queue's receive id and send id."""

    rid: bytes
    sid: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchedEnvelope:
    """An envelope as the relay returned it."""

    seq: int
    msg_id: bytes
    data: bytes
    received: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReply:
    """The relay's answer to a send: queue position, whether it was a resend,
    and the transparency log receipt (not verified here)."""

    seq: int
    duplicate: bool
    receipt: Receipt


@dataclass(frozen=True, slots=True, kw_only=True)
class CosignatureReply:
    """The relay's answer to a witness's cosignature.

    ``accepted``: stored, and ``checkpoint`` is the note with every
    cosignature the relay holds for its size. Otherwise the checkpoint was
    stale (HTTP 409, as tlog-witness add-checkpoint) and ``log_size`` is the
    relay's current tree size: fetch that checkpoint, check it, cosign again.
    """

    accepted: bool
    checkpoint: str | None = None
    log_size: int | None = None


# The largest answer parsed: a page of 100 envelopes of at most 1 MiB each,
# in base64, with room for the JSON around them.
MAX_ANSWER = 150 << 20


def _loads(raw: bytes | str) -> Any:
    """Parse a relay's JSON answer strictly (:mod:`securechan.strict_json`):
    duplicate names, UTF-16, absurd nesting and the like raise
    :class:`MalformedInput`, never a silent "last one wins". An empty body
    is ``None``."""
    if not raw:
        return None
    return strict_json.loads(raw, max_size=MAX_ANSWER, what="the relay's answer")


def _loads_or_none(raw: bytes | str) -> Any:
    """:func:`_loads` for an error body or a push, where a bad one is
    ignored (the status, or the next poll, says what happened)."""
    try:
        return _loads(raw)
    except MalformedInput:
        return None


def _int_field(data: Any, name: str, what: str) -> int:
    """A non-negative integer field of a relay's JSON object, or MalformedInput."""
    value = data.get(name) if isinstance(data, dict) else None
    if type(value) is not int or value < 0:
        raise MalformedInput(f"bad {what} from the relay")
    return value


def _envelope(item: Any) -> FetchedEnvelope:
    if not isinstance(item, dict):
        raise MalformedInput("the relay sent a bad envelope")
    try:
        return FetchedEnvelope(
            seq=_int_field(item, "seq", "envelope"),
            msg_id=b64d(item["msg_id"], size=16),
            data=b64d(item["data"], max_size=1 << 20),
            received=_int_field(item, "received", "envelope"),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        raise MalformedInput("the relay sent a bad envelope") from None


class RelayClient:
    """One relay. Use as ``async with RelayClient(url) as relay: ...``."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> RelayClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.retry.timeout)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the request loop -----------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        key: Ed25519SigningKey | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        status, raw = await self._request_raw(
            method, path, body=body, key=key, headers=headers, content_type=content_type
        )
        return status, _loads(raw)

    async def _request_raw(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        key: Ed25519SigningKey | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        answer: frozenset[int] = frozenset(),
    ) -> tuple[int, bytes]:
        """The request loop: the status and body of the first answer below
        400 or in ``answer`` (statuses the caller handles itself)."""
        if self._session is None:
            raise RuntimeError("use RelayClient as an async context manager")
        last: str = "no attempt"
        for attempt in range(self.retry.attempts):
            hdrs = dict(headers or {})
            if body:
                hdrs["Content-Type"] = content_type
            if key is not None:
                # A fresh signature (time and nonce) for every attempt.
                hdrs["Authorization"] = sign_request(
                    key, method, path, body, now=int(self._clock())
                )
            try:
                async with self._session.request(
                    method, self.url + path, data=body or None, headers=hdrs
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
                await self._backoff(attempt, None)
                continue
            if status < 400 or status in answer:
                return status, raw
            message = _error_message(_loads_or_none(raw), status)
            if status in (408, 429) or status >= 500:
                last = message
                await self._backoff(attempt, retry_after)
                continue
            raise RelayRefused(status, message)
        raise RelayUnavailable(f"{self.url}: {last}")

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        if attempt + 1 >= self.retry.attempts:
            return
        delay = random.uniform(0, min(self.retry.cap, self.retry.base * 2**attempt))  # noqa: S311 - jitter, not crypto
        if retry_after is not None and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self.retry.cap * 4))
        await asyncio.sleep(delay)

    # --- API ------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """The relay's public information (its key, limits)."""
        _, data = await self._request("GET", "/v1/relay")
        if not isinstance(data, dict):
            raise MalformedInput("bad relay info")
        return data

    async def create_queue(
        self,
        recipient: Ed25519SigningKey,
        *,
        sender_key: bytes | None = None,
        contact: bool = False,
    ) -> QueueIds:
        """Create a queue owned by ``recipient``."""
        body = json.dumps(
            {
                "recipient_key": b64e(recipient.public),
                "sender_key": b64e(sender_key) if sender_key else None,
                "contact": contact,
            }
        ).encode()
        _, data = await self._request("POST", "/v1/queues", body=body, key=recipient)
        try:
            return QueueIds(rid=b64d(data["rid"], size=16), sid=b64d(data["sid"], size=16))
        except (KeyError, TypeError):
            raise MalformedInput("bad queue ids from the relay") from None

    async def delete_queue(self, rid: bytes, recipient: Ed25519SigningKey) -> None:
        """Delete a queue and everything in it."""
        await self._request("DELETE", f"/v1/queues/{b64e(rid)}", key=recipient)

    async def send(
        self, sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
    ) -> tuple[int, bool]:
        """Post one envelope; return (queue seq, duplicate). Idempotent."""
        _, data = await self._request(
            "POST",
            f"/v1/send/{b64e(sid)}",
            body=envelope,
            key=sender,
            headers={"X-Message-Id": b64e(msg_id)},
            content_type="application/octet-stream",
        )
        duplicate = data.get("duplicate") if isinstance(data, dict) else None
        if type(duplicate) is not bool:
            raise MalformedInput("bad send reply from the relay")
        return _int_field(data, "seq", "send reply"), duplicate

    async def send_with_receipt(
        self, sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
    ) -> SendReply:
        """Post one envelope; its position and log receipt (unverified: check
        it with :func:`securechan.audit.receipt.verify_receipt`). Idempotent;
        a resend carries the original envelope's receipt."""
        _, data = await self._request(
            "POST",
            f"/v1/send/{b64e(sid)}",
            body=envelope,
            key=sender,
            headers={"X-Message-Id": b64e(msg_id)},
            content_type="application/octet-stream",
        )
        if not isinstance(data, dict) or "receipt" not in data:
            raise MalformedInput("the relay sent no log receipt")
        seq, duplicate = data.get("seq"), data.get("duplicate")
        if type(seq) is not int or type(duplicate) is not bool:
            raise MalformedInput("bad send reply from the relay")
        return SendReply(seq=seq, duplicate=duplicate, receipt=Receipt.from_json(data["receipt"]))

    async def log_checkpoint(self, size: int | None = None) -> str:
        """The log's newest checkpoint (or the one of ``size``) with its
        cosignatures: signed-note text, not verified here."""
        path = "/v1/log/checkpoint" if size is None else f"/v1/log/checkpoint?size={int(size)}"
        _, raw = await self._request_raw("GET", path)
        if len(raw) > MAX_NOTE_BYTES:
            raise MalformedInput("the relay's checkpoint is too long")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput("the relay's checkpoint is not UTF-8") from None

    async def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
        query = f"index={int(index)}&size={int(size)}"
        _, data = await self._request("GET", f"/v1/log/proof/inclusion?{query}")
        return _proof(data, {"index": index, "size": size})

    async def leaf_receipt(self, leaf_hash: bytes) -> Receipt | None:
        """The log's receipt for the leaf with this RFC 6962 hash (against the
        newest checkpoint), or ``None`` if the log does not hold it. Not
        verified here: see :func:`securechan.audit.receipt.verify_receipt`."""
        if len(leaf_hash) != 32:
            raise ValueError("a leaf hash is 32 bytes")
        try:
            _, data = await self._request("GET", f"/v1/log/proof/leaf?hash={leaf_hash.hex()}")
        except RelayRefused as e:
            if e.status == 404:
                return None
            raise
        return Receipt.from_json(data)

    async def consistency_proof(self, old: int, new: int) -> tuple[bytes, ...]:
        """The RFC 9162 consistency proof from size ``old`` to ``new``."""
        query = f"old={int(old)}&new={int(new)}"
        _, data = await self._request("GET", f"/v1/log/proof/consistency?{query}")
        return _proof(data, {"old": old, "new": new})

    async def post_cosignature(self, text: str) -> CosignatureReply:
        """Hand in a witness's cosignature: ``text`` is the checkpoint note
        with the witness's cosignature line(s) appended. A stale checkpoint
        is an answer (``accepted=False``), not an error."""
        status, raw = await self._request_raw(
            "POST",
            "/v1/log/cosignature",
            body=text.encode("utf-8"),
            content_type="text/plain; charset=utf-8",
            answer=frozenset({409}),
        )
        if status == 409:
            size = raw.decode("ascii", "replace").removesuffix("\n")
            if not (size.isascii() and size.isdigit() and len(size) <= 20):
                raise MalformedInput("bad 409 answer from the relay's log")
            return CosignatureReply(accepted=False, log_size=int(size))
        try:
            return CosignatureReply(accepted=True, checkpoint=raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise MalformedInput("the relay's checkpoint is not UTF-8") from None

    async def fetch(
        self, rid: bytes, recipient: Ed25519SigningKey, *, after: int = 0, limit: int = 100
    ) -> list[FetchedEnvelope]:
        """Envelopes after ``after``, at most ``limit``. The relay cuts its
        answers by bytes and says ``"more": true`` when there may be more:
        the next page is then fetched after the last seq, until ``limit``
        envelopes came or the relay says there are no more (an answer
        without ``more``, from an older relay, is one page as before)."""
        out: list[FetchedEnvelope] = []
        while True:
            want = limit - len(out)
            _, data = await self._request(
                "GET", f"/v1/queues/{b64e(rid)}/messages?after={after}&limit={want}", key=recipient
            )
            try:
                page = [_envelope(m) for m in data["messages"]]
                more = data.get("more", False)
            except (KeyError, TypeError, AttributeError):
                raise MalformedInput("bad fetch reply from the relay") from None
            if not isinstance(more, bool) or len(page) > want:
                raise MalformedInput("bad fetch reply from the relay")
            out.extend(page)
            if not page or not more or len(out) >= limit:
                return out
            if page[-1].seq <= after:
                raise MalformedInput("the relay's fetch answer went backwards")
            after = page[-1].seq

    async def ack(self, rid: bytes, recipient: Ed25519SigningKey, *, up_to: int) -> int:
        """Delete envelopes up to ``up_to``; return how many."""
        body = json.dumps({"up_to": up_to}).encode()
        _, data = await self._request(
            "POST", f"/v1/queues/{b64e(rid)}/ack", body=body, key=recipient
        )
        return _int_field(data, "deleted", "ack reply")

    async def put_prekeys(
        self,
        rid: bytes,
        recipient: Ed25519SigningKey,
        *,
        signed: bytes,
        one_time: list[bytes],
        replace_one_time: bool = False,
    ) -> int:
        """Publish sealed prekey blobs on a contact address."""
        body = json.dumps(
            {
                "signed": b64e(signed),
                "one_time": [b64e(x) for x in one_time],
                "replace_one_time": replace_one_time,
            }
        ).encode()
        _, data = await self._request(
            "PUT", f"/v1/queues/{b64e(rid)}/prekeys", body=body, key=recipient
        )
        return _int_field(data, "one_time_left", "prekey reply")

    async def prekey_count(self, rid: bytes, recipient: Ed25519SigningKey) -> int:
        """How many one-time prekeys remain on the relay."""
        _, data = await self._request("GET", f"/v1/queues/{b64e(rid)}/prekeys", key=recipient)
        return _int_field(data, "one_time_left", "prekey count")

    async def claim_bundle(self, sid: bytes) -> tuple[bytes, bytes | None]:
        """Claim the sealed signed-prekey blob and one one-time blob."""
        _, data = await self._request("POST", f"/v1/contact/{b64e(sid)}/bundle")
        try:
            one_time = data["one_time"]
            return (
                b64d(data["signed"], max_size=1 << 16),
                b64d(one_time, max_size=1 << 16) if one_time is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            raise MalformedInput("bad bundle reply from the relay") from None

    async def subscribe(
        self, rid: bytes, recipient: Ed25519SigningKey
    ) -> AsyncIterator[FetchedEnvelope]:
        """Envelopes pushed over the WebSocket as they arrive (no retries:
        the caller falls back to polling when this ends)."""
        if self._session is None:
            raise RuntimeError("use RelayClient as an async context manager")
        path = f"/v1/queues/{b64e(rid)}/ws"
        auth = sign_request(recipient, "GET", path, b"", now=int(self._clock()))
        try:
            async with self._session.ws_connect(
                self.url + path, headers={"Authorization": auth}, heartbeat=30
            ) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    item = _loads_or_none(msg.data if isinstance(msg.data, str) else b"")
                    if item is None:
                        continue
                    if isinstance(item, dict) and item.get("type") == "message":
                        yield _envelope(item)
        except aiohttp.WSServerHandshakeError as e:
            raise RelayRefused(e.status, "the relay refused the WebSocket") from None
        except (aiohttp.ClientError, OSError) as e:
            raise RelayUnavailable(f"{self.url}: {e}") from None


def _proof(data: Any, echo: dict[str, int]) -> tuple[bytes, ...]:
    """The hashes of a proof reply that answers the question asked."""
    if not isinstance(data, dict) or any(
        type(data.get(k)) is not int or data[k] != v for k, v in echo.items()
    ):
        raise MalformedInput("bad proof reply from the relay")
    return decode_hashes(data.get("hashes"))


def _error_message(data: Any, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        msg = data["error"].get("message")
        if isinstance(msg, str):
            return f"{status} {msg[:200]}"
    return f"HTTP {status}"
