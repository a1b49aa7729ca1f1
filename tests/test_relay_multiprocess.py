"""Two relay processes on one PostgreSQL database serve one relay and one log
(issue 16, "Must show": the fault test with two relay processes).

Both run ``securechan relay serve --db postgresql://...`` on the same data
folder (so the same relay key and log key) and on two ports. A burst of
concurrent sends goes through both; one process is SIGKILLed in the middle.
Then, through the survivor:

- every send that was answered 2xx is stored exactly once, under the seq it
  was answered with, and seqs are unique;
- every receipt handed out by either process verifies, and every checkpoint
  either process signed during the burst is consistent with the final one
  (verified with the client-side RFC 9162 checks of ``audit/merkle.py``,
  which raise ``ProofFailed``; the proofs come from the survivor): the log is
  one append-only tree whichever process took the send;
- a receiver subscribed (WebSocket) at one process is woken by a send taken
  by the other (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import aiohttp
import pytest

from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.merkle import verify_consistency, verify_inclusion
from securechan.audit.note import VerifierKey
from securechan.audit.receipt import Receipt, envelope_leaf_hash
from securechan.errors import RelayError
from securechan.primitives import Ed25519SigningKey
from securechan.transport import FetchedEnvelope, RelayClient, RetryPolicy
from tests.adversary.relay import RelayProcess

pytestmark = pytest.mark.timeout(240)

BURST = 300
KILL_AFTER = 100
IN_FLIGHT = 32
PATIENT = RetryPolicy(attempts=8, base=0.1, cap=1.0, timeout=10.0)


def _pair(tmp_path: Path, url: str) -> tuple[RelayProcess, RelayProcess]:
    config = f'db = "{url}"\n'
    a = RelayProcess(tmp_path / "a", config=config)
    b = RelayProcess(tmp_path / "b", config=config)
    b.data = a.data  # one relay: the same key files, two processes
    return a, b


def _verifier(relay: RelayProcess) -> VerifierKey:
    out = (relay.root / "relay-0.out").read_text()
    line = next(x for x in out.splitlines() if x.startswith("log verifier key: "))
    return VerifierKey.from_text(line.removeprefix("log verifier key: "))


async def _fetch_all(
    client: RelayClient, rid: bytes, recipient: Ed25519SigningKey
) -> list[FetchedEnvelope]:
    out: list[FetchedEnvelope] = []
    after = 0
    while True:
        page = await client.fetch(rid, recipient, after=after)
        if not page:
            return out
        out.extend(page)
        after = page[-1].seq


def test_two_processes_one_log_sigkill_mid_burst(tmp_path: Path, postgres_url: str) -> None:
    a, b = _pair(tmp_path, postgres_url)
    a.start()
    try:
        b.start()
        try:
            asyncio.run(asyncio.wait_for(_burst(a, b), 200))
            b.stop()
            b.assert_no_traceback()
        finally:
            b.close()
    finally:
        a.close()


async def _burst(a: RelayProcess, b: RelayProcess) -> None:
    verifier = _verifier(a)
    assert _verifier(b).to_text() == verifier.to_text()
    recipient = Ed25519SigningKey.generate()
    sender = Ed25519SigningKey.generate()
    async with RelayClient(a.url, retry=PATIENT) as admin:
        ids = await admin.create_queue(recipient, sender_key=sender.public)
    msgs = [
        (secrets.token_bytes(16), secrets.token_bytes(64) + bytes([i % 256])) for i in range(BURST)
    ]
    by_id = dict(msgs)
    acked: dict[int, tuple[int, Receipt]] = {}  # index -> (seq, receipt)
    killed: list[int] = []

    async def one(i: int, client: RelayClient) -> None:
        msg_id, data = msgs[i]
        reply = await client.send_with_receipt(ids.sid, data, msg_id, sender=sender)
        assert not reply.duplicate
        acked[i] = (reply.seq, reply.receipt)
        if len(acked) >= KILL_AFTER and not killed:
            killed.append(len(acked))
            a.kill()

    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT), timeout=aiohttp.ClientTimeout(total=15)
        ) as session,
        RelayClient(a.url, retry=RetryPolicy(attempts=1), session=session) as via_a,
        RelayClient(b.url, retry=RetryPolicy(attempts=1), session=session) as via_b,
    ):
        results = await asyncio.gather(
            *(one(i, via_a if i % 2 else via_b) for i in range(BURST)), return_exceptions=True
        )
    assert killed, "the burst ended before the kill"
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert all(isinstance(r, RelayError) for r in failed.values()), failed
    assert failed, "nothing was in flight at the kill"
    assert all(i % 2 for i in failed), "a send through the survivor failed"
    seqs = [seq for seq, _ in acked.values()]
    assert len(set(seqs)) == len(seqs), "two acknowledged sends share a seq"

    async with RelayClient(b.url, retry=PATIENT) as client:
        held = await _fetch_all(client, ids.rid, recipient)
        seq_of = {e.msg_id: e.seq for e in held}
        assert len(seq_of) == len(held), "an envelope is stored twice"
        for e in held:
            assert by_id[e.msg_id] == e.data
        for i, (seq, _) in acked.items():
            assert seq_of.get(msgs[i][0]) == seq, f"acknowledged send {i} lost or moved"
        # One tree: the final checkpoint, and every receipt's checkpoint
        # consistent with it and its leaf included in it.
        final = open_checkpoint(await client.log_checkpoint(), verifier)
        assert final.size >= len(acked)
        for i, (_, receipt) in acked.items():
            cp = open_checkpoint(receipt.checkpoint, verifier)
            leaf = envelope_leaf_hash(msgs[i][1])
            index = receipt.leaf_index
            verify_inclusion(leaf, index, cp.size, receipt.inclusion_proof, cp.root_hash)
            if cp.size < final.size:
                proof = await client.consistency_proof(cp.size, final.size)
                verify_consistency(cp.size, final.size, proof, cp.root_hash, final.root_hash)
            else:
                assert cp.root_hash == final.root_hash
            path = await client.inclusion_proof(index, final.size)
            verify_inclusion(leaf, index, final.size, path, final.root_hash)
    print(
        f"\ntwo processes: {killed[0]} acknowledged at the kill, {len(acked)} in all, "
        f"{len(failed)} failed (all through the killed one), log size {final.size}"
    )


def test_a_send_through_one_process_wakes_a_subscriber_of_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    a, b = _pair(tmp_path, postgres_url)
    a.start()
    try:
        b.start()
        try:
            asyncio.run(asyncio.wait_for(_wake(a, b), 60))
        finally:
            b.close()
    finally:
        a.close()


async def _wake(a: RelayProcess, b: RelayProcess) -> None:
    recipient = Ed25519SigningKey.generate()
    sender = Ed25519SigningKey.generate()
    async with (
        RelayClient(a.url, retry=PATIENT) as via_a,
        RelayClient(b.url, retry=PATIENT) as via_b,
    ):
        ids = await via_a.create_queue(recipient, sender_key=sender.public)
        pushed: asyncio.Queue[FetchedEnvelope] = asyncio.Queue()

        async def listen() -> None:
            async for env in via_a.subscribe(ids.rid, recipient):
                await pushed.put(env)

        task = asyncio.create_task(listen())
        try:
            await asyncio.sleep(0.5)  # the WebSocket is up
            data = b"taken by the other process"
            await via_b.send(ids.sid, data, secrets.token_bytes(16), sender=sender)
            env = await asyncio.wait_for(pushed.get(), 20)
            assert env.data == data
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_reuse_port_spreads_connections_over_both_processes(
    tmp_path: Path, postgres_url: str
) -> None:
    config = f'db = "{postgres_url}"\nreuse_port = true\n'
    a = RelayProcess(tmp_path / "a", config=config)
    b = RelayProcess(tmp_path / "b", config=config)
    b.data, b.port, b.url = a.data, a.port, a.url  # one relay, one port, two processes
    a.start()
    try:
        b.start()
        try:
            before = {p.pid: _cpu_seconds(p.pid) for p in (a, b)}
            asyncio.run(asyncio.wait_for(_many_connections(a.url, 300), 60))
            used = {pid: _cpu_seconds(pid) - t for pid, t in before.items()}
            # Each process served a share of the 300 fresh connections.
            assert all(u > 0.02 for u in used.values()), used
            b.stop()
            a.stop()
        finally:
            b.close()
    finally:
        a.close()


async def _many_connections(url: str, n: int) -> None:
    connector = aiohttp.TCPConnector(force_close=True, limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.get(f"{url}/v1/relay") as r:
                assert r.status == 200

        await asyncio.gather(*(one() for _ in range(n)))


def test_reuse_port_without_postgresql_is_refused(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "r", config="reuse_port = true\n")
    with pytest.raises(AssertionError, match="reuse_port needs db"):
        relay.start(timeout=20)
    assert not (relay.data / "relay.db").exists()
