"""Clients attacking the relay, end to end (issue 6; SECURITY-TESTS.md,
"Clients attacking the relay").

A real ``securechan relay serve`` with small limits (a TOML config) serves
two honest delegations driven by the CLI while hostile clients (aiohttp and
raw sockets on 127.0.0.1) flood, exhaust, stall and feed it garbage. Each
test checks the relay's answers (4xx with ``Retry-After`` where it applies,
never a 5xx or a crash), that the honest delegations are unaffected, and
that the relay's memory and disk stay bounded (rule 5).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from securechan.client.channel import AUDIT_EACH
from securechan.protocol.address import ContactCard
from tests.adversary import HOST, Party, RelayProcess, audit_rejections, b64e, running_relay
from tests.adversary.parties import transcript
from tests.adversary.world import World, world_of
from tests.test_adversary_relay import cli_receive, receive, refusals, run, shown

pytestmark = pytest.mark.timeout(180)

CONFIG = """
idle_timeout = 3.0
[limits]
max_depth = 40
queue_rate = 20.0
queue_burst = 40
claim_rate = 1.0
claim_burst = 22
body_timeout = 2.0
"""
RSS_GROWTH_KIB = 96 * 1024  # the relay may grow by this much at most under attack


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay"), config=CONFIG) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


@pytest.fixture
def world(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        yield w


@pytest.fixture
def strangers(relay: RelayProcess, pristine: Path, tmp_path: Path) -> Iterator[World]:
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington", hello=False)
        yield w


def contact_sid(of: Party, holder: Party) -> str:
    """``of``'s public contact address (send id), from the card ``holder`` pinned."""
    card = ContactCard.from_bytes(holder.keystore.contacts.get(of.name).card or b"")
    return b64e(card.addresses[0].sid)


def still_talking(t: Party, w: Party, text: str) -> None:
    t.ok("send", w.name, text)
    assert text in [x.text for x in receive(w) if getattr(x, "text", None)]


# --- floods -------------------------------------------------------------------------


def test_client_floods_queue_and_contact_address(world: World) -> None:
    t, w, relay = world.t, world.w, world.relay
    sid = contact_sid(w, t)
    rss = relay.rss_kib()

    async def flood() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, str | None]:
                headers = {"X-Message-Id": b64e(secrets.token_bytes(16))}
                async with s.post(
                    f"{relay.url}/v1/send/{sid}", data=secrets.token_bytes(4096), headers=headers
                ) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("Retry-After")

            return await asyncio.gather(*(one() for _ in range(300)))

    answers = run(flood())
    stored = [a for a in answers if a[0] == 201]
    limited = [a for a in answers if a[0] == 429]
    assert len(stored) + len(limited) == len(answers), {a[0] for a in answers}
    assert len(stored) <= 40  # max_depth (and the queue's burst)
    assert limited and all(ra is not None and ra.isdigit() for _, ra in limited)
    # Other queues are unaffected: the private conversation goes on (CLI).
    t.ok("send", "washington", "Tehran: through the flood")
    items, _ = cli_receive(w)
    texts = [x["text"] for x in items if "text" in x]
    assert texts == ["Tehran: through the flood"], items
    # The junk on the contact address was refused, each once, and audited:
    # one by one up to AUDIT_EACH per reason, the rest in one item with its
    # count (issue 11: a flood must not cost one audit write per envelope).
    junk = [x for x in items if "rejected" in x]

    def count(error: str) -> int:
        n, more, _ = error.partition(" more envelopes: ")
        return int(n) if more else 1

    assert sum(count(x["error"]) for x in junk) == len(stored), junk
    assert len(junk) <= 2 * (AUDIT_EACH + 1), junk
    assert len(audit_rejections(w.home)) >= len(junk)
    assert relay.rss_kib() - rss < RSS_GROWTH_KIB
    assert relay.data_bytes() < 64 << 20
    print(f"\nflood: {len(stored)} stored, {len(limited)} answered 429 of {len(answers)}")


def test_client_exhausts_one_time_prekeys(strangers: World) -> None:
    t, w, relay = strangers.t, strangers.w, strangers.relay
    sid = contact_sid(w, t)

    async def claim_all() -> list[tuple[int, Any]]:
        out = []
        async with aiohttp.ClientSession() as s:
            for _ in range(30):
                async with s.post(f"{relay.url}/v1/contact/{sid}/bundle") as resp:
                    body = await resp.read()
                    out.append((resp.status, json.loads(body) if resp.status == 200 else None))
        return out

    answers = run(claim_all())
    ok = [body for status, body in answers if status == 200]
    assert [b["one_time"] is not None for b in ok].count(True) == 20  # all of them, once each
    assert all(b["signed"] for b in ok)
    assert any(status == 429 for status, _ in answers)  # rate-limited per address
    time.sleep(1.5)  # one claim's worth of tokens
    # The signed prekey alone still opens a conversation.
    t.ok("send", "washington", "Tehran: after the exhaustion")
    assert shown(receive(w)) == ["Tehran: after the exhaustion"]

    # The owner's client tops its one-time keys up (and records it).
    async def left() -> int:
        async with w.channel() as ch:
            reg = ch.state.registrations()[0]
            client = await ch.relay(reg.relay)
            from securechan.primitives import Ed25519SigningKey

            return await client.prekey_count(reg.rid, Ed25519SigningKey(reg.recipient_seed))

    assert run(left()) >= 5
    assert "prekeys-rotated" in w.audit_kinds()


# --- oversized, nested, slow ------------------------------------------------------------


def _raw(port: int, head: bytes, body: bytes = b"", *, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``head`` + ``body`` on a raw socket; the first bytes of the answer
    (b"" if the relay closed) and how long it took."""
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=wait) as s:
        s.sendall(head + body)
        try:
            answer = s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    return answer, time.monotonic() - start


def test_client_sends_oversized_deep_slow(world: World) -> None:
    t, w, relay = world.t, world.w, world.relay
    sid = contact_sid(w, t)
    rss = relay.rss_kib()
    mid = b64e(secrets.token_bytes(16))

    # A 100 MB body announced: refused before it is read.
    head = (
        f"POST /v1/send/{sid} HTTP/1.1\r\nHost: {HOST}\r\nX-Message-Id: {mid}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {100 << 20}\r\n\r\n"
    ).encode()
    answer, took = _raw(relay.port, head, secrets.token_bytes(64 << 10))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]

    # The same without a length (chunked): refused or cut off, not buffered.
    async def chunked() -> int | str:
        async def body() -> Any:
            for _ in range(200):
                yield secrets.token_bytes(64 << 10)  # 12.5 MiB in all

        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    f"{relay.url}/v1/send/{sid}", data=body(), headers={"X-Message-Id": mid}
                ) as resp,
            ):
                return resp.status
        except aiohttp.ClientError as e:
            return type(e).__name__

    assert run(chunked()) in (413, "ClientOSError", "ServerDisconnectedError")

    # JSON nested 100,000 deep: a clean 400.
    nested = b"[" * 100_000 + b"]" * 100_000
    head = (
        f"POST /v1/queues HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(nested)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer, _ = _raw(relay.port, head, nested)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401", b"HTTP/1.1 413")), answer[:100]

    # A slow sender: 1 byte every 0.5 s of a 1000-byte body -> 408 or closed
    # within the body timeout (2 s), not held open for the 500 s it asks for.
    def slow() -> tuple[bytes, float]:
        head = (
            f"POST /v1/send/{sid} HTTP/1.1\r\nHost: {HOST}\r\nX-Message-Id: {mid}\r\n"
            "Content-Length: 1000\r\n\r\n"
        ).encode()
        start = time.monotonic()
        with socket.create_connection((HOST, relay.port), timeout=15) as s:
            s.sendall(head)
            s.settimeout(0.5)
            for _ in range(30):
                try:
                    answer = s.recv(4096)
                    return answer, time.monotonic() - start
                except TimeoutError:
                    pass
                try:
                    s.sendall(b"x")
                except OSError:
                    return b"", time.monotonic() - start
        return b"still open", time.monotonic() - start

    # Idle connections (slowloris) are closed too, while the honest go on.
    idlers = [socket.create_connection((HOST, relay.port), timeout=10) for _ in range(20)]
    for s in idlers:
        s.sendall(b"GET /v1/relay HTTP/1.1\r\nHost: x\r\n")  # never finished
    try:
        answer, took = slow()
        assert answer in (b"",) or answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert took < 8.0, took
        still_talking(t, w, "Tehran: past the slow ones")
        closed = 0
        deadline = time.monotonic() + 10
        for s in idlers:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = s.recv(4096)
                if data == b"" or data.startswith((b"HTTP/1.1 400", b"HTTP/1.1 408")):
                    closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed == len(idlers), f"{len(idlers) - closed} idle connections still open"
    finally:
        for s in idlers:
            s.close()
    assert relay.rss_kib() - rss < RSS_GROWTH_KIB


# --- hostile ids, code-carrying data ---------------------------------------------------------


HOSTILE_PATHS = [
    "/v1/send/..%2F..%2Frelay.key",
    "/v1/send/%00",
    "/v1/send/AAAAAAAAAAAAAAAAAAAAAA%00",
    "/v1/send/'%20OR%201=1--",
    "/v1/send/%2Fetc%2Fpasswd",
    "/v1/send/" + "A" * 5000,
    "/v1/queues/..%2Frelay.db/messages?after=0&limit=10",
    "/v1/queues/x'%3BDROP%20TABLE%20queues%3B--/messages?after=0",
    "/v1/contact/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/bundle",
    "/v1/contact/AAAAAAAAAAAAAAAAAAAAAA'--/bundle",
    "/v1/queues/AAAAAAAAAAAAAAAAAAAAAA/messages?after=-1&limit=1e9",
    "/v1/log/proof/inclusion?index=0;DROP&size=1",
]


def test_client_sends_hostile_ids(world: World) -> None:
    relay = world.relay
    files = sorted(p.name for p in relay.data.iterdir())

    async def go() -> dict[str, int]:
        out = {}
        async with aiohttp.ClientSession() as s:
            for path in HOSTILE_PATHS:
                method = "GET" if "/messages" in path or "/log/" in path else "POST"
                url = aiohttp.client.URL(relay.url + path, encoded=True)
                async with s.request(method, url, data=b"x" if method == "POST" else None) as r:
                    await r.read()
                    out[path[:60]] = r.status
        return out

    answers = run(go())
    assert all(status in (400, 401, 404) for status in answers.values()), answers
    assert sorted(p.name for p in relay.data.iterdir()) == files
    still_talking(world.t, world.w, "Tehran: ids are only ids")


def test_client_sends_code_carrying_data(world: World, tmp_path: Path) -> None:
    t, w, relay = world.t, world.w, world.relay
    marker = tmp_path / "executed"

    class Touch:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    payloads = {
        "pickle": (pickle.dumps(Touch()), "application/octet-stream"),
        "python pickle mime": (pickle.dumps(Touch()), "application/x-python-pickle"),
        "yaml tag": (
            f"!!python/object/apply:pathlib.Path.touch [{marker}]".encode(),
            "application/yaml",
        ),
        "json with yaml tag": (
            json.dumps(
                {"recipient_key": f"!!python/object/apply:os.system [touch {marker}]"}
            ).encode(),
            "application/json",
        ),
    }
    sid = contact_sid(w, t)

    async def go() -> dict[str, tuple[int, int]]:
        out = {}
        async with aiohttp.ClientSession() as s:
            for name, (body, ctype) in payloads.items():
                async with s.post(
                    f"{relay.url}/v1/queues", data=body, headers={"Content-Type": ctype}
                ) as r:
                    created = r.status
                headers = {"Content-Type": ctype, "X-Message-Id": b64e(secrets.token_bytes(16))}
                async with s.post(f"{relay.url}/v1/send/{sid}", data=body, headers=headers) as r:
                    stored = r.status
                out[name] = (created, stored)
        return out

    answers = run(go())
    # Never parsed as code: refused as a queue request, kept as opaque bytes
    # when sent as an envelope (the relay cannot read envelopes anyway).
    assert all(created in (400, 401, 415) for created, _ in answers.values()), answers
    assert all(stored == 201 for _, stored in answers.values()), answers
    got = receive(w)
    assert shown(got) == [] and len(refusals(got)) == len(payloads), got
    assert not marker.exists(), "a payload was executed"
    proc = w.run("receive")
    assert proc.returncode == 0 and proc.stdout == "", transcript(proc)
    assert not marker.exists()
    still_talking(t, w, "Tehran: data is data")
