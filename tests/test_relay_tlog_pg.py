"""The relay's transparency log on PostgreSQL (issue 16, item 1, the log side).

The log's own behaviour is tested against both backends (``tlog.db`` through
:class:`RelayLog`, PostgreSQL through :class:`PgRelayLog`), always verified
with the client's functions (``securechan.audit``: receipts, RFC 9162
consistency, roots recomputed from the leaves), never with the log's code:

* receipts verify with the log key; a duplicate keeps its leaf; the root is
  the one recomputed from the leaves in index order; every two checkpoints
  are consistent; a leaf's receipt is found by its hash;
* reopening keeps the log; another origin or key is refused;
* witness cosignatures are stored, served and (PostgreSQL) seen by another
  process's log; stale ones get the log's size;
* start-up repair appends what relay.db holds and the log lacks.

PostgreSQL only (a real server from the ``postgres_server`` fixture, or one
this file starts and kills):

* two OS processes append concurrently to one log, one is SIGKILLed
  mid-burst: every acknowledged append is in the tree exactly once, at the
  index its receipt names, and every checkpoint either process handed out
  is consistent with the final one (one tree, no fork);
* PostgreSQL itself SIGKILLed (``pg_ctl stop -m immediate``) during a burst
  and restarted: nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from securechan.audit.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint
from securechan.audit.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from securechan.audit.note import SIG_COSIGNATURE_V1, SignedNote, VerifierKey
from securechan.audit.receipt import Receipt, envelope_leaf_hash, verify_receipt
from securechan.errors import StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.relay.pg_tlog import PgRelayLog
from securechan.relay.tlog import CosignatureRefused, RelayLog
from securechan.relay.tlog_open import open_relay_log
from securechan.relay.writer_thread import open_in_thread

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# PUBLIC TEST KEYS: seeds derived from public strings.
KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test pg log key").digest())
OTHER = Ed25519SigningKey(hashlib.sha256(b"securechan test other log key").digest())
WKEY = Ed25519SigningKey(hashlib.sha256(b"securechan test pg witness").digest())
WNAME = "witness.example/pg"
WITNESS = VerifierKey(name=WNAME, sig_type=SIG_COSIGNATURE_V1, public_key=WKEY.public)

Opener = Callable[..., Coroutine[Any, Any, RelayLog]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's log lives: a tlog.db path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "tlog.db")
    return str(request.getfixturevalue("postgres_url"))


async def open_log(where: str, key: Ed25519SigningKey = KEY, **kw: Any) -> RelayLog:
    """The log as ``relay serve`` opens it (:func:`open_relay_log`)."""
    if where.startswith("postgresql://"):
        tlog = await open_relay_log(Path("unused"), key, db=where, **kw)
        assert isinstance(tlog, PgRelayLog)
        return tlog
    return await open_relay_log(Path(where).parent, key, **kw)


@asynccontextmanager
async def opened(where: str, key: Ed25519SigningKey = KEY, **kw: Any) -> AsyncIterator[RelayLog]:
    tlog = await open_log(where, key, **kw)
    try:
        yield tlog
    finally:
        await tlog.close()


def envelope(n: int, tag: str = "e") -> bytes:
    return f"securechan test envelope {tag} {n}".encode() * 3


def check_consistent(tlog_proof: list[bytes], old: Checkpoint, new: Checkpoint) -> None:
    verify_consistency(old.size, new.size, tlog_proof, old.root_hash, new.root_hash)


# --- both backends ------------------------------------------------------------------


def test_receipts_verify_duplicates_keep_their_leaf_and_the_root_is_recomputed(
    where: str,
) -> None:
    async def go() -> None:
        async with opened(where) as tlog:
            bodies = [envelope(n) for n in range(120)]
            # Every body twice, concurrently: one leaf each.
            receipts = await asyncio.gather(*(tlog.append(b) for b in bodies + bodies))
            by_body: dict[bytes, int] = {}
            for body, receipt in zip(bodies + bodies, receipts, strict=True):
                cp = verify_receipt(receipt, body, tlog.verifier)
                assert cp.size >= receipt.leaf_index + 1
                assert by_body.setdefault(body, receipt.leaf_index) == receipt.leaf_index
            assert sorted(by_body.values()) == list(range(len(bodies)))
            assert tlog.size == len(bodies)
            final = open_checkpoint(tlog.checkpoint(), tlog.verifier)
            order = sorted(bodies, key=by_body.__getitem__)
            assert final.root_hash == root_from_leaf_hashes(envelope_leaf_hash(b) for b in order)
            # A digest given by the caller makes the same leaf.
            again = await tlog.append(bodies[7], digest=hashlib.sha256(bodies[7]).digest())
            assert again.leaf_index == by_body[bodies[7]]
            # Found by its hash; a leaf never logged is not.
            found = await tlog.receipt_for(bodies[3])
            assert found is not None and found.leaf_index == by_body[bodies[3]]
            verify_receipt(found, bodies[3], tlog.verifier)
            assert await tlog.receipt_for(b"never logged") is None

    run(go())


def test_every_two_checkpoints_are_consistent_and_proofs_verify(where: str) -> None:
    async def go() -> None:
        async with opened(where) as tlog:
            for n in range(37):
                await tlog.append(envelope(n))
            cps = [
                open_checkpoint(await tlog.checkpoint_at(size), tlog.verifier)
                for size in range(tlog.size + 1)
            ]
            for old in cps[::3]:
                for new in cps[old.size :: 5]:
                    proof = await tlog.consistency_proof(old.size, new.size)
                    check_consistent(proof, old, new)
            leaf = envelope_leaf_hash(envelope(11))
            for size in (12, 20, 37):
                proof = await tlog.inclusion_proof(11, size)
                verify_inclusion(leaf, 11, size, proof, cps[size].root_hash)
            with pytest.raises(ValueError, match="no checkpoint of that size"):
                await tlog.consistency_proof(3, 38)
            with pytest.raises(ValueError, match="index < size"):
                await tlog.inclusion_proof(37, 37)

    run(go())


def test_reopening_keeps_the_log_and_another_origin_or_key_is_refused(where: str) -> None:
    async def go() -> None:
        async with opened(where) as tlog:
            first = await tlog.append(envelope(1))
            await tlog.append(envelope(2))
            cp = open_checkpoint(tlog.checkpoint(), tlog.verifier)
        async with opened(where) as tlog:
            assert tlog.size == 2
            assert open_checkpoint(tlog.checkpoint(), tlog.verifier) == cp
            again = await tlog.append(envelope(1))
            assert again.leaf_index == first.leaf_index
        with pytest.raises(StorageError, match="origin and key never change"):
            await open_log(where, OTHER)
        with pytest.raises(StorageError, match="origin and key never change"):
            await open_log(where, KEY, origin="example.org/another-log")

    run(go())


def cosigned(note: str, cp: Checkpoint) -> bytes:
    return (note + cosign_checkpoint(WKEY, WNAME, cp, timestamp=int(time.time()))).encode()


def test_cosignatures_are_stored_served_and_stale_ones_get_the_size(where: str) -> None:
    async def go() -> None:
        async with opened(where, witnesses=[WITNESS], cosign_window=0) as tlog:
            for n in range(5):
                await tlog.append(envelope(n))
            note = tlog.checkpoint()
            cp = open_checkpoint(note, tlog.verifier)
            served = await tlog.add_cosignatures(cosigned(note, cp))
            names = [s.name for s in SignedNote.from_text_unverified(served).signatures]
            assert WNAME in names
            assert WNAME in tlog.checkpoint()
            await tlog.append(envelope(99))
            # Window 0: only the newest checkpoint may be cosigned.
            with pytest.raises(CosignatureRefused) as refused:
                await tlog.add_cosignatures(cosigned(note, cp))
            assert refused.value.reason == "stale" and refused.value.log_size == 6
        async with opened(where, witnesses=[WITNESS]) as tlog:
            assert WNAME in await tlog.checkpoint_at(5)

    run(go())


def test_start_up_repair_appends_what_relay_db_holds(where: str, tmp_path: Path) -> None:
    from securechan.relay.sqlite_store import SqliteStorage
    from securechan.relay.storage import QueueRecord

    async def go() -> None:
        storage = await open_in_thread(SqliteStorage, tmp_path / "relay.db")
        try:
            rid = os.urandom(16)
            queue = QueueRecord(
                rid=rid,
                sid=os.urandom(16),
                recipient_key=os.urandom(32),
                sender_key=None,
                contact=True,
                created=int(time.time()),
            )
            await storage.create_queue(queue)
            bodies = [envelope(n, "stored") for n in range(7)]
            for body in bodies:
                msg_id = hashlib.sha256(body).digest()[:16]
                await storage.put_envelope(rid, msg_id, body, now=int(time.time()), max_depth=100)
            async with opened(where) as tlog:
                await tlog.append(bodies[0])
                assert await tlog.repair(storage) == 6
                for body in bodies:
                    receipt = await tlog.receipt_for(body)
                    assert receipt is not None
                    verify_receipt(receipt, body, tlog.verifier)
                assert await tlog.repair(storage) == 0
        finally:
            await storage.close()

    run(go())


# --- PostgreSQL: several processes ----------------------------------------------------


def test_a_second_process_log_sees_appends_and_cosignatures(postgres_url: str) -> None:
    async def go() -> None:
        async with (
            opened(postgres_url, witnesses=[WITNESS]) as a,
            opened(postgres_url, witnesses=[WITNESS]) as b,
        ):
            ra = await asyncio.gather(*(a.append(envelope(n, "a")) for n in range(30)))
            rb = await asyncio.gather(*(b.append(envelope(n, "b")) for n in range(30)))
            indices = {r.leaf_index for r in ra + rb}
            assert indices == set(range(60))
            deadline = time.monotonic() + 5
            while a.size != 60 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert a.checkpoint() == b.checkpoint()
            note = b.checkpoint()
            await a.add_cosignatures(cosigned(note, open_checkpoint(note, a.verifier)))
            while WNAME not in b.checkpoint() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert WNAME in b.checkpoint()

    run(go())


def _worker(url: str, tag: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(HERE / "pg_log_worker.py"), url, tag, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _acknowledged(lines: list[str]) -> list[tuple[bytes, Receipt]]:
    out = []
    for line in lines:
        if not line.endswith("\n"):
            continue  # the process died mid-line: that answer never got out
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a worker line: {line[:120]!r}") from None
        if "e" in data:
            out.append((bytes.fromhex(data["e"]), Receipt.from_json(data["r"])))
    return out


async def _check_one_tree(url: str, acked: list[tuple[bytes, Receipt]]) -> int:
    """Every acknowledged append is in the final tree once, at its index,
    and every checkpoint handed out is consistent with the final one."""
    import psycopg

    async with opened(url) as tlog:
        key = tlog.verifier
        final = open_checkpoint(tlog.checkpoint(), key)
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT leaf, idx FROM relay_log_leaves ORDER BY idx").fetchall()
        leaves = [bytes(leaf) for leaf, _ in rows]
        # One leaf per index, 0 .. size-1, and the root is recomputed from them.
        assert [idx for _, idx in rows] == list(range(final.size))
        assert len(set(leaves)) == len(leaves)
        assert root_from_leaf_hashes(leaves) == final.root_hash
        seen: dict[int, Checkpoint] = {}
        for body, receipt in acked:
            cp = verify_receipt(receipt, body, key)
            assert leaves[receipt.leaf_index] == envelope_leaf_hash(body)
            seen[cp.size] = cp
        for cp in seen.values():
            check_consistent(await tlog.consistency_proof(cp.size, final.size), cp, final)
        return final.size


def test_two_processes_one_sigkilled_mid_burst_keep_one_tree(postgres_url: str) -> None:
    a = _worker(postgres_url, "a", 1500)
    b = _worker(postgres_url, "b", 600)
    try:
        a_lines: list[str] = []
        assert a.stdout is not None and b.stdout is not None
        for line in a.stdout:  # wait until the burst is under way
            a_lines.append(line)
            if len(a_lines) > 150:
                break
        a.send_signal(signal.SIGKILL)
        a_rest, _ = a.communicate(timeout=30)
        b_out, b_err = b.communicate(timeout=120)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert a.returncode == -signal.SIGKILL
    assert b.returncode == 0, b_err
    acked_a = _acknowledged(a_lines + a_rest.splitlines(keepends=True))
    acked_b = _acknowledged(b_out.splitlines(keepends=True))
    assert 150 <= len(acked_a) < 1500, "the kill came mid-burst"
    assert len(acked_b) == 600
    size = run(_check_one_tree(postgres_url, acked_a + acked_b))
    assert len(acked_a) + 600 <= size <= 1500 + 600


def _pg_ctl(folder: Path, *args: str) -> None:
    """Debian's pg_ctl on the server's cluster, as the user it runs as."""
    import pwd

    from securechan.testing.postgres import find_bindir

    bindir = find_bindir()
    assert bindir is not None
    as_root = os.geteuid() == 0
    user = pwd.getpwnam("postgres") if as_root else None
    subprocess.run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            *args,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd=folder,
        timeout=60,
    )


def test_postgres_sigkilled_and_restarted_loses_nothing_acknowledged() -> None:
    from securechan.testing.postgres import PostgresUnavailable, running_postgres

    try:
        server_cm = running_postgres()
        server = server_cm.__enter__()
    except PostgresUnavailable as exc:
        if os.environ.get("SECURECHAN_REQUIRE_POSTGRES"):
            pytest.fail(f"SECURECHAN_REQUIRE_POSTGRES is set but {exc}")
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        url = server.create_database("crash")
        w = _worker(url, "c", 800)
        lines: list[str] = []
        assert w.stdout is not None
        for line in w.stdout:
            lines.append(line)
            if len(lines) > 200:
                break
        _pg_ctl(
            server.folder, "stop", "-m", "immediate"
        )  # SIGQUIT: no checkpoint, no clean shutdown
        time.sleep(1.0)
        _pg_ctl(server.folder, "start")
        rest, err = w.communicate(timeout=150)
        assert w.returncode == 0, err
        acked = _acknowledged(lines + rest.splitlines(keepends=True))
        assert len(acked) == 800  # the worker retried through the outage
        done = json.loads(rest.splitlines()[-1])
        assert done["failed"] > 0, "PostgreSQL went down while appends were in flight"
        size = run(_check_one_tree(url, acked))
        assert size == 800
    finally:
        server_cm.__exit__(None, None, None)
