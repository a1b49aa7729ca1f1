"""The transparency log's routes, without HTTP: checkpoints, proofs, leaf
receipts and witness cosignatures (``docs/AUDIT.md``, "Relay transparency
log"). Part of the relay's service layer (:mod:`securechan.relay.service`);
imports no HTTP library.
"""

from __future__ import annotations

from securechan.audit.receipt import Receipt
from securechan.relay import api
from securechan.relay.api import ERRORS, ApiError
from securechan.relay.service import Call, RelayService
from securechan.relay.tlog import CosignatureRefused, RelayLog
from securechan.relay.tlog_tiles import read_tile, tile_at

__all__ = ["LogService"]


class LogService:
    """Queries of the relay's log (``None``: the relay serves none, 404)."""

    def __init__(self, service: RelayService) -> None:
        self.service = service
        self.log = service.log

    def admit(self, call: Call) -> None:
        """404 without a log; the caller's per-address rate."""
        self._log()
        self.service.guard.limit(self.service.guard.client_limit, call.remote, "client")

    def _log(self) -> RelayLog:
        if self.log is None:
            raise ApiError("no_log", "this relay serves no transparency log")
        return self.log

    def _reached(self, size: int) -> RelayLog:
        tlog = self._log()
        if size > tlog.size:
            raise ApiError("no_checkpoint", f"the log has not reached size {size}")
        return tlog

    async def log_checkpoint(self, size: int | None) -> str:
        if size is None:
            return self._log().checkpoint()
        return await self._reached(size).checkpoint_at(size)

    async def log_leaf(self, leaf: bytes) -> Receipt:
        """The receipt of one leaf, found by its hash: for a recipient, who
        holds the envelope but never saw the send reply."""
        receipt = await self._log().receipt_for_leaf(leaf)
        if receipt is None:
            raise ApiError("no_leaf", "the log holds no such leaf")
        return receipt

    async def log_inclusion(self, index: int, size: int) -> api.InclusionReply:
        if index >= size:
            raise ApiError("bad_query", "give index and size, with index < size")
        hashes = await self._reached(size).inclusion_proof(index, size)
        return api.InclusionReply(index=index, size=size, hashes=tuple(hashes))

    async def log_consistency(self, old: int, new: int) -> api.ConsistencyReply:
        if old > new:
            raise ApiError("bad_query", "give old and new, with old <= new")
        hashes = await self._reached(new).consistency_proof(old, new)
        return api.ConsistencyReply(old=old, new=new, hashes=tuple(hashes))

    async def log_cosignature(self, body: bytes) -> str | int:
        """The checkpoint with every cosignature now held for its size, or,
        for a stale one, the log's size (as tlog-witness answers)."""
        try:
            return await self._log().add_cosignatures(body)
        except CosignatureRefused as e:
            if e.reason == "stale":
                return e.log_size or 0
            raise ApiError(e.reason, e.message, status=ERRORS.get(e.reason, 400)) from None

    async def tiles_tile(self, path: str) -> tuple[bytes, bool]:
        """A tlog-tiles tile or entry bundle by its path's tail, and whether
        it is full (immutable); 400 for a path that is not exactly one tile,
        404 for one the log does not serve."""
        tlog = self._log()
        try:
            tile = tile_at(path)
        except ValueError as e:
            raise ApiError("bad_tile", str(e)) from None
        try:
            return await read_tile(tlog, tile), tile.full
        except LookupError as e:
            raise ApiError("no_tile", str(e)) from None
