"""The malicious relay's forked transparency log (``MaliciousRelay.fork``).

A shadow :class:`~securechan.relay.tlog.RelayLog` signed with the real
relay's key (read from its data folder), started from a consistent copy of
the real log (or empty: a rolled-back log) with one leaf the real log never
had appended first, so the two histories diverge (RFC 6962 section 5's
split view). While a fork is on, the proxy answers ``/v1/log/*`` from here
and puts this log's receipts into send replies.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any, Literal

from securechan.primitives import Ed25519SigningKey
from securechan.relay import api
from securechan.relay.tlog import RelayLog
from securechan.relay.tlog_tiles import read_tile, tile_at
from securechan.relay.writer_thread import open_in_thread

__all__ = ["ShadowLog"]


class ShadowLog:
    """One forked log: ``log`` (the shadow), ``forked_leaf`` (the injected
    leaf) and ``base_size`` (how much of the real log it started from)."""

    def __init__(self, log: RelayLog, forked_leaf: bytes, base_size: int) -> None:
        self.log = log
        self.forked_leaf = forked_leaf
        self.base_size = base_size

    @classmethod
    async def start(
        cls, relay_data: Path, workdir: Path, base: Literal["copy", "empty"]
    ) -> ShadowLog:
        key = Ed25519SigningKey(bytes.fromhex((relay_data / "relay.key").read_text().strip()))
        path = workdir / f"shadow-tlog-{secrets.token_hex(4)}.db"
        if base == "copy":
            await asyncio.to_thread(_sqlite_copy, relay_data / "tlog.db", path)
        log = await open_in_thread(RelayLog, path, key)
        base_size = log.size
        leaf = b"the adversary's leaf " + secrets.token_bytes(32)
        await log.append(leaf)
        return cls(log, leaf, base_size)

    async def close(self) -> None:
        await self.log.close()

    async def receipt(self, body: bytes) -> dict[str, Any]:
        """Log a send request's body; its receipt's JSON for the send reply."""
        return (await self.log.append(body)).to_json()

    async def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes, str]:
        """The answer to a ``/v1/log/*`` request (``path`` without the query)."""
        log = self.log
        found = api.match("GET", path)
        route = "" if found is None else found[0].name
        try:
            nums = {k: int(v) for k, v in query.items()}
            reply: api.InclusionReply | api.ConsistencyReply
            if route == "tiles_checkpoint":
                return 200, log.checkpoint().encode(), "text/plain; charset=utf-8"
            if route == "tiles_tile" and found is not None:
                tile = await read_tile(log, tile_at(found[1]["tile"]))
                return 200, tile, "application/octet-stream"
            if route == "log_checkpoint":
                note = (
                    log.checkpoint()
                    if "size" not in nums
                    else await log.checkpoint_at(nums["size"])
                )
                return 200, note.encode(), "text/plain; charset=utf-8"
            if route == "log_inclusion":
                hashes = await log.inclusion_proof(nums["index"], nums["size"])
                reply = api.InclusionReply(
                    index=nums["index"], size=nums["size"], hashes=tuple(hashes)
                )
            elif route == "log_consistency":
                hashes = await log.consistency_proof(nums["old"], nums["new"])
                reply = api.ConsistencyReply(old=nums["old"], new=nums["new"], hashes=tuple(hashes))
            else:
                raise KeyError(path)
        except (LookupError, ValueError):
            err = api.ApiError("no_checkpoint", "the log has no such size")
            return 404, json.dumps(err.to_json()).encode(), "application/json"
        return 200, json.dumps(api.to_json(reply)).encode(), "application/json"


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite file (the backup API reads a snapshot)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
