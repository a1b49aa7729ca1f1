"""Connection exhaustion, as found by issue 15's load run, against a real relay.

Usage::

    python bench/bench_relay_conn.py idle   # 7 addresses x 150 idle TCP connections
    python bench/bench_relay_conn.py ws     # 7 addresses x 37 queues x 4 WebSockets

The relay (``securechan relay serve`` from the ``securechan`` next to this
Python, so set ``PYTHONPATH`` to the tree under test) runs with
``RLIMIT_NOFILE`` 1024 (soft and hard). The attacking sockets are bound to
127.0.0.2..127.0.0.8 (Linux: all of 127.0.0.0/8 is loopback); then a
well-behaved client on 127.0.0.1 creates a queue, sends, fetches and acks.
Printed: what the attacker got, the relay's open descriptors
(``/proc/<pid>/fd``), whether and how fast the well-behaved client was
served, and the tail of the relay's log. Linux only.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securechan.protocol.relay_auth import sign_request
from tests.test_relay_api import Relay, bystander, new_queue, now, session

EXE = Path(sys.executable).with_name("securechan")
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 9)]


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def start(folder: Path) -> Relay:
    out, err = folder / "out", folder / "err"
    args = [str(EXE), "relay", "serve", "--port", "0", "--data", str(folder / "data")]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(args, stdout=o, stderr=e, preexec_fn=_limit)
    for _ in range(400):
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", out.read_text())
        if m:
            return Relay("bench", folder / "data", proc, int(m[1]), "", "", err)
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the relay did not start: " + err.read_text())


async def served(relay: Relay) -> str:
    started = time.monotonic()
    try:
        await asyncio.wait_for(bystander(relay), 10)
    except Exception as e:
        return f"NOT served ({e!r:.100})"
    return f"served in {time.monotonic() - started:.2f} s"


def idle(relay: Relay) -> str:
    sockets, failed = [], 0
    for source in ATTACKERS:
        for _ in range(150):
            s = socket.socket()
            s.settimeout(2)
            s.bind((source, 0))
            try:
                s.connect(("127.0.0.1", relay.port))
                sockets.append(s)
            except OSError:
                failed += 1
                s.close()
    time.sleep(1)
    kept = answered = 0
    for s in sockets:
        s.setblocking(False)
        try:
            data = s.recv(100)
        except BlockingIOError:
            kept += 1
            continue
        except OSError:
            data = b""
        answered += data.startswith(b"HTTP/1.1")
    fds = len(os.listdir(f"/proc/{relay.proc.pid}/fd"))
    result = asyncio.run(served(relay))
    for s in sockets:
        s.close()
    return (
        f"1050 idle connections: {failed} connects failed, {kept} kept open, "
        f"{answered} refused with an answer; relay fds {fds}/1024; well-behaved client {result}"
    )


async def websockets(relay: Relay) -> str:
    sessions = [session(a) for a in ATTACKERS]
    held: list[aiohttp.ClientWebSocketResponse] = []
    outcomes: dict[str, int] = {}

    async def one(s: aiohttp.ClientSession, rid: str, key: object) -> None:
        path = f"/v1/queues/{rid}/ws"
        auth = sign_request(key, "GET", path, b"", now=now())  # type: ignore[arg-type]
        try:
            held.append(await s.ws_connect(URL(relay.url + path), headers={"Authorization": auth}))
            what = "101"
        except aiohttp.WSServerHandshakeError as e:
            what = str(e.status)
        except Exception as e:
            what = type(e).__name__
        outcomes[what] = outcomes.get(what, 0) + 1

    for s in sessions:
        queues = [await new_queue(s, relay) for _ in range(37)]
        await asyncio.gather(*(one(s, q.r, q.rkey) for q in queues for _ in range(4)))
    fds = len(os.listdir(f"/proc/{relay.proc.pid}/fd"))
    result = await served(relay)
    for w in held:
        await w.close()
    for s in sessions:
        await s.close()
    return (
        f"1036 WebSocket upgrades: {outcomes}; relay fds {fds}/1024; well-behaved client {result}"
    )


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "idle"
    with tempfile.TemporaryDirectory() as tmp:
        relay = start(Path(tmp))
        try:
            print(idle(relay) if mode == "idle" else asyncio.run(websockets(relay)))
        finally:
            relay.proc.terminate()
            relay.proc.wait(20)
        print(relay.stderr_path.read_text()[-800:])


if __name__ == "__main__":
    main()
