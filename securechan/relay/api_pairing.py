"""The pairing mailbox's part of the relay's API description (docs/RELAY.md,
"Pairing mailbox"; the logic is :mod:`securechan.relay.pairing`).

Kept beside ``api.py``, which adds :data:`PAIR_ROUTES` to its route table
and re-exports these types. The bodies carry no identity: a nameplate, the
side's token and opaque bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from securechan.relay.api_codec import jfield
from securechan.relay.api_route import Route

__all__ = [
    "PAIR_ROUTES",
    "PairCloseReply",
    "PairCloseRequest",
    "PairGetReply",
    "PairGetRequest",
    "PairJoinRequest",
    "PairOpenReply",
    "PairPutReply",
    "PairPutRequest",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PairOpenReply:
    nameplate: int = jfield("int", doc="The mailbox's number, the code's first part.")
    token: bytes = jfield("id", doc="This side's secret for the mailbox (never in the code).")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairJoinRequest:
    nameplate: int = jfield("int")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairPutRequest:
    nameplate: int = jfield("int")
    token: bytes = jfield("id")
    phase: int = jfield("int", doc="1 PAKE, 2 sealed card, 3 key confirmation.")
    body: bytes = jfield("blob")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairPutReply:
    stored: bool = jfield("bool", doc="Always true (a repeat of the same bytes included).")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairGetRequest:
    nameplate: int = jfield("int")
    token: bytes = jfield("id")
    phase: int = jfield("int")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairGetReply:
    body: bytes | None = jfield(
        "blob", optional=True, doc="The other side's message; absent if it has not come yet."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PairCloseRequest:
    nameplate: int = jfield("int")
    token: bytes = jfield("id")
    ok: bool = jfield("bool", doc="false: this side's run failed; the mailbox is deleted now.")


@dataclass(frozen=True, slots=True, kw_only=True)
class PairCloseReply:
    deleted: bool = jfield("bool", doc="The mailbox is gone (both sides closed, or one failed).")


_PAIR = (400, 404, 408, 409, 413, 429, 503)

PAIR_ROUTES: Final[tuple[Route, ...]] = (
    Route(
        name="pair_open",
        method="POST",
        path="/v1/pair/open",
        summary="Open a pairing mailbox (side A): a nameplate and a token. Lives 5 minutes;"
        " opens and joins are rate-limited per address.",
        reply=PairOpenReply,
        ok={201: "Opened."},
        refusals=(400, 408, 413, 429, 503),
    ),
    Route(
        name="pair_join",
        method="POST",
        path="/v1/pair/join",
        summary="Take side B of a pairing mailbox (once: a second join is refused, 409).",
        body=PairJoinRequest,
        limit=1024,
        reply=PairOpenReply,
        ok={200: "Joined."},
        refusals=_PAIR,
    ),
    Route(
        name="pair_put",
        method="POST",
        path="/v1/pair/put",
        summary="Post this side's message of one phase (each phase once; the same bytes"
        " again is a no-op).",
        body=PairPutRequest,
        limit=65536,
        reply=PairPutReply,
        ok={200: "Stored."},
        refusals=_PAIR,
    ),
    Route(
        name="pair_get",
        method="POST",
        path="/v1/pair/get",
        summary="The other side's message of one phase; waits up to 5 seconds for it.",
        body=PairGetRequest,
        limit=1024,
        reply=PairGetReply,
        ok={200: "The message, or no body field yet (ask again)."},
        refusals=_PAIR,
    ),
    Route(
        name="pair_close",
        method="POST",
        path="/v1/pair/close",
        summary="This side is done: the mailbox is deleted once both are, or at once when"
        " a side failed (ok false).",
        body=PairCloseRequest,
        limit=1024,
        reply=PairCloseReply,
        ok={200: "Closed."},
        refusals=_PAIR,
    ),
)
