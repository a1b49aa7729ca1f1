"""A relay-like process for the PostgreSQL log's fault tests: appends
envelopes to the shared log and prints one JSON line per ACKNOWLEDGED append
(the receipt it returned), flushed before the next is started.

    python tests/pg_log_worker.py URL TAG COUNT [CONCURRENCY]

Envelopes are ``TAG || counter || random``; an append that fails (PostgreSQL
down) is retried, as a client resends until it gets a 2xx, and only the
receipt of a successful one is printed. PUBLIC TEST KEY (fixed seed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

from securechan.errors import StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.relay.pg_tlog import PgRelayLog
from securechan.relay.writer_thread import open_in_thread

KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test pg log key").digest())


async def main(url: str, tag: str, count: int, concurrency: int) -> None:
    tlog = await open_in_thread(PgRelayLog, url, KEY)
    print(json.dumps({"ready": True}), flush=True)
    gate = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(n: int) -> None:
        envelope = f"{tag}-{n}-".encode() + os.urandom(48)
        async with gate:
            while True:
                try:
                    receipt = await tlog.append(envelope)
                    break
                except StorageError:
                    nonlocal failed
                    failed += 1
                    await asyncio.sleep(0.05)
        line = {"e": envelope.hex(), "r": receipt.to_json()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    await asyncio.gather(*(one(n) for n in range(count)))
    await tlog.close()
    print(json.dumps({"done": True, "failed": failed}), flush=True)


if __name__ == "__main__":
    url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(main(url, tag, count, int(sys.argv[4]) if len(sys.argv) > 4 else 16))
