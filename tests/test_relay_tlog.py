"""The relay's transparency log against a real ``securechan relay serve`` (issue 5, items 2-4).

``docs/AUDIT.md`` ("Relay transparency log") is what is tested. Each relay is
a subprocess on 127.0.0.1 (port 0) with its own data folder; its config comes
from a TOML ``--config`` (``[log]`` and ``[limits]`` tables) and from
``DATA/witnesses.txt``. The client side is :class:`RelayClient` and the
verification functions of ``securechan.audit`` (the relay's code is never
trusted to check itself):

* every send gets a receipt whose checkpoint verifies with the log key that
  ``/v1/relay`` names and whose inclusion proof leads from the leaf the
  client computes from its own envelope to the checkpoint's root;
  duplicates get the original leaf; the same bytes are logged once;
  consistency proofs between every two checkpoints seen verify;
* 200 concurrent sends: one leaf per distinct envelope, the root equals the
  one recomputed from the client's leaves, and commits are shared;
* SIGKILL mid-burst and a stored-but-unlogged envelope: after the restart
  the log never went backwards, every acknowledged receipt still verifies,
  and the log holds exactly the envelopes relay.db holds;
* witnesses: cosign, post, served with the checkpoint (and after a restart);
  unknown witness 403, bad signature 403, forged tree 422, stale 409 with the
  current size (``text/x.tlog.size``), the witness's own rollback 409;
* relay.db and tlog.db hold no name, fingerprint or plaintext, and tlog.db
  only hashes;
* every status a log route answered is in ``docs/openapi.yaml``.

No pytest-asyncio: each test runs its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from securechan.audit.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    open_checkpoint,
    open_cosigned_checkpoint,
)
from securechan.audit.merkle import EMPTY_ROOT, root_from_leaf_hashes, verify_consistency
from securechan.audit.note import SIG_COSIGNATURE_V1, VerifierKey, keep_signatures, open_note
from securechan.audit.receipt import Receipt, envelope_leaf_hash, verify_receipt
from securechan.audit.tree import TreeStore
from securechan.client.channel import Channel
from securechan.client.results import Received
from securechan.errors import ProofFailed
from securechan.identity import Keystore
from securechan.primitives import KDF_INTERACTIVE, Ed25519SigningKey
from securechan.protocol.relay_auth import b64d
from securechan.relay.tlog import SCHEMA as tlog_schema
from securechan.relay.tlog import RelayLog
from securechan.relay.writer_thread import open_in_thread
from securechan.transport import RelayClient, RetryPolicy, SendReply

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).with_name("securechan")
HOST = "127.0.0.1"
STRICT = RetryPolicy(attempts=1, timeout=10.0)
PATIENT = RetryPolicy(attempts=6, base=0.1, cap=1.0, timeout=10.0)
LOG_ROUTES = {
    "/v1/log/checkpoint",
    "/v1/log/proof/inclusion",
    "/v1/log/proof/consistency",
    "/v1/log/cosignature",
}
# (METHOD, route, status) of the log routes, counted by every relay before it stopped.
OBSERVED: set[tuple[str, str, int]] = set()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def now() -> int:
    return int(time.time())


# --- witnesses (PUBLIC TEST DATA: seeds derived from public strings) ------------


def _witness(name: str) -> tuple[str, Ed25519SigningKey, VerifierKey]:
    key = Ed25519SigningKey(hashlib.sha256(f"securechan test witness {name}".encode()).digest())
    return name, key, VerifierKey(name=name, sig_type=SIG_COSIGNATURE_V1, public_key=key.public)


W1 = _witness("witness.example/delegation-a")  # configured in the [log] table
W2 = _witness("witness.example/delegation-b")  # configured in DATA/witnesses.txt
W3 = _witness("witness.example/stranger")  # configured nowhere


def cosign(w: tuple[str, Ed25519SigningKey, VerifierKey], note: str, cp: Checkpoint) -> str:
    """The witness's cosignature appended to the note, as posted."""
    name, key, _ = w
    return note + cosign_checkpoint(key, name, cp, timestamp=now())


# --- the relay process ------------------------------------------------------------


@dataclass
class LogRelay:
    data: Path
    proc: subprocess.Popen[bytes]
    port: int
    err: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def snapshot_metrics(self) -> None:
        """Record the log routes' request counters (for the OpenAPI check)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:  # noqa: S310
            text = resp.read().decode()
        for m in re.finditer(r"^securechan_relay_requests_total\{(.*)\} \S+$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
            if labels["route"] in LOG_ROUTES:
                OBSERVED.add((labels["method"], labels["route"], int(labels["status"])))

    def stop(self) -> None:
        """SIGTERM: must exit 0 without a traceback."""
        self.snapshot_metrics()
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0, self.err.read_text()
        assert "Traceback" not in self.err.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_relay(root: Path, name: str, config: str = "", *, data: Path | None = None) -> LogRelay:
    root.mkdir(parents=True, exist_ok=True)
    data = data or root / name
    n = len(list(root.glob(f"{name}-*.out")))
    args = [str(EXE), "relay", "serve", "--port", "0", "--data", str(data)]
    if config:
        cfg = root / f"{name}-{n}.toml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    out, err = root / f"{name}-{n}.out", root / f"{name}-{n}.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            args,
            stdout=fout,
            stderr=ferr,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    deadline = time.monotonic() + 20
    while not (m := re.search(r"^listening on http://127\.0\.0\.1:(\d+)$", out.read_text(), re.M)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"relay did not start: {out.read_text()} {err.read_text()}")
        time.sleep(0.05)
    assert re.search(r"^log verifier key: \S+$", out.read_text(), re.M), out.read_text()
    return LogRelay(data=data, proc=proc, port=int(m[1]), err=err)


@contextlib.contextmanager
def running(root: Path, name: str, config: str = "") -> Iterator[LogRelay]:
    relay = start_relay(root, name, config)
    try:
        yield relay
    finally:
        relay.kill()


def witness_config(*, origin: str | None = None, window: float | None = None) -> str:
    lines = ["[log]", f"witnesses = [{json.dumps(W1[2].to_text())}]"]
    if origin:
        lines.append(f"origin = {json.dumps(origin)}")
    if window is not None:
        lines.append(f"cosign_window = {window!r}")
    return "\n".join(lines) + "\n"


def write_witnesses_txt(data: Path) -> None:
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data / "witnesses.txt").write_text(f"# delegation B\n\n{W2[2].to_text()}\n")


# --- client helpers --------------------------------------------------------------


@dataclass(frozen=True)
class Queue:
    rid: bytes
    sid: bytes
    rkey: Ed25519SigningKey
    skey: Ed25519SigningKey | None


async def new_queue(rc: RelayClient, *, contact: bool = False) -> Queue:
    rkey = Ed25519SigningKey.generate()
    skey = None if contact else Ed25519SigningKey.generate()
    ids = await rc.create_queue(rkey, sender_key=skey.public if skey else None, contact=contact)
    return Queue(ids.rid, ids.sid, rkey, skey)


async def log_key(rc: RelayClient) -> VerifierKey:
    """The log's verifier key from /v1/relay: an Ed25519 note key of the relay key."""
    info = await rc.info()
    key = VerifierKey.from_text(info["log_verifier_key"])
    assert key.name == info["log_origin"]
    assert key.public_key == b64d(info["relay_key"], size=32)
    return key


def envelope(size: int = 200) -> bytes:
    return b"ENVELOPE-" + secrets.token_bytes(size)


async def send(rc: RelayClient, q: Queue, data: bytes, mid: bytes | None = None) -> SendReply:
    return await rc.send_with_receipt(q.sid, data, mid or os.urandom(16), sender=q.skey)


async def raw(
    s: aiohttp.ClientSession, relay: LogRelay, method: str, target: str, body: bytes = b""
) -> tuple[int, str, str]:
    async with s.request(method, relay.url + target, data=body or None) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def check_consistency(
    views: dict[int, Checkpoint], proofs: dict[tuple[int, int], tuple[bytes, ...]]
) -> None:
    for (old, new), proof in proofs.items():
        verify_consistency(old, new, proof, views[old].root_hash, views[new].root_hash)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tlog")


@pytest.fixture(scope="module")
def main(root: Path) -> Iterator[LogRelay]:
    """Default origin and window; witness W1 from the config, W2 from witnesses.txt."""
    write_witnesses_txt(root / "main")
    with running(root, "main", witness_config()) as relay:
        yield relay


# --- receipts -----------------------------------------------------------------------


def test_every_send_gets_a_receipt_that_verifies(main: LogRelay) -> None:
    async def go() -> None:
        async with RelayClient(main.url, retry=STRICT) as rc:
            key = await log_key(rc)
            info = await rc.info()
            log_pq_key = VerifierKey.from_text(info["log_mldsa44_verifier_key"])
            assert (log_pq_key.name, log_pq_key.sig_type) == (key.name, 0x06)
            fingerprint = hashlib.sha256(b64d(info["relay_key"])).hexdigest()
            assert key.name == f"securechan-relay/{fingerprint[:16]}"  # the default origin
            first = open_checkpoint(await rc.log_checkpoint(), key)
            assert (first.size, first.root_hash) == (0, EMPTY_ROOT)

            private, contact = await new_queue(rc), await new_queue(rc, contact=True)
            views: dict[int, Checkpoint] = {0: first}
            sent: list[tuple[bytes, bytes, SendReply]] = []
            for i in range(12):
                data, mid = envelope(), os.urandom(16)
                reply = await send(rc, contact if i % 3 == 0 else private, data, mid)
                assert not reply.duplicate
                cp = verify_receipt(reply.receipt, data, key)
                # Sequential sends on a fresh log: one leaf and one commit each.
                assert (reply.receipt.leaf_index, cp.size) == (i, i + 1)
                assert Receipt.from_json(reply.receipt.to_json()) == reply.receipt
                with pytest.raises(ProofFailed):
                    verify_receipt(reply.receipt, data + b"x", key)  # another envelope
                views[cp.size] = cp
                sent.append((data, mid, reply))
            size = len(sent)

            # A resend: the original leaf, proved against the newest checkpoint.
            data, mid, original = sent[3]
            again = await send(rc, private if 3 % 3 else contact, data, mid)
            assert again.duplicate and again.seq == original.seq
            assert again.receipt.leaf_index == original.receipt.leaf_index
            assert verify_receipt(again.receipt, data, key).size == size
            # A resend under the same id with other bytes: the receipt is the
            # stored envelope's, and does not prove the new bytes.
            data, mid, original = sent[4]
            other = await send(rc, private, envelope(), mid)
            assert other.duplicate and other.receipt.leaf_index == original.receipt.leaf_index
            verify_receipt(other.receipt, data, key)
            # The same bytes on another queue under a new id: stored, logged once.
            copy = await send(rc, private, sent[0][0])
            assert not copy.duplicate
            assert copy.receipt.leaf_index == 0
            assert verify_receipt(copy.receipt, sent[0][0], key).size == size
            # send() keeps its old answer.
            seq, duplicate = await rc.send(
                private.sid, envelope(), os.urandom(16), sender=private.skey
            )
            assert (seq, duplicate) == (copy.seq + 1, False)
            size += 1
            views[size] = open_checkpoint(await rc.log_checkpoint(), key)

            # Consistency between every two checkpoints seen, 0 included.
            proofs = {
                (a, b): await rc.consistency_proof(a, b) for a in views for b in views if a <= b
            }
            assert proofs[(0, size)] == () and proofs[(size, size)] == ()
            check_consistency(views, proofs)
            bent = list(proofs[(5, 9)])
            bent[0] = bytes([bent[0][0] ^ 1]) + bent[0][1:]
            with pytest.raises(ProofFailed):
                verify_consistency(5, 9, bent, views[5].root_hash, views[9].root_hash)

            # Past checkpoints are served again: the same text and Ed25519 line
            # (deterministic); the ML-DSA-44 line is hedged (FIPS 204), so it
            # differs between two signings but verifies each time.
            for data, _, reply in sent:
                cp = open_checkpoint(reply.receipt.checkpoint, key)
                again = await rc.log_checkpoint(cp.size)
                assert again.splitlines()[:5] == reply.receipt.checkpoint.splitlines()[:5]
                assert len(again.splitlines()) == 6
                for note in (again, reply.receipt.checkpoint):
                    assert open_note(note, [log_pq_key]).verified_by(log_pq_key)
                proof = await rc.inclusion_proof(reply.receipt.leaf_index, size)
                verify_receipt(
                    Receipt(
                        leaf_index=reply.receipt.leaf_index,
                        checkpoint=await rc.log_checkpoint(size),
                        inclusion_proof=proof,
                    ),
                    data,
                    key,
                )

    run(go())


def test_log_routes_refuse_bad_queries(main: LogRelay) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s, RelayClient(main.url, retry=STRICT) as rc:
            q = await new_queue(rc)
            await send(rc, q, envelope())
            size = open_checkpoint(await rc.log_checkpoint(), await log_key(rc)).size
            cases = [
                ("GET", f"/v1/log/proof/inclusion?index={size}&size={size}", 400),
                ("GET", f"/v1/log/proof/inclusion?index=0&size={size + 1}", 404),
                ("GET", "/v1/log/proof/inclusion?index=0", 400),
                ("GET", f"/v1/log/proof/inclusion?index=0&size={size}&x=1", 400),
                ("GET", f"/v1/log/proof/inclusion?index=0&index=0&size={size}", 400),
                ("GET", f"/v1/log/proof/inclusion?index=-1&size={size}", 400),
                ("GET", f"/v1/log/proof/consistency?old={size}&new=1", 400),
                ("GET", f"/v1/log/proof/consistency?old=0&new={size + 1}", 404),
                ("GET", "/v1/log/proof/consistency?old=1&new=9999999999999999999999", 400),
                ("GET", f"/v1/log/checkpoint?size={size + 1}", 404),
                ("GET", "/v1/log/checkpoint?size=x", 400),
                ("GET", "/v1/log/checkpoint?since=1", 400),
                ("POST", "/v1/log/cosignature", 400),
            ]
            for method, target, status in cases:
                body = b"not a note\n" if method == "POST" else b""
                got, ctype, text = await raw(s, main, method, target, body)
                assert got == status, (target, got, text)
                assert ctype.startswith("application/json")
                assert isinstance(json.loads(text)["error"]["code"], str)
            got, ctype, text = await raw(s, main, "GET", "/v1/log/checkpoint")
            assert got == 200 and ctype.startswith("text/plain") and "\n\n\u2014 " in text
            got, _, text = await raw(s, main, "GET", "/v1/log/proof/consistency?old=0&new=0")
            assert (got, json.loads(text)) == (200, {"old": 0, "new": 0, "hashes": []})

    run(go())


# --- concurrency --------------------------------------------------------------------


def test_200_concurrent_sends_make_one_consistent_log_and_share_commits(root: Path) -> None:
    """200 distinct envelopes at once, plus 20 resends racing them."""

    async def go() -> tuple[int, int]:
        async with RelayClient(relay.url, retry=PATIENT) as rc:
            key = await log_key(rc)
            queues = [await new_queue(rc) for _ in range(2)]  # under each queue's burst
            items = [(queues[i % 2], envelope(), os.urandom(16)) for i in range(200)]
            resends = items[::10]
            replies = await asyncio.gather(
                *(send(rc, q, d, m) for q, d, m in items),
                *(send(rc, q, d, m) for q, d, m in resends),
            )
            final = open_checkpoint(await rc.log_checkpoint(), key)
        leaf_of: dict[int, bytes] = {}
        for (_, data, _), reply in zip(items + resends, replies, strict=True):
            verify_receipt(reply.receipt, data, key)
            assert leaf_of.setdefault(reply.receipt.leaf_index, data) == data
        assert final.size == 200 == len(leaf_of)
        assert sorted(leaf_of) == list(range(200))
        # The tree the relay signed is the one of the client's own leaves.
        leaves = [envelope_leaf_hash(leaf_of[i]) for i in range(200)]
        assert root_from_leaf_hashes(leaves) == final.root_hash
        assert sum(r.duplicate for r in replies) == len(resends)
        commits = len({open_checkpoint(r.receipt.checkpoint, key).size for r in replies})
        return commits, len(replies)

    relay = start_relay(root, "burst")
    try:
        commits, answered = run(go())
        relay.stop()
    finally:
        relay.kill()
    print(f"\n{answered} sends answered from {commits} log commits")
    assert commits <= 100, f"{commits} commits for 200 envelopes: appends are not batched"


# --- crash safety --------------------------------------------------------------------


def relay_db_leaves(data: Path) -> list[bytes]:
    conn = sqlite3.connect(f"file:{data / 'relay.db'}?mode=ro", uri=True)
    try:
        return [envelope_leaf_hash(d) for (d,) in conn.execute("SELECT data FROM envelopes")]
    finally:
        conn.close()


def tlog_leaves(data: Path) -> list[bytes]:
    with TreeStore(data / "tlog.db", schema=tlog_schema) as tree:
        return [tree.leaf_hash(i) for i in range(tree.size)]


def test_sigkill_then_restart_log_and_relay_db_agree(root: Path) -> None:
    relay = start_relay(root, "crash")
    acked: list[tuple[bytes, bytes, SendReply]] = []

    async def burst() -> tuple[Queue, VerifierKey]:
        async with RelayClient(relay.url, retry=STRICT) as rc:
            key = await log_key(rc)
            q = await new_queue(rc)
        connector = aiohttp.TCPConnector(limit=30)
        async with (
            aiohttp.ClientSession(connector=connector) as s,
            RelayClient(relay.url, retry=STRICT, session=s) as rc,
        ):

            async def one(data: bytes, mid: bytes) -> None:
                reply = await send(rc, q, data, mid)
                acked.append((data, mid, reply))
                if len(acked) == 50:
                    os.kill(relay.proc.pid, signal.SIGKILL)

            await asyncio.gather(
                *(one(envelope(), os.urandom(16)) for _ in range(150)), return_exceptions=True
            )
        return q, key

    try:
        q, key = run(burst())
        assert relay.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        relay.kill()
    assert 50 <= len(acked) < 150, len(acked)
    # The crash gap, made certain: an envelope committed to relay.db whose
    # log append never happened (written as the relay's storage would).
    lost = b"ENVELOPE-stored-but-never-logged-" + secrets.token_bytes(32)
    lost_id = os.urandom(16)
    conn = sqlite3.connect(relay.data / "relay.db")
    try:
        with conn:
            (seq,) = conn.execute("SELECT next_seq FROM queues WHERE rid = ?", (q.rid,)).fetchone()
            conn.execute(
                "INSERT INTO envelopes (rid, seq, msg_id, data, received) VALUES (?, ?, ?, ?, ?)",
                (q.rid, seq, lost_id, lost, now()),
            )
    finally:
        conn.close()

    again = start_relay(root, "crash", data=relay.data)
    try:

        async def check() -> None:
            async with RelayClient(again.url, retry=PATIENT) as rc:
                assert await log_key(rc) == key
                head = open_checkpoint(await rc.log_checkpoint(), key)
                seen = {open_checkpoint(r.receipt.checkpoint, key) for _, _, r in acked}
                assert head.size >= max(cp.size for cp in seen), "the log went backwards"
                for cp in seen:  # the same history, extended
                    proof = await rc.consistency_proof(cp.size, head.size)
                    verify_consistency(cp.size, head.size, proof, cp.root_hash, head.root_hash)
                for data, _, reply in acked:  # every acknowledged leaf, in the new tree
                    proof = await rc.inclusion_proof(reply.receipt.leaf_index, head.size)
                    verify_receipt(
                        Receipt(
                            leaf_index=reply.receipt.leaf_index,
                            checkpoint=await rc.log_checkpoint(head.size),
                            inclusion_proof=proof,
                        ),
                        data,
                        key,
                    )
                # The unlogged envelope was logged at start-up; its resend says so.
                reply = await send(rc, q, lost, lost_id)
                assert reply.duplicate
                assert verify_receipt(reply.receipt, lost, key).size == head.size

        run(check())
        assert "appended" in again.err.read_text()
        again.stop()
    finally:
        again.kill()
    held, logged = relay_db_leaves(relay.data), tlog_leaves(relay.data)
    assert len(logged) == len(set(logged)), "a leaf is logged twice"
    assert sorted(held) == sorted(logged), "relay.db and tlog.db disagree"


# --- witnesses --------------------------------------------------------------------------


def test_witnesses_cosign_and_the_relay_serves_their_cosignatures(
    main: LogRelay, root: Path
) -> None:
    async def go() -> None:
        async with RelayClient(main.url, retry=STRICT) as rc:
            key = await log_key(rc)
            q = await new_queue(rc)
            await send(rc, q, envelope())
            # Witness 1: nothing cosigned before (old size 0), so the proof is empty.
            note = await rc.log_checkpoint()
            cp = open_checkpoint(note, key)
            assert await rc.consistency_proof(0, cp.size) == ()
            verify_consistency(0, cp.size, (), EMPTY_ROOT, cp.root_hash)
            answer = await rc.post_cosignature(cosign(W1, note, cp))
            assert answer.accepted and answer.checkpoint is not None
            got = open_cosigned_checkpoint(answer.checkpoint, key, [W1[2]], required=1, now=now())
            assert got.checkpoint == cp
            # Witness 2 (from witnesses.txt) cosigns the same checkpoint.
            answer = await rc.post_cosignature(cosign(W2, note, cp))
            assert answer.accepted
            served = await rc.log_checkpoint()
            both = open_cosigned_checkpoint(served, key, [W1[2], W2[2]], required=2, now=now())
            assert {c.cosigner for c in both.cosignatures} == {W1[2], W2[2]}

            async with aiohttp.ClientSession() as s:

                async def refused(body: str, status: int, code: str) -> None:
                    got, ctype, text = await raw(
                        s, main, "POST", "/v1/log/cosignature", body.encode()
                    )
                    assert (got, json.loads(text)["error"]["code"]) == (status, code), text
                    assert ctype.startswith("application/json")

                await refused(cosign(W3, note, cp), 403, "unknown_witness")
                line = cosign_checkpoint(W1[1], W1[0], cp, timestamp=now())
                sig = base64.b64decode(line.split()[-1])
                bad = base64.b64encode(sig[:-1] + bytes([sig[-1] ^ 1])).decode()
                await refused(note + line.rsplit(" ", 1)[0] + f" {bad}\n", 403, "bad_signature")
                forged = Checkpoint(origin=cp.origin, size=cp.size, root_hash=bytes(32))
                forged_note = note.replace(cp.to_text(), forged.to_text())
                await refused(cosign(W1, forged_note, forged), 422, "not_in_log")
                other = Checkpoint(origin="another.example/log", size=1, root_hash=bytes(32))
                await refused(
                    cosign(W1, other.to_text() + "\n" + note.split("\n\n")[1], other),
                    400,
                    "malformed",
                )

                # The log grows; witness 1 checks consistency and cosigns the new head.
                await send(rc, q, envelope())
                new_note = await rc.log_checkpoint()
                new = open_checkpoint(new_note, key)
                proof = await rc.consistency_proof(cp.size, new.size)
                verify_consistency(cp.size, new.size, proof, cp.root_hash, new.root_hash)
                assert (await rc.post_cosignature(cosign(W1, new_note, new))).accepted
                # Witness 1 going back to the older checkpoint is a rollback: 409.
                stale = await rc.post_cosignature(cosign(W1, note, cp))
                assert (stale.accepted, stale.log_size) == (False, new.size)
                got, ctype, text = await raw(
                    s, main, "POST", "/v1/log/cosignature", cosign(W1, note, cp).encode()
                )
                assert (got, ctype, text) == (409, "text/x.tlog.size", f"{new.size}\n")
            # Each checkpoint is served with the cosignatures made on it.
            head = open_cosigned_checkpoint(
                await rc.log_checkpoint(), key, [W1[2], W2[2]], required=1
            )
            assert [c.cosigner for c in head.cosignatures] == [W1[2]]
            old = open_cosigned_checkpoint(
                await rc.log_checkpoint(cp.size), key, [W1[2], W2[2]], required=1
            )
            assert [c.cosigner for c in old.cosignatures] == [W2[2]]

    run(go())


def test_cosignatures_survive_a_restart_and_stale_checkpoints_get_409(root: Path) -> None:
    """cosign_window = 0: only the newest checkpoint may be cosigned; a custom origin."""
    origin = "relay.example/securechan-test"
    data = root / "strict"
    write_witnesses_txt(data)
    config = witness_config(origin=origin, window=0)
    relay = start_relay(root, "strict", config)

    async def cosign_then_grow() -> tuple[int, str]:
        async with RelayClient(relay.url, retry=STRICT) as rc:
            key = await log_key(rc)
            assert key.name == origin
            q = await new_queue(rc)
            await send(rc, q, envelope())
            note = await rc.log_checkpoint()
            cp = open_checkpoint(note, key)
            assert (await rc.post_cosignature(cosign(W2, note, cp))).accepted
            served = await rc.log_checkpoint()
            await send(rc, q, envelope())
            stale = await rc.post_cosignature(cosign(W1, note, cp))
            assert (stale.accepted, stale.log_size) == (False, cp.size + 1)
            return cp.size, served

    try:
        size, served = run(cosign_then_grow())
        relay.stop()
    finally:
        relay.kill()
    again = start_relay(root, "strict", config, data=data)
    try:

        async def after_restart() -> None:
            async with RelayClient(again.url, retry=STRICT) as rc:
                key = await log_key(rc)
                # The cosignature is kept: the same note but for the log's own
                # ML-DSA-44 line, which is hedged (made again after a restart).
                w2 = W2[2]
                again_note = await rc.log_checkpoint(size)
                assert keep_signatures(again_note, [key, w2]) == keep_signatures(served, [key, w2])
                assert len(again_note.splitlines()) == len(served.splitlines())
                open_cosigned_checkpoint(served, key, [W2[2]], required=1)

        run(after_restart())
        again.stop()
    finally:
        again.kill()


def test_a_relay_refuses_a_log_of_another_origin(root: Path) -> None:
    """A log's origin and key never change: tlog.db of another log is refused."""
    data = root / "foreign"
    data.mkdir(mode=0o700)

    async def make() -> None:
        tlog = await open_in_thread(
            RelayLog,
            data / "tlog.db",
            Ed25519SigningKey.generate(),
            origin="relay.example/other-log",
        )
        await tlog.close()

    run(make())
    proc = subprocess.run(
        [str(EXE), "relay", "serve", "--port", "0", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "relay.example/other-log" in proc.stderr, proc.stderr


# --- what the relay keeps ---------------------------------------------------------------


def test_relay_files_hold_no_names_fingerprints_or_plaintext(root: Path) -> None:
    homes = root / "homes"
    parties = {}
    for name in ("tehran", "washington"):
        ks = Keystore(homes / name)
        parties[name] = (ks, ks.create(name, f"{name}'s long test passphrase", kdf=KDF_INTERACTIVE))
    texts = [f"CONFIDENTIAL draft {i} {secrets.token_hex(4)}" for i in range(3)]

    async def converse() -> None:
        (tks, tid), (wks, wid) = parties["tehran"], parties["washington"]
        async with Channel(tks, tid, retry=PATIENT) as tc, Channel(wks, wid, retry=PATIENT) as wc:
            card_t, card_w = await tc.register(relay.url), await wc.register(relay.url)
            tks.contacts.add(wks.public_identity(), card=card_w.to_bytes())
            wks.contacts.add(tks.public_identity(), card=card_t.to_bytes())
            for text in texts:
                await tc.send_text("washington", text)
            got: list[str] = []
            for _ in range(50):
                got += [r.text for r in await wc.receive() if isinstance(r, Received) and r.text]
                if len(got) >= len(texts):
                    break
                await asyncio.sleep(0.1)
            assert got == texts

    relay = start_relay(root, "privacy")
    try:
        run(converse())
        files = {p.name: p.read_bytes() for p in relay.data.iterdir() if p.is_file()}
        relay.stop()
    finally:
        relay.kill()
    files |= {p.name: p.read_bytes() for p in relay.data.iterdir() if p.is_file()}
    assert {"relay.db", "tlog.db"} <= set(files)
    needles: dict[str, bytes] = {}
    for name, (ks, _) in parties.items():
        fp = ks.public_identity().fingerprint
        needles |= {
            f"name {name}": name.encode(),
            f"fingerprint of {name}": fp.digest,
            f"hex fingerprint of {name}": fp.digest.hex().encode(),
            f"shown fingerprint of {name}": str(fp).encode(),
        }
    needles |= {f"text {i}": t.encode() for i, t in enumerate(texts)}
    found = [
        f"{label} in {fname}"
        for fname, raw_bytes in files.items()
        for label, needle in needles.items()
        if needle in (raw_bytes.lower() if label.startswith("name") else raw_bytes)
    ]
    assert not found, found
    # tlog.db holds hashes only: no envelope bytes, ids or keys of queues.
    conn = sqlite3.connect(f"file:{relay.data / 'relay.db'}?mode=ro", uri=True)
    try:
        secrets_ = [
            d[i : i + 24] for (d,) in conn.execute("SELECT data FROM envelopes") for i in (0, 100)
        ]
        secrets_ += [
            v for row in conn.execute("SELECT rid, sid, recipient_key FROM queues") for v in row
        ]
    finally:
        conn.close()
    assert secrets_
    tlog_bytes = files["tlog.db"] + files.get("tlog.db-wal", b"")
    assert not [s for s in secrets_ if s in tlog_bytes]
    conn = sqlite3.connect(f"file:{relay.data / 'tlog.db'}?mode=ro", uri=True)
    try:
        blobs = conn.execute("SELECT hash FROM nodes UNION ALL SELECT leaf FROM relay_log_leaves")
        assert all(len(b) == 32 for (b,) in blobs)
    finally:
        conn.close()


# --- the OpenAPI document -------------------------------------------------------------


def test_zz_main_relay_stops_cleanly(main: LogRelay) -> None:
    main.stop()


def test_zz_openapi_lists_every_status_the_log_routes_answered() -> None:
    if importlib.util.find_spec("yaml") is None:
        pytest.skip("PyYAML is not installed")
    import yaml

    spec = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text("utf-8"))["paths"]
    assert set(spec) >= LOG_ROUTES
    if not OBSERVED:
        pytest.skip("no request counters were recorded: run the whole module")
    missing = sorted(
        f"{m} {route} -> {status}"
        for m, route, status in OBSERVED
        if str(status) not in spec[route][m.lower()]["responses"]
    )
    assert not missing, "answered but not in docs/openapi.yaml:\n" + "\n".join(missing)
    assert {(m, r) for m, r, _ in OBSERVED} == {
        ("GET", "/v1/log/checkpoint"),
        ("GET", "/v1/log/proof/inclusion"),
        ("GET", "/v1/log/proof/consistency"),
        ("POST", "/v1/log/cosignature"),
    }


def test_batch_inclusion_proofs_equal_the_tree_s(tmp_path: Path) -> None:
    # The writer computes a batch's proofs at once (relay/tlog.py); they must
    # be exactly RFC 9162's, as TreeStore computes them one by one.
    from securechan.relay.tlog_proofs import inclusion_proofs as _inclusion_proofs

    tree = TreeStore(tmp_path / "tree.db", synchronous="NORMAL")
    try:
        rng = secrets.SystemRandom()
        for total in [*range(1, 40), 255, 256, 257, 1000]:
            tree.append_many_leaf_hashes([os.urandom(32) for _ in range(total - tree.size)])
            for size in {total, max(1, total - 5), rng.randint(1, total)}:
                batch = set(range(max(0, size - 20), size)) | {0, rng.randrange(size)}
                got = _inclusion_proofs(tree, batch, size)
                assert got == {i: tree.inclusion_proof(i, size) for i in batch}
    finally:
        tree.close()


def test_tree_store_commits_the_callers_rows_with_the_leaves(tmp_path: Path) -> None:
    """The log writes its leaf index through ``append_many_leaf_hashes(also=)``:
    one transaction with the tree's rows, so a failing hook appends nothing."""
    leaves = [hashlib.sha256(b"leaf %d" % i).digest() for i in range(5)]
    with TreeStore(tmp_path / "t.db") as tree:
        tree.connection.execute("CREATE TABLE side (idx INTEGER)")
        assert tree.appended == (0, EMPTY_ROOT)

        def rows(conn: sqlite3.Connection, start: int) -> None:
            conn.executemany("INSERT INTO side VALUES (?)", [(start + i,) for i in range(3)])

        assert tree.append_many_leaf_hashes(leaves[:3], also=rows) == range(3)
        assert tree.appended == (3, root_from_leaf_hashes(leaves[:3])) == (3, tree.root())

        def fails(conn: sqlite3.Connection, start: int) -> None:
            conn.execute("INSERT INTO side VALUES (?)", (start,))
            raise RuntimeError("refused")

        with pytest.raises(RuntimeError):
            tree.append_many_leaf_hashes(leaves[3:], also=fails)
        assert tree.size == 3 and tree.appended[0] == 3
        assert [r[0] for r in tree.connection.execute("SELECT idx FROM side")] == [0, 1, 2]
        assert tree.append_many_leaf_hashes(leaves[3:]) == range(3, 5)
        assert tree.appended == (5, root_from_leaf_hashes(leaves)) == (5, tree.root())
