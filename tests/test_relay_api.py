"""The relay's HTTP API under attack, against a real ``securechan relay serve``.

Issue 4, item 3 and its "Must show" (a test per row: oversized body, malformed
JSON, bad or replayed request signature, unknown queue, queue full, rate
limit, a slow client that never finishes its body), and SECURITY-TESTS.md
("Clients attacking the relay", "The network as adversary"). Each relay runs
as a subprocess on 127.0.0.1 (port 0) with its own data folder; limits that
need small values come from a TOML ``--config`` with a ``[limits]`` table.

Every negative test checks the status, the JSON error body
``{"error": {"code", "message"}}`` (``Retry-After`` on 429), that the attacked
state is unchanged, and that a well-behaved client on another queue keeps
working (create, send, fetch, ack). Each relay is stopped with SIGTERM and must
exit 0; its stderr is then grepped for every id, key and envelope the tests
used, and its request counters (``/metrics``) are checked against
``docs/openapi.yaml``.

No pytest-asyncio: each test runs its coroutine with ``asyncio.run``. Every
loop is bounded in count, every wait in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from yarl import URL

from securechan.errors import RelayRefused, RelayUnavailable
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64d, b64e, sign_request
from securechan.transport import RelayClient, RetryPolicy

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("securechan")
HOST = "127.0.0.1"
OTHER_CLIENT = "127.0.0.2"  # also loopback: a second client address for per-client limits
STRICT = RetryPolicy(attempts=1, timeout=10.0)  # the well-behaved client: no retries hide a 429
OWN_FILES = {
    *("relay.key", "relay.db", "relay.db-wal", "relay.db-shm"),
    *("tlog.db", "tlog.db-wal", "tlog.db-shm"),  # the transparency log (test_relay_tlog.py)
}
MAX_ENVELOPE = 8192
MAX_DEPTH = 5
SHARED_LIMITS: dict[str, float | int] = {
    "max_envelope": MAX_ENVELOPE,
    "max_depth": MAX_DEPTH,
    "create_rate": 100.0,
    "create_burst": 1000,
}
QUEUE_BURST = 5
CLAIM_BURST = 5
BODY_TIMEOUT = 1.0
LIMITED_LIMITS: dict[str, float | int] = {
    "queue_rate": 0.1,
    "queue_burst": QUEUE_BURST,
    "claim_rate": 0.1,
    "claim_burst": CLAIM_BURST,
    "body_timeout": BODY_TIMEOUT,
    "create_rate": 100.0,
    "create_burst": 1000,
}
CLIENT_BURST = 8
IDLE_BOUND = 10.0  # an idle or header-dribbling connection must be closed within this
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

API_OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/relay"),
    ("GET", "/v1/openapi.yaml"),
    ("POST", "/v1/queues"),
    ("DELETE", "/v1/queues/{rid}"),
    ("PUT", "/v1/queues/{rid}/sender-key"),
    ("GET", "/v1/queues/{rid}/messages"),
    ("POST", "/v1/queues/{rid}/ack"),
    ("GET", "/v1/queues/{rid}/ws"),
    ("PUT", "/v1/queues/{rid}/prekeys"),
    ("GET", "/v1/queues/{rid}/prekeys"),
    ("POST", "/v1/send/{sid}"),
    ("POST", "/v1/contact/{sid}/bundle"),
    ("GET", "/v1/log/checkpoint"),
    ("GET", "/v1/log/proof/inclusion"),
    ("GET", "/v1/log/proof/consistency"),
    ("POST", "/v1/log/cosignature"),
]
TEMPLATES = {route for _, route in API_OPERATIONS}

# (METHOD, route template, status) counted by every relay before it stopped.
OBSERVED: set[tuple[str, str, int]] = set()
_RUNS = itertools.count()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def now() -> int:
    return int(time.time())


# --- the relay process ---------------------------------------------------------


_SAMPLE = re.compile(r"^securechan_relay_requests_total\{(.*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(metrics: str) -> dict[tuple[str, str, int], float]:
    """``securechan_relay_requests_total`` by (method, route, status)."""
    out: dict[tuple[str, str, int], float] = {}
    for m in _SAMPLE.finditer(metrics):
        labels = dict(_LABEL.findall(m[1]))
        out[(labels["method"], labels["route"], int(labels["status"]))] = float(m[2])
    return out


def metric_value(metrics: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    assert m is not None, f"{name} missing from /metrics"
    return float(m[1])


@dataclass
class Relay:
    """One ``securechan relay serve`` subprocess."""

    name: str
    data: Path
    proc: subprocess.Popen[bytes]
    port: int
    key: str
    fingerprint: str
    stderr_path: Path
    secrets: set[str] = field(default_factory=set)
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def remember(self, *values: str) -> None:
        """Values that must never appear in the relay's log or metrics."""
        self.secrets.update(v for v in values if v)

    def log(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def metrics(self) -> str:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200
            return resp.read().decode()
        finally:
            conn.close()

    def snapshot_metrics(self) -> list[str]:
        """Record the request counters (for the OpenAPI check); return problems."""
        try:
            text = self.metrics()
        except (OSError, AssertionError) as e:
            return [f"/metrics unreadable before stopping: {e!r}"]
        OBSERVED.update(request_counts(text))
        return [f"/metrics contains {s[:24]}..." for s in sorted(self.secrets) if s in text]

    def finish(self, *, check: bool = True, problems: list[str] | None = None) -> str:
        """Wait for the exit that SIGTERM started; check exit code, log and files."""
        problems = list(problems or [])
        self.stopped = True
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            problems.append("the relay did not exit within 10 s of SIGTERM")
        else:
            if rc != 0:
                problems.append(f"the relay exited {rc} after SIGTERM (expected 0)")
        log = self.log()
        problems += [f"the log contains {s[:24]}..." for s in sorted(self.secrets) if s in log]
        if "Traceback" in log or "Error handling request" in log:
            problems.append("the log shows an unhandled exception:\n" + log[-3000:])
        extra = sorted(set(os.listdir(self.data)) - OWN_FILES)
        if extra:
            problems.append(f"unexpected files in the data folder: {extra}")
        if check:
            assert not problems, f"relay {self.name}: " + "\n".join(problems)
        return log

    def stop(self, *, check: bool = True) -> str:
        """SIGTERM (graceful shutdown) and :meth:`finish`; idempotent."""
        if self.stopped:
            return self.log()
        problems = self.snapshot_metrics()
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(check=check, problems=problems)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopped = True


def start_relay(
    root: Path, name: str, limits: dict[str, float | int] | None = None, *, data: Path | None = None
) -> Relay:
    """Start a relay and wait for its "listening on" line (its key comes first)."""
    root.mkdir(parents=True, exist_ok=True)
    data = data or root / name
    n = next(_RUNS)
    args = [str(EXE), "relay", "serve", "--port", "0", "--data", str(data)]
    if limits:
        cfg = root / f"{name}-{n}.toml"
        cfg.write_text("[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in limits.items()))
        args += ["--config", str(cfg)]
    out_path = root / f"{name}-{n}.stdout"
    err_path = root / f"{name}-{n}.stderr"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
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
    key = re.search(r"^relay key: ([A-Za-z0-9_-]{43})$", text, re.M)
    fp = re.search(r"^relay fingerprint: ([0-9a-f]{64})$", text, re.M)
    assert key and fp, text
    assert key.start() < listening.start() and fp.start() < listening.start(), text
    relay = Relay(
        name=name,
        data=data,
        proc=proc,
        port=int(listening[1]),
        key=key[1],
        fingerprint=fp[1],
        stderr_path=err_path,
    )
    seed_hex = (data / "relay.key").read_text().strip()
    relay.remember(seed_hex, b64e(bytes.fromhex(seed_hex)))
    return relay


@contextlib.contextmanager
def running(root: Path, name: str, limits: dict[str, float | int] | None = None) -> Iterator[Relay]:
    relay = start_relay(root, name, limits)
    try:
        yield relay
    finally:
        relay.kill()


@pytest.fixture(scope="module")
def relay_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relays")


@pytest.fixture(scope="module")
def shared(relay_root: Path) -> Iterator[Relay]:
    """max_envelope 8 KiB, max_depth 5, otherwise default limits."""
    with running(relay_root, "shared", SHARED_LIMITS) as relay:
        yield relay


@pytest.fixture(scope="module")
def limited(relay_root: Path) -> Iterator[Relay]:
    """Small per-queue and claim rate limits, a 1 s body timeout."""
    with running(relay_root, "limited", LIMITED_LIMITS) as relay:
        yield relay


# --- HTTP helpers -------------------------------------------------------------


@dataclass(frozen=True)
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def session(local: str | None = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15))


async def call(
    s: aiohttp.ClientSession,
    relay: Relay,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    key: Ed25519SigningKey | None = None,
    sign_method: str | None = None,
    sign_target: str | None = None,
    sign_body: bytes | None = None,
    ts: int | None = None,
) -> Resp:
    """One request; signed by ``key`` over the given (or the real) parts."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = sign_request(
            key,
            sign_method or method,
            sign_target or target,
            body if sign_body is None else sign_body,
            now=now() if ts is None else ts,
        )
    async with s.request(
        method, URL(relay.url + target, encoded=True), data=body or None, headers=hdrs
    ) as r:
        raw = await r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.headers.items()}, raw)


def request_head(
    relay: Relay, method: str, target: str, headers: dict[str, str], *, length: int | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{relay.port}"]
    if "Connection" not in headers:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader, timeout: float) -> Resp | None:
    """The next response, or None if the relay closed the connection first.
    Raises TimeoutError if neither happens within ``timeout``."""
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read(1 << 20)
        return Resp(int(status_line.split()[1]), headers, body)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def raw_exchange(relay: Relay, data: bytes, *, timeout: float = 5.0) -> Resp | None:
    """Write raw bytes on a fresh connection, read one response."""
    reader, writer = await asyncio.open_connection(HOST, relay.port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        await close_writer(writer)


def error_problem(resp: Resp | None, status: int, code: str | None = None) -> str | None:
    """Why ``resp`` is not the specified error answer (None if it is)."""
    if resp is None:
        return f"connection closed without an answer (expected {status})"
    if resp.status != status:
        return f"status {resp.status} (expected {status}): {resp.body[:160]!r}"
    try:
        data = json.loads(resp.body)
    except ValueError:
        return f"{status} body is not JSON: {resp.body[:160]!r}"
    err = data.get("error") if isinstance(data, dict) else None
    if not (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
    ):
        return f"{status} body is not an error object: {data!r}"
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return f"{status} content type {resp.headers.get('content-type')!r}"
    if code is not None and err["code"] != code:
        return f"{status} code {err['code']!r} (expected {code!r})"
    if status == 429:
        retry = resp.headers.get("retry-after", "")
        if not retry.isdigit() or int(retry) < 1:
            return f"429 without a positive Retry-After: {retry!r}"
    return None


def assert_error(resp: Resp | None, status: int, code: str | None = None) -> None:
    problem = error_problem(resp, status, code)
    assert problem is None, problem


# --- queues, envelopes and the well-behaved client -------------------------------


@dataclass(frozen=True)
class Queue:
    rid: bytes
    sid: bytes
    rkey: Ed25519SigningKey
    skey: Ed25519SigningKey | None

    @property
    def r(self) -> str:
        return b64e(self.rid)

    @property
    def s(self) -> str:
        return b64e(self.sid)


async def new_queue(
    s: aiohttp.ClientSession,
    relay: Relay,
    *,
    contact: bool = False,
    rkey: Ed25519SigningKey | None = None,
) -> Queue:
    """A private queue secured with a sender key, or a contact address."""
    rkey = rkey or Ed25519SigningKey.generate()
    skey = None if contact else Ed25519SigningKey.generate()
    async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
        ids = await rc.create_queue(rkey, sender_key=skey.public if skey else None, contact=contact)
    relay.remember(b64e(ids.rid), b64e(ids.sid), b64e(rkey.public))
    if skey is not None:
        relay.remember(b64e(skey.public))
    return Queue(ids.rid, ids.sid, rkey, skey)


def envelope(relay: Relay, size: int = 0) -> bytes:
    """Opaque envelope bytes with a unique marker to grep for."""
    tag = os.urandom(12).hex()
    data = f"ENVELOPE-{tag}-".encode()
    data += b"x" * max(0, size - len(data))
    relay.remember(tag, b64e(data[:24]))
    return data


def new_msg_id(relay: Relay) -> bytes:
    mid = os.urandom(16)
    relay.remember(b64e(mid))
    return mid


async def send(
    s: aiohttp.ClientSession,
    relay: Relay,
    q: Queue,
    data: bytes,
    mid: bytes | None = None,
    *,
    signed: bool = True,
) -> Resp:
    mid = mid or new_msg_id(relay)
    return await call(
        s,
        relay,
        "POST",
        f"/v1/send/{q.s}",
        body=data,
        headers={"X-Message-Id": b64e(mid), "Content-Type": "application/octet-stream"},
        key=q.skey if signed else None,
    )


def sent(r: Resp) -> tuple[int, Any]:
    """A send's status and reply without its log receipt (test_relay_tlog.py checks those)."""
    data = r.json()
    if isinstance(data, dict):
        data.pop("receipt", None)
    return r.status, data


async def fetch(s: aiohttp.ClientSession, relay: Relay, q: Queue) -> list[tuple[int, bytes]]:
    async with RelayClient(relay.url, retry=STRICT, session=s) as rc:
        return [(e.seq, e.data) for e in await rc.fetch(q.rid, q.rkey)]


async def bystander(relay: Relay, *, local: str | None = None) -> None:
    """A well-behaved client on a queue of its own: create, send, fetch, ack."""
    async with session(local) as s, RelayClient(relay.url, retry=STRICT, session=s) as rc:
        q = await new_queue(s, relay)
        data = envelope(relay)
        mid = new_msg_id(relay)
        seq, duplicate = await rc.send(q.sid, data, mid, sender=q.skey)
        got = await rc.fetch(q.rid, q.rkey)
        acked = await rc.ack(q.rid, q.rkey, up_to=seq)
    assert (seq, duplicate) == (1, False)
    assert [(e.seq, e.msg_id, e.data) for e in got] == [(1, mid, data)]
    assert acked == 1


async def healthy(relay: Relay) -> None:
    async with session() as s:
        r = await call(s, relay, "GET", "/healthz")
    assert (r.status, r.json()) == (200, {"status": "ok"})


# --- information routes -----------------------------------------------------------


def test_healthz_relay_info_and_openapi(shared: Relay) -> None:
    async def go() -> tuple[Resp, Resp, Resp]:
        async with session() as s:
            health = await call(s, shared, "GET", "/healthz")
            info = await call(s, shared, "GET", "/v1/relay")
            spec = await call(s, shared, "GET", "/v1/openapi.yaml")
        await bystander(shared)
        return health, info, spec

    health, info, spec = run(go())
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert info.status == 200
    data = info.json()
    assert data["relay_key"] == shared.key  # the key the server printed
    assert data["fingerprint"] == shared.fingerprint
    assert shared.fingerprint == hashlib.sha256(b64d(shared.key, size=32)).hexdigest()
    assert data["max_envelope"] == MAX_ENVELOPE
    assert spec.status == 200
    text = spec.body.decode()
    assert text.startswith("openapi: 3.1")
    assert text == (REPO / "docs" / "openapi.yaml").read_text("utf-8")
    if importlib.util.find_spec("yaml") is not None:
        import yaml

        doc = yaml.safe_load(text)
        assert str(doc["openapi"]).startswith("3.1")
        assert "/v1/send/{sid}" in doc["paths"]


# --- oversized bodies -------------------------------------------------------------


def test_oversized_bodies_answer_413(shared: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            q = await new_queue(s, shared)
            headers = {
                "X-Message-Id": b64e(new_msg_id(shared)),
                "Content-Type": "application/octet-stream",
            }
            target = f"/v1/send/{q.s}"

            # A declared length of 1 GB and no body: refused before reading it.
            started = time.monotonic()
            head = request_head(shared, "POST", target, headers, length=1_000_000_000)
            r = await raw_exchange(shared, head, timeout=5)
            if p := error_problem(r, 413, "too_large"):
                problems.append(f"Content-Length 1e9: {p}")
            if time.monotonic() - started > 3:
                problems.append("Content-Length 1e9: the answer waited for the body")

            # The exact limit is accepted; one byte more is not.
            edge = envelope(shared, MAX_ENVELOPE)
            r = await send(s, shared, q, edge)
            if r.status != 201:
                problems.append(f"an envelope of exactly max_envelope: {r.status} {r.body!r}")
            r = await send(s, shared, q, envelope(shared, MAX_ENVELOPE + 1))
            if p := error_problem(r, 413, "too_large"):
                problems.append(f"max_envelope + 1 with Content-Length: {p}")

            # Chunked, no Content-Length: 3 x 4 KiB, the terminating chunk never sent.
            chunked = dict(headers, **{"Transfer-Encoding": "chunked"})
            chunk = b"%x\r\n" % 4096 + os.urandom(4096) + b"\r\n"
            r = await raw_exchange(
                shared, request_head(shared, "POST", target, chunked, length=None) + chunk * 3
            )
            if p := error_problem(r, 413, "too_large"):
                problems.append(f"chunked upload over the limit: {p}")

            # Other routes have their own, smaller limits.
            rkey = Ed25519SigningKey.generate()
            big = json.dumps({"recipient_key": b64e(rkey.public), "pad": "x" * 5000}).encode()
            r = await call(s, shared, "POST", "/v1/queues", body=big, key=rkey)
            if p := error_problem(r, 413, "too_large"):
                problems.append(f"create_queue 5 KB body: {p}")
            body = json.dumps({"up_to": 0, "pad": "x" * 2000}).encode()
            r = await call(s, shared, "POST", f"/v1/queues/{q.r}/ack", body=body, key=q.rkey)
            if p := error_problem(r, 413, "too_large"):
                problems.append(f"ack 2 KB body: {p}")

            stored = await fetch(s, shared, q)
            if stored != [(1, edge)]:
                problems.append(f"the queue holds {len(stored)} envelopes, expected only the edge")
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- malformed JSON, wrong types, unknown fields, deep nesting -----------------


def _bodies_problems(results: list[tuple[str, Resp]]) -> list[str]:
    return [f"{label}: {p}" for label, r in results if (p := error_problem(r, 400))]


def test_create_queue_refuses_malformed_json(shared: Relay) -> None:
    async def go() -> tuple[list[str], float, float]:
        async with session() as s:
            before = metric_value(shared.metrics(), "securechan_relay_queues_created_total")
            results: list[tuple[str, Resp]] = []
            for label, make in CREATE_BODIES:
                rkey = Ed25519SigningKey.generate()
                body = make(b64e(rkey.public), b64e(Ed25519SigningKey.generate().public))
                r = await call(s, shared, "POST", "/v1/queues", body=body, key=rkey)
                results.append((label, r))
            after = metric_value(shared.metrics(), "securechan_relay_queues_created_total")
        await healthy(shared)
        await bystander(shared)
        return _bodies_problems(results), before, after

    problems, before, after = run(go())
    if after != before:
        problems.append(f"{after - before:g} queues were created from refused bodies")
    assert not problems, "\n".join(problems)


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


CREATE_BODIES: list[tuple[str, Any]] = [
    ("empty body", lambda k, o: b""),
    ("truncated JSON", lambda k, o: b'{"recipient_key": "' + k.encode()),
    ("not UTF-8", lambda k, o: b"\xff\xfe{}"),
    ("a JSON array", lambda k, o: _j([k])),
    ("a JSON string", lambda k, o: _j(k)),
    ("JSON null", lambda k, o: b"null"),
    ("missing recipient_key", lambda k, o: _j({"contact": True})),
    ("recipient_key a number", lambda k, o: _j({"recipient_key": 5})),
    ("recipient_key null", lambda k, o: _j({"recipient_key": None})),
    ("recipient_key a list", lambda k, o: _j({"recipient_key": [k]})),
    ("recipient_key short", lambda k, o: _j({"recipient_key": k[:40]})),
    ("recipient_key padded", lambda k, o: _j({"recipient_key": k + "="})),
    ("sender_key a number", lambda k, o: _j({"recipient_key": k, "sender_key": 5})),
    ("sender_key false", lambda k, o: _j({"recipient_key": k, "sender_key": False})),
    ("sender_key 0", lambda k, o: _j({"recipient_key": k, "sender_key": 0})),
    ("sender_key a list", lambda k, o: _j({"recipient_key": k, "sender_key": [o]})),
    ("contact a string", lambda k, o: _j({"recipient_key": k, "contact": "yes"})),
    ("contact 1", lambda k, o: _j({"recipient_key": k, "contact": 1})),
    ("contact NaN", lambda k, o: b'{"recipient_key": "' + k.encode() + b'", "contact": NaN}'),
    (
        "contact with a sender_key",
        lambda k, o: _j({"recipient_key": k, "sender_key": o, "contact": True}),
    ),
    ("unknown field", lambda k, o: _j({"recipient_key": k, "admin": True})),
    ("unknown field __proto__", lambda k, o: _j({"recipient_key": k, "__proto__": {}})),
    ("2000 levels of [", lambda k, o: b"[" * 2000 + b"]" * 2000),
    ("600 levels of {", lambda k, o: b'{"a":' * 600 + b"1" + b"}" * 600),
]


def test_ack_refuses_malformed_json(shared: Relay) -> None:
    bodies: list[tuple[str, bytes]] = [
        ("empty body", b""),
        ("truncated JSON", b'{"up_to": '),
        ("a JSON array", b"[1]"),
        ("missing up_to", b"{}"),
        ("up_to a string", b'{"up_to": "1"}'),
        ("up_to true", b'{"up_to": true}'),
        ("up_to negative", b'{"up_to": -1}'),
        ("up_to a float", b'{"up_to": 1.0}'),
        ("up_to null", b'{"up_to": null}'),
        ("up_to 1e30 (beyond int64)", b'{"up_to": 1000000000000000000000000000000}'),
        ("unknown field", b'{"up_to": 0, "extra": 1}'),
        ("500 levels of [", b"[" * 500 + b"]" * 500),
    ]

    async def go() -> list[str]:
        async with session() as s:
            q = await new_queue(s, shared)
            data = envelope(shared)
            assert (await send(s, shared, q, data)).status == 201
            results = []
            for label, body in bodies:
                target = f"/v1/queues/{q.r}/ack"
                results.append(
                    (label, await call(s, shared, "POST", target, body=body, key=q.rkey))
                )
            problems = _bodies_problems(results)
            if (held := await fetch(s, shared, q)) != [(1, data)]:
                problems.append(f"the queue changed: {len(held)} envelopes held")
        await healthy(shared)
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


def test_prekeys_refuse_malformed_json(shared: Relay) -> None:
    ok = b64e(b"SEALED-SIGNED-PREKEY")
    bodies: list[tuple[str, bytes]] = [
        ("truncated JSON", b'{"signed": "'),
        ("a JSON array", b"[]"),
        ("missing signed", _j({"one_time": []})),
        ("signed a number", _j({"signed": 5})),
        ("signed empty", _j({"signed": ""})),
        ("signed not base64url", _j({"signed": "!!!!"})),
        ("signed larger than max_prekey_blob", _j({"signed": b64e(b"x" * 17000)})),
        ("one_time a string", _j({"signed": ok, "one_time": "AAAA"})),
        ("one_time null", _j({"signed": ok, "one_time": None})),
        ("one_time of numbers", _j({"signed": ok, "one_time": [5]})),
        ("one_time with an empty blob", _j({"signed": ok, "one_time": [""]})),
        ("201 one-time blobs", _j({"signed": ok, "one_time": [ok] * 201})),
        ("replace_one_time a string", _j({"signed": ok, "replace_one_time": "yes"})),
        ("unknown field", _j({"signed": ok, "extra": 1})),
        ("100000 levels of [", b"[" * 100_000 + b"]" * 100_000),
    ]

    async def go() -> list[str]:
        async with session() as s:
            c = await new_queue(s, shared, contact=True)
            results = []
            for label, body in bodies:
                target = f"/v1/queues/{c.r}/prekeys"
                results.append((label, await call(s, shared, "PUT", target, body=body, key=c.rkey)))
            problems = _bodies_problems(results)
            # Nothing was published by a refused body.
            r = await call(s, shared, "POST", f"/v1/contact/{c.s}/bundle")
            if p := error_problem(r, 404, "no_prekeys"):
                problems.append(f"after the refused bodies, claim: {p}")
            # Prekeys belong on a contact address: 409 on a private queue.
            q = await new_queue(s, shared)
            good = _j({"signed": ok, "one_time": [ok]})
            r = await call(s, shared, "PUT", f"/v1/queues/{q.r}/prekeys", body=good, key=q.rkey)
            if p := error_problem(r, 409, "conflict"):
                problems.append(f"prekeys on a private queue: {p}")
        await healthy(shared)
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


def test_fetch_refuses_bad_query(shared: Relay) -> None:
    queries = [
        "after=-1",
        "after=x",
        "limit=0",
        "limit=abc",
        "after=1.5",
        "after=100000000000000000000 (beyond int64)",
    ]

    async def go() -> list[str]:
        problems = []
        async with session() as s:
            q = await new_queue(s, shared)
            for query in queries:
                qs = query.split(" ")[0]
                target = f"/v1/queues/{q.r}/messages?{qs}"
                r = await call(s, shared, "GET", target, key=q.rkey)
                if p := error_problem(r, 400, "bad_query"):
                    problems.append(f"{query}: {p}")
        await healthy(shared)
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- request signatures -----------------------------------------------------------


def _flip_sig(header: str) -> str:
    """The same header with one bit of the signature flipped (still canonical)."""
    m = re.search(r"sig=([A-Za-z0-9_-]{86})", header)
    assert m is not None
    sig = bytearray(b64d(m[1], size=64))
    sig[10] ^= 0x01
    return header[: m.start(1)] + b64e(bytes(sig)) + header[m.end(1) :]


def test_request_signatures_refuse_forgery_staleness_replay_and_retargeting(
    shared: Relay,
) -> None:
    async def go() -> list[str]:
        problems: list[str] = []

        def expect(label: str, r: Resp, status: int, code: str | None = None) -> None:
            if p := error_problem(r, status, code):
                problems.append(f"{label}: {p}")

        async with session() as s:
            rkey = Ed25519SigningKey.generate()
            a = await new_queue(s, shared, rkey=rkey)
            b = await new_queue(s, shared, rkey=rkey)  # same recipient key, other queue
            data = envelope(shared)
            assert (await send(s, shared, a, data)).status == 201
            msgs = f"/v1/queues/{a.r}/messages"
            other = Ed25519SigningKey.generate()

            expect("no Authorization", await call(s, shared, "GET", msgs), 401, "unauthenticated")
            r = await call(s, shared, "GET", msgs, headers={"Authorization": "Bearer abc"})
            expect("malformed Authorization", r, 401, "unauthenticated")
            header = sign_request(rkey, "GET", msgs, b"", now=now())
            r = await call(s, shared, "GET", msgs, headers={"Authorization": _flip_sig(header)})
            expect("one bit of the signature flipped", r, 403, "forbidden")
            r = await call(s, shared, "GET", msgs, key=other)
            expect("signed by another key", r, 403, "forbidden")
            r = await call(s, shared, "GET", msgs, key=rkey, ts=now() - 600)
            expect("timestamp 10 min old", r, 403, "forbidden")
            r = await call(s, shared, "GET", msgs, key=rkey, ts=now() + 600)
            expect("timestamp 10 min ahead", r, 403, "forbidden")

            # The same signed request twice: the second is a replay.
            header = sign_request(rkey, "GET", msgs, b"", now=now())
            first = await call(s, shared, "GET", msgs, headers={"Authorization": header})
            if first.status != 200 or len(first.json()["messages"]) != 1:
                problems.append(f"a correctly signed fetch: {first.status} {first.body[:100]!r}")
            second = await call(s, shared, "GET", msgs, headers={"Authorization": header})
            expect("the same Authorization sent twice", second, 403, "replayed")

            # Re-targeted: signed for queue b (same key), sent to queue a.
            r = await call(
                s, shared, "GET", msgs, key=rkey, sign_target=f"/v1/queues/{b.r}/messages"
            )
            expect("signed for another queue", r, 403, "forbidden")
            r = await call(
                s, shared, "GET", msgs + "?after=1", key=rkey, sign_target=msgs + "?after=0"
            )
            expect("query changed after signing", r, 403, "forbidden")
            r = await call(s, shared, "DELETE", f"/v1/queues/{a.r}", key=rkey, sign_method="GET")
            expect("signed as GET, sent as DELETE", r, 403, "forbidden")

            # Body changed after signing: an ack that would delete, a send.
            r = await call(
                s,
                shared,
                "POST",
                f"/v1/queues/{a.r}/ack",
                body=b'{"up_to": 5}',
                key=rkey,
                sign_body=b'{"up_to": 0}',
            )
            expect("ack body changed after signing", r, 403, "forbidden")
            send_hdrs = {"X-Message-Id": b64e(new_msg_id(shared))}
            r = await call(
                s,
                shared,
                "POST",
                f"/v1/send/{a.s}",
                body=envelope(shared),
                headers=send_hdrs,
                key=a.skey,
                sign_body=envelope(shared),
            )
            expect("send body changed after signing", r, 403, "forbidden")
            r = await send(s, shared, a, envelope(shared), signed=False)
            expect("unsigned send to a secured queue", r, 401, "unauthenticated")
            r = await call(
                s,
                shared,
                "POST",
                f"/v1/send/{a.s}",
                body=envelope(shared),
                headers=send_hdrs,
                key=rkey,
            )
            expect("send signed by the recipient key, not the sender key", r, 403, "forbidden")

            # Nothing changed: the one envelope is still there, the queue exists.
            if (held := await fetch(s, shared, a)) != [(1, data)]:
                problems.append(f"queue a changed: {held!r}")
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- unknown and malformed ids ----------------------------------------------------

ID_ROUTES = [
    ("GET", "/v1/queues/{}/messages"),
    ("POST", "/v1/queues/{}/ack"),
    ("PUT", "/v1/queues/{}/prekeys"),
    ("GET", "/v1/queues/{}/prekeys"),
    ("DELETE", "/v1/queues/{}"),
    ("PUT", "/v1/queues/{}/sender-key"),
    ("GET", "/v1/queues/{}/ws"),
    ("POST", "/v1/send/{}"),
    ("POST", "/v1/contact/{}/bundle"),
]
BAD_IDS = [
    "..",
    "..%2Fetc",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2E%2E%2F%2E%2E%2Fetc",
    "%252e%252e%252fetc",
    "%2Fetc%2Fpasswd",
    "C:%5Cwindows%5Csystem32",
    "AAAAAAAAAAAAAAAAAAAAA%00",
    "%00",
    "A" * 1000,
    "!!!!!!!!!!!!!!!!!!!!!!",
    "AAAAAAAAAAAAAAAAAAAA+A",
    "AAAAAAAAAAAAAAAAAAAAAB",  # 22 chars, non-zero padding bits: not canonical
    "AAAAAAAAAAAAAAAAAAAAAA%3D%3D",
    "%27%20OR%20%271%27%3D%271",
    "AAAAAAAAAAAAAAAAAAAAAA%3BDROP%20TABLE%20queues",
    "relay.db",
]


def test_unknown_and_malformed_ids(shared: Relay, relay_root: Path) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            key = Ed25519SigningKey.generate()
            private = await new_queue(s, shared)  # a queue, but not a contact address
            unknown = b64e(os.urandom(16))
            for method, template in ID_ROUTES:
                target = template.format(unknown)
                hdrs = {"X-Message-Id": b64e(os.urandom(16))}
                if template.endswith("/ws"):
                    hdrs.update(UPGRADE)
                body = b'{"up_to": 0}' if method in ("POST", "PUT") else b""
                if template.endswith("/bundle"):
                    body = b""  # a claim carries no body (413 otherwise)
                r = await call(s, shared, method, target, body=body, headers=hdrs, key=key)
                if p := error_problem(r, 404):
                    problems.append(f"{method} {target} (unknown id): {p}")
            r = await call(s, shared, "POST", f"/v1/contact/{private.s}/bundle")
            if p := error_problem(r, 404, "no_queue"):
                problems.append(f"claim on a private queue's sid: {p}")

        for bad in BAD_IDS:
            for method, template in ID_ROUTES:
                target = template.format(bad)
                hdrs = {
                    "X-Message-Id": b64e(os.urandom(16)),
                    "Authorization": sign_request(key, method, target, b"{}", now=now()),
                }
                r = await raw_exchange(
                    shared, request_head(shared, method, target, hdrs, length=2) + b"{}"
                )
                if r is None or r.status not in (400, 404):
                    status = r.status if r else "closed"
                    problems.append(f"{method} {target[:60]}: {status} (expected 400 or 404)")
                elif p := error_problem(r, r.status):
                    problems.append(f"{method} {target[:60]}: {p}")
        # A request line longer than aiohttp accepts: any 4xx, never a 5xx; and
        # the real send id at its start must not reach the relay's log.
        for target in ("/v1/send/" + "A" * 20_000, f"/v1/send/{private.s}/" + "A" * 20_000):
            r = await raw_exchange(shared, request_head(shared, "POST", target, {}, length=0))
            if r is not None and not 400 <= r.status < 500:
                problems.append(f"a 20 000-character id: {r.status}")
        await asyncio.sleep(0.2)  # let the relay write its log lines
        if private.s in shared.log():
            problems.append(
                "a request line over 8190 bytes puts the queue id it starts with in the log"
            )

        await healthy(shared)
        await bystander(shared)
        return problems

    problems = run(go())
    # Files only inside their folder: the data folder holds the relay's own
    # files, and nothing appeared next to it.
    extra = sorted(set(os.listdir(shared.data)) - OWN_FILES)
    if extra or any(p.is_dir() for p in shared.data.iterdir()):
        problems.append(f"unexpected entries in the data folder: {extra}")
    for path in relay_root.iterdir():
        if path.is_dir():
            continue
        if not re.fullmatch(r"[a-z]+-\d+\.(toml|stdout|stderr)", path.name):
            problems.append(f"unexpected file next to the data folder: {path.name}")
    assert not problems, "\n".join(problems)


# --- queue full and idempotent resend -----------------------------------------


def test_queue_full_answers_429_and_resend_is_idempotent(shared: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            q = await new_queue(s, shared)
            datas = [envelope(shared) for _ in range(MAX_DEPTH)]
            mids = [new_msg_id(shared) for _ in range(MAX_DEPTH)]
            for i, (data, mid) in enumerate(zip(datas, mids, strict=True)):
                r = await send(s, shared, q, data, mid)
                if sent(r) != (201, {"seq": i + 1, "duplicate": False}):
                    problems.append(f"send {i + 1}: {r.status} {r.body!r}")
                if i == MAX_DEPTH - 2:
                    # A resend before the last free place: a duplicate that must
                    # not take that place (it is not counted twice).
                    r = await send(s, shared, q, datas[2], mids[2])
                    if sent(r) != (200, {"seq": 3, "duplicate": True}):
                        problems.append(f"resend of message 3: {r.status} {r.body!r}")
            r = await send(s, shared, q, envelope(shared))
            if p := error_problem(r, 429, "queue_full"):
                problems.append(f"send {MAX_DEPTH + 1} to a full queue: {p}")
            for _ in range(10):  # a bounded flood on the full queue
                r = await send(s, shared, q, envelope(shared))
                if r.status != 429:
                    problems.append(f"flooding a full queue: {r.status}")
                    break
            # A full queue still answers a resend as a duplicate (a lost reply).
            r = await send(s, shared, q, datas[0], mids[0])
            if sent(r) != (200, {"seq": 1, "duplicate": True}):
                problems.append(f"resend to a full queue: {r.status} {r.body!r}")
            # Other queues on the same relay are unaffected while this one is full.
            await bystander(shared)
            held = await fetch(s, shared, q)
            if held != list(enumerate(datas, start=1)):
                problems.append(f"the full queue holds {[seq for seq, _ in held]}")
            async with RelayClient(shared.url, retry=STRICT, session=s) as rc:
                if (n := await rc.ack(q.rid, q.rkey, up_to=MAX_DEPTH)) != MAX_DEPTH:
                    problems.append(f"ack deleted {n}")
            r = await send(s, shared, q, envelope(shared))
            if sent(r) != (201, {"seq": MAX_DEPTH + 1, "duplicate": False}):
                problems.append(f"send after the ack: {r.status} {r.body!r}")
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- rate limits --------------------------------------------------------------


def test_rate_limit_per_queue_on_a_flooded_contact_address(limited: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            c = await new_queue(s, limited, contact=True)  # anyone may send here
            for i in range(QUEUE_BURST):
                r = await send(s, limited, c, envelope(limited))
                if r.status != 201:
                    problems.append(f"send {i + 1} within the burst: {r.status} {r.body!r}")
            r = await send(s, limited, c, envelope(limited))
            if p := error_problem(r, 429, "rate_limited"):
                problems.append(f"send {QUEUE_BURST + 1}: {p}")
            elif not 1 <= int(r.headers["retry-after"]) <= 11:
                problems.append(f"Retry-After {r.headers['retry-after']} (rate 0.1/s)")

            async def flood() -> list[int]:
                statuses = []
                for _ in range(20):  # bounded
                    statuses.append((await send(s, limited, c, envelope(limited))).status)
                return statuses

            statuses, _ = await asyncio.gather(flood(), bystander(limited))
            if set(statuses) != {429}:
                problems.append(f"the flood got {sorted(set(statuses))}")
            if len(held := await fetch(s, limited, c)) != QUEUE_BURST:
                problems.append(f"the flooded queue holds {len(held)}")
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


def test_rate_limit_per_client(tmp_path: Path) -> None:
    limits = {"client_rate": 0.1, "client_burst": CLIENT_BURST}
    with running(tmp_path, "perclient", limits) as relay:

        async def go() -> list[str]:
            problems: list[str] = []
            async with session() as s:
                queues = [await new_queue(s, relay, contact=True) for _ in range(3)]
                for i in range(CLIENT_BURST):
                    r = await send(s, relay, queues[i % 3], envelope(relay))
                    if r.status != 201:
                        problems.append(f"send {i + 1} within the burst: {r.status}")
                r = await send(s, relay, queues[0], envelope(relay))
                if p := error_problem(r, 429, "rate_limited"):
                    problems.append(f"send {CLIENT_BURST + 1} from one client: {p}")
                r = await call(s, relay, "POST", f"/v1/contact/{queues[1].s}/bundle")
                if p := error_problem(r, 429, "rate_limited"):
                    problems.append(f"claim from the same client: {p}")
            # Another client address is not limited by this one's flood.
            await bystander(relay, local=OTHER_CLIENT)
            return problems

        problems = run(go())
        relay.stop()
    assert not problems, "\n".join(problems)


def test_prekey_claim_exhaustion(limited: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s, RelayClient(limited.url, retry=STRICT, session=s) as rc:
            c = await new_queue(s, limited, contact=True)
            signed = b"SEALED-SIGNED-" + os.urandom(16).hex().encode()
            one_time = [b"SEALED-OTK-" + os.urandom(16).hex().encode() for _ in range(3)]
            limited.remember(*(b64e(x) for x in [signed, *one_time]))
            assert await rc.put_prekeys(c.rid, c.rkey, signed=signed, one_time=one_time) == 3
            claimed: list[Any] = []
            for i in range(CLAIM_BURST):
                r = await call(s, limited, "POST", f"/v1/contact/{c.s}/bundle")
                if r.status != 200:
                    problems.append(f"claim {i + 1}: {r.status} {r.body!r}")
                    continue
                d = r.json()
                if d["signed"] != b64e(signed):
                    problems.append(f"claim {i + 1}: another signed blob")
                claimed.append(d["one_time"])
                if d["one_time_left"] != max(0, 2 - i):
                    problems.append(f"claim {i + 1}: one_time_left {d['one_time_left']}")
            # Each one-time blob once; then the signed blob alone (one_time null).
            if sorted(x for x in claimed if x) != sorted(b64e(x) for x in one_time):
                problems.append("the one-time blobs were not each handed out once")
            if claimed[3:] != [None, None]:
                problems.append(f"after exhaustion one_time was {claimed[3:]!r}")
            r = await call(s, limited, "POST", f"/v1/contact/{c.s}/bundle")
            if p := error_problem(r, 429, "rate_limited"):
                problems.append(f"claim {CLAIM_BURST + 1}: {p}")
            # The owner sees it must replenish.
            if (left := await rc.prekey_count(c.rid, c.rkey)) != 0:
                problems.append(f"prekey_count {left}")
            # Another contact address is unaffected.
            c2 = await new_queue(s, limited, contact=True)
            await rc.put_prekeys(c2.rid, c2.rkey, signed=signed, one_time=one_time[:1])
            r = await call(s, limited, "POST", f"/v1/contact/{c2.s}/bundle")
            if r.status != 200 or r.json()["one_time"] != b64e(one_time[0]):
                problems.append(f"claim on another address: {r.status} {r.body!r}")
        await bystander(limited)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- slow clients -----------------------------------------------------------------


async def _slow_body(relay: Relay, head: bytes, bound: float) -> tuple[Resp | None, float, str]:
    """Send ``head`` then one body byte every 0.3 s; the relay's answer (or
    None if it closed), the time it took, and a problem if it never did."""
    reader, writer = await asyncio.open_connection(HOST, relay.port)
    writer.write(head)
    await writer.drain()
    started = time.monotonic()

    async def dribble() -> None:
        for _ in range(int(bound / 0.3) + 1):  # far fewer bytes than announced
            await asyncio.sleep(0.3)
            writer.write(b"x")
            await writer.drain()

    task = asyncio.create_task(dribble())
    problem = ""
    resp = None
    try:
        resp = await read_response(reader, bound)
    except TimeoutError:
        problem = f"no answer and no close within {bound} s"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_writer(writer)
    return resp, time.monotonic() - started, problem


def test_slow_body_is_answered_408_and_others_keep_working(limited: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            queues = [await new_queue(s, limited) for _ in range(3)]
        heads = [
            request_head(
                limited,
                "POST",
                f"/v1/send/{q.s}",
                {"X-Message-Id": b64e(new_msg_id(limited))},
                length=1000,
            )
            for q in queues
        ]
        heads.append(request_head(limited, "POST", "/v1/queues", {}, length=1000))

        async def late_bystander() -> None:
            await asyncio.sleep(0.4)  # while the slow bodies are open
            await bystander(limited)

        *results, _ = await asyncio.gather(
            *(_slow_body(limited, h, 6.0) for h in heads), late_bystander()
        )
        for label, (resp, took, problem) in zip(
            ["send 1", "send 2", "send 3", "create_queue"], results, strict=True
        ):
            if problem:
                problems.append(f"slow body on {label}: {problem}")
            elif resp is not None and (p := error_problem(resp, 408, "timeout")):
                problems.append(f"slow body on {label}: {p}")
            elif took < BODY_TIMEOUT * 0.8:
                problems.append(f"slow body on {label}: answered after only {took:.2f} s")
        async with session() as s:
            for q in queues:
                if held := await fetch(s, limited, q):
                    problems.append(f"a slow body was stored: {held!r}")
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


def test_idle_and_header_dribbling_connections_are_closed(limited: Relay) -> None:
    """A connection that sends nothing, and one that sends a header line every
    0.5 s and never finishes, must both be closed within IDLE_BOUND."""

    async def closed_within(reader: asyncio.StreamReader, bound: float) -> float | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(bound):
                while await reader.read(65536):  # an answer (408?) then EOF
                    pass
        except TimeoutError:
            return None
        except ConnectionError:
            pass
        return time.monotonic() - started

    async def idle() -> float | None:
        reader, writer = await asyncio.open_connection(HOST, limited.port)
        try:
            return await closed_within(reader, IDLE_BOUND)
        finally:
            await close_writer(writer)

    async def header_dribble() -> float | None:
        reader, writer = await asyncio.open_connection(HOST, limited.port)
        writer.write(f"POST /v1/queues HTTP/1.1\r\nHost: {HOST}\r\n".encode())

        async def dribble() -> None:
            for i in range(int(IDLE_BOUND / 0.5) + 1):
                await asyncio.sleep(0.5)
                writer.write(f"X-Slow-{i}: a\r\n".encode())
                await writer.drain()

        task = asyncio.create_task(dribble())
        try:
            return await closed_within(reader, IDLE_BOUND)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await close_writer(writer)

    async def go() -> tuple[float | None, float | None]:
        idle_took, dribble_took, _ = await asyncio.gather(
            idle(), header_dribble(), bystander(limited)
        )
        await bystander(limited)
        return idle_took, dribble_took

    idle_took, dribble_took = run(go())
    problems = []
    if idle_took is None:
        problems.append(f"a connection that sends nothing was still open after {IDLE_BOUND} s")
    if dribble_took is None:
        problems.append(f"a connection dribbling header lines was still open after {IDLE_BOUND} s")
    assert not problems, "\n".join(problems)


# --- metrics ----------------------------------------------------------------------


def test_metrics_count_refusals_by_route_template(shared: Relay) -> None:
    async def go() -> tuple[Resp, list[str]]:
        async with session() as s:
            q = await new_queue(s, shared)
            unknown = b64e(os.urandom(16))
            r401 = await call(s, shared, "GET", f"/v1/queues/{q.r}/messages")
            r403 = await call(s, shared, "GET", f"/v1/queues/{q.r}/messages", key=q.skey)
            r404 = await call(s, shared, "GET", f"/v1/queues/{unknown}/messages", key=q.rkey)
            r413 = await send(s, shared, q, envelope(shared, MAX_ENVELOPE + 1))
            r400 = await call(s, shared, "GET", "/v1/queues/not-an-id/messages", key=q.rkey)
            seen = [
                p
                for r, st in ((r401, 401), (r403, 403), (r404, 404), (r413, 413), (r400, 400))
                if (p := error_problem(r, st))
            ]
            metrics = await call(s, shared, "GET", "/metrics")
        await bystander(shared)
        return metrics, seen

    metrics, problems = run(go())
    assert not problems, "\n".join(problems)
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    counts = request_counts(text)
    for key in [
        ("GET", "/v1/queues/{rid}/messages", 401),
        ("GET", "/v1/queues/{rid}/messages", 403),
        ("GET", "/v1/queues/{rid}/messages", 404),
        ("GET", "/v1/queues/{rid}/messages", 400),
        ("POST", "/v1/send/{sid}", 413),
        ("POST", "/v1/queues", 201),
    ]:
        assert counts.get(key, 0) >= 1, f"no securechan_relay_requests_total for {key}"
    routes = {route for _, route, _ in counts}
    assert routes <= TEMPLATES | {"unmatched"}, routes - TEMPLATES
    failures = re.findall(r"^securechan_relay_auth_failures_total\{reason=.*\} (\S+)$", text, re.M)
    assert sum(float(v) for v in failures) >= 1
    leaked = [v for v in shared.secrets if v in text]
    assert not leaked, f"/metrics names ids or keys: {leaked[:3]}"
    assert HOST not in text, "/metrics names a client address"


# --- WebSocket --------------------------------------------------------------------


async def _wait_gauge(relay: Relay, s: aiohttp.ClientSession, value: float) -> None:
    for _ in range(100):  # at most ~2 s
        text = (await call(s, relay, "GET", "/metrics")).body.decode()
        if metric_value(text, "securechan_relay_websockets") == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"securechan_relay_websockets never reached {value}")


def test_websocket_push_and_refused_upgrades(shared: Relay) -> None:
    async def go() -> list[str]:
        problems: list[str] = []
        async with session() as s:
            q = await new_queue(s, shared)
            path = f"/v1/queues/{q.r}/ws"
            auth = sign_request(q.rkey, "GET", path, b"", now=now())
            sockets = [await s.ws_connect(URL(shared.url + path), headers={"Authorization": auth})]
            try:
                await _wait_gauge(shared, s, 1)
                data = envelope(shared)
                mid = new_msg_id(shared)
                r = await send(s, shared, q, data, mid)
                assert r.status == 201, r.body
                msg = await asyncio.wait_for(sockets[0].receive(), 2.0)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                frame = json.loads(msg.data)
                assert frame["type"] == "message"
                assert b64d(frame["data"]) == data
                assert (frame["msg_id"], frame["seq"]) == (b64e(mid), 1)

                def upgrade(headers: dict[str, str], target: str = path) -> bytes:
                    return request_head(
                        shared, "GET", target, dict(UPGRADE, **headers), length=None
                    )

                cases = [
                    ("unsigned upgrade", upgrade({}), 401, "unauthenticated"),
                    ("replayed upgrade", upgrade({"Authorization": auth}), 403, "replayed"),
                    (
                        "upgrade signed by another key",
                        upgrade(
                            {
                                "Authorization": sign_request(
                                    Ed25519SigningKey.generate(), "GET", path, b"", now=now()
                                )
                            }
                        ),
                        403,
                        "forbidden",
                    ),
                ]
                unknown = f"/v1/queues/{b64e(os.urandom(16))}/ws"
                cases.append(
                    ("upgrade for an unknown queue", upgrade({}, unknown), 404, "no_queue")
                )
                for label, raw, status, code in cases:
                    if p := error_problem(await raw_exchange(shared, raw), status, code):
                        problems.append(f"{label}: {p}")

                for _ in range(3):  # max_ws_per_queue is 4
                    fresh = sign_request(q.rkey, "GET", path, b"", now=now())
                    sockets.append(
                        await s.ws_connect(URL(shared.url + path), headers={"Authorization": fresh})
                    )
                await _wait_gauge(shared, s, 4)
                fifth = upgrade(
                    {"Authorization": sign_request(q.rkey, "GET", path, b"", now=now())}
                )
                if p := error_problem(await raw_exchange(shared, fifth), 429, "too_many_sockets"):
                    problems.append(f"a fifth socket on one queue: {p}")
            finally:
                for ws in sockets:
                    await ws.close()
            await _wait_gauge(shared, s, 0)
        await bystander(shared)
        return problems

    problems = run(go())
    assert not problems, "\n".join(problems)


# --- graceful shutdown ------------------------------------------------------------


def test_sigterm_during_sends_loses_nothing_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM while sends are in flight (a burst of 20, and one whose body is
    half sent): each send gets its 2xx or fails and is retried by the client;
    the relay exits 0; after a restart on the same data every envelope is
    held exactly once and every acknowledged one answers a resend as a
    duplicate."""
    burst = 20
    relay = start_relay(tmp_path, "graceful")
    try:

        async def under_sigterm() -> tuple[Queue, list[tuple[bytes, bytes]], list[bool], float]:
            async with session() as s:
                q = await new_queue(s, relay)
            assert q.skey is not None
            items = [(envelope(relay, 2000), new_msg_id(relay)) for _ in range(burst + 1)]
            data, mid = items[0]
            target = f"/v1/send/{q.s}"
            hdrs = {
                "Authorization": sign_request(q.skey, "POST", target, data, now=now()),
                "X-Message-Id": b64e(mid),
                "Content-Type": "application/octet-stream",
            }
            reader, writer = await asyncio.open_connection(HOST, relay.port)
            async with session() as s, RelayClient(relay.url, retry=STRICT, session=s) as rc:

                async def one(i: int) -> bool:
                    await asyncio.sleep(0.03 * i)  # spread over ~0.6 s around the SIGTERM
                    try:
                        await rc.send(q.sid, items[i][0], items[i][1], sender=q.skey)
                    except (RelayUnavailable, RelayRefused):
                        return False
                    return True

                try:
                    writer.write(request_head(relay, "POST", target, hdrs, length=len(data)))
                    writer.write(data[:1000])
                    await writer.drain()
                    tasks = [asyncio.create_task(one(i)) for i in range(1, burst + 1)]
                    await asyncio.sleep(0.3)  # some sends answered, others to come
                    relay.snapshot_metrics()
                    relay.proc.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    await asyncio.sleep(0.3)
                    writer.write(data[1000:])  # the rest of the half-sent body
                    await writer.drain()
                    # 201; or 503 "shutting_down" with Retry-After (aiohttp stops
                    # reading bodies once it closes, so the relay says so at
                    # once instead of hanging); or closed. Not 201: retried below.
                    resp = await read_response(reader, 15.0)
                    answered = await asyncio.gather(*tasks)
                finally:
                    await close_writer(writer)
            raw_ok = resp is not None and resp.status == 201
            retryable = (
                resp is not None
                and resp.status == 503
                and b"shutting_down" in resp.body
                and "retry-after" in {k.lower() for k in resp.headers}
            )
            if resp is not None and not (raw_ok or retryable):
                raise AssertionError(f"the half-sent send got {resp.status} {resp.body!r}")
            return q, items, [raw_ok, *answered], signalled

        q, items, acknowledged, signalled = run(under_sigterm())
        relay.finish()  # exit 0, nothing secret in the log, own files only
        took = time.monotonic() - signalled
        assert took < 15, f"the relay took {took:.1f} s to stop after SIGTERM"
    finally:
        relay.kill()

    again = start_relay(tmp_path, "graceful", data=relay.data)
    try:
        assert again.key == relay.key
        again.remember(*relay.secrets)

        async def retry_all() -> tuple[list[bool], list[tuple[bytes, bytes]]]:
            retry = RetryPolicy(attempts=3, base=0.1, cap=1.0, timeout=10.0)
            async with session() as s, RelayClient(again.url, retry=retry, session=s) as rc:
                duplicates = [
                    (await rc.send(q.sid, data, mid, sender=q.skey))[1] for data, mid in items
                ]
                held = [(e.msg_id, e.data) for e in await rc.fetch(q.rid, q.rkey)]
            return duplicates, held

        duplicates, held = run(retry_all())
        for i, (ack, dup) in enumerate(zip(acknowledged, duplicates, strict=True)):
            if ack:  # a 2xx before the shutdown was committed
                assert dup, f"send {i} got a 2xx before SIGTERM but was not held after restart"
        assert sorted(held) == sorted((mid, data) for data, mid in items)
        assert any(acknowledged), "no send was answered at all"
        again.stop()
    finally:
        again.kill()


# --- the relays' logs, and the OpenAPI document -----------------------------------


def test_zz_shared_relay_logs_no_secret_and_stops_cleanly(shared: Relay) -> None:
    """A conversation with refusals that name its ids, then SIGTERM: exit 0,
    and stderr holds no queue id, key, envelope or prekey blob."""

    async def go() -> None:
        async with session() as s, RelayClient(shared.url, retry=STRICT, session=s) as rc:
            c = await new_queue(s, shared, contact=True)
            q = await new_queue(s, shared)
            blob = b"SEALED-" + os.urandom(16).hex().encode()
            shared.remember(b64e(blob))
            await rc.put_prekeys(c.rid, c.rkey, signed=blob, one_time=[blob + b"-1"])
            assert (await call(s, shared, "POST", f"/v1/contact/{c.s}/bundle")).status == 200
            assert (await send(s, shared, c, envelope(shared), signed=False)).status == 201
            assert (await send(s, shared, q, envelope(shared))).status == 201
            assert (await send(s, shared, q, envelope(shared), signed=False)).status == 401
            r = await call(s, shared, "GET", f"/v1/queues/{q.r}/messages", key=c.rkey)
            assert r.status == 403
            r = await call(s, shared, "GET", f"/v1/queues/{c.s}/messages", key=c.rkey)
            assert r.status == 404
            assert len(await fetch(s, shared, q)) == 1
        await bystander(shared)

    run(go())
    log = shared.stop()  # asserts: exit 0, no secret in log or metrics, own files only
    assert re.search(r"-> 40[134] ", log), f"the refusals were not logged at all: {log[-500:]!r}"


def test_zz_limited_relay_logs_no_secret_and_stops_cleanly(limited: Relay) -> None:
    limited.stop()


def openapi_statuses(text: str) -> dict[tuple[str, str], set[int]]:
    """Response codes per (METHOD, path) of docs/openapi.yaml, read line by line
    (PyYAML is not a dependency; the file's indentation is regular)."""
    out: dict[tuple[str, str], set[int]] = {}
    path = method = None
    in_paths = False
    for line in text.splitlines():
        if re.match(r"^\S", line):
            in_paths = line.startswith("paths:")
            continue
        if not in_paths:
            continue
        if m := re.match(r"^  (/\S*):\s*$", line):
            path, method = m[1], None
        elif m := re.match(r"^    (get|put|post|delete|patch|head|options):\s*$", line):
            method = m[1].upper()
            out[(method, str(path))] = set()
        elif (m := re.match(r'^        "?(\d{3})"?:', line)) and method:
            out[(method, str(path))].add(int(m[1]))
    return out


def test_zz_openapi_lists_every_status_the_relays_answered(shared: Relay, limited: Relay) -> None:
    shared.stop(check=False)  # no-ops when the tests above stopped them
    limited.stop(check=False)
    text = (REPO / "docs" / "openapi.yaml").read_text("utf-8")
    spec = openapi_statuses(text)
    if importlib.util.find_spec("yaml") is not None:
        import yaml

        doc = yaml.safe_load(text)
        parsed = {
            (m.upper(), p): {int(c) for c in op["responses"]}
            for p, ops in doc["paths"].items()
            for m, op in ops.items()
            if isinstance(op, dict) and "responses" in op
        }
        assert parsed == spec
    routes = {(m, route) for m, route in API_OPERATIONS}
    assert routes <= set(spec), f"operations missing from docs/openapi.yaml: {routes - set(spec)}"
    if not OBSERVED:
        pytest.skip("no relay request counters were recorded: run the whole module")
    missing = sorted(
        f"{method} {route} -> {status}"
        for method, route, status in OBSERVED
        if route != "unmatched" and status not in spec.get((method, route), set())
    )
    assert not missing, "answered but not in docs/openapi.yaml:\n" + "\n".join(missing)
