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
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import aiohttp

from securechan import strict_json
from securechan.audit.note import MAX_NOTE_BYTES
from securechan.audit.receipt import Receipt
from securechan.errors import BadRelayUrl, MalformedInput, RelayRefused, RelayUnavailable
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64e, sign_request
from securechan.relay import api
from securechan.transport_streams import StreamItem, StreamMethods

__all__ = [
    "CosignatureReply",
    "FetchedEnvelope",
    "QueueIds",
    "RelayClient",
    "RetryPolicy",
    "SendReply",
    "StreamItem",
    "check_relay_url",
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


# What a contact card may carry (protocol/address.py): ASCII host name or
# bracketed IPv6 address, an optional port and path. Checked piece by piece
# below, so the refusal says which piece is wrong.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~\-/]{0,200})?")


def check_relay_url(url: str) -> str:
    """``url`` if it can be a relay's address, else :class:`BadRelayUrl`
    saying why: ``http`` or ``https`` only, a host, a port in 1..65535 if
    one is given, a plain path; no user name or password (they would be sent
    with every request and end up in contact cards), no query or fragment.
    What passes also fits in a contact card (``protocol/address.py``).
    Nothing is resolved or contacted: a usage mistake is refused at once."""
    from urllib.parse import urlsplit

    def bad(why: str) -> BadRelayUrl:
        return BadRelayUrl(f"bad relay URL {url}: {why}")

    if not isinstance(url, str) or not url:
        raise bad("it is empty")
    if len(url) > 512:
        raise bad("it is longer than 512 characters")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in url):
        raise bad("it has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        if "port" in str(e).lower():
            raise bad("the port must be a number from 1 to 65535") from None
        raise bad("it cannot be parsed as a URL") from None
    if parts.scheme.lower() not in ("http", "https") or "://" not in url:
        raise bad("it must start with http:// or https://")
    if "@" in parts.netloc:
        raise bad("it must not hold a user name or password")
    if parts.query or "?" in url:
        raise bad("it must not have a query (?...)")
    if parts.fragment or "#" in url:
        raise bad("it must not have a fragment (#...)")
    if parts.netloc.endswith(":"):
        raise bad("the port is empty")
    host = parts.netloc.rpartition(":")[0] if port is not None else parts.netloc
    if not host:
        raise bad("it has no host")
    if not _HOST.fullmatch(host):
        raise bad("the host must be a name of letters, digits, '.' and '-', or [IPv6]")
    if port is not None and not 1 <= port <= 65535:
        raise bad("the port must be a number from 1 to 65535")
    if not _PATH.fullmatch(parts.path):
        raise bad("the path may hold only letters, digits and . _ ~ - /")
    return url


def _describe(e: BaseException, timeout: float) -> str:
    """A connection failure in words (no traceback, no 'ssl:default')."""
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return "the host name was not found"
    if isinstance(e, aiohttp.ClientSSLError):
        return f"the TLS handshake failed ({type(e).__name__})"
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        if err.errno:
            return os.strerror(err.errno).lower()
        return f"cannot connect ({type(err).__name__})"
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the connection closed before an answer"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower()
    return f"the connection failed ({type(e).__name__})"


_P = ParamSpec("_P")
_S = TypeVar("_S")

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


def _json_answer(
    request: Callable[Concatenate[_S, _P], Awaitable[tuple[int, bytes]]],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, tuple[int, Any]]]:
    """``request`` (a method answering the status and raw body) with the
    body parsed by :func:`_loads`; it takes the same arguments, which mypy
    checks (ParamSpec)."""

    async def decoded(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> tuple[int, Any]:
        status, raw = await request(self, *args, **kwargs)
        return status, _loads(raw)

    return decoded


def _loads_or_none(raw: bytes | str) -> Any:
    """:func:`_loads` for an error body or a push, where a bad one is
    ignored (the status, or the next poll, says what happened)."""
    try:
        return _loads(raw)
    except MalformedInput:
        return None


class RelayClient(StreamMethods):
    """One relay. Use as ``async with RelayClient(url) as relay: ...``
    (the group-stream calls come from :class:`StreamMethods`)."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = check_relay_url(url).rstrip("/")
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
        reachable = False  # an answer came (5xx, 429): unavailable, not unreachable
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
                last = _describe(e, self.retry.timeout)
                await self._backoff(attempt, None)
                continue
            if status < 400 or status in answer:
                return status, raw
            message = _error_message(_loads_or_none(raw), status)
            if status in (408, 429) or status >= 500:
                last, reachable = message, True
                await self._backoff(attempt, retry_after)
                continue
            raise RelayRefused(status, message, relay=self.url)
        state = "is unavailable" if reachable else "is unreachable"
        tries = self.retry.attempts
        raise RelayUnavailable(
            f"relay {self.url} {state}: {last} ({tries} attempt{'s' if tries > 1 else ''})",
            relay=self.url,
        )

    # The same loop, the body parsed as JSON (:func:`_loads`): most routes.
    _request = _json_answer(_request_raw)

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        if attempt + 1 >= self.retry.attempts:
            return
        delay = random.uniform(0, min(self.retry.cap, self.retry.base * 2**attempt))  # noqa: S311 - jitter, not crypto
        if retry_after is not None and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self.retry.cap * 4))
        await asyncio.sleep(delay)

    # --- API (paths and bodies from securechan.relay.api, the one description) ---

    async def info(self) -> dict[str, Any]:
        """The relay's public information (its key, limits)."""
        _, data = await self._request("GET", api.route("info").path)
        _reply(api.RelayInfo, data, "relay info")
        return cast(dict[str, Any], data)

    async def create_queue(
        self,
        recipient: Ed25519SigningKey,
        *,
        sender_key: bytes | None = None,
        contact: bool = False,
    ) -> QueueIds:
        """Create a queue owned by ``recipient``."""
        req = api.CreateQueueRequest(
            recipient_key=recipient.public, sender_key=sender_key or None, contact=contact
        )
        path = api.route("create_queue").path
        _, data = await self._request("POST", path, body=_body(req), key=recipient)
        ids = _reply(api.CreateQueueReply, data, "queue ids")
        return QueueIds(rid=ids.rid, sid=ids.sid)

    async def delete_queue(self, rid: bytes, recipient: Ed25519SigningKey) -> None:
        """Delete a queue and everything in it."""
        await self._request("DELETE", api.route("delete_queue").url(rid=rid), key=recipient)

    async def _send(
        self, sid: bytes, envelope: bytes, msg_id: bytes, sender: Ed25519SigningKey | None
    ) -> api.SendReply:
        _, data = await self._request(
            "POST",
            api.route("send").url(sid=sid),
            body=envelope,
            key=sender,
            headers={"X-Message-Id": b64e(msg_id)},
            content_type="application/octet-stream",
        )
        return _reply(api.SendReply, data, "send reply")

    async def send(
        self, sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
    ) -> tuple[int, bool]:
        """Post one envelope; return (queue seq, duplicate). Idempotent."""
        reply = await self._send(sid, envelope, msg_id, sender)
        return reply.seq, reply.duplicate

    async def send_with_receipt(
        self, sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
    ) -> SendReply:
        """Post one envelope; its position and log receipt (unverified: check
        it with :func:`securechan.audit.receipt.verify_receipt`). Idempotent;
        a resend carries the original envelope's receipt."""
        reply = await self._send(sid, envelope, msg_id, sender)
        if reply.receipt is None:
            raise MalformedInput("the relay sent no log receipt")
        return SendReply(seq=reply.seq, duplicate=reply.duplicate, receipt=reply.receipt)

    async def log_checkpoint(self, size: int | None = None) -> str:
        """The log's newest checkpoint (or the one of ``size``) with its
        cosignatures: signed-note text, not verified here."""
        path = api.route("log_checkpoint").path
        if size is not None:
            path += f"?size={int(size)}"
        _, raw = await self._request_raw("GET", path)
        if len(raw) > MAX_NOTE_BYTES:
            raise MalformedInput("the relay's checkpoint is too long")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput("the relay's checkpoint is not UTF-8") from None

    async def tile_resource(self, path: str) -> bytes | None:
        """One C2SP tlog-tiles resource (``checkpoint``, ``tile/...``) of the
        relay's log, not verified here (:mod:`securechan.client.tiles`), or
        ``None`` if the relay has none (404: an older relay, or a tile it
        has not reached)."""
        status, raw = await self._request_raw("GET", "/" + path, answer=frozenset({404}))
        return None if status == 404 else raw

    async def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
        query = f"index={int(index)}&size={int(size)}"
        _, data = await self._request("GET", f"{api.route('log_inclusion').path}?{query}")
        proof = _reply(api.InclusionReply, data, "proof reply")
        if (proof.index, proof.size) != (index, size):
            raise MalformedInput("bad proof reply from the relay")
        return proof.hashes

    async def leaf_receipt(self, leaf_hash: bytes) -> Receipt | None:
        """The log's receipt for the leaf with this RFC 6962 hash (against the
        newest checkpoint), or ``None`` if the log does not hold it. Not
        verified here: see :func:`securechan.audit.receipt.verify_receipt`."""
        if len(leaf_hash) != 32:
            raise ValueError("a leaf hash is 32 bytes")
        path = f"{api.route('log_leaf').path}?hash={leaf_hash.hex()}"
        try:
            _, data = await self._request("GET", path)
        except RelayRefused as e:
            if e.status == 404:
                return None
            raise
        return Receipt.from_json(data)

    async def consistency_proof(self, old: int, new: int) -> tuple[bytes, ...]:
        """The RFC 9162 consistency proof from size ``old`` to ``new``."""
        query = f"old={int(old)}&new={int(new)}"
        _, data = await self._request("GET", f"{api.route('log_consistency').path}?{query}")
        proof = _reply(api.ConsistencyReply, data, "proof reply")
        if (proof.old, proof.new) != (old, new):
            raise MalformedInput("bad proof reply from the relay")
        return proof.hashes

    async def post_cosignature(self, text: str) -> CosignatureReply:
        """Hand in a witness's cosignature: ``text`` is the checkpoint note
        with the witness's cosignature line(s) appended. A stale checkpoint
        is an answer (``accepted=False``), not an error."""
        status, raw = await self._request_raw(
            "POST",
            api.route("log_cosignature").path,
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
        path = api.route("fetch").url(rid=rid)
        while True:
            want = limit - len(out)
            _, data = await self._request(
                "GET", f"{path}?after={after}&limit={want}", key=recipient
            )
            reply = _reply(api.FetchReply, data, "fetch reply")
            page = [_fetched(m) for m in reply.messages]
            if len(page) > want:
                raise MalformedInput("bad fetch reply from the relay")
            out.extend(page)
            if not page or not reply.more or len(out) >= limit:
                return out
            if page[-1].seq <= after:
                raise MalformedInput("the relay's fetch answer went backwards")
            after = page[-1].seq

    async def ack(self, rid: bytes, recipient: Ed25519SigningKey, *, up_to: int) -> int:
        """Delete envelopes up to ``up_to``; return how many."""
        body = _body(api.AckRequest(up_to=up_to))
        path = api.route("ack").url(rid=rid)
        _, data = await self._request("POST", path, body=body, key=recipient)
        return _reply(api.AckReply, data, "ack reply").deleted

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
        req = api.PrekeysRequest(
            signed=signed, one_time=tuple(one_time), replace_one_time=replace_one_time
        )
        path = api.route("put_prekeys").url(rid=rid)
        _, data = await self._request("PUT", path, body=_body(req), key=recipient)
        return _reply(api.PrekeyCount, data, "prekey reply").one_time_left

    async def prekey_count(self, rid: bytes, recipient: Ed25519SigningKey) -> int:
        """How many one-time prekeys remain on the relay."""
        path = api.route("prekey_status").url(rid=rid)
        _, data = await self._request("GET", path, key=recipient)
        return _reply(api.PrekeyCount, data, "prekey count").one_time_left

    async def claim_bundle(self, sid: bytes) -> tuple[bytes, bytes | None]:
        """Claim the sealed signed-prekey blob and one one-time blob."""
        _, data = await self._request("POST", api.route("claim_bundle").url(sid=sid))
        bundle = _reply(api.BundleReply, data, "bundle reply")
        return bundle.signed, bundle.one_time

    async def pair_call(self, name: str, request: Any, reply: type[T]) -> T:
        """One call to the pairing mailbox (docs/RELAY.md, "Pairing mailbox"):
        route ``name`` (``pair_open``, ``pair_join``...), body ``request``
        (an API type, or None), answer parsed as ``reply``."""
        path = api.route(name).path
        body = _body(request) if request is not None else b""
        _, data = await self._request("POST", path, body=body)
        return _reply(reply, data, "pairing answer")

    async def subscribe(
        self, rid: bytes, recipient: Ed25519SigningKey
    ) -> AsyncIterator[FetchedEnvelope]:
        """Envelopes pushed over the WebSocket as they arrive (no retries:
        the caller falls back to polling when this ends)."""
        if self._session is None:
            raise RuntimeError("use RelayClient as an async context manager")
        path = api.route("websocket").url(rid=rid)
        auth = sign_request(recipient, "GET", path, b"", now=int(self._clock()))
        try:
            async with self._session.ws_connect(
                self.url + path, headers={"Authorization": auth}, heartbeat=30
            ) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    item = _loads_or_none(msg.data if isinstance(msg.data, str) else b"")
                    if isinstance(item, dict) and item.pop("type", None) == "message":
                        yield _envelope(item)
        except aiohttp.WSServerHandshakeError as e:
            raise RelayRefused(
                e.status, f"HTTP {e.status} on the WebSocket", relay=self.url
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise RelayUnavailable(
                f"relay {self.url} is unreachable: {_describe(e, self.retry.timeout)}",
                relay=self.url,
            ) from None


T = TypeVar("T")


def _body(request: Any) -> bytes:
    """A request body: the JSON of one API request type."""
    return json.dumps(api.to_json(request)).encode()


def _reply(cls: type[T], data: Any, what: str) -> T:
    """A relay's JSON answer as the API type ``cls``, or MalformedInput (a
    newer relay's extra fields are ignored)."""
    try:
        return api.from_json(cls, data, exact=False)
    except MalformedInput as e:
        raise MalformedInput(f"bad {what} from the relay: {e}") from None


def _envelope(item: Any) -> FetchedEnvelope:
    """One envelope of a fetch answer or a push, from its JSON; MalformedInput."""
    return _fetched(_reply(api.Message, item, "envelope"))


def _fetched(m: api.Message) -> FetchedEnvelope:
    return FetchedEnvelope(seq=m.seq, msg_id=m.msg_id, data=m.data, received=m.received)


def _error_message(data: Any, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        msg = data["error"].get("message")
        if isinstance(msg, str):
            return f"{status} {msg[:200]}"
    return f"HTTP {status}"
