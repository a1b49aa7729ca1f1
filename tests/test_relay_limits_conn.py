"""Issue 15, "Quotas and backpressure": connection and WebSocket caps, the
WebSocket request without upgrade headers, and the SIGTERM drain.

Run as the attacker would: a real ``securechan relay serve`` on 127.0.0.1
with its file-descriptor limit lowered to 256 (so exhaustion is quick), and
attacking sockets bound to the loopback sources 127.0.0.2..127.0.0.8 (seven
client addresses) while the well-behaved client stays on 127.0.0.1. Each test
shows the attacker refused beyond its cap, the well-behaved client's
send+fetch within a latency bound, the relay's open descriptors (read from
``/proc/<pid>/fd``) under the stated bound, and the counts in ``/metrics``.

On main before this change (31ad03f) every test fails: the idle
connections exhaust the descriptors (EMFILE: new connections hang or are
reset), every WebSocket is accepted, the subscriber entry stays, and
``/healthz`` is gone at once after SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from securechan.protocol.relay_auth import sign_request
from securechan.relay.connlimit import client_key
from tests.test_relay_api import (
    EXE,
    HOST,
    Relay,
    bystander,
    call,
    metric_value,
    new_queue,
    now,
    run,
    session,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs /proc and all of 127.0.0.0/8 on loopback"
)

FD_LIMIT = 256
# fd_headroom(256) is 64: connections may use what is left after start-up.
FD_BOUND = FD_LIMIT - 32
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 9)]
PER_CLIENT = 8
WS_PER_CLIENT = 4
LATENCY = 2.0  # seconds for the well-behaved client's create+send+fetch+ack


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def start(root: Path, name: str, top: dict[str, float], limits: dict[str, float | int]) -> Relay:
    """A relay with RLIMIT_NOFILE 256 (soft and hard: it cannot raise it)."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / name
    cfg = root / f"{name}.toml"
    text = "".join(f"{k} = {v!r}\n" for k, v in top.items())
    text += "[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in limits.items())
    cfg.write_text(text)
    out_path, err_path = root / f"{name}.stdout", root / f"{name}.stderr"
    args = [str(EXE), "relay", "serve", "--port", "0", "--data", str(data), "--config", str(cfg)]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=_low_fd_limit,
        )
    deadline = time.monotonic() + 20
    while True:
        text = out_path.read_text("utf-8", "replace")
        listening = re.search(r"^listening on http://127\.0\.0\.1:(\d+)$", text, re.M)
        if listening:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise AssertionError(f"relay did not start: {text!r} {err_path.read_text()!r}")
        time.sleep(0.05)
    key = re.search(r"^relay key: (\S+)$", text, re.M)
    fp = re.search(r"^relay fingerprint: (\S+)$", text, re.M)
    assert key and fp
    return Relay(name, data, proc, int(listening[1]), key[1], fp[1], err_path)


@pytest.fixture
def relay_root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def capped(relay_root: Path) -> Iterator[Relay]:
    limits: dict[str, float | int] = {
        "max_connections_per_client": PER_CLIENT,
        "max_ws_per_client": WS_PER_CLIENT,
        "create_rate": 100.0,
        "create_burst": 1000,
    }
    relay = start(relay_root, "capped", {"idle_timeout": 30.0}, limits)
    try:
        yield relay
    finally:
        relay.kill()


def fds(relay: Relay) -> int:
    return len(os.listdir(f"/proc/{relay.proc.pid}/fd"))


def metrics_sample(relay: Relay, name: str, labels: str = "") -> float:
    text = relay.metrics()
    if not labels:
        return metric_value(text, name)
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    assert m is not None, f"{name}{{{labels}}} missing from /metrics"
    return float(m[1])


def open_idle(relay: Relay, source: str, count: int) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` that never send a byte."""
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        s.bind((source, 0))
        try:
            s.connect((HOST, relay.port))
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def answers(sockets: list[socket.socket], wait: float = 1.0) -> dict[str, int]:
    """What each idle connection got within ``wait`` seconds: a refusal's
    status line, "closed" (EOF or reset with no answer) or "open" (nothing)."""
    time.sleep(wait)
    seen: dict[str, int] = {}
    for s in sockets:
        s.setblocking(False)
        try:
            data = s.recv(4096)
        except BlockingIOError:
            kind = "open"
        except OSError:
            kind = "closed"
        else:
            kind = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"
        seen[kind] = seen.get(kind, 0) + 1
    return seen


async def timed_bystander(relay: Relay) -> float:
    started = time.monotonic()
    await asyncio.wait_for(bystander(relay), timeout=10)
    return time.monotonic() - started


def close_all(sockets: list[socket.socket]) -> None:
    for s in sockets:
        s.close()


def test_idle_connections_per_address_are_capped(capped: Relay) -> None:
    """7 addresses x 30 idle connections (210: past what 256 fds hold after
    start-up on the old relay): each address keeps PER_CLIENT, the rest get
    429 too_many_connections at once; the well-behaved client is served."""
    sockets: list[socket.socket] = []
    try:
        for source in ATTACKERS:
            sockets += open_idle(capped, source, 30)
        seen = answers(sockets)
        admitted = PER_CLIENT * len(ATTACKERS)
        assert seen.get("open", 0) == admitted, seen
        assert seen.get("HTTP/1.1 429 Too Many Requests", 0) == 30 * len(ATTACKERS) - admitted, seen
        assert fds(capped) < FD_BOUND
        took = run(timed_bystander(capped))
        assert took < LATENCY, f"the well-behaved client took {took:.2f} s"
        assert fds(capped) < FD_BOUND
        # the /metrics request itself is one more connection
        assert metrics_sample(capped, "securechan_relay_connections") == admitted + 1
        refused = metrics_sample(
            capped, "securechan_relay_connections_refused_total", 'limit="per_client"'
        )
        assert refused == 30 * len(ATTACKERS) - admitted
        open_fds = metrics_sample(capped, "securechan_relay_open_fds")
        assert 0 < open_fds < FD_BOUND
        assert metrics_sample(capped, "securechan_relay_fd_limit") == FD_LIMIT
    finally:
        close_all(sockets)
    log = capped.stop()
    # sampled: one line per 10 s at most (and one at stop), not one per
    # refusal; the lines add up to every refusal
    counts = [int(n) for n in re.findall(r"refused connections \((\d+) per_client\)", log)]
    assert 1 <= len(counts) <= 3, log
    assert sum(counts) == 30 * len(ATTACKERS) - PER_CLIENT * len(ATTACKERS), log


def test_overall_cap_bounds_fds_and_idle_connections_are_closed(relay_root: Path) -> None:
    """Seven addresses with a generous per-address cap fill the overall cap:
    the rest get 503 at accept, the descriptors stay bounded, and idle
    connections are closed after idle_timeout, after which the well-behaved
    client is served again."""
    relay = start(
        relay_root,
        "overall",
        {"idle_timeout": 1.5},
        {"max_connections_per_client": 100, "create_rate": 100.0, "create_burst": 1000},
    )
    sockets: list[socket.socket] = []
    try:
        for source in ATTACKERS:
            sockets += open_idle(relay, source, 40)
        seen = answers(sockets, wait=0.5)
        assert seen.get("HTTP/1.1 503 Service Unavailable", 0) > 0, seen
        assert fds(relay) < FD_BOUND
        # idle_timeout: the attacker's silent connections are closed
        time.sleep(1.5)
        assert answers(sockets, wait=0).get("open", 0) == 0
        took = run(timed_bystander(relay))
        assert took < LATENCY, f"the well-behaved client took {took:.2f} s"
        assert metrics_sample(relay, "securechan_relay_connections") <= 2
        assert (
            metrics_sample(relay, "securechan_relay_connections_refused_total", 'limit="overall"')
            > 0
        )
    finally:
        close_all(sockets)
        relay.kill()


def test_websockets_per_address_are_capped(capped: Relay) -> None:
    """An address opens 4 WebSockets on each of 3 queues of its own (12): it
    keeps WS_PER_CLIENT, the rest get 429 too_many_sockets before any
    upgrade; the well-behaved client still subscribes, sends and fetches."""

    async def go() -> None:
        statuses: list[int] = []
        held: list[aiohttp.ClientWebSocketResponse] = []
        async with session(ATTACKERS[0]) as s:
            queues = [await new_queue(s, capped) for _ in range(3)]
            for q in queues:
                path = f"/v1/queues/{q.r}/ws"
                for _ in range(4):
                    auth = sign_request(q.rkey, "GET", path, b"", now=now())
                    try:
                        held.append(
                            await s.ws_connect(
                                URL(capped.url + path), headers={"Authorization": auth}
                            )
                        )
                        statuses.append(101)
                    except aiohttp.WSServerHandshakeError as e:
                        statuses.append(e.status)
            assert statuses.count(101) == WS_PER_CLIENT, statuses
            assert statuses.count(429) == 12 - WS_PER_CLIENT, statuses
            good = session()
            try:
                q = await new_queue(good, capped)
                path = f"/v1/queues/{q.r}/ws"
                auth = sign_request(q.rkey, "GET", path, b"", now=now())
                ws = await good.ws_connect(URL(capped.url + path), headers={"Authorization": auth})
                held.append(ws)
                started = time.monotonic()
                await asyncio.wait_for(bystander(capped), timeout=10)
                assert time.monotonic() - started < LATENCY
                assert fds(capped) < FD_BOUND
                text = capped.metrics()
                assert metric_value(text, "securechan_relay_websockets") == WS_PER_CLIENT + 1
                m = re.search(
                    r'^securechan_relay_connections_refused_total\{limit="ws_per_client"\} (\S+)$',
                    text,
                    re.M,
                )
                assert m is not None and float(m[1]) == 12 - WS_PER_CLIENT
                for w in held:
                    await w.close()
            finally:
                await good.close()

    run(go())
    log = capped.stop()
    counts = [int(n) for n in re.findall(r"refused WebSockets \((\d+) per_client\)", log)]
    assert 1 <= len(counts) <= 3 and sum(counts) == 12 - WS_PER_CLIENT, log
    assert "too_many_sockets" not in log, "one log line per refusal"


def test_websocket_request_without_upgrade_leaves_no_subscriber(capped: Relay) -> None:
    """A signed GET on the WebSocket route without upgrade headers is refused
    (400) and leaves no subscriber entry: the queues-with-sockets gauge
    counts only the one real subscriber."""

    async def go() -> None:
        async with session() as s:
            real = await new_queue(s, capped)
            path = f"/v1/queues/{real.r}/ws"
            auth = sign_request(real.rkey, "GET", path, b"", now=now())
            ws = await s.ws_connect(URL(capped.url + path), headers={"Authorization": auth})
            for _ in range(20):
                q = await new_queue(s, capped)
                r = await call(s, capped, "GET", f"/v1/queues/{q.r}/ws", key=q.rkey)
                assert r.status == 400, r
            assert metric_value(capped.metrics(), "securechan_relay_ws_queues") == 1
            assert metric_value(capped.metrics(), "securechan_relay_websockets") == 1
            await ws.close()
            for _ in range(50):
                if metric_value(capped.metrics(), "securechan_relay_ws_queues") == 0:
                    break
                await asyncio.sleep(0.05)
            assert metric_value(capped.metrics(), "securechan_relay_ws_queues") == 0

    run(go())
    capped.stop()


def test_a_client_address_is_ipv4_or_the_ipv6_64() -> None:
    """One IPv6 host owns a /64: counting single IPv6 addresses caps nothing."""
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"


def test_sigterm_drains_before_stopping(relay_root: Path) -> None:
    """After SIGTERM, /healthz answers 503 draining for drain_seconds while
    requests are still served; then the relay stops cleanly (exit 0)."""
    drain = 2.0
    relay = start(relay_root, "drain", {"drain_seconds": drain}, {})
    try:

        async def go() -> None:
            async with session() as s:
                r = await call(s, relay, "GET", "/healthz")
                assert (r.status, r.json()) == (200, {"status": "ok"})
                stopped_at = time.monotonic()
                relay.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                r = await call(s, relay, "GET", "/healthz")
                assert (r.status, r.json()) == (503, {"status": "draining"})
                assert r.headers.get("retry-after") == "5"
                # keep-alive connections are closed after each answer
                assert r.headers.get("connection", "").lower() == "close"
                await asyncio.wait_for(bystander(relay), timeout=drain)  # still served
                while relay.proc.poll() is None and time.monotonic() - stopped_at < drain + 8:
                    await asyncio.sleep(0.05)
                took = time.monotonic() - stopped_at
                assert relay.proc.returncode == 0
                assert took >= drain - 0.2, f"stopped after {took:.2f} s"

        run(go())
        relay.finish()
    finally:
        relay.kill()
