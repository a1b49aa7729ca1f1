"""The client side of the relay's group streams (docs/RELAY.md, "Group
streams"; GROUPS-SPEC §1): post a blob, read a stream in pages.

:class:`StreamMethods` gives :class:`~securechan.transport.RelayClient` its
two stream methods (``post_stream_item``, ``fetch_stream``) through the
same request loop (retries, backoff, errors). The relay is not trusted:
every answer is decoded strictly by :func:`decode_stream_page` and
:func:`decode_stream_post`, which a malicious relay cannot make crash or
hang, only fail with :class:`~securechan.errors.MalformedInput`. A page
must hold the positions ``after + 1``, ``after + 2``... with no gap, no
repeat and no reordering (a relay that withholds an item in the middle of
a stream is caught here), at most ``limit`` items, each blob non-empty and
at most :data:`MAX_STREAM_BLOB` bytes, no blob and no log index twice.
The receipts are parsed, not verified: the caller checks them
(:func:`securechan.audit.receipt.verify_receipt`), as for sends. A page
asked for with ``size`` must carry an inclusion proof for every item whose
leaf index is below it and none for the others; the proofs are parsed, not
verified (the transcript export checks each against its checkpoint:
:mod:`securechan.client.group_record`).

This module does I/O only: it moves opaque bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from securechan import strict_json
from securechan.audit.receipt import Receipt
from securechan.errors import MalformedInput
from securechan.relay import api
from securechan.relay.api_streams import MAX_STREAM_PAGE, StreamItem

if TYPE_CHECKING:
    from securechan.primitives import Ed25519SigningKey

__all__ = [
    "MAX_STREAM_BLOB",
    "MAX_STREAM_PAGE",
    "STREAM_ID_SIZE",
    "StreamItem",
    "StreamMethods",
    "decode_stream_page",
    "decode_stream_post",
]

STREAM_ID_SIZE: Final = 32
MAX_STREAM_BLOB: Final = 16 * 1024
"""The largest blob a client posts or accepts (the relay's default limit)."""
# A full page in JSON: base64 of every blob and of an inclusion proof (at
# most 65 hashes of 44 characters and their quotes) plus room for the rest.
_MAX_PAGE_BYTES: Final = MAX_STREAM_PAGE * (MAX_STREAM_BLOB * 4 // 3 + 65 * 48 + 256) + 1024
_MAX_POST_BYTES: Final = 256 * 1024  # a receipt: a checkpoint note and <= 64 hashes


def _json(raw: bytes, limit: int, what: str) -> Any:
    if len(raw) > limit:
        raise MalformedInput(f"the relay's {what} is too long")
    return strict_json.loads(raw, max_size=limit, what=f"the relay's {what}")


def _check_position(value: int, name: str) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an integer from 0 to 2**63-1")
    return value


def decode_stream_post(raw: bytes) -> tuple[int, Receipt]:
    """The relay's answer to a post: ``(position, receipt)``; the receipt is
    not verified here. :class:`MalformedInput` for anything else."""
    try:
        reply = api.from_json(
            api.StreamPostReply, _json(raw, _MAX_POST_BYTES, "post answer"), exact=False
        )
    except MalformedInput as e:
        raise MalformedInput(f"bad stream post answer from the relay: {e}") from None
    if reply.position < 1:
        raise MalformedInput("bad stream post answer from the relay: position 0")
    return reply.position, reply.receipt


def decode_stream_page(
    raw: bytes, *, after: int, limit: int, size: int | None = None
) -> tuple[list[StreamItem], bool]:
    """The relay's answer to ``GET .../items?after=after&limit=limit``:
    the items and whether there may be more. :class:`MalformedInput` unless
    the items are exactly positions ``after + 1 ... after + n`` with ``n <=
    limit``, each blob 1 to :data:`MAX_STREAM_BLOB` bytes, no blob or log
    index twice, and ``more`` only on a full page (a relay answering an
    empty page with "more" would keep a reader asking forever)."""
    _check_position(after, "after")
    if type(limit) is not int or not 1 <= limit <= MAX_STREAM_PAGE:
        raise ValueError(f"limit must be 1 to {MAX_STREAM_PAGE}")

    def bad(why: str) -> MalformedInput:
        return MalformedInput(f"bad stream page from the relay: {why}")

    try:
        page = api.from_json(
            api.StreamPage, _json(raw, _MAX_PAGE_BYTES, "stream page"), exact=False
        )
    except MalformedInput as e:
        raise bad(str(e)) from None
    items = list(page.items)
    if len(items) > limit:
        raise bad(f"{len(items)} items, more than the {limit} asked for")
    blobs: set[bytes] = set()
    leaves: set[int] = set()
    for n, item in enumerate(items, start=1):
        if item.position != after + n:
            raise bad(f"position {item.position} where {after + n} was due (a gap or reorder)")
        if not 1 <= len(item.blob) <= MAX_STREAM_BLOB:
            raise bad(f"item {item.position} is {len(item.blob)} bytes")
        if item.blob in blobs or item.log_index in leaves:
            raise bad(f"item {item.position} repeats an earlier item")
        proved = size is not None and item.log_index < size
        if proved != (item.inclusion is not None):
            why = "without the inclusion proof asked for" if proved else "with a proof unasked"
            raise bad(f"item {item.position} comes {why}")
        blobs.add(item.blob)
        leaves.add(item.log_index)
    if page.more and len(items) < limit:
        raise bad("more items announced after a short page")
    return items, page.more


def _check_stream_id(stream_id: bytes) -> bytes:
    if not isinstance(stream_id, bytes) or len(stream_id) != STREAM_ID_SIZE:
        raise ValueError(f"a stream id is {STREAM_ID_SIZE} bytes")
    return stream_id


class StreamMethods:
    """The group-stream calls of :class:`~securechan.transport.RelayClient`."""

    if TYPE_CHECKING:

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
        ) -> tuple[int, bytes]: ...

    async def post_stream_item(self, stream_id: bytes, blob: bytes) -> tuple[int, Receipt]:
        """Append ``blob`` (1 to :data:`MAX_STREAM_BLOB` bytes) to the stream:
        its position and log receipt (unverified: check it with
        :func:`securechan.audit.receipt.verify_receipt` against the blob).
        Idempotent: a retry after a lost answer gets the same position.
        Raises ``ValueError`` for a bad id or size,
        :class:`~securechan.errors.RelayRefused` (``409`` a full stream),
        :class:`~securechan.errors.RelayUnavailable`, :class:`MalformedInput`."""
        _check_stream_id(stream_id)
        if not isinstance(blob, bytes) or not 1 <= len(blob) <= MAX_STREAM_BLOB:
            raise ValueError(f"a stream item is 1 to {MAX_STREAM_BLOB} bytes")
        path = api.route("stream_post").url(stream=stream_id)
        _, raw = await self._request_raw(
            "POST", path, body=blob, content_type="application/octet-stream"
        )
        return decode_stream_post(raw)

    async def fetch_stream(
        self, stream_id: bytes, after: int, limit: int = MAX_STREAM_PAGE, *, size: int | None = None
    ) -> tuple[list[StreamItem], bool]:
        """One page of the stream's items after position ``after`` (at most
        ``limit``, 1 to :data:`MAX_STREAM_PAGE`) and whether there may be
        more (fetch again after the last position). An unknown stream has
        no items. With ``size`` (a tree size of the relay's log), each item
        in that tree comes with its inclusion proof (``item.inclusion``,
        unverified). :class:`MalformedInput` for a page that breaks the
        rules above (see :func:`decode_stream_page`)."""
        _check_stream_id(stream_id)
        _check_position(after, "after")
        if type(limit) is not int or not 1 <= limit <= MAX_STREAM_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_STREAM_PAGE}")
        query = f"after={after}&limit={limit}"
        if size is not None:
            query += f"&size={_check_position(size, 'size')}"
        path = api.route("stream_fetch").url(stream=stream_id)
        _, raw = await self._request_raw("GET", f"{path}?{query}")
        return decode_stream_page(raw, after=after, limit=limit, size=size)
