"""``securechan relay migrate --from DATA --to postgresql://...`` (issue 16, item 1).

A real relay (``securechan relay serve`` on 127.0.0.1) takes real sends and
is stopped; the real CLI copies its data folder's log into a real
PostgreSQL database. What is checked, with the client's own functions:

* the command prints the source's and the copy's size and root, equal, and
  the root is the one the client recomputes from the envelopes it sent;
* every receipt the relay handed out verifies against the checkpoint the
  PostgreSQL log (opened with the relay's key) serves, and its leaf is
  there at the same index; the PostgreSQL log takes new appends after them;
* without ``--log-only`` (no PostgreSQL storage in this build) it refuses,
  exit 2, and writes nothing; into a database that already holds a log it
  refuses, exit 2; a copy that comes out different (a trigger corrupting
  one node on its way in) is caught: both roots printed, exit 1.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from securechan.audit.checkpoint import open_checkpoint
from securechan.audit.merkle import root_from_leaf_hashes, verify_consistency
from securechan.audit.note import VerifierKey
from securechan.audit.receipt import envelope_leaf_hash, verify_receipt
from securechan.errors import StorageError
from securechan.primitives import Ed25519SigningKey
from securechan.relay.pg_tlog import PgRelayLog
from securechan.relay.server import load_or_create_key
from securechan.relay.writer_thread import open_in_thread
from securechan.testing.postgres import PostgresServer
from securechan.transport import RelayClient, RetryPolicy, SendReply
from tests.adversary.relay import RelayProcess, running_relay

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
PATIENT = RetryPolicy(attempts=6, base=0.1, cap=1.0, timeout=10.0)


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "securechan", "relay", "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


RKEY, SKEY = Ed25519SigningKey.generate(), Ed25519SigningKey.generate()
_RID: list[bytes] = []  # the fixture's queue
_SID: list[bytes] = []


async def _send_all(url: str, count: int) -> tuple[VerifierKey, list[tuple[bytes, SendReply]]]:
    async with RelayClient(url, retry=PATIENT) as rc:
        info = await rc.info()
        key = VerifierKey.from_text(info["log_verifier_key"])
        rkey, skey = RKEY, SKEY
        ids = await rc.create_queue(rkey, sender_key=skey.public, contact=False)
        _RID.append(ids.rid)
        _SID.append(ids.sid)
        out = []
        for n in range(count):
            data = b"ENVELOPE-" + os.urandom(120 + n)
            out.append(
                (data, await rc.send_with_receipt(ids.sid, data, os.urandom(16), sender=skey))
            )
        return key, out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VerifierKey, list[Any]]:
    """A stopped relay's data folder after 40 real sends, with what the client got."""
    root = tmp_path_factory.mktemp("relay")
    with running_relay(root) as relay:
        key, sent = asyncio.run(_send_all(relay.url, 40))
    return root / "relay-data", key, sent


def _printed(out: str, what: str) -> tuple[int, bytes]:
    line = next(x for x in out.splitlines() if x.startswith(what))
    size, root = line.split(" size ")[1].split(" root ")
    return int(size), base64.b64decode(root)


def test_migrate_copies_the_log_and_proves_root_and_size(
    served: tuple[Path, VerifierKey, list[Any]], postgres_url: str
) -> None:
    data, key, sent = served
    done = migrate("--from", str(data), "--to", postgres_url, "--log-only")
    assert done.returncode == 0, done.stderr
    assert postgres_url not in done.stdout + done.stderr  # a URL may carry a password
    src = _printed(done.stdout, "source tlog.db:")
    dst = _printed(done.stdout, "target PostgreSQL:")
    by_index = {reply.receipt.leaf_index: body for body, reply in sent}
    mine = root_from_leaf_hashes(envelope_leaf_hash(by_index[i]) for i in range(len(sent)))
    assert src == dst == (40, mine)
    assert "size and root unchanged" in done.stdout

    async def go() -> None:
        tlog = await open_in_thread(PgRelayLog, postgres_url, load_or_create_key(data))
        try:
            assert tlog.verifier == key
            final = open_checkpoint(tlog.checkpoint(), key)
            assert (final.size, final.root_hash) == (40, mine)
            for body, reply in sent:
                cp = verify_receipt(reply.receipt, body, key)
                proof = await tlog.consistency_proof(cp.size, final.size)
                verify_consistency(cp.size, final.size, proof, cp.root_hash, final.root_hash)
                again = await tlog.receipt_for(body)
                assert again is not None and again.leaf_index == reply.receipt.leaf_index
                verify_receipt(again, body, key)
            new = await tlog.append(b"after the move")
            assert new.leaf_index == 40
        finally:
            await tlog.close()

    asyncio.run(go())
    # A second copy into a database that holds a log is refused.
    twice = migrate("--from", str(data), "--to", postgres_url, "--log-only")
    assert twice.returncode == 2 and "already holds a relay log" in twice.stderr


def test_a_copy_that_differs_is_caught(
    served: tuple[Path, VerifierKey, list[Any]], postgres_server: PostgresServer
) -> None:
    import psycopg

    from securechan.relay.pg_tlog_store import connect, ensure_schema

    data, _, _ = served
    url = postgres_server.create_database("migrate_corrupt")
    conn = connect(url)
    ensure_schema(conn)
    conn.close()
    with psycopg.connect(url, autocommit=True) as db:  # a database that damages one node
        db.execute(
            "CREATE FUNCTION flip() RETURNS trigger AS $$ BEGIN"
            " IF NEW.pos = 5 THEN NEW.hash := sha256(NEW.hash); END IF; RETURN NEW;"
            " END $$ LANGUAGE plpgsql"
        )
        db.execute(
            "CREATE TRIGGER flip BEFORE INSERT ON relay_log_nodes"
            " FOR EACH ROW EXECUTE FUNCTION flip()"
        )
    bad = migrate("--from", str(data), "--to", url, "--log-only")
    assert bad.returncode == 1, bad.stderr
    src = _printed(bad.stdout, "source tlog.db:")
    dst = _printed(bad.stdout, "target PostgreSQL:")
    # An inner node (level 1): the root reads only its cover, so the size
    # and root agree; the node-by-node rebuild does not.
    assert src == dst
    assert "nodes that differ from a rebuild from those leaves: 1" in bad.stdout
    assert "differs" in bad.stderr


def test_migrate_refuses_what_is_not_a_log_or_not_postgres(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_log = migrate(
        "--from", str(empty), "--to", "postgresql://nobody@127.0.0.1:1/x", "--log-only"
    )
    assert no_log.returncode == 2 and "no transparency log" in no_log.stderr
    assert "Traceback" not in no_log.stderr
    not_pg = migrate("--from", str(empty), "--to", "sqlite:///x.db", "--log-only")
    assert not_pg.returncode == 2 and "postgresql://" in not_pg.stderr


def test_migrate_copies_storage_and_log_and_a_relay_on_postgresql_serves_them(
    served: tuple[Path, VerifierKey, list[Any]], postgres_url: str, tmp_path: Path
) -> None:
    """Without --log-only: queues, envelopes and the log move; a relay
    started with --db on the copy serves every envelope under its seq, the
    next send takes the next seq and the next log index."""
    data, key, sent = served
    done = migrate("--from", str(data), "--to", postgres_url)
    assert done.returncode == 0, done.stderr
    assert "storage copied: 1 queues, 40 envelopes" in done.stdout, done.stdout
    assert "size and root unchanged" in done.stdout
    moved = tmp_path / "moved"
    moved.mkdir(mode=0o700)
    (moved / "relay.key").write_bytes((data / "relay.key").read_bytes())
    relay = RelayProcess(tmp_path / "pg-relay", config=f'db = "{postgres_url}"\n')
    relay.data = moved

    async def go() -> None:
        async with RelayClient(relay.url, retry=PATIENT) as rc:
            info = await rc.info()
            assert VerifierKey.from_text(info["log_verifier_key"]) == key
            held = await rc.fetch(_RID[0], RKEY, limit=100)
            assert [e.seq for e in held] == [reply.seq for _, reply in sent]
            assert [e.data for e in held] == [body for body, _ in sent]
            body = b"after the move"
            reply = await rc.send_with_receipt(_SID[0], body, os.urandom(16), sender=SKEY)
            assert reply.seq == sent[-1][1].seq + 1 and reply.receipt.leaf_index == 40

    relay.start()
    try:
        asyncio.run(go())
        relay.stop()
    finally:
        relay.close()
    # Into a database that already holds them: refused, nothing written.
    twice = migrate("--from", str(data), "--to", postgres_url)
    assert twice.returncode == 2 and "already holds relay queues" in twice.stderr


def test_migrate_copies_group_streams(tmp_path: Path, postgres_url: str) -> None:
    """Group streams move with the storage: every item at its position with
    its log index, and the next post on PostgreSQL takes the next position."""
    from securechan.relay.pg_store import PgStorage
    from securechan.relay.pg_store_migrate import copy_storage
    from securechan.relay.sqlite_store import SqliteStorage

    data = tmp_path / "data"
    streams = {bytes([n]) * 32: [os.urandom(20 + k) for k in range(n + 2)] for n in range(3)}

    async def main() -> None:
        src = await open_in_thread(SqliteStorage, data / "relay.db")
        try:
            for sid, blobs in streams.items():
                for k, blob in enumerate(blobs):
                    await src.put_stream_item(sid, blob, log_index=k, now=1, max_items=100)
        finally:
            await src.close()
        summary = await copy_storage(data, postgres_url, now=1)
        assert "3 group streams with 9 items" in summary, summary
        dst = await PgStorage.open(postgres_url, listen=False)
        try:
            for sid, blobs in streams.items():
                held = await dst.fetch_stream(sid, after=0, limit=100)
                assert [(i.position, i.data, i.log_index) for i in held] == [
                    (k + 1, blob, k) for k, blob in enumerate(blobs)
                ]
                put = await dst.put_stream_item(sid, b"next", log_index=99, now=2, max_items=100)
                assert put.position == len(blobs) + 1
        finally:
            await dst.close()
        with pytest.raises(StorageError, match="already holds group streams"):
            await copy_storage(data, postgres_url, now=1)

    asyncio.run(main())
