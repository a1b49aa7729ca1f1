"""The relay's log as C2SP tlog-tiles (issue 16, item 2; docs/RELAY.md, "The log as tiles").

The expectations are written here from the spec's text (c2sp.org/tlog-tiles),
not from securechan.audit.tiles: the path of tile index N is N in 3-digit
groups, all but the last prefixed with "x"; the tile (L, N) holds
MTH(D[(N*256+i) * 256**L : (N*256+i+1) * 256**L]) for i in 0..255; a tree
of size s has a partial tile of width floor(s / 256**L) mod 256 at level L;
an entry bundle is entries behind big-endian uint16 lengths, each hashing
(RFC 6962: SHA-256(0x00 || entry)) to the level 0 tile. The tree is
recomputed here with hashlib alone.

Against a real ``securechan relay serve`` on 127.0.0.1: every tile and
bundle of its log byte for byte, caching headers, bad paths (400/404, never
5xx), then ``securechan relay tiles`` copies the log to a folder served by
``python -m http.server`` (a plain static file server) and an inclusion and
a consistency proof are verified from that server's tiles only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.audit import merkle
from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.note import VerifierKey
from securechan.audit.tiles import (
    TileHashes,
    TileId,
    encode_index,
    parse_path,
    tiles_for_proofs,
    tiles_of_size,
    verify_tiles,
)
from securechan.client.tiles import TileReader, http_fetch
from securechan.errors import MalformedInput, ProofFailed
from securechan.primitives import Ed25519SigningKey
from securechan.transport import RelayClient, RetryPolicy
from tests.adversary import HOST, RelayProcess, running_relay
from tests.adversary.relay import free_port, securechan_command

pytestmark = pytest.mark.timeout(180)

CONTEXT = b"securechan/v1/envelope"


# --- the spec, read independently ---------------------------------------------------


def spec_index(n: int) -> str:
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over leaf hashes, recursively (k = largest power of 2 < n)."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return h(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def spec_tile(leaf_hashes: list[bytes], level: int, n: int, width: int) -> bytes:
    span = 256**level
    return b"".join(
        mth(leaf_hashes[(n * 256 + i) * span : (n * 256 + i + 1) * span]) for i in range(width)
    )


def spec_tiles(size: int) -> dict[str, tuple[int | None, int, int]]:
    """Every path the spec has for a tree of ``size`` -> (level, n, width)."""
    out: dict[str, tuple[int | None, int, int]] = {}
    level = 0
    while size // 256**level:
        count = size // 256**level
        for n in range(count // 256):
            out[f"tile/{level}/{spec_index(n)}"] = (level, n, 256)
            if level == 0:
                out[f"tile/entries/{spec_index(n)}"] = (None, n, 256)
        if w := count % 256:
            out[f"tile/{level}/{spec_index(count // 256)}.p/{w}"] = (level, count // 256, w)
            if level == 0:
                out[f"tile/entries/{spec_index(count // 256)}.p/{w}"] = (None, count // 256, w)
        level += 1
    return out


def test_spec_examples_of_paths_and_partial_tiles() -> None:
    assert spec_index(1234067) == "x001/x234/067" == encode_index(1234067)
    assert parse_path("tile/0/x001/x234/067") == TileId(0, 1234067)
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
    # partial level 0 tile of width 112, one full level 1 tile, one partial
    # level 1 tile of width 17, and one partial level 2 tile of width 1"
    hashes = [t for t in tiles_of_size(70000) if t.level is not None]
    assert sum(1 for t in hashes if t.level == 0 and t.full) == 273
    assert {t.path for t in hashes if not t.full or t.level} == {
        "tile/0/273.p/112",
        "tile/1/000",
        "tile/1/001.p/17",
        "tile/2/000.p/1",
    }
    # "a tree of size 256 will be represented by a full level 0 tile and a
    # partial level 1 tile of width 1"
    assert {t.path for t in tiles_of_size(256, entries=False)} == {"tile/0/000", "tile/1/000.p/1"}
    for size in (0, 1, 255, 256, 257, 65535, 65536, 65537, 70000, 16777217):
        assert {t.path for t in tiles_of_size(size)} == set(spec_tiles(size)), size


def test_tiles_from_memory_match_the_spec_and_give_every_proof() -> None:
    leaves = [h(b"\x00" + CONTEXT + h(i.to_bytes(4, "big"))) for i in range(66000)]
    tree = merkle.MemoryTree(leaves)
    for size in (1, 200, 256, 257, 513, 65536, 66000):
        tiles = {}
        for path, (level, n, w) in spec_tiles(size).items():
            if level is None:
                continue
            tile = parse_path(path)
            data = b"".join(tree.get_nodes(tile.nodes()))
            if level < 2 or size < 70000:  # the spec's formula, directly (cheap enough here)
                assert data == spec_tile(leaves[:size], level, n, w), path
            tiles[tile] = data
        reader = TileHashes(size, tiles)
        assert reader.root() == mth(leaves[:size])
        for index in {0, size // 2, size - 1}:
            assert merkle.inclusion_proof(reader, index, size) == tree.inclusion_proof(index, size)
        for old in {1, size // 3, size - 1}:
            assert merkle.consistency_proof(reader, old, size) == tree.consistency_proof(old, size)
        # What a verifier fetches for one proof is a handful of tiles, not the log.
        assert len(tiles_for_proofs(size, inclusion=[0], consistency_from=[1])) <= 6


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_the_path_parser_takes_exactly_the_spec_s_paths(text: str) -> None:
    try:
        tile = parse_path(text)
    except ValueError:
        return
    assert tile.path == text  # only the canonical spelling parses


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 63)), st.integers(0, 2**64 - 1), st.integers(1, 256))
def test_every_tile_path_round_trips(level: int | None, index: int, width: int) -> None:
    tile = TileId(level, index, width)
    assert parse_path(tile.path) == tile
    assert re.fullmatch(r"tile/(entries|0|[1-9]\d?)/(x\d{3}/)*\d{3}(\.p/[1-9]\d{0,2})?", tile.path)
    assert tile.path.split("/", 2)[2].split(".p")[0] == spec_index(index)


BAD_PATHS = [
    "tile/0/1",  # not 3 digits
    "tile/0/0001",
    "tile/00/000",  # leading zero in L
    "tile/64/000",  # L beyond 63
    "tile/0/x000/001",  # a leading zero group: 1 is "001"
    "tile/0/001/002",  # a non-last group without x
    "tile/0/x001",  # the last group with x
    "tile/0/000.p/0",  # empty tiles are never served
    "tile/0/000.p/256",  # a full tile has no .p
    "tile/0/000.p/010",
    "tile/0/000.p/",
    "tile/0/000/",
    "tile/0/000.p/5/6",
    "tile/entries",
    "tile/-1/000",
    "tile/0/" + "x999/" * 7 + "999",  # past 2**64
    "tile/0/" + "x001/" * 200 + "000",  # long: refused before any work
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="tile"):
        parse_path(path)


def test_a_forged_tile_or_entry_fails_verification() -> None:
    leaves_data = [CONTEXT + h(bytes([i])) for i in range(40)]
    tree = merkle.MemoryTree([h(b"\x00" + d) for d in leaves_data])
    tiles = {t: b"".join(tree.get_nodes(t.nodes())) for t in tiles_of_size(40, entries=False)}
    bundle = b"".join(len(d).to_bytes(2, "big") + d for d in leaves_data)
    tiles[TileId(None, 0, 40)] = bundle
    verify_tiles(40, tree.root(), tiles)
    bad = dict(tiles)
    bad[TileId(None, 0, 40)] = bundle[:-1] + bytes([bundle[-1] ^ 1])
    with pytest.raises(ProofFailed):
        verify_tiles(40, tree.root(), bad)
    bad = dict(tiles)
    bad[TileId(0, 0, 40)] = bytes(32) + tiles[TileId(0, 0, 40)][32:]
    with pytest.raises(ProofFailed):
        verify_tiles(40, tree.root(), bad)
    bad[TileId(None, 0, 40)] = bundle + b"\x00"
    with pytest.raises((MalformedInput, ProofFailed)):
        verify_tiles(40, tree.root(), bad)


# --- against a real relay ---------------------------------------------------------------

N_SENDS = 300  # a full level 0 tile and a partial one


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("tiles")) as r:
        yield r


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (127.0.0.1)
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def _send_many(url: str, count: int) -> tuple[VerifierKey, list[bytes], list[str]]:
    """``count`` envelopes sent; the log key, their digests and the checkpoints seen."""
    async with RelayClient(url, retry=RetryPolicy(attempts=4, timeout=20.0)) as rc:
        info = await rc.info()
        key = VerifierKey.from_text(info["log_verifier_key"])
        rkey, skey = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()
        ids = await rc.create_queue(rkey, sender_key=skey.public)
        digests, notes = [], []
        for start in range(0, count, 50):
            envs = [os.urandom(64) for _ in range(start, min(count, start + 50))]
            replies = await asyncio.gather(
                *(rc.send_with_receipt(ids.sid, e, os.urandom(16), sender=skey) for e in envs)
            )
            for reply in replies:
                assert reply.receipt is not None
                notes.append(reply.receipt.checkpoint)
            digests += [h(e) for e in envs]
        return key, digests, notes


@pytest.fixture(scope="module")
def logged(relay: RelayProcess) -> tuple[VerifierKey, list[bytes], list[str]]:
    return asyncio.run(_send_many(relay.url, N_SENDS))


def test_the_relay_serves_every_tile_and_bundle_as_the_spec_says(
    relay: RelayProcess, logged: tuple[VerifierKey, list[bytes], list[str]]
) -> None:
    key, digests, _ = logged
    status, headers, body = _get(relay.url + "/checkpoint")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    assert headers["Content-Type"].startswith("text/plain")
    cp = open_checkpoint(body.decode(), key)
    assert cp.size == N_SENDS
    # The log's leaves, from what the client sent (the relay logs each once, in
    # an order of its choosing: read it from the bundle, check it is ours).
    status, headers, bundle0 = _get(relay.url + "/tile/entries/000")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=31536000, immutable"
    status, headers, bundle1 = _get(relay.url + f"/tile/entries/001.p/{N_SENDS - 256}")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=60"
    entries = []
    for data in (bundle0, bundle1):
        pos = 0
        while pos < len(data):
            n = int.from_bytes(data[pos : pos + 2], "big")
            entries.append(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
    assert len(entries) == N_SENDS
    assert all(len(e) == 54 and e.startswith(CONTEXT) for e in entries)
    assert sorted(e[len(CONTEXT) :] for e in entries) == sorted(digests)  # hashes, no envelope
    leaves = [h(b"\x00" + e) for e in entries]
    assert mth(leaves) == cp.root_hash
    for path, (level, n, w) in spec_tiles(N_SENDS).items():
        status, headers, body = _get(f"{relay.url}/{path}")
        assert status == 200, path
        assert headers["Content-Type"] == "application/octet-stream"
        full = "immutable" if w == 256 else "max-age=60"
        assert full in headers["Cache-Control"], path
        if level is not None:
            assert body == spec_tile(leaves, level, n, w), path
    # Tiles the log has not reached, and the full tile of a partial one: 404.
    for path in (
        "tile/0/001",
        "tile/entries/001",
        "tile/0/002.p/1",
        "tile/1/000",
        "tile/2/000.p/1",
    ):
        assert _get(f"{relay.url}/{path}")[0] == 404, path
    assert _get(f"{relay.url}/tile/0/001.p/{N_SENDS - 255}")[0] == 404
    # Entry bundles are gzipped for a client that asks (the spec's SHOULD).
    import gzip

    gz = {"Accept-Encoding": "gzip"}
    req = urllib.request.Request(relay.url + "/tile/entries/000", headers=gz)  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (127.0.0.1)
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(resp.read()) == bundle0
    # A narrower partial tile of a past size is still the same prefix.
    status, _, body = _get(f"{relay.url}/tile/0/001.p/3")
    assert status == 200 and body == b"".join(leaves[256:259])


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.sampled_from(BAD_PATHS),
        st.text(alphabet="x0123456789/.pentris-", max_size=60),
    )
)
def test_bad_tile_paths_get_400_or_404_never_5xx(relay: RelayProcess, tail: str) -> None:
    quoted = urllib.request.quote(tail.removeprefix("tile/"), safe="/.")
    status, _, _ = _get(f"{relay.url}/tile/{quoted}")
    assert status in (200, 400, 404), (tail, status)
    if status == 200:
        assert parse_path("tile/" + tail.removeprefix("tile/")).leaves_needed() <= N_SENDS


def test_a_proof_from_a_static_copy_of_the_tiles(
    relay: RelayProcess, logged: tuple[VerifierKey, list[bytes], list[str]], tmp_path: Path
) -> None:
    key, digests, notes = logged
    site = tmp_path / "site"

    def tiles(url: str, folder: Path, log_key: str) -> subprocess.CompletedProcess[str]:
        args = [*securechan_command(), "relay", "tiles", url, str(folder), "--log-key", log_key]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)

    done = tiles(relay.url, site, key.to_text())
    assert done.returncode == 0, done.stderr
    assert (site / "tile" / "0" / "000").stat().st_size == 8192
    assert (site / "tile" / "entries" / "001.p" / str(N_SENDS - 256)).is_file()
    # A second run fetches and writes only the partial tiles and the checkpoint.
    again = tiles(relay.url, site, key.to_text())
    assert again.returncode == 0 and again.stdout.startswith(f"size {N_SENDS}: 4 files"), again
    # The wrong key: refused (exit 1), nothing written; unreachable: 3; a bad key: 2.
    other_key = Ed25519SigningKey.generate().public
    wrong = VerifierKey(name=key.name, sig_type=1, public_key=other_key).to_text()
    for url, folder, log_key, code in (
        (relay.url, tmp_path / "other", wrong, 1),
        (f"http://{HOST}:{free_port()}", tmp_path / "other", key.to_text(), 3),
        (relay.url, tmp_path / "other", "not a key", 2),
    ):
        bad = tiles(url, folder, log_key)
        assert (bad.returncode, len(bad.stderr.splitlines())) == (code, 1), bad.stderr
        assert not folder.exists()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        old = open_checkpoint(notes[10], key)  # a checkpoint seen while sending

        async def verify() -> None:
            async with aiohttp.ClientSession() as session:
                fetch = http_fetch(session, f"http://{HOST}:{port}")
                reader = await TileReader.open(fetch, key)
                cp = reader.checkpoint
                assert cp.size == N_SENDS
                entries = await reader.entries(1)
                index = 256 + [e[len(CONTEXT) :] in digests for e in entries].index(True)
                leaf = h(b"\x00" + entries[index - 256])
                proof = await reader.inclusion_proof(index)
                merkle.verify_inclusion(leaf, index, cp.size, proof, cp.root_hash)
                cons = await reader.consistency_proof(old.size)
                merkle.verify_consistency(old.size, cp.size, cons, old.root_hash, cp.root_hash)
                with pytest.raises(ProofFailed):
                    merkle.verify_consistency(old.size, cp.size, cons, h(b"other"), cp.root_hash)

        asyncio.run(verify())
    finally:
        server.terminate()
        server.wait(timeout=10)


def _route_count(url: str, route: str) -> int:
    _, _, body = _get(url + "/metrics")
    total = 0
    for m in re.finditer(r"^securechan_relay_requests_total\{(.*)\} (\S+)$", body.decode(), re.M):
        if f'route="{route}"' in m[1]:
            total += int(float(m[2]))
    return total


def test_the_client_proves_consistency_from_tiles_not_the_proof_endpoint(
    relay: RelayProcess, logged: tuple[VerifierKey, list[bytes], list[str]]
) -> None:
    from securechan.client.tiles import relay_consistency

    key, _, notes = logged
    old, new = open_checkpoint(notes[5], key), open_checkpoint(notes[-1], key)
    assert 0 < old.size < new.size
    tiles_before = _route_count(relay.url, "/tile/{tile}")
    proofs_before = _route_count(relay.url, "/v1/log/proof/consistency")

    async def prove() -> None:
        async with RelayClient(relay.url, retry=RetryPolicy(attempts=2, timeout=10.0)) as rc:
            proof = await relay_consistency(rc, old.size, new.size)
            merkle.verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)

    asyncio.run(prove())
    assert _route_count(relay.url, "/tile/{tile}") > tiles_before
    assert _route_count(relay.url, "/v1/log/proof/consistency") == proofs_before


def test_a_log_upgraded_from_before_entries_serves_hash_tiles_and_only_new_bundles(
    tmp_path: Path,
) -> None:
    import json
    import shutil

    from securechan.relay.tlog import RelayLog
    from securechan.relay.tlog_tiles import read_tile
    from securechan.relay.writer_thread import open_in_thread

    fixtures = Path(__file__).parent / "fixtures" / "stores"
    expected = json.loads((fixtures / "expected.json").read_text())["relay"]
    shutil.copy(fixtures / "relay" / "tlog.db", tmp_path / "tlog.db")
    key = Ed25519SigningKey(bytes.fromhex(expected["relay_key_seed"]))
    old_size = expected["log_size"]

    async def check() -> None:
        log = await open_in_thread(RelayLog, tmp_path / "tlog.db", key)
        try:
            envs = [os.urandom(40) for _ in range(3)]
            for e in envs:
                await log.append(e)
            size = log.size
            assert size == old_size + 3
            tile = await read_tile(log, TileId(0, 0, size))
            leaves = [tile[i : i + 32] for i in range(0, len(tile), 32)]
            assert mth(leaves) == open_checkpoint(log.checkpoint(), log.verifier).root_hash
            assert leaves[-3:] == [h(b"\x00" + CONTEXT + h(e)) for e in envs]
            # The bundle mixes leaves with and without a kept entry: not served.
            with pytest.raises(LookupError, match="did not keep"):
                await read_tile(log, TileId(None, 0, size))
        finally:
            await log.close()

    asyncio.run(check())


def _memory_log(size: int) -> tuple[VerifierKey, dict[str, bytes]]:
    """A signed log of ``size`` entries as a dict of tlog-tiles paths."""
    from securechan.audit.checkpoint import Checkpoint
    from securechan.audit.note import NoteSigner, sign_note

    entries = [CONTEXT + h(i.to_bytes(4, "big")) for i in range(size)]
    tree = merkle.MemoryTree([h(b"\x00" + e) for e in entries])
    signer = NoteSigner("securechan-relay/test", Ed25519SigningKey(bytes(32)))
    text = Checkpoint(origin="securechan-relay/test", size=size, root_hash=tree.root()).to_text()
    site = {"checkpoint": sign_note(text, [signer]).encode()}
    for path, (level, n, w) in spec_tiles(size).items():
        if level is None:
            chunk = entries[n * 256 : n * 256 + w]
            site[path] = b"".join(len(e).to_bytes(2, "big") + e for e in chunk)
        else:
            site[path] = b"".join(tree.get_nodes(parse_path(path).nodes()))
    return signer.verifier, site


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 600])
def test_the_tile_reader_reads_entries_and_proofs_and_refuses_a_forged_entry(size: int) -> None:
    key, site = _memory_log(size)

    async def fetch(path: str) -> bytes | None:
        return site.get(path)

    async def read() -> None:
        reader = await TileReader.open(fetch, key)
        cp = reader.checkpoint
        last = (size - 1) // 256
        entries = await reader.entries(last)
        assert entries[-1] == CONTEXT + h((size - 1).to_bytes(4, "big"))
        proof = await reader.inclusion_proof(size - 1)
        merkle.verify_inclusion(h(b"\x00" + entries[-1]), size - 1, size, proof, cp.root_hash)
        # One changed byte in the bundle, then in the level 0 tile: refused.
        width = size - last * 256 if size - last * 256 < 256 else 256
        suffix = "" if width == 256 else f".p/{width}"
        for path in (
            f"tile/entries/{spec_index(last)}{suffix}",
            f"tile/0/{spec_index(last)}{suffix}",
        ):
            forged = dict(site)
            forged[path] = site[path][:-1] + bytes([site[path][-1] ^ 1])

            async def bad_fetch(p: str, forged: dict[str, bytes] = forged) -> bytes | None:
                return forged.get(p)

            bad = await TileReader.open(bad_fetch, key)
            with pytest.raises(ProofFailed):
                await bad.entries(last)

    asyncio.run(read())
