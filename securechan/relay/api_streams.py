"""The group streams' part of the relay's API description (docs/RELAY.md,
"Group streams"; the logic is :mod:`securechan.relay.streams`).

Kept beside ``api.py``, which adds :data:`STREAM_ROUTES` to its route
table. A stream is named by a 32-byte id that only its group's members can
derive (GROUPS-SPEC §1, ``protocol/group_stream.py``): knowing it is the
capability to post and to read, as a send id is for a queue. The bodies
carry no identity: opaque blobs, positions and log receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from securechan.audit.receipt import Receipt
from securechan.relay.api_codec import StreamItem, jfield
from securechan.relay.api_route import Query, Route

__all__ = ["MAX_STREAM_PAGE", "STREAM_ROUTES", "StreamItem", "StreamPage", "StreamPostReply"]

MAX_STREAM_PAGE: Final = 200
"""Most items one ``GET /v1/streams/{stream}/items`` answers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamPostReply:
    """Where a posted blob landed, and its transparency-log receipt (the
    leaf is the blob's, exactly as an envelope's)."""

    position: int = jfield("int", doc="The item's position in the stream (1, 2, 3...).")
    receipt: Receipt = jfield("receipt")  # noqa: RUF009


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamPage:
    items: tuple[StreamItem, ...] = jfield("items")
    more: bool = jfield(
        "bool", doc="The page holds limit items: fetch again after the last position."
    )


_STREAM = "/v1/streams/{stream}"

STREAM_ROUTES: Final[tuple[Route, ...]] = (
    Route(
        name="stream_post",
        method="POST",
        path=_STREAM,
        summary="Append one opaque blob to a group stream, at its next position, and to the"
        " transparency log (idempotent on the blob: posting the same bytes again answers the"
        " held item). Whoever knows the stream id may post; rate-limited per client address.",
        body="octets",
        limit="stream_max_blob",
        reply=StreamPostReply,
        ok={
            200: "Stored durably at this position and in the transparency log (both"
            " committed before this answer); the receipt proves the log holds the blob."
        },
        refusals=(400, 404, 408, 409, 413, 429, 503, 507),
        log=True,
    ),
    Route(
        name="stream_fetch",
        method="GET",
        path=_STREAM + "/items",
        summary="A group stream's items after a position, in position order (an unknown"
        " stream has none: its existence is not revealed). With size (a tree size the log"
        " has reached, as a checkpoint names), each item in that tree comes with its"
        " inclusion proof: a transcript export proves a page of items in one request.",
        query=(
            Query(name="after"),
            Query(name="limit", minimum=1, maximum=MAX_STREAM_PAGE),
            Query(name="size", minimum=1),
        ),
        reply=StreamPage,
        ok={200: "Items."},
        refusals=(400, 404, 429, 503),
        log=True,
    ),
)
