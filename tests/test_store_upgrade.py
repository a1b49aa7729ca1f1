"""Every store opens a file written by the code before the schema helper, upgrades
it in place and loses nothing; newer files are refused; a failed step changes nothing.

The files under ``tests/fixtures/stores/`` were written by commit b33a4c5 with
``make_fixtures.py`` (see the README there); ``expected.json`` holds what was
written. The tests copy them, open them with today's code and read every row back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from securechan.audit import log as audit_log
from securechan.audit import tree as tree_module
from securechan.audit.log import AuditLog
from securechan.audit.note import VerifierKey, keep_signatures, open_note
from securechan.audit.tree import TreeStore
from securechan.audit.witness_store import WitnessHome
from securechan.client import db as client_db
from securechan.client.db import ClientDB
from securechan.errors import StorageError
from securechan.identity.keys import PublicIdentity
from securechan.primitives import Ed25519SigningKey
from securechan.relay import sqlite_store, tlog
from securechan.relay.sqlite_store import SqliteStorage
from securechan.relay.tlog import RelayLog
from securechan.relay.writer_thread import open_in_thread
from securechan.sqlite_schema import SCHEMA_ROOT, Schema, connect, split_statements

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
RELAY = "https://relay.example"


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the fixture files (never upgrade the committed ones)."""
    copy = tmp_path / "stores"
    shutil.copytree(FIXTURES, copy)
    return copy


def _pragma(path: Path, name: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        db.close()


def _dump(path: Path) -> list[str]:
    """Every schema object and row, as SQL text."""
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def _shape(path: Path) -> dict[str, Any]:
    """Tables (columns with types, defaults, keys), indexes and triggers of a
    file: what a schema made, independent of how its CREATE text was spelled."""
    db = sqlite3.connect(path)
    try:
        shape: dict[str, Any] = {}
        objects = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        for kind, name, table, sql in objects:
            if kind == "table":
                shape[name] = (
                    db.execute(f"PRAGMA table_xinfo({name})").fetchall(),
                    db.execute(f"PRAGMA foreign_key_list({name})").fetchall(),
                    "WITHOUT ROWID" in sql.upper(),
                )
            elif kind == "index":
                shape[name] = (table, db.execute(f"PRAGMA index_xinfo({name})").fetchall())
            else:
                shape[name] = (kind, table, " ".join(sql.split()))
        return shape
    finally:
        db.close()


def _fresh(tmp_path: Path, schema: Schema) -> Path:
    path = tmp_path / f"fresh-{schema.name}.db"
    conn = connect(path)
    schema.apply(conn, path)
    conn.close()
    return path


# --- each store: open the old file, upgrade, every row still there ---------------------


def test_client_db_upgrades_in_place_and_keeps_every_row(old: Path, tmp_path: Path) -> None:
    exp = EXPECTED["client"]
    path = old / "client" / "client.db"
    assert _pragma(path, "user_version") == 6
    db = ClientDB(path, bytes.fromhex(exp["storage_key"]))
    try:
        assert _pragma(path, "user_version") == client_db.SCHEMA_VERSION == 9
        assert _pragma(path, "application_id") == client_db.SCHEMA.application_id
        peer = bytes.fromhex(exp["peer"])
        conv = [bytes.fromhex(c) for c in exp["sessions"]]
        assert sorted(s.conversation for s in db.sessions(peer)) == sorted(conv)
        first = next(s for s in db.sessions() if s.conversation == conv[0])
        assert first.grant_sent and first.peer_grant == b"grant bytes"
        for i, c in enumerate(conv):
            state = db.load_state("session:" + c.hex(), "session", c)
            assert state is not None and state[1] == b"session state %d" % i
        prekeys = db.load_state("prekeys", "prekeys", b"prekeys")
        assert prekeys is not None and prekeys[1] == b"prekey store"
        assert db.rollbacks == []  # state.gen still matches: no false rollback
        (queue,) = db.queues()
        assert (queue.rid.hex(), queue.secret, queue.last_seq) == (exp["queue"], b"s" * 32, 7)
        (out,) = db.outbox()
        assert (out.msg_id.hex(), out.sender, out.envelope) == (
            exp["outbox_msg"],
            b"k" * 32,
            b"envelope",
        )
        records = [(m.direction, m.seq, m.record) for m in db.messages(peer)]
        assert records == [
            ("out", 0, b"message 0"),
            ("out", 1, b"message 1"),
            ("out", 2, b"message 2"),
            ("in", 0, b"a reply"),
        ]
        assert db.seen(b"m" * 16)
        held = db.held_row(bytes.fromhex(exp["held"]))
        assert held is not None
        assert (held.envelope, held.kind, held.key) == (b"held envelope", "chain", b"d" * 32)
        assert [p[2] for p in db.parked()] == ["decrypt"]
        assert db.relay_log(RELAY) == ("relay+abcd+key", "checkpoint text\n")
        assert db.witness_policy(RELAY) == (["w1+1+k", "w2+2+k"], 1, None)
        assert db.log_receipts(b"h" * 32) == [(RELAY, '{"receipt": 1}')]
        assert db.chain_refused(b"r" * 32)
        assert db.position(db.position_key(b"d" * 32, 3)) == (conv[0], 0)
        assert db.retired() == {conv[1]}
        assert db.take_chunks(conv[0], b"f" * 16) == [b"chunk zero"]
    finally:
        db.close()
    # The upgraded file has exactly the tables a new one gets.
    assert _shape(path) == _shape(_fresh(tmp_path, client_db.SCHEMA))


def test_audit_log_opens_and_verifies_unchanged(old: Path) -> None:
    exp = EXPECTED["audit"]
    me = PublicIdentity.from_bytes((old / "audit-public-identity.bin").read_bytes())
    home = old / "audit"
    with AuditLog.open(home, read_only=True) as log:
        assert [e.to_bytes().hex() for e in log.entries()] == exp["entries"]
        assert log.verify(me).entries == len(exp["entries"])
    with AuditLog.open(home) as log:  # a writer: version 1 is current, nothing to do
        log.prekeys_rotated(relay=RELAY, count=3)
        assert log.verify(me).entries == len(exp["entries"]) + 1
    assert _pragma(home / "audit.db", "user_version") == audit_log.SCHEMA_VERSION == 1


def test_relay_db_keeps_queues_envelopes_prekeys_and_nonces(old: Path) -> None:
    exp = EXPECTED["relay"]

    async def check() -> None:
        async with await open_in_thread(SqliteStorage, old / "relay" / "relay.db") as s:
            assert (await s.settings()).schema_version == sqlite_store.SCHEMA_VERSION == 3
            for rid, sid, key, contact in exp["queues"]:
                q = await s.queue_by_rid(bytes.fromhex(rid))
                assert q is not None
                assert (q.sid.hex(), q.recipient_key.hex(), q.contact) == (sid, key, contact)
                got = await s.fetch(bytes.fromhex(rid), after=0, limit=100)
                want = [(seq, m, d) for r, seq, m, d in exp["envelopes"] if r == rid]
                assert [(e.seq, e.msg_id.hex(), e.data.hex()) for e in got] == want
            assert await s.prekey_count(bytes.fromhex(exp["queues"][0][0])) == 2
            # The nonce used before the upgrade is still refused as a replay.
            assert not await s.use_nonce(b"n" * 32, b"nonce-1", now=1, expires=2**40)

    asyncio.run(check())


def test_tlog_db_upgrades_one_version_and_serves_the_same_checkpoint(
    old: Path, tmp_path: Path
) -> None:
    exp = EXPECTED["relay"]
    path = old / "relay" / "tlog.db"
    assert _pragma(path, "user_version") == 0  # version 1 kept it in tables
    key = Ed25519SigningKey(bytes.fromhex(exp["relay_key_seed"]))
    witness = VerifierKey.from_text(exp["witness"])

    async def check() -> None:
        log = await open_in_thread(RelayLog, path, key, witnesses=[witness])
        try:
            assert log.size == exp["log_size"]
            # Same tree, same signed note, and the stored cosignature still
            # served; since issue 16 the log adds its ML-DSA-44 line, which
            # verifies under the key derived from the same relay key.
            served = log.checkpoint()
            assert keep_signatures(served, [log.verifier, witness]) == exp["checkpoint"]
            assert open_note(served, [log.pq_verifier]).verified_by(log.pq_verifier)
            for i, (*_, body) in enumerate(exp["envelopes"]):
                receipt = await log.receipt_for(bytes.fromhex(body))
                assert receipt is not None and receipt.leaf_index == i
        finally:
            await log.close()

    asyncio.run(check())
    assert _pragma(path, "user_version") == tlog.SCHEMA.version == 3
    db = sqlite3.connect(path)
    fences = [
        db.execute("SELECT version FROM schema_version").fetchall(),
        db.execute("SELECT version FROM relay_log_schema").fetchall(),
    ]
    db.close()
    assert fences == [[(2,)], [(2,)]]  # code from before the helper refuses the file
    assert _shape(path) == _shape(_fresh(tmp_path, tlog.SCHEMA))


def test_tree_db_upgrades_and_keeps_its_nodes(old: Path, tmp_path: Path) -> None:
    exp = EXPECTED["tree"]
    path = old / "tree.db"
    with TreeStore(path) as tree:
        assert tree.size == len(exp["leaves"])
        assert tree.root().hex() == exp["root"]
    assert _pragma(path, "user_version") == tree_module.SCHEMA_VERSION == 2
    assert _shape(path) == _shape(_fresh(tmp_path, tree_module.SCHEMA))


def test_witness_state_reads_unchanged(old: Path) -> None:
    # witness.json is a JSON file, not SQLite: it must simply still read.
    state = WitnessHome(old / "witness").read_state()
    assert state.to_json() == EXPECTED["relay"]["witness_state"]


# --- the schema files agree with each other ----------------------------------------------


def test_relay_v1_plus_upgrades_is_current(tmp_path: Path) -> None:
    """Version 1 upgraded step by step (byte quotas, then group streams) has
    exactly the tables of a new file."""
    path = tmp_path / "v1.db"
    conn = connect(path)
    for statement in split_statements((FIXTURES / "relay" / "schema-v1.sql").read_text()):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    sqlite_store.SCHEMA.apply(conn, path)
    conn.close()
    assert _pragma(path, "user_version") == sqlite_store.SCHEMA_VERSION == 3
    assert _shape(path) == _shape(_fresh(tmp_path, sqlite_store.SCHEMA))


def test_tlog_holds_the_tree_tables_of_the_tree_schema(tmp_path: Path) -> None:
    relay_log = _shape(_fresh(tmp_path, tlog.SCHEMA))
    for name, shape in _shape(_fresh(tmp_path, tree_module.SCHEMA)).items():
        assert relay_log[name] == shape


# --- refusals ---------------------------------------------------------------------------


def _open_client(path: Path) -> None:
    ClientDB(path, bytes.fromhex(EXPECTED["client"]["storage_key"])).close()


def _open_relay(path: Path) -> None:
    asyncio.run(_close(open_in_thread(SqliteStorage, path)))


async def _close(opening: Any) -> None:
    await (await opening).close()


def _open_tlog(path: Path) -> None:
    key = Ed25519SigningKey(bytes.fromhex(EXPECTED["relay"]["relay_key_seed"]))
    asyncio.run(_close(open_in_thread(RelayLog, path, key)))


OPENERS: dict[str, tuple[str, Callable[[Path], None], Schema]] = {
    "client": ("client/client.db", _open_client, client_db.SCHEMA),
    "audit": ("audit/audit.db", lambda p: AuditLog.open(p.parent).close(), audit_log.SCHEMA),
    "relay": ("relay/relay.db", _open_relay, sqlite_store.SCHEMA),
    "tlog": ("relay/tlog.db", _open_tlog, tlog.SCHEMA),
    "tree": ("tree.db", lambda p: TreeStore(p).close(), tree_module.SCHEMA),
}


@pytest.mark.parametrize("store", OPENERS)
def test_a_newer_file_is_refused_and_left_alone(old: Path, store: str) -> None:
    name, open_it, schema = OPENERS[store]
    path = old / name
    open_it(path)  # upgraded to the current version
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {schema.version + 1}")
    db.close()
    before = _dump(path)
    with pytest.raises(StorageError, match="newer than this securechan"):
        open_it(path)
    assert _dump(path) == before
    assert _pragma(path, "user_version") == schema.version + 1


@pytest.mark.parametrize(
    ("store", "other"), [("client", "relay"), ("relay", "tlog"), ("tree", "client")]
)
def test_another_stores_file_is_refused(old: Path, tmp_path: Path, store: str, other: str) -> None:
    _, open_it, _ = OPENERS[store]
    _, open_other, _ = OPENERS[other]
    path = tmp_path / "x" / "file.db"
    path.parent.mkdir()
    open_other(path)
    with pytest.raises(StorageError, match="is not a securechan"):
        open_it(path)


def test_an_interrupted_upgrade_leaves_the_old_version(
    old: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's upgrade step fails after half its statements: the file
    is still version 6 with nothing of the step in it, and the next open
    with a good step upgrades it with every row."""
    folder = tmp_path / "schema"
    shutil.copytree(Path(str(SCHEMA_ROOT / "client")), folder)
    step = folder / "upgrade-to-v7.sql"
    good = step.read_text()
    step.write_text(good + "CREATE TABLE half_done (x);\nINSERT INTO missing_table VALUES (1);\n")
    monkeypatch.setattr(client_db, "SCHEMA", dataclasses.replace(client_db.SCHEMA, folder=folder))
    path = old / "client" / "client.db"
    before = _shape(path)
    with pytest.raises(StorageError, match="missing_table"):
        _open_client(path)
    assert _pragma(path, "user_version") == 6
    assert _pragma(path, "application_id") == 0
    assert _shape(path) == before
    monkeypatch.setattr(client_db, "SCHEMA", dataclasses.replace(client_db.SCHEMA, folder=None))
    test_client_db_upgrades_in_place_and_keeps_every_row(old, tmp_path)


def test_split_statements_keeps_triggers_and_comments_whole() -> None:
    script = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');\n"
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 'y';\n  SELECT 1;\nEND;\n"
        "-- trailing comment\n"
    )
    statements = split_statements(script)
    assert len(statements) == 2 and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="ends inside"):
        split_statements("SELECT 1; SELECT 2")


def test_sigkill_mid_upgrade_leaves_the_old_version(old: Path, tmp_path: Path) -> None:
    """A process killed (SIGKILL) inside an upgrade step: the file is still
    version 6 with every row, and the next open upgrades it."""
    folder = tmp_path / "schema"
    shutil.copytree(Path(str(SCHEMA_ROOT / "client")), folder)
    step = folder / "upgrade-to-v7.sql"
    # A step that writes for a long time: the kill lands inside it.
    slow = (
        "CREATE TABLE half_done (x);\n"
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000)"
        " INSERT INTO half_done SELECT x FROM c;\n"
    )
    step.write_text(step.read_text() + slow)
    path = old / "client" / "client.db"
    code = (
        "import dataclasses, sys, pathlib\n"
        "from securechan.client import db\n"
        "db.SCHEMA = dataclasses.replace(db.SCHEMA, folder=pathlib.Path(sys.argv[1]))\n"
        "print('opening', flush=True)\n"
        "db.ClientDB(pathlib.Path(sys.argv[2]), bytes.fromhex(sys.argv[3]))\n"
    )
    key = EXPECTED["client"]["storage_key"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), str(path), key], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"opening\n"
        deadline = time.monotonic() + 60
        wal = path.with_name("client.db-wal")
        # Killed once the step has written (the WAL grows), long before it ends.
        while not (wal.exists() and wal.stat().st_size > 1 << 20):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert _pragma(path, "user_version") == 6
    db = sqlite3.connect(path)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    db.close()
    test_client_db_upgrades_in_place_and_keeps_every_row(old, tmp_path)


@pytest.mark.parametrize("store", OPENERS)
def test_schema_files_ship_in_the_package(store: str) -> None:
    schema = OPENERS[store][2]
    folder = SCHEMA_ROOT / schema.name
    assert Path(str(folder)).parent.parent == Path(sqlite_store.__file__).parent.parent
    names = sorted(f.name for f in folder.iterdir())
    # A new file's schema: vN.sql, or an upgrade script from version 0 (the client's).
    new = f"v{schema.version}.sql"
    step = f"upgrade-to-v{schema.version}.sql"
    assert new in names or (
        step in names and (folder / step).read_text().startswith("-- from-version: 0\n")
    )
    for name in names:
        assert split_statements((folder / name).read_text())
