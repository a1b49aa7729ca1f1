"""The relay's log served as C2SP tlog-tiles (https://c2sp.org/tlog-tiles).
``securechan relay tiles`` copies them to a folder for a static web server
or CDN (:mod:`securechan.client.tiles`).

``docs/RELAY.md`` ("The log as tiles") is the normative text; the tile
maths and paths are :mod:`securechan.audit.tiles`'s. Tiles are computed
from the stored tree on request (every subtree hash a tile holds is a row
the tree keeps already), never stored twice: one request reads at most 256
hashes or 256 entries in one query, whatever the path.

**What is public.** The checkpoint (public already, ``GET
/v1/log/checkpoint``), the tree's hashes (what proofs reveal) and, as
entries, ``"securechan/v1/envelope" || SHA-256(envelope)`` per leaf: what a
receipt proves. Never an envelope, a queue or a time.

**Caching.** A full tile or entry bundle never changes (the tree is append
only): ``public, max-age=31536000, immutable``. A partial one of a given
width never changes either, but is superseded as the log grows and is not
needed once the full one exists: ``public, max-age=60``. The checkpoint
changes with every batch of appends: ``no-cache``.
"""

from __future__ import annotations

from typing import Final

from securechan.audit.receipt import ENVELOPE_LEAF_CONTEXT
from securechan.audit.tiles import TileId, encode_bundle, parse_path
from securechan.relay.tlog import RelayLog

__all__ = [
    "CHECKPOINT_CACHE",
    "FULL_CACHE",
    "PARTIAL_CACHE",
    "read_tile",
    "tile_at",
]

FULL_CACHE: Final = "public, max-age=31536000, immutable"
PARTIAL_CACHE: Final = "public, max-age=60"
CHECKPOINT_CACHE: Final = "no-cache"


def tile_at(path: str) -> TileId:
    """The tile of a request path's tail (``<L>/<N>[.p/<W>]`` or
    ``entries/<N>[.p/<W>]``); ``ValueError`` if it is not exactly one."""
    return parse_path("tile/" + path)


async def read_tile(log: RelayLog, tile: TileId, size: int | None = None) -> bytes:
    """The bytes of ``tile`` in the tree of ``size`` (default: the newest
    checkpoint's). Raises ``LookupError`` when the tree is too small for it
    (a tile, full or of this width, exists once the tree reaches
    :meth:`TileId.leaves_needed` leaves, and then never changes)."""
    if size is None:
        size = log.size
    if tile.leaves_needed() > size:
        raise LookupError("the log has not reached this tile")
    if tile.level is not None:
        return b"".join(await log.nodes(tile.nodes()))
    start = tile.index * 256
    digests = await log.entry_digests(start, start + tile.width)
    if digests is None:
        raise LookupError("this relay did not keep these entries (logged before schema version 3)")
    return encode_bundle([ENVELOPE_LEAF_CONTEXT + d for d in digests])
