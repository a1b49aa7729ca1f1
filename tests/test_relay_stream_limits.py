"""Group streams against a stranger who can reach the relay (docs/RELAY.md,
"Group streams": limits). Knowing a stream id is the only capability a post
needs, and anybody can make one up: so the relay bounds what strangers can
make it hold. Played as the attacker would, on a real ``securechan relay
serve`` on 127.0.0.1 (SQLite, and PostgreSQL with two processes on one
database), through raw HTTP and the client transport:

* a stranger opening stream after stream meets ``max_streams`` (507), then
  ``streams_max_bytes`` (507), and its address's creation budget
  (``create_rate``, 429); queue owners send and fetch all along;
* a stream over ``stream_max_bytes`` answers 409 ``stream_full``, which the
  client reports in one line;
* none of these refusals grows the transparency log, nor does a post to a
  PostgreSQL relay whose storage is over ``storage_max_bytes``.

On main every one of these posts was stored (and logged): no stream bound
but ``stream_max_items`` existed, and a PostgreSQL relay logged a post's
leaf before its storage refused it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.note import VerifierKey
from securechan.errors import RelayRefused
from securechan.primitives import Ed25519SigningKey, random_bytes
from securechan.transport import RelayClient, RetryPolicy
from tests.adversary.relay import RelayProcess, clean_env, running_relay, securechan_command

pytestmark = pytest.mark.timeout(240)

ONCE = RetryPolicy(attempts=1, timeout=10.0)
BLOB = 1000  # bytes of each stranger's item
CHARGED = BLOB + 256  # what the relay charges for it (storage.STREAM_ITEM_OVERHEAD)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _post(
    http: aiohttp.ClientSession, url: str, stream: bytes, body: bytes
) -> tuple[int, str, str, str | None]:
    """status, error code, message, Retry-After of one raw post."""
    async with http.post(f"{url}/v1/streams/{_b64(stream)}", data=body) as r:
        raw = await r.read()
        if r.status == 200:
            return 200, "", "", None
        err = json.loads(raw)["error"]
        return r.status, err["code"], err["message"], r.headers.get("Retry-After")


async def _log_size(url: str) -> int:
    async with RelayClient(url, retry=ONCE) as c:
        key = VerifierKey.from_text((await c.info())["log_verifier_key"])
        return open_checkpoint(await c.log_checkpoint(), key).size


async def _metric(http: aiohttp.ClientSession, url: str, line: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


async def _queue_owner_sends(url: str) -> None:
    """A queue owner creates a queue, sends to it and fetches what it sent."""
    rkey, skey = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()
    envelope = random_bytes(4096)
    async with RelayClient(url, retry=ONCE) as c:
        ids = await c.create_queue(rkey, sender_key=skey.public)
        await c.send(ids.sid, envelope, random_bytes(16), sender=skey)
        assert [m.data for m in await c.fetch(ids.rid, rkey)] == [envelope]


def _blob(n: int) -> bytes:
    return b"%08d" % n + random_bytes(BLOB - 8)


def test_a_stranger_opening_streams_meets_the_relay_bounds_and_queues_still_work(
    tmp_path: Path,
) -> None:
    """max_streams = 4, streams_max_bytes = 31 items' worth: the fifth new
    stream is 507, then the 32nd item in any stream is 507; refusals log
    nothing; a resend of a held item is still answered; a queue owner sends
    and fetches throughout."""
    config = (
        "[limits]\nmax_streams = 4\ncreate_burst = 1000\n"
        f"streams_max_bytes = {31 * CHARGED + CHARGED // 2}\n"
    )

    async def go(url: str) -> None:
        streams = [random_bytes(32) for _ in range(6)]
        first = [_blob(n) for n in range(4)]
        async with aiohttp.ClientSession() as http:
            for s, blob in zip(streams[:4], first, strict=False):
                assert (await _post(http, url, s, blob))[0] == 200
            await _queue_owner_sends(url)
            before = await _log_size(url)
            for s in streams[4:]:
                status, code, message, retry = await _post(http, url, s, _blob(99))
                assert (status, code, retry) == (507, "insufficient_storage", "60")
                assert "most group streams" in message
            assert await _log_size(url) == before  # nothing logged for the refusals
            # The streams it holds still take items, up to the bytes of all streams.
            posted = 4
            while True:
                status, code, message, retry = await _post(
                    http, url, streams[posted % 4], _blob(posted)
                )
                if status != 200:
                    break
                posted += 1
            assert posted == 31
            assert (status, code, retry) == (507, "insufficient_storage", "60")
            assert "most bytes" in message
            size = await _log_size(url)
            assert size == before + 27
            # A resend of a held item is answered (its position), nothing logged.
            assert (await _post(http, url, streams[1], first[1]))[0] == 200
            assert await _log_size(url) == size
            await _queue_owner_sends(url)
            refused = 'securechan_relay_rejected_total{reason="streams_quota"}'
            assert await _metric(http, url, refused) == 2
            refused = 'securechan_relay_rejected_total{reason="stream_bytes_quota"}'
            assert await _metric(http, url, refused) == 1

    with running_relay(tmp_path, config=config) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def test_opening_streams_spends_the_address_creation_budget(tmp_path: Path) -> None:
    """create_burst = 3: a fourth new stream from one address is 429 with
    Retry-After, before anything is logged; its held streams still take
    items, and creating a queue (a budget of its own) still works."""
    config = "[limits]\ncreate_rate = 0.001\ncreate_burst = 3\n"

    async def go(url: str) -> None:
        streams = [random_bytes(32) for _ in range(4)]
        async with aiohttp.ClientSession() as http:
            for n, s in enumerate(streams[:3]):
                assert (await _post(http, url, s, _blob(n)))[0] == 200
            before = await _log_size(url)
            status, code, _, retry = await _post(http, url, streams[3], _blob(3))
            assert (status, code) == (429, "rate_limited")
            assert retry is not None and int(retry) >= 1
            assert await _log_size(url) == before
            assert (await _post(http, url, streams[0], _blob(4)))[0] == 200
            await _queue_owner_sends(url)

    with running_relay(tmp_path, config=config) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def test_a_stream_over_its_byte_quota_is_refused_and_the_client_says_so(
    tmp_path: Path,
) -> None:
    """stream_max_bytes = 3 items: the fourth is 409 stream_full for good
    (nothing logged), reported by the client as one line that says why;
    another stream still takes items."""
    config = f"[limits]\nstream_max_bytes = {3 * CHARGED}\n"

    async def go(url: str) -> None:
        stream = random_bytes(32)
        async with RelayClient(url, retry=ONCE) as c:
            for n in range(3):
                assert (await c.post_stream_item(stream, _blob(n)))[0] == n + 1
            before = await _log_size(url)
            with pytest.raises(RelayRefused) as info:
                await c.post_stream_item(stream, _blob(3))
            assert info.value.status == 409
            line = str(info.value)
            assert "\n" not in line
            assert "the stream is full: its byte quota is used up" in line
            assert await _log_size(url) == before
            assert (await c.post_stream_item(random_bytes(32), _blob(4)))[0] == 1
        async with aiohttp.ClientSession() as http:
            status, code, _, _ = await _post(http, url, stream, _blob(5))
            assert (status, code) == (409, "stream_full")

    with running_relay(tmp_path, config=config) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def test_postgres_bounds_streams_and_refuses_a_full_store_before_the_log_grows(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two relay processes on one PostgreSQL database: process a bounds the
    streams (max_streams = 3), process b's storage is over its limit (the
    database is larger than storage_max_bytes): b refuses every post 507
    and its log (the one log of both) does not grow; a opens three streams
    and refuses a fourth; queue owners send through a throughout."""
    a = RelayProcess(tmp_path / "a", config=f'db = "{postgres_url}"\n[limits]\nmax_streams = 3\n')
    b = RelayProcess(
        tmp_path / "b",
        config=f'db = "{postgres_url}"\n[limits]\n'
        "storage_max_bytes = 200000\nstorage_reserve_bytes = 0\n",
    )
    b.data = a.data  # one relay: the same key files, two processes

    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            before = await _log_size(b.url)
            for n in range(3):
                status, code, _, retry = await _post(http, b.url, random_bytes(32), _blob(n))
                assert (status, code, retry) == (507, "insufficient_storage", "60")
            assert await _log_size(b.url) == before
            streams = [random_bytes(32) for _ in range(4)]
            for n, s in enumerate(streams[:3]):
                assert (await _post(http, a.url, s, _blob(10 + n)))[0] == 200
            await asyncio.sleep(1.1)  # the totals are read again once a second
            size = await _log_size(a.url)
            status, code, message, _ = await _post(http, a.url, streams[3], _blob(13))
            assert (status, code) == (507, "insufficient_storage")
            assert "most group streams" in message
            assert await _log_size(a.url) == size
            assert (await _post(http, a.url, streams[0], _blob(14)))[0] == 200
            await _queue_owner_sends(a.url)

    a.start()
    try:
        b.start()
        try:
            asyncio.run(asyncio.wait_for(go(), 180))
            b.stop()
            b.assert_no_traceback()
        finally:
            b.close()
        a.stop()
        a.assert_no_traceback()
    finally:
        a.close()


def test_a_group_send_to_a_full_stream_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """A group whose stream has reached the relay's stream_max_bytes: the
    next ``securechan send --group`` exits 3 (relay-refused) with one line
    on stderr that says why; the member's earlier messages stay shown."""
    from tests.group_world import PASSPHRASE, copy_members, make_pristine, mesh, pump, run

    m = copy_members(make_pristine(tmp_path / "pristine"), tmp_path, ("alpha", "bravo"))
    config = "[limits]\nstream_max_bytes = 40000\n"

    async def setup(url: str) -> int:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            await chs["alpha"].group_create("talks", ["bravo"])
            await pump(chs)
            sent = 0
            with pytest.raises(RelayRefused) as info:  # noqa: PT012 (sends until refused)
                while True:
                    await chs["alpha"].send_group("talks", text=f"statement {sent}")
                    sent += 1
            assert info.value.status == 409
            return sent
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path / "relay", config=config) as relay:
        sent = run(setup(relay.url))
        assert isinstance(sent, int) and sent >= 1
        proc = subprocess.run(
            [
                *securechan_command(),
                *("--home", str(m["alpha"].home)),
                *("send", "--group", "talks", "one more statement"),
            ],
            capture_output=True,
            text=True,
            env=clean_env(PASSPHRASE),
            timeout=120,
        )
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "the stream is full: its byte quota is used up" in lines[0]
