"""Who may ask the relay what, how often: request signatures, nonces, rate limits.

:class:`Guard` is the first thing every call of
:class:`~securechan.relay.service.RelayService` meets: it checks the
request signature (``protocol/relay_auth.py``, docs/PROTOCOL.md), records
the nonce (a read's in memory, any other in relay.db, so that a replay is
refused), spends the caller's rate-limit tokens, and counts and limits
failed authentication per address, so that a flood of bad signatures costs
the relay next to nothing. Like the service it imports no HTTP library.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from securechan.errors import BadSignature, MalformedInput
from securechan.protocol.relay_auth import MAX_SKEW, parse_authorization, verify_request
from securechan.relay.api import ApiError
from securechan.relay.config import RelayConfig
from securechan.relay.limits import RateLimiter
from securechan.relay.metrics import RelayMetrics
from securechan.relay.storage import NonceUse, RelayStorage

__all__ = ["Call", "Guard"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request as the service sees it: the client's address (for
    per-address limits), and what its signature covers (method, path with
    query, ``Authorization`` header, body)."""

    remote: str | None
    method: str
    target: str
    authorization: str | None = None
    body: bytes = b""


class Guard:
    """The relay's rate limiters, its read-nonce cache and its signature checks."""

    def __init__(self, storage: RelayStorage, config: RelayConfig, metrics: RelayMetrics) -> None:
        self.storage = storage
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
        self.auth_limit = RateLimiter(
            rate=config.auth_failure_rate, burst=config.auth_failure_burst
        )
        self.read_limit = RateLimiter(rate=config.read_rate, burst=config.read_burst)
        # key + nonce -> expiry, oldest first (expiries are now + a constant).
        self.read_nonces: OrderedDict[bytes, int] = OrderedDict()

    def now(self) -> int:
        return int(self.config.clock())

    def limit(self, limiter: RateLimiter, key: object, what: str, cost: float = 1.0) -> None:
        """429 ``rate_limited`` when ``limiter`` has no tokens left for ``key``."""
        wait = limiter.allow(key, self.config.clock(), cost)
        if wait:
            self.metrics.rate_limited.labels(what).inc()
            raise ApiError("rate_limited", f"too many {what} requests", retry_after=wait)

    def auth_gate(self, remote: str | None) -> None:
        """429 for an address that spent its failed-authentication budget:
        before any lookup or signature check, so a flood of bad signatures
        costs the relay next to nothing."""
        wait = self.auth_limit.blocked(remote, self.config.clock())
        if wait:
            self.metrics.rate_limited.labels("auth_failure").inc()
            message = "too many failed authentications from this address"
            raise ApiError("rate_limited", message, retry_after=wait)

    def auth_failed(self, call: Call, reason: str) -> None:
        """Count a refused authentication and spend the address's budget."""
        self.metrics.auth_failures.labels(reason).inc()
        self.auth_limit.allow(call.remote, self.config.clock())

    def verify(self, call: Call, key: bytes) -> tuple[NonceUse, bytes]:
        """Check the call's signature (401, 403); the nonce the caller must
        then record, refusing the request if it was recorded before, and
        SHA-256 of the body (hashed once for the signature, reused by the log)."""
        try:
            req = parse_authorization(call.authorization)
        except MalformedInput as e:
            self.auth_failed(call, "missing" if call.authorization is None else "malformed")
            raise ApiError("unauthenticated", str(e)) from None
        now = self.now()
        try:
            digest = verify_request(key, req, call.method, call.target, call.body, now=now)
        except BadSignature as e:
            self.auth_failed(call, "stale" if abs(now - req.ts) > MAX_SKEW else "signature")
            raise ApiError("forbidden", str(e)) from None
        return NonceUse(key=key, nonce=req.nonce, now=now, expires=now + 2 * MAX_SKEW), digest

    async def authenticate(self, call: Call, key: bytes, *, read: bool = False) -> None:
        """Check the signature and record the nonce: a ``read`` (a request
        that changes nothing) in memory, any other in relay.db."""
        use, _ = self.verify(call, key)
        if read:
            fresh = self.use_read_nonce(use)
        else:
            fresh = await self.storage.use_nonce(key, use.nonce, now=use.now, expires=use.expires)
        if not fresh:
            raise self.replayed(call)

    def use_read_nonce(self, use: NonceUse) -> bool:
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

    def replayed(self, call: Call) -> ApiError:
        self.auth_failed(call, "replayed")
        return ApiError("replayed", "this request was already made")
