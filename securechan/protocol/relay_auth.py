"""Signed requests between a client and a relay (sans-I/O).

A request that acts on a queue carries an ``Authorization`` header::

    Authorization: SC1 ts=<unix seconds>, nonce=<base64url, 16 bytes>, sig=<base64url, 64 bytes>

where ``sig`` is an Ed25519 signature, by the queue's recipient key (to read,
acknowledge, publish prekeys) or sender key (to send to a secured queue), over::

    "securechan/v1/relay-request" LF METHOD LF PATH?QUERY LF hex(SHA-256(body)) LF ts LF nonce

The relay refuses a timestamp more than :data:`MAX_SKEW` seconds from its
clock and a nonce it has already seen for that key (it remembers nonces for
twice the skew), so a captured request cannot be replayed, and the body hash
stops it being re-targeted or altered. ``docs/RELAY.md`` §3 is the normative
text. These are capability keys only: they name no identity.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from securechan.errors import BadSignature, MalformedInput
from securechan.primitives import Ed25519SigningKey, ed25519_verify, random_bytes, sha256

__all__ = [
    "MAX_SKEW",
    "SignedRequest",
    "b64d",
    "b64e",
    "parse_authorization",
    "sign_request",
    "verify_request",
]

MAX_SKEW = 300
_LABEL = b"securechan/v1/relay-request"
_AUTH = re.compile(
    r"SC1 ts=(?P<ts>[0-9]{1,12}), "
    r"nonce=(?P<nonce>[A-Za-z0-9_-]{22}), "
    r"sig=(?P<sig>[A-Za-z0-9_-]{86})"
)


def b64e(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5), as used in URLs and JSON."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, size: int | None = None, max_size: int = 1 << 20) -> bytes:
    """Strict inverse of :func:`b64e`; raise :class:`MalformedInput`."""
    if not isinstance(text, str) or len(text) > (max_size * 4 + 2) // 3 + 1:
        raise MalformedInput("bad base64url value")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise MalformedInput("bad base64url value")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedInput("bad base64url value") from None
    if b64e(data) != text:
        raise MalformedInput("non-canonical base64url value")
    if size is not None and len(data) != size:
        raise MalformedInput(f"expected {size} bytes")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRequest:
    """The parsed parts of an ``Authorization`` header."""

    ts: int
    nonce: bytes
    signature: bytes


def _message(method: str, target: str, digest: bytes, ts: int, nonce: bytes) -> bytes:
    return b"\n".join(
        (
            _LABEL,
            method.upper().encode("ascii"),
            target.encode("utf-8"),
            digest.hex().encode("ascii"),
            str(ts).encode("ascii"),
            b64e(nonce).encode("ascii"),
        )
    )


def sign_request(key: Ed25519SigningKey, method: str, target: str, body: bytes, *, now: int) -> str:
    """The ``Authorization`` header value for one request (fresh nonce)."""
    nonce = random_bytes(16)
    sig = key.sign(_message(method, target, sha256(body), now, nonce))
    return f"SC1 ts={now}, nonce={b64e(nonce)}, sig={b64e(sig)}"


def parse_authorization(value: str | None) -> SignedRequest:
    """Parse the header strictly; raise :class:`MalformedInput`."""
    if value is None:
        raise MalformedInput("missing Authorization header")
    m = _AUTH.fullmatch(value)
    if m is None:
        raise MalformedInput("bad Authorization header")
    return SignedRequest(
        ts=int(m["ts"]), nonce=b64d(m["nonce"], size=16), signature=b64d(m["sig"], size=64)
    )


def verify_request(
    public_key: bytes, req: SignedRequest, method: str, target: str, body: bytes, *, now: int
) -> bytes:
    """Check freshness and signature; raise :class:`BadSignature`.

    Returns SHA-256 of ``body`` (signed over, so the caller need not hash
    the body again). The caller must also record ``req.nonce`` and refuse one
    seen before.
    """
    if abs(now - req.ts) > MAX_SKEW:
        raise BadSignature("the request is stale or from the future")
    digest = sha256(body)
    ed25519_verify(public_key, req.signature, _message(method, target, digest, req.ts, req.nonce))
    return digest
