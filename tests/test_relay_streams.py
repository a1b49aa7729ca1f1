"""Group streams end to end (GROUPS-SPEC §1; docs/RELAY.md, "Group streams").

A real ``securechan relay serve`` on 127.0.0.1 (SQLite, and two processes
on one PostgreSQL database), driven by the client transport
(:meth:`RelayClient.post_stream_item`, :meth:`RelayClient.fetch_stream`)
and by raw HTTP where the test plays a hostile client. The relay is also
played by the attacker: a small HTTP server on 127.0.0.1 that answers
stream reads with crafted pages, which the transport must refuse with
:class:`MalformedInput` (never a crash, never a wrong item accepted); the
strict page decoder is fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.merkle import verify_inclusion
from securechan.audit.note import VerifierKey
from securechan.audit.receipt import envelope_leaf_hash, verify_receipt
from securechan.errors import MalformedInput, ProofFailed, RelayError, RelayRefused
from securechan.primitives import random_bytes
from securechan.transport import RelayClient, RetryPolicy
from securechan.transport_streams import (
    MAX_STREAM_BLOB,
    StreamItem,
    decode_stream_page,
    decode_stream_post,
)
from tests.adversary.relay import RelayProcess, free_port, running_relay

pytestmark = pytest.mark.timeout(240)

PATIENT = RetryPolicy(attempts=8, base=0.1, cap=1.0, timeout=10.0)
ONCE = RetryPolicy(attempts=1, timeout=10.0)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _log_key(client: RelayClient) -> VerifierKey:
    return VerifierKey.from_text((await client.info())["log_verifier_key"])


async def _read_all(client: RelayClient, stream: bytes, *, limit: int = 200) -> list[StreamItem]:
    out: list[StreamItem] = []
    while True:
        page, more = await client.fetch_stream(stream, len(out), limit)
        out += page
        if not more:
            return out


async def _check_in_log(client: RelayClient, key: VerifierKey, items: list[StreamItem]) -> None:
    """Each item's leaf is where the relay says, in the newest checkpoint's
    tree: the client-side RFC 9162 check, with proofs from the relay."""
    checkpoint = open_checkpoint(await client.log_checkpoint(), key)
    for item in items:
        proof = await client.inclusion_proof(item.log_index, checkpoint.size)
        verify_inclusion(
            envelope_leaf_hash(item.blob),
            item.log_index,
            checkpoint.size,
            proof,
            checkpoint.root_hash,
        )


# --- a real relay, SQLite ------------------------------------------------------------


def test_post_fetch_round_trip_with_receipts(tmp_path: Path) -> None:
    stream, other = random_bytes(32), random_bytes(32)
    blobs = [random_bytes(n) for n in (1, 100, MAX_STREAM_BLOB, 7, 5000)]

    async def go(url: str) -> None:
        async with RelayClient(url, retry=PATIENT) as c:
            key = await _log_key(c)
            answers = [await c.post_stream_item(stream, b) for b in blobs]
            assert [p for p, _ in answers] == [1, 2, 3, 4, 5]
            for blob, (_, receipt) in zip(blobs, answers, strict=True):
                verify_receipt(receipt, blob, key)  # RFC 9162 inclusion in a signed checkpoint
            # The receipt is the blob's own: another blob does not verify with it.
            with pytest.raises(ProofFailed):
                verify_receipt(answers[0][1], blobs[1], key)
            # A resend (a lost answer): the same position and leaf, nothing new.
            again, receipt = await c.post_stream_item(stream, blobs[1])
            assert (again, receipt.leaf_index) == (2, answers[1][1].leaf_index)
            verify_receipt(receipt, blobs[1], key)
            # The same bytes in another stream: its own position 1, the one leaf.
            pos, receipt = await c.post_stream_item(other, blobs[1])
            assert (pos, receipt.leaf_index) == (1, answers[1][1].leaf_index)

            items = await _read_all(c, stream)
            assert [(i.position, i.blob) for i in items] == list(enumerate(blobs, start=1))
            assert [i.log_index for i in items] == [r.leaf_index for _, r in answers]
            await _check_in_log(c, key, items)
            # Pages: limit 2 gives 2, 2, 1 with "more" on the full pages.
            assert await c.fetch_stream(stream, 0, 2) == (items[:2], True)
            assert await c.fetch_stream(stream, 2, 2) == (items[2:4], True)
            assert await c.fetch_stream(stream, 4, 2) == (items[4:], False)
            assert await c.fetch_stream(stream, 5) == ([], False)
            assert await _read_all(c, stream, limit=1) == items

    with running_relay(tmp_path) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def test_concurrent_posts_get_gapless_positions(tmp_path: Path) -> None:
    stream = random_bytes(32)
    blobs = [random_bytes(64) for _ in range(80)]

    async def go(url: str) -> None:
        async with RelayClient(url, retry=PATIENT) as c:
            key = await _log_key(c)
            answers = await asyncio.gather(*(c.post_stream_item(stream, b) for b in blobs))
            assert sorted(p for p, _ in answers) == list(range(1, len(blobs) + 1))
            items = await _read_all(c, stream)
            assert {i.position: i.blob for i in items} == {
                p: b for (p, _), b in zip(answers, blobs, strict=True)
            }
            for (_, receipt), blob in zip(answers, blobs, strict=True):
                verify_receipt(receipt, blob, key)
            await _check_in_log(c, key, items)

    with running_relay(tmp_path) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def _error(status: int, body: bytes) -> tuple[int, str]:
    data = json.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}
    return status, data["error"]["code"]


def test_refusals_are_clear_and_an_unknown_stream_is_empty(tmp_path: Path) -> None:
    """As a hostile or careless client: every bad request gets a 4xx with
    the relay's error JSON, and a stream that does not exist reads exactly
    as one that holds nothing after the position asked for."""
    stream = _b64(random_bytes(32))

    async def go(url: str) -> None:
        async with aiohttp.ClientSession() as http:

            async def post(path: str, body: bytes) -> tuple[int, bytes]:
                async with http.post(url + path, data=body) as r:
                    return r.status, await r.read()

            async def get(path: str) -> tuple[int, bytes]:
                async with http.get(url + path) as r:
                    return r.status, await r.read()

            too_big = random_bytes(MAX_STREAM_BLOB + 1)
            assert _error(*await post(f"/v1/streams/{stream}", too_big)) == (413, "too_large")
            assert _error(*await post(f"/v1/streams/{stream}", b"")) == (400, "empty")
            for bad in (_b64(random_bytes(16)), _b64(random_bytes(33)), "not*base64", "A" * 44):
                assert _error(*await post(f"/v1/streams/{bad}", b"x")) == (400, "bad_id")
                assert _error(*await get(f"/v1/streams/{bad}/items")) == (400, "bad_id")
            for query in (
                "limit=0",
                "limit=201",
                "after=-1",
                "after=x",
                "other=1",
                "after=1&after=2",
            ):
                got = _error(*await get(f"/v1/streams/{stream}/items?{query}"))
                assert got == (400, "bad_query"), query
            # Nothing was stored by the refused posts.
            status, body = await get(f"/v1/streams/{stream}/items")
            assert (status, json.loads(body)) == (200, {"items": [], "more": False})
            status, body = await post(f"/v1/streams/{stream}", b"first")
            assert status == 200 and json.loads(body)["position"] == 1
            # Past the end of a real stream and an unknown one: the same answer.
            unknown = _b64(random_bytes(32))
            assert await get(f"/v1/streams/{stream}/items?after=1") == await get(
                f"/v1/streams/{unknown}/items?after=1"
            )

    with running_relay(tmp_path) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


def test_a_full_stream_and_the_client_rate_limit(tmp_path: Path) -> None:
    config = "[limits]\nstream_max_items = 3\nclient_rate = 0.1\nclient_burst = 12\n"
    stream = random_bytes(32)

    async def go(url: str) -> None:
        async with RelayClient(url, retry=ONCE) as c:
            for n in range(3):
                assert (await c.post_stream_item(stream, b"item %d" % n))[0] == n + 1
            with pytest.raises(RelayRefused, match="the stream is full") as info:
                await c.post_stream_item(stream, b"one too many")
            assert info.value.status == 409
            # A resend of a held item is still answered, with its receipt.
            pos, receipt = await c.post_stream_item(stream, b"item 1")
            verify_receipt(receipt, b"item 1", await _log_key(c))
            assert pos == 2
        # The client address's request budget (burst 12) is spent: 429 with Retry-After.
        async with aiohttp.ClientSession() as http:
            statuses = []
            for n in range(20):
                async with http.post(f"{url}/v1/streams/{_b64(stream)}", data=b"%d" % n) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert _error(r.status, await r.read()) == (429, "rate_limited")
                        assert int(r.headers["Retry-After"]) >= 1
            assert statuses[-1] == 429, statuses

    with running_relay(tmp_path, config=config) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 120))


# --- two relay processes on one PostgreSQL database --------------------------------


def test_two_processes_on_one_postgres_give_one_gapless_stream(
    tmp_path: Path, postgres_url: str
) -> None:
    config = f'db = "{postgres_url}"\n'
    a = RelayProcess(tmp_path / "a", config=config)
    b = RelayProcess(tmp_path / "b", config=config)
    b.data = a.data  # one relay: the same key files, two processes
    stream = random_bytes(32)
    blobs = [random_bytes(48) for _ in range(120)]

    async def go() -> None:
        async with RelayClient(a.url, retry=PATIENT) as ca, RelayClient(b.url, retry=PATIENT) as cb:
            key = await _log_key(ca)
            assert await _log_key(cb) == key
            # Interleaved across both processes, all in flight at once.
            clients = [ca if n % 2 else cb for n in range(len(blobs))]
            answers = await asyncio.gather(
                *(c.post_stream_item(stream, blob) for c, blob in zip(clients, blobs, strict=True))
            )
            assert sorted(p for p, _ in answers) == list(range(1, len(blobs) + 1))
            for (_, receipt), blob in zip(answers, blobs, strict=True):
                verify_receipt(receipt, blob, key)
            from_a, from_b = await _read_all(ca, stream), await _read_all(cb, stream)
            assert from_a == from_b
            assert {i.position: i.blob for i in from_a} == {
                p: blob for (p, _), blob in zip(answers, blobs, strict=True)
            }
            await _check_in_log(cb, key, from_a)

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


# --- the relay as the attacker ----------------------------------------------------------


def _page(*items: tuple[int, bytes, int], more: bool = False) -> dict[str, Any]:
    return {
        "items": [{"position": p, "blob": _b64(b), "log_index": i} for p, b, i in items],
        "more": more,
    }


MALICIOUS_PAGES: dict[str, Callable[[], Any]] = {
    "a gap": lambda: _page((1, b"a", 0), (3, b"c", 2)),
    "out of order": lambda: _page((2, b"b", 1), (1, b"a", 0)),
    "starts late": lambda: _page((2, b"b", 1)),
    "starts early": lambda: _page((0, b"z", 9), (1, b"a", 0)),
    "a position twice": lambda: _page((1, b"a", 0), (1, b"a2", 1)),
    "a blob twice": lambda: _page((1, b"a", 0), (2, b"a", 1)),
    "a leaf twice": lambda: _page((1, b"a", 0), (2, b"b", 0)),
    "too many items": lambda: _page(*((n, b"%d" % n, n) for n in range(1, 4))),
    "an oversized blob": lambda: _page((1, bytes(MAX_STREAM_BLOB + 1), 0)),
    "an empty blob": lambda: _page((1, b"", 0)),
    "more after a short page": lambda: _page((1, b"a", 0), more=True),
    "more on an empty page": lambda: _page(more=True),
    "no more field": lambda: {"items": []},
    "a negative position": lambda: _page((-1, b"a", 0)),
    "a string position": lambda: {"items": [{"position": "1", "blob": "YQ", "log_index": 0}]},
    "a bad blob": lambda: {"items": [{"position": 1, "blob": "!!", "log_index": 0}], "more": 0},
    "not an object": lambda: [1, 2],
    "items not a list": lambda: {"items": {"1": "YQ"}, "more": False},
}


@asynccontextmanager
async def _hostile_relay(answer: Callable[[], Any] | bytes) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 that answers every stream request 200 with ``answer``."""

    async def handler(request: web.Request) -> web.Response:
        body = answer if isinstance(answer, bytes) else json.dumps(answer()).encode()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("case", MALICIOUS_PAGES)
def test_the_transport_refuses_a_malicious_page(case: str) -> None:
    async def go() -> None:
        async with _hostile_relay(MALICIOUS_PAGES[case]) as url, RelayClient(url, retry=ONCE) as c:
            with pytest.raises(MalformedInput, match="stream page"):
                await c.fetch_stream(random_bytes(32), 0, 2)

    asyncio.run(asyncio.wait_for(go(), 30))


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"{",
        b'{"position": 1}',
        b'{"position": 0, "receipt": {}}',
        b'{"position": 1, "position": 2, "receipt": {}}',
        b"x" * (300 * 1024),
    ],
    ids=["empty", "truncated", "no receipt", "bad receipt", "duplicate name", "huge"],
)
def test_the_transport_refuses_a_malicious_post_answer(answer: bytes) -> None:
    async def go() -> None:
        async with _hostile_relay(answer) as url, RelayClient(url, retry=ONCE) as c:
            with pytest.raises(MalformedInput):
                await c.post_stream_item(random_bytes(32), b"blob")

    asyncio.run(asyncio.wait_for(go(), 30))


def test_the_transport_refuses_bad_arguments_before_sending() -> None:
    async def go() -> None:
        async with RelayClient("http://127.0.0.1:9", retry=ONCE) as c:
            for stream in (b"", random_bytes(16), random_bytes(33)):
                with pytest.raises(ValueError, match="stream id"):
                    await c.post_stream_item(stream, b"x")
                with pytest.raises(ValueError, match="stream id"):
                    await c.fetch_stream(stream, 0)
            for blob in (b"", bytes(MAX_STREAM_BLOB + 1)):
                with pytest.raises(ValueError, match="stream item"):
                    await c.post_stream_item(random_bytes(32), blob)
            for after, limit in ((-1, 10), (0, 0), (0, 201)):
                with pytest.raises(ValueError, match=r"after|limit"):
                    await c.fetch_stream(random_bytes(32), after, limit)

    asyncio.run(go())


# --- the strict decoder, fuzzed ----------------------------------------------------------

_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**64) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_item = st.fixed_dictionaries(
    {
        "position": st.integers(-1, 6) | _json_value,
        "blob": st.binary(max_size=40).map(_b64) | _json_value,
        "log_index": st.integers(-1, 6) | _json_value,
    }
)
_page_json = st.fixed_dictionaries(
    {"items": st.lists(_item, max_size=6) | _json_value, "more": st.booleans() | _json_value}
)


def _check_decoded(raw: bytes, after: int, limit: int) -> None:
    try:
        items, more = decode_stream_page(raw, after=after, limit=limit)
    except MalformedInput:
        return
    # Whatever is accepted keeps every promise of the decoder.
    assert len(items) <= limit
    assert [i.position for i in items] == list(range(after + 1, after + 1 + len(items)))
    assert all(1 <= len(i.blob) <= MAX_STREAM_BLOB for i in items)
    assert len({i.blob for i in items}) == len({i.log_index for i in items}) == len(items)
    assert not more or len(items) == limit


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=_page_json, after=st.integers(0, 3), limit=st.integers(1, 4))
def test_fuzz_page_decoder_structured(page: Any, after: int, limit: int) -> None:
    _check_decoded(json.dumps(page).encode(), after, limit)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), after=st.integers(0, 3), limit=st.integers(1, 200))
def test_fuzz_page_decoder_bytes(raw: bytes, after: int, limit: int) -> None:
    _check_decoded(raw, after, limit)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_page_decoder_single_byte_changes(data: st.DataObject) -> None:
    """Every one-byte change of a valid page is refused or still a valid page."""
    raw = json.dumps(_page((3, b"abc", 10), (4, b"de", 11), more=True)).encode()
    assert decode_stream_page(raw, after=2, limit=2)[1] is True
    at = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255))
    _check_decoded(raw[:at] + bytes([value]) + raw[at + 1 :], 2, 2)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | _json_value.map(lambda v: json.dumps(v).encode()))
def test_fuzz_post_decoder(raw: bytes) -> None:
    try:
        position, _ = decode_stream_post(raw)
    except MalformedInput:
        return
    assert position >= 1


# --- SIGKILL mid-burst ----------------------------------------------------------------------


def test_sigkill_mid_burst_loses_no_acknowledged_item(tmp_path: Path) -> None:
    """Every post answered 200 before a SIGKILL is, after the restart, at the
    position it was answered with and in the log; the posts that got no
    answer are resent (as a client does) and each lands exactly once."""
    relay = RelayProcess(tmp_path)
    stream = random_bytes(32)
    blobs = [random_bytes(200) for _ in range(120)]
    answered: dict[bytes, int] = {}

    async def burst() -> None:
        killed = asyncio.Event()

        async def post(c: RelayClient, blob: bytes) -> None:
            try:
                pos, _ = await c.post_stream_item(stream, blob)
            except RelayError:  # a post the kill cut off: resent below
                return
            answered[blob] = pos
            if len(answered) == 40 and not killed.is_set():
                killed.set()
                await asyncio.to_thread(relay.kill)

        async with RelayClient(relay.url, retry=ONCE) as c:
            await asyncio.gather(*(post(c, b) for b in blobs))

    async def after() -> None:
        async with RelayClient(relay.url, retry=PATIENT) as c:
            key = await _log_key(c)
            held = await _read_all(c, stream)
            at = {i.blob: i.position for i in held}
            for blob, pos in answered.items():
                assert at.get(blob) == pos
            await _check_in_log(c, key, held)
            # The client resends what got no answer: each is stored once.
            for blob in blobs:
                pos, receipt = await c.post_stream_item(stream, blob)
                verify_receipt(receipt, blob, key)
                assert pos == at.get(blob, pos)
            final = await _read_all(c, stream)
            assert sorted(i.blob for i in final) == sorted(blobs)
            await _check_in_log(c, key, final)

    relay.start()
    try:
        asyncio.run(asyncio.wait_for(burst(), 120))
        assert 40 <= len(answered) < len(blobs), len(answered)
        relay.start()
        asyncio.run(asyncio.wait_for(after(), 120))
        relay.stop()
        relay.assert_no_traceback()
    finally:
        relay.close()


def test_a_full_store_refuses_posts_before_the_log_grows(tmp_path: Path) -> None:
    """With the relay's storage over its limit, a post is 507 and adds no
    leaf to the log (the log is not filled with hashes of refused blobs)."""
    config = "[limits]\nstorage_max_bytes = 200000\nstorage_reserve_bytes = 0\n"

    async def go(url: str) -> None:
        async with RelayClient(url, retry=ONCE) as c:
            key = await _log_key(c)
            before = open_checkpoint(await c.log_checkpoint(), key).size
            path = f"{url}/v1/streams/{_b64(random_bytes(32))}"
            async with aiohttp.ClientSession() as http, http.post(path, data=b"x") as r:
                assert _error(r.status, await r.read()) == (507, "insufficient_storage")
                assert r.headers["Retry-After"] == "60"
            assert open_checkpoint(await c.log_checkpoint(), key).size == before

    with running_relay(tmp_path, config=config) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 60))
