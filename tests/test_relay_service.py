"""The relay's service layer, driven without HTTP (``securechan/relay/service.py``).

Real SQLite files (relay.db and tlog.db) and real signatures; no aiohttp.
The service composes "store, then log" itself: a send's answer carries a
receipt that verifies, a resend's is the original's, a replayed signature
stores nothing, and a send cancelled between the two commits leaves the
log marked dirty, so that the next start repairs instead of trusting a
clean-stop mark.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from securechan.audit.receipt import verify_receipt
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import sign_request
from securechan.relay import api
from securechan.relay.config import RelayConfig
from securechan.relay.metrics import RelayMetrics
from securechan.relay.service import Call, RelayService
from securechan.relay.sqlite_store import SqliteStorage
from securechan.relay.tlog import RelayLog
from securechan.relay.writer_thread import open_in_thread


def _call(key: Ed25519SigningKey | None, method: str, target: str, body: bytes = b"") -> Call:
    auth = None if key is None else sign_request(key, method, target, body, now=int(time.time()))
    return Call(remote="192.0.2.1", method=method, target=target, authorization=auth, body=body)


KEY = Ed25519SigningKey.generate()


async def _open(
    tmp: Path, key: Ed25519SigningKey = KEY
) -> tuple[SqliteStorage, RelayLog, RelayService]:
    storage = await open_in_thread(SqliteStorage, tmp / "relay.db")
    tlog = await open_in_thread(RelayLog, tmp / "tlog.db", key)
    return storage, tlog, RelayService(storage, key, RelayConfig(), RelayMetrics(), tlog)


async def _queue(svc: RelayService) -> tuple[Ed25519SigningKey, Ed25519SigningKey, bytes, bytes]:
    owner, sender = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()
    req = api.CreateQueueRequest(recipient_key=owner.public, sender_key=sender.public)
    body = json.dumps(api.to_json(req)).encode()
    ids = await svc.create_queue(_call(owner, "POST", "/v1/queues", body), req)
    return owner, sender, ids.rid, ids.sid


def test_send_is_stored_then_logged_and_a_resend_gets_the_same_receipt(tmp_path: Path) -> None:
    async def main() -> None:
        storage, tlog, svc = await _open(tmp_path)
        try:
            owner, sender, rid, sid = await _queue(svc)
            queue = await svc.send_queue(sid)
            envelope, msg_id = os.urandom(600), os.urandom(16)
            target = api.route("send").url(sid=sid)
            first = await svc.send(_call(sender, "POST", target, envelope), queue, msg_id)
            assert (first.seq, first.duplicate) == (1, False)
            assert first.receipt is not None
            verify_receipt(first.receipt, envelope, tlog.verifier)
            assert tlog.size == 1
            again = await svc.send(_call(sender, "POST", target, envelope), queue, msg_id)
            assert (again.seq, again.duplicate, again.receipt) == (1, True, first.receipt)
            assert tlog.size == 1
            # The same signed request again: refused, nothing stored.
            replay = _call(sender, "POST", target, b"other")
            await svc.send(replay, queue, os.urandom(16))
            with pytest.raises(api.ApiError) as refused:
                await svc.send(replay, queue, os.urandom(16))
            assert refused.value.api_code == "replayed"
            assert await storage.depth(rid) == 2
            fetch = _call(owner, "GET", api.route("fetch").url(rid=rid))
            await svc.fetch_admit(fetch, queue)
            async with svc.fetch(rid, 0, 10) as page:
                assert [m.data for m in page.messages] == [envelope, b"other"]
                assert page.more is False
        finally:
            await storage.close()
            await tlog.close()

    asyncio.run(main())


def test_a_send_cancelled_before_the_log_leaves_the_log_dirty(tmp_path: Path) -> None:
    async def main() -> None:
        storage, tlog, svc = await _open(tmp_path)
        try:
            _, sender, rid, sid = await _queue(svc)
            queue = await svc.send_queue(sid)
            target = api.route("send").url(sid=sid)
            task = asyncio.ensure_future(
                svc.send(_call(sender, "POST", target, b"cut"), queue, os.urandom(16))
            )
            await asyncio.sleep(0)  # the put is submitted to relay.db's writer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await storage.close()
            # The envelope may be stored without its leaf: no clean-stop mark.
            assert await tlog.mark_clean() is False
        finally:
            await storage.close()
            await tlog.close()
        # The next start repairs: the envelope relay.db holds gets its leaf.
        storage, tlog, _ = await _open(tmp_path)
        try:
            held = await storage.depth(rid)
            assert held == 1  # a job whose caller was cancelled still runs
            assert await tlog.repair(storage) == held
            assert tlog.size == held
        finally:
            await storage.close()
            await tlog.close()

    asyncio.run(main())
