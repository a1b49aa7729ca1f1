"""Transcript export in pages (securechan/client/group_record.py,
``item_proofs``; docs/RELAY.md, "Group streams"): the inclusion proofs of a
group's stream items come with the stream's pages (``GET
/v1/streams/{id}/items?size=N``, 200 items a request), not one request per
item.

* End to end: a real relay process on 127.0.0.1, two members, a long
  transcript; the relay's own request counters show the export read pages
  and asked for no single proof; a third party verifies the bundle.
* The relay as the attacker: a small HTTP server on 127.0.0.1 answers the
  export's page reads with crafted pages (a gap, a repeat, a missing proof,
  a wrong proof, another blob at a position the member read, a stream cut
  short); the export refuses each (MalformedInput or ProofFailed), never a
  crash, never a bundle. The proofs are real RFC 6962 paths of a real tree.

On main the export asked ``GET /v1/log/proof/inclusion`` once per item.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from securechan.audit.checkpoint import Checkpoint
from securechan.audit.group_transcript import GroupTranscript
from securechan.audit.group_transcript_verify import verify_transcript
from securechan.audit.merkle import MemoryTree
from securechan.audit.receipt import encode_hashes, envelope_leaf_hash
from securechan.client.db_groups import TranscriptRow
from securechan.client.group_record import export_group, item_proofs
from securechan.errors import MalformedInput, ProofFailed
from securechan.transport import RelayClient, RetryPolicy
from tests.group_world import NAMES, copy_members, make_pristine, mesh, pump, run
from tests.test_relay_crash import running_relay

pytestmark = pytest.mark.timeout(600)

ONCE = RetryPolicy(attempts=1, timeout=5)
MESSAGES = 230  # with the creation: 231 stream items, two pages


async def _requests(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The relay's request counters by route (every status)."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for row in text.splitlines():
        if row.startswith("securechan_relay_requests_total{"):
            route = row.split('route="')[1].split('"')[0]
            out[route] = out.get(route, 0.0) + float(row.split()[-1])
    return out


def test_a_long_transcript_is_exported_in_pages_and_verifies(
    tmp_path: Path,
) -> None:
    m = copy_members(make_pristine(tmp_path / "pristine"), tmp_path, NAMES[:2])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a = chs["alpha"]
            await a.group_create("talks", ["bravo"])
            await pump(chs)
            for n in range(MESSAGES):
                await a.send_group("talks", text=f"statement {n}")
            await pump(chs, rounds=1)
            async with aiohttp.ClientSession() as http:
                before = await _requests(http, url)
                out = tmp_path / "talks.sctr"
                exported = await export_group(a, "talks", out)
                after = await _requests(http, url)
            used = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            assert used.get("/v1/log/proof/inclusion", 0) == 0, used
            # 231 items: pages of 200 and 31.
            assert used.get("/v1/streams/{stream}/items", 0) == 2, used
            assert exported.records == MESSAGES + 1
            assert exported.disclosed == MESSAGES
            key = await a.logs.key(url)
            bundle = GroupTranscript.from_bytes(out.read_bytes())
            verified = verify_transcript(bundle, relay_key=key)
            assert len(verified.disclosed) == MESSAGES
            assert verified.final_head.hex() == exported.final_head
        finally:
            for ch in chs.values():
                await ch.close()

    (tmp_path / "relay").mkdir()
    with running_relay(tmp_path / "relay") as relay:
        run(go(relay.url), 500)


# --- the relay as the attacker ----------------------------------------------------------

STREAM = hashlib.sha256(b"paged export test stream").digest()
N = 5  # the member read items 1..5 of the stream


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Log:
    """A real RFC 6962 tree holding the stream's items among other leaves."""

    def __init__(self) -> None:
        self.tree = MemoryTree()
        self.blobs = [b"group record %d" % n + bytes(40) for n in range(1, N + 1)]
        self.index: list[int] = []
        for blob in self.blobs:
            self.tree.append_leaf_hash(envelope_leaf_hash(b"another envelope %d" % len(blob)))
            self.index.append(self.tree.append_leaf_hash(envelope_leaf_hash(blob)))
        self.size = self.tree.size
        self.checkpoint = Checkpoint(origin="test/log", size=self.size, root_hash=self.tree.root())

    def rows(self) -> list[TranscriptRow]:
        return [
            TranscriptRow(
                group_id=bytes(16),
                epoch=0,
                position=n + 1,
                log_index=self.index[n],
                record_hash=bytes(32),
                status="shown",
                at=0,
                stream_id=STREAM,
                blob=blob,
                record=b"",
                summary="",
            )
            for n, blob in enumerate(self.blobs)
        ]

    def item(self, position: int, **change: Any) -> dict[str, Any]:
        n = position - 1
        proof = self.tree.inclusion_proof(self.index[n], self.size)
        out = {
            "position": position,
            "blob": _b64(self.blobs[n]),
            "log_index": self.index[n],
            "inclusion": encode_hashes(proof),
        }
        out.update(change)
        return out

    def page(self, *items: dict[str, Any]) -> dict[str, Any]:
        return {"items": list(items), "more": False}


def _honest(log: Log) -> dict[str, Any]:
    return log.page(*(log.item(p) for p in range(1, N + 1)))


def _wrong_proof(log: Log) -> dict[str, Any]:
    bad = log.tree.inclusion_proof(log.index[3], log.size)  # item 4's path for item 3
    return log.page(
        *(log.item(p) for p in (1, 2)),
        log.item(3, inclusion=encode_hashes(bad)),
        *(log.item(p) for p in (4, 5)),
    )


CASES: dict[str, tuple[Callable[[Log], dict[str, Any]], type[Exception], str]] = {
    "gap": (
        lambda log: log.page(*(log.item(p) for p in (1, 2, 4, 5))),
        MalformedInput,
        "gap or reorder",
    ),
    "repeat": (
        lambda log: log.page(*(log.item(p) for p in (1, 2)), log.item(3, blob=_b64(log.blobs[1]))),
        MalformedInput,
        "repeats",
    ),
    "missing proof": (
        lambda log: log.page(*(log.item(p) for p in (1, 2)), log.item(3, inclusion=None)),
        MalformedInput,
        "without the inclusion proof",
    ),
    "wrong proof": (_wrong_proof, ProofFailed, "inclusion proof of group stream item 3"),
    "another blob": (
        lambda log: log.page(
            *(log.item(p) for p in (1, 2)), log.item(3, blob=_b64(b"a rewritten record"))
        ),
        ProofFailed,
        "another item at position 3",
    ),
    "cut short": (
        lambda log: log.page(*(log.item(p) for p in (1, 2))),
        ProofFailed,
        "ends at position 2",
    ),
}


@asynccontextmanager
async def _hostile_relay(answer: dict[str, Any]) -> AsyncIterator[tuple[str, list[str]]]:
    """Answers every stream page read with ``answer`` (minus null fields) and
    records the query strings."""
    seen: list[str] = []
    items = [{k: v for k, v in i.items() if v is not None} for i in answer["items"]]

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.query_string)
        after = int(request.query["after"])  # the page from there on, as a relay would
        page = [i for i in items if i["position"] > after]
        return web.json_response({"items": page, "more": False})

    app = web.Application()
    app.router.add_get("/v1/streams/{stream}/items", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def test_an_honest_page_proves_every_item_in_one_request() -> None:
    log = Log()

    async def go() -> None:
        async with (
            _hostile_relay(_honest(log)) as (url, seen),
            RelayClient(url, retry=ONCE) as rc,
        ):
            proofs = await item_proofs(rc, log.rows(), log.checkpoint)
        assert seen == [f"after=0&limit={N}&size={log.size}"]
        assert sorted(pos for _, pos in proofs) == list(range(1, N + 1))

    asyncio.run(go())


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malicious_page_in_the_export_is_refused(case: str) -> None:
    make, error, words = CASES[case]
    log = Log()

    async def go() -> None:
        async with _hostile_relay(make(log)) as (url, _), RelayClient(url, retry=ONCE) as rc:
            with pytest.raises(error, match=words):
                await item_proofs(rc, log.rows(), log.checkpoint)

    asyncio.run(go())


def test_a_relay_without_paged_proofs_is_asked_item_by_item() -> None:
    """A relay that refuses ``size`` (an older one: 400 bad_query) is asked
    for each item's proof, and each proof is still checked."""
    log = Log()
    seen: list[str] = []

    async def items(request: web.Request) -> web.Response:
        seen.append(request.path)
        error = {"error": {"code": "bad_query", "message": "the parameters are after, limit"}}
        return web.json_response(error, status=400)

    async def inclusion(request: web.Request) -> web.Response:
        seen.append(request.path)
        index, size = int(request.query["index"]), int(request.query["size"])
        proof = log.tree.inclusion_proof(index, size)
        return web.json_response({"index": index, "size": size, "hashes": encode_hashes(proof)})

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/v1/streams/{stream}/items", items)
        app.router.add_get("/v1/log/proof/inclusion", inclusion)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with RelayClient(f"http://127.0.0.1:{port}", retry=ONCE) as rc:
                proofs = await item_proofs(rc, log.rows(), log.checkpoint)
        finally:
            await runner.cleanup()
        assert len(proofs) == N
        assert seen.count("/v1/log/proof/inclusion") == N

    asyncio.run(go())


def test_the_relay_serves_pages_with_proofs(tmp_path: Path) -> None:
    """A real relay: ``size`` adds each item's inclusion proof in that tree
    (they verify against the signed checkpoint); an item logged after it
    comes without one; a size the log has not reached is 404
    no_checkpoint; an unknown stream still reads as an empty one, byte for
    byte (its existence is not revealed). On main ``size`` was 400."""
    from securechan.audit.checkpoint import open_checkpoint
    from securechan.audit.merkle import verify_inclusion
    from securechan.audit.note import VerifierKey
    from securechan.primitives import random_bytes

    async def go(url: str) -> None:
        stream, blobs = random_bytes(32), [random_bytes(100) for _ in range(4)]
        async with RelayClient(url, retry=ONCE) as rc:
            key = VerifierKey.from_text((await rc.info())["log_verifier_key"])
            for blob in blobs[:3]:
                await rc.post_stream_item(stream, blob)
            cp = open_checkpoint(await rc.log_checkpoint(), key)
            await rc.post_stream_item(stream, blobs[3])
            items, more = await rc.fetch_stream(stream, 0, 10, size=cp.size)
            assert [i.blob for i in items] == blobs and not more
            for item in items[:3]:
                leaf = envelope_leaf_hash(item.blob)
                verify_inclusion(leaf, item.log_index, cp.size, item.inclusion or (), cp.root_hash)
            assert items[3].inclusion is None  # logged after the checkpoint
        async with aiohttp.ClientSession() as http:
            path = f"{url}/v1/streams/{_b64(stream)}/items"
            async with http.get(f"{path}?after=0&size={cp.size + 100}") as r:
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "no_checkpoint"
            unknown = f"{url}/v1/streams/{_b64(random_bytes(32))}/items"
            async with (
                http.get(f"{unknown}?after=0&size={cp.size}") as r1,
                http.get(f"{unknown}?after=0") as r2,
            ):
                assert (r1.status, await r1.read()) == (r2.status, await r2.read())

    with running_relay(tmp_path) as relay:
        run(go(relay.url), 120)
