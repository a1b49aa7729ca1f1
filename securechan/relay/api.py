"""The relay's HTTP API, described once: request and reply types, the error
codes and the route table.

Everything that speaks the relay's API reads it from here: the server
(:mod:`securechan.relay.app` adds its routes from :data:`ROUTES` and parses
and renders bodies with these types), the client
(:mod:`securechan.transport` builds its paths and request bodies and parses
the replies with them), the test suite's malicious relay
(:mod:`securechan.testing.malicious_relay` classifies requests with
:func:`match`) and ``docs/openapi.yaml``, which
:mod:`securechan.relay.openapi` generates from this module (a test checks the
committed file is what it generates). ``docs/RELAY.md`` §3-4 is the prose.

A JSON type is a frozen dataclass whose fields say their JSON spelling
(:func:`jfield`): ``int`` (0 to 2**63-1), ``bool``, ``str``, ``id`` (16 bytes,
base64url), ``key`` (32 bytes, base64url), ``blob`` (bytes, base64url),
``blobs`` (a list of them), ``receipt`` (:class:`~securechan.audit.receipt.Receipt`),
``hashes`` (proof hashes, padded base64), ``messages`` or ``items`` (a
group stream's, :mod:`securechan.relay.api_streams`). One definition gives
both directions (:func:`to_json`, :func:`from_json`) and the schema.

This module imports no HTTP library: it is plain data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from securechan.audit.receipt import Receipt
from securechan.errors import Reason, SecurechanError
from securechan.relay.api_codec import Message, from_json, jfield, to_json
from securechan.relay.api_pairing import (
    PAIR_ROUTES,
    PairCloseReply,
    PairCloseRequest,
    PairGetReply,
    PairGetRequest,
    PairJoinRequest,
    PairOpenReply,
    PairPutReply,
    PairPutRequest,
)
from securechan.relay.api_route import Query, Route
from securechan.relay.api_streams import STREAM_ROUTES, StreamItem, StreamPage, StreamPostReply

__all__ = [
    "API_VERSION",
    "ERRORS",
    "ROUTES",
    "AckReply",
    "AckRequest",
    "ApiError",
    "BundleReply",
    "ConsistencyReply",
    "CreateQueueReply",
    "CreateQueueRequest",
    "DeleteReply",
    "FetchReply",
    "InclusionReply",
    "Message",
    "PairCloseReply",
    "PairCloseRequest",
    "PairGetReply",
    "PairGetRequest",
    "PairJoinRequest",
    "PairOpenReply",
    "PairPutReply",
    "PairPutRequest",
    "PrekeyCount",
    "PrekeysRequest",
    "Query",
    "RelayInfo",
    "Route",
    "SecureQueueRequest",
    "SecuredReply",
    "SendReply",
    "StreamItem",
    "StreamPage",
    "StreamPostReply",
    "aiohttp_path",
    "from_json",
    "jfield",
    "match",
    "route",
    "to_json",
]

API_VERSION: Final = "v1"

# --- errors -------------------------------------------------------------------------

ERRORS: Final[Mapping[str, int]] = {
    "bad_request": 400,
    "bad_json": 400,
    "bad_query": 400,
    "bad_id": 400,
    "bad_tile": 400,
    "malformed": 400,
    "bad_message_id": 400,
    "empty": 400,
    "not_websocket": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "replayed": 403,
    "unknown_witness": 403,
    "bad_signature": 403,
    "no_queue": 404,
    "no_prekeys": 404,
    "no_log": 404,
    "no_leaf": 404,
    "no_checkpoint": 404,
    "no_mailbox": 404,
    "no_tile": 404,
    "timeout": 408,
    "conflict": 409,
    "stream_full": 409,
    "too_large": 413,
    "not_in_log": 422,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "queue_full": 429,
    "too_many_sockets": 429,
    "shutting_down": 503,
    "storage": 503,
    "busy": 503,
    "insufficient_storage": 507,
}
"""Every error code the relay answers with, and its usual status (a few
codes also come with another: ``too_many_sockets`` is 503 when the whole
relay is full; ``http`` is aiohttp's own refusals, any 4xx)."""


class ApiError(SecurechanError):
    """A refused request: the code (:data:`ERRORS`), a message for people
    (never a key, id or body) and, for a passing condition, seconds to wait.
    The body is ``{"error": {"code": ..., "message": ...}}``; ``api_code``
    is that code (the class's ``code`` is its reason in the error tree)."""

    code = Reason.REQUEST_REFUSED

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.api_code = code
        self.message = message
        self.retry_after = retry_after
        self.status = ERRORS.get(code, 400) if status is None else status

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.api_code, "message": self.message}}


# --- requests and replies -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateQueueRequest:
    """``POST /v1/queues``, signed by ``recipient_key`` (proof of possession)."""

    recipient_key: bytes = jfield("key")
    sender_key: bytes | None = jfield("key", optional=True)
    contact: bool = jfield("bool", optional=True, default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateQueueReply:
    rid: bytes = jfield("id")
    sid: bytes = jfield("id")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteReply:
    deleted: bool = jfield("bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureQueueRequest:
    sender_key: bytes = jfield("key")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuredReply:
    secured: bool = jfield("bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchReply:
    messages: tuple[Message, ...] = jfield("messages")
    more: bool = jfield(
        "bool",
        optional=True,
        default=False,
        doc="The page was cut by limit or by the relay's byte budget (fetch_max_bytes):"
        " fetch again after the last seq (the next page may be empty). Absent from older relays.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReply:
    """A send's answer: 201 stored (and logged), 200 a resend of a held envelope."""

    seq: int = jfield("int")
    duplicate: bool = jfield("bool")
    receipt: Receipt | None = jfield("receipt", optional=True)  # noqa: RUF009


@dataclass(frozen=True, slots=True, kw_only=True)
class AckRequest:
    up_to: int = jfield("int")


@dataclass(frozen=True, slots=True, kw_only=True)
class AckReply:
    deleted: int = jfield("int")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeysRequest:
    signed: bytes = jfield("blob")
    one_time: tuple[bytes, ...] = jfield("blobs", optional=True, default=())
    replace_one_time: bool = jfield("bool", optional=True, default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyCount:
    one_time_left: int = jfield("int")


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleReply:
    signed: bytes = jfield("blob")
    one_time: bytes | None = jfield("blob", optional=True)
    one_time_left: int | None = jfield(
        "int",
        optional=True,
        doc="One-time prekeys left after this claim (always sent by this relay; a client"
        " needs only the blobs).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayInfo:
    api: str = jfield("str")
    relay_key: bytes = jfield("key")
    fingerprint: str = jfield("str")
    max_envelope: int = jfield("int")
    ttl: int = jfield("int")
    log_origin: str | None = jfield(
        "str", optional=True, doc="The transparency log's origin (its C2SP key name)."
    )
    log_verifier_key: str | None = jfield(
        "str",
        optional=True,
        doc="The log key as a C2SP note verifier key,"
        " <origin>+<key ID hex>+base64(0x01 || Ed25519 key).",
    )
    log_mldsa44_verifier_key: str | None = jfield(
        "str",
        optional=True,
        doc="The log's ML-DSA-44 key, which adds a second signature line to every"
        " checkpoint: a C2SP verifier key <origin>+<key ID hex>+base64(0x06 ||"
        " ML-DSA-44 key) (tlog-cosignature type 0x06, timestamp 0).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionReply:
    index: int = jfield("int")
    size: int = jfield("int")
    hashes: tuple[bytes, ...] = jfield("hashes")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyReply:
    old: int = jfield("int")
    new: int = jfield("int")
    hashes: tuple[bytes, ...] = jfield("hashes")


# --- the route table (Route, Query, Auth: api_route.py) ---------------------------------

_SIGNED = (400, 401, 403, 404, 408, 413, 429, 503)
_LOG = (400, 404, 429, 503)

ROUTES: Final[tuple[Route, ...]] = (
    Route(
        name="healthz",
        method="GET",
        path="/healthz",
        summary="Liveness and readiness (a reverse proxy's health check).",
        ok={200: "The relay is up."},
        refusals=(503,),
        gated=False,
    ),
    Route(
        name="readyz",
        method="GET",
        path="/readyz",
        summary="Readiness (storage health); /healthz is liveness.",
        ok={200: "Ready to take envelopes."},
        refusals=(503,),
    ),
    Route(
        name="metrics",
        method="GET",
        path="/metrics",
        summary="Prometheus metrics (text exposition format).",
        reply="metrics",
        ok={200: "Metrics."},
        gated=False,
    ),
    Route(
        name="info",
        method="GET",
        path="/v1/relay",
        summary="The relay's public key, fingerprint and limits.",
        reply=RelayInfo,
        ok={200: "Relay information."},
        gated=False,
    ),
    Route(
        name="openapi",
        method="GET",
        path="/v1/openapi.yaml",
        summary="This document.",
        reply="yaml",
        ok={200: "The OpenAPI document."},
        gated=False,
    ),
    Route(
        name="create_queue",
        method="POST",
        path="/v1/queues",
        summary="Create a queue, signed by its recipient key (proof of possession).",
        auth="owner",
        body=CreateQueueRequest,
        limit=4096,
        reply=CreateQueueReply,
        ok={201: "Created."},
        refusals=(400, 401, 403, 408, 413, 429, 503),
    ),
    Route(
        name="delete_queue",
        method="DELETE",
        path="/v1/queues/{rid}",
        summary="Delete a queue with its envelopes and prekeys.",
        auth="recipient",
        reply=DeleteReply,
        ok={200: "Deleted."},
        refusals=_SIGNED,
    ),
    Route(
        name="secure_queue",
        method="PUT",
        path="/v1/queues/{rid}/sender-key",
        summary="Secure a private queue with the key its sender must sign with.",
        auth="recipient",
        body=SecureQueueRequest,
        limit=4096,
        reply=SecuredReply,
        ok={200: "Secured."},
        refusals=(*_SIGNED, 409),
    ),
    Route(
        name="fetch",
        method="GET",
        path="/v1/queues/{rid}/messages",
        summary="Envelopes after a position, oldest first.",
        auth="recipient",
        query=(Query(name="after"), Query(name="limit", minimum=1, maximum=500)),
        reply=FetchReply,
        ok={200: "Envelopes."},
        refusals=_SIGNED,
    ),
    Route(
        name="ack",
        method="POST",
        path="/v1/queues/{rid}/ack",
        summary="Delete envelopes up to a position (they were received and stored).",
        auth="recipient",
        body=AckRequest,
        limit=1024,
        reply=AckReply,
        ok={200: "Acknowledged."},
        refusals=_SIGNED,
    ),
    Route(
        name="websocket",
        method="GET",
        path="/v1/queues/{rid}/ws",
        summary="WebSocket that pushes new envelopes as JSON text frames"
        ' ({"type":"message", ...Envelope}).',
        auth="recipient",
        reply="ws",
        ok={101: "Switching to the WebSocket protocol."},
        refusals=_SIGNED,
    ),
    Route(
        name="put_prekeys",
        method="PUT",
        path="/v1/queues/{rid}/prekeys",
        summary="Publish sealed prekey blobs on a contact address.",
        auth="recipient",
        body=PrekeysRequest,
        limit="prekey_upload_bytes",
        reply=PrekeyCount,
        ok={200: "Stored."},
        refusals=(*_SIGNED, 409),
    ),
    Route(
        name="prekey_status",
        method="GET",
        path="/v1/queues/{rid}/prekeys",
        summary="How many one-time prekeys remain (the owner replenishes when low).",
        auth="recipient",
        reply=PrekeyCount,
        ok={200: "Count."},
        refusals=_SIGNED,
    ),
    Route(
        name="send",
        method="POST",
        path="/v1/send/{sid}",
        summary="Store one envelope (idempotent on X-Message-Id)."
        " Signed when the queue is secured.",
        auth="sender",
        headers=("X-Message-Id",),
        body="octets",
        limit="max_envelope",
        reply=SendReply,
        ok={
            201: "Stored durably and appended to the transparency log (both committed"
            " before this answer); the receipt proves the log holds it.",
            200: "A resend of an envelope already stored; nothing new was stored. The"
            " receipt is the original envelope's, against the newest checkpoint.",
        },
        refusals=(*_SIGNED, 507),
    ),
    Route(
        name="claim_bundle",
        method="POST",
        path="/v1/contact/{sid}/bundle",
        summary="Claim the sealed signed prekey and one sealed one-time prekey of a"
        " contact address.",
        reply=BundleReply,
        ok={200: "The sealed blobs."},
        refusals=(400, 404, 408, 413, 429, 503),
    ),
    Route(
        name="log_checkpoint",
        method="GET",
        path="/v1/log/checkpoint",
        summary="The newest checkpoint of the transparency log (or the one of a past"
        " size), with every witness cosignature held for it.",
        query=(Query(name="size"),),
        reply="text",
        ok={
            200: "A C2SP tlog-checkpoint in a signed note, signed by the log key;"
            " tlog-cosignature lines of witnesses follow the relay's own."
        },
        refusals=_LOG,
        log=True,
    ),
    Route(
        name="log_inclusion",
        method="GET",
        path="/v1/log/proof/inclusion",
        summary="RFC 9162 inclusion proof of a leaf in the tree of a size the log has reached.",
        query=(Query(name="index", required=True), Query(name="size", required=True, minimum=1)),
        reply=InclusionReply,
        ok={200: "The proof, hashes leaf side first."},
        refusals=_LOG,
        log=True,
    ),
    Route(
        name="log_leaf",
        method="GET",
        path="/v1/log/proof/leaf",
        summary="The receipt of one leaf, found by its RFC 6962 leaf hash, against the newest"
        " checkpoint: how a recipient, who holds the envelope but never saw the send reply,"
        " gets its place in the log.",
        query=(Query(name="hash", required=True, pattern="^[0-9a-f]{64}$"),),
        reply=Receipt,
        ok={200: "Leaf index, the newest checkpoint and the inclusion proof to it."},
        refusals=_LOG,
        log=True,
    ),
    Route(
        name="log_consistency",
        method="GET",
        path="/v1/log/proof/consistency",
        summary="RFC 9162 consistency proof between two sizes (empty from 0 and between"
        " equal sizes).",
        query=(Query(name="old", required=True), Query(name="new", required=True)),
        reply=ConsistencyReply,
        ok={200: "The proof."},
        refusals=_LOG,
        log=True,
    ),
    Route(
        name="log_cosignature",
        method="POST",
        path="/v1/log/cosignature",
        summary="A witness hands in its tlog-cosignature of one of this log's checkpoints"
        " (c2sp.org/tlog-witness add-checkpoint, roles swapped; docs/AUDIT.md).",
        body="text",
        limit=65536,
        reply="text",
        ok={200: "Stored durably; the checkpoint with every cosignature now held for its size."},
        refusals=(400, 403, 408, 409, 413, 422, 429, 503),
        log=True,
    ),
    *PAIR_ROUTES,
    *STREAM_ROUTES,
    # C2SP tlog-tiles (docs/RELAY.md, "The log as tiles"), the relay's root as prefix.
    Route(
        name="tiles_checkpoint",
        method="GET",
        path="/checkpoint",
        summary="The newest checkpoint at the tlog-tiles path (Cache-Control: no-cache).",
        reply="text",
        ok={200: "A C2SP tlog-checkpoint in a signed note, with its cosignatures."},
        refusals=_LOG,
        log=True,
    ),
    Route(
        name="tiles_tile",
        method="GET",
        path="/tile/{tile}",
        summary="A tlog-tiles hash tile or entry bundle; {tile} is the rest of the path:"
        " <L>/<N>[.p/<W>] or entries/<N>[.p/<W>], N in groups such as x001/x234/067.",
        reply="octets",
        ok={200: "Width x 32 bytes of hashes, or width entries (docs/RELAY.md)."},
        refusals=_LOG,
        log=True,
    ),
)

_BY_NAME: Final = {r.name: r for r in ROUTES}


def _pattern(path: str) -> re.Pattern[str]:
    # {tile} is the rest of the path, slashes included; other parameters one segment.
    return re.compile(
        "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path).replace("<tile>[^/]+", "<tile>.+") + "$"
    )


_PATTERNS: Final = tuple((r, _pattern(r.path)) for r in ROUTES)


def aiohttp_path(r: Route) -> str:
    """The route's path as aiohttp's router spells it (``{tile}`` matches ``/``)."""
    return r.path.replace("{tile}", "{tile:.+}")


def route(name: str) -> Route:
    """The route of this name (``KeyError`` for none)."""
    return _BY_NAME[name]


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route a request goes to and its path parameters (as sent), or ``None``."""
    for r, pattern in _PATTERNS:
        m = pattern.match(path)
        if m is not None and r.method == method:
            return r, m.groupdict()
    return None
