"""A restored backup (issue 11, finding 1): detected, refused, reported.

An attacker here is whoever puts back an older copy of a home folder, or of
``client.db`` alone (a backup, a VM snapshot): the next message would go out
under a message key and nonce already used, and the relay could XOR the two
ciphertexts. Everything runs for real: ``securechan`` processes on real home
folders, a real relay process on 127.0.0.1, files copied as a backup would be.

- ``client.db`` alone restored: ``send`` refuses, one line, exit 5, nothing
  posted; receiving goes on; ``contact rekey`` recovers.
- the whole home restored (not detectable locally): the peer's ``receive``
  reports the second message at a used ratchet position as the sender's
  rollback, with evidence, exit 5; the same envelope delivered again stays an
  ordinary replay.
- every sealed store's generation grows with every write, and ``state.gen``
  (outside ``client.db``) keeps up with it.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from securechan import wire
from securechan.client.stored import StoredRecord
from securechan.primitives import random_bytes
from securechan.protocol.sealed import _HEADER, _SEALED, open_state
from securechan.transport import RelayClient
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import (
    Pair,
    Party,
    _start_conversation,
    json_stream,
    one_line_error,
    texts,
    transcript,
)

# The end-to-end module's fixtures: a relay process, fresh identities, a
# registered and verified pair (tehran, washington).
relay = e2e.relay
pristine = e2e.pristine
people = e2e.people
pair = e2e.pair

EXIT_ROLLBACK = 5
GENERATIONS_FILE = "state.gen"  # the high-water mark, outside client.db


def _db(party: Party) -> Path:
    return party.home / "client.db"


def backup_db(party: Party, to: Path) -> None:
    """Copy client.db as a file backup would (the CLI closed it cleanly)."""
    assert not (party.home / "client.db-wal").exists()
    shutil.copy2(_db(party), to)


def restore_db(party: Party, backup: Path) -> None:
    for suffix in ("-wal", "-shm"):
        (party.home / f"client.db{suffix}").unlink(missing_ok=True)
    shutil.copy2(backup, _db(party))


def rejected(items: list[Any]) -> list[dict[str, Any]]:
    return [x for x in items if isinstance(x, dict) and "rejected" in x]


def generations(party: Party) -> dict[str, int]:
    """Every sealed store in client.db and its *authenticated* generation
    (opened with the storage key: the clear column could lie)."""
    key = party.keystore().unlock(party.passphrase).storage_key()
    out: dict[str, int] = {}
    with sqlite3.connect(_db(party)) as db:
        for name, blob in db.execute("SELECT name, blob FROM state"):
            header = wire.decode(_HEADER, wire.decode(_SEALED, blob)["header"])
            gen, _ = open_state(
                key, blob, kind=header["kind"], object_id=header["object_id"], min_generation=0
            )
            out[name] = gen
    return out


def marks(party: Party) -> Any:
    from securechan.client.generations import Generations  # the code under test

    key = party.keystore().unlock(party.passphrase).storage_key()
    return Generations(party.home / GENERATIONS_FILE, key)


# --- (a) client.db alone restored --------------------------------------------------------


def test_restored_client_db_refuses_to_send(pair: Pair, tmp_path: Path) -> None:
    """Restore client.db from a copy taken before two sends, send again: on
    the old code the third message went out under message 2's key and nonce.
    Now: exit 5, one line naming the way out, nothing posted; the peer's
    messages still arrive; after 'contact rekey' a new session works both ways."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    backup = tmp_path / "client.db.bak"
    backup_db(t, backup)
    t.ok("send", "washington", "Tehran: second")
    t.ok("send", "washington", "Tehran: third")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: second", "Tehran: third"]

    restore_db(t, backup)
    proc = t.run("send", "washington", "Tehran: written on the restored state")
    line = one_line_error(proc, EXIT_ROLLBACK)
    assert "restored from an older copy" in line, line
    assert "securechan contact rekey washington" in line, line
    # Refused again, every time (the rollback mark is outside client.db).
    one_line_error(t.run("send", "washington", "again"), EXIT_ROLLBACK)
    assert t.json("status")["rolled_back"] == ["washington"]
    # Nothing reached the relay: the peer finds no message and no refusal.
    items = w.items("receive")
    assert texts(items) == [] and rejected(items) == [], items
    # The audit log (outside client.db) recorded the rollback.
    log = t.ok("log", "show", "--json")
    assert "rolled-back" in log, log

    # Receiving on the rolled-back session goes on.
    w.ok("send", "tehran", "Washington: still reaching you")
    got = t.items("receive")
    assert [x["text"] for x in texts(got)] == ["Washington: still reaching you"], got
    # ...and receiving does not launder the rollback: sending is still refused.
    one_line_error(t.run("send", "washington", "after receiving"), EXIT_ROLLBACK)

    # The way out: a new session.
    out = t.run("contact", "rekey", "washington")
    assert out.returncode == 0, transcript(out)
    assert t.json("status")["rolled_back"] == []
    t.ok("send", "washington", "Tehran: on a new session")
    got = w.items("receive")
    assert [x["text"] for x in texts(got)] == ["Tehran: on a new session"], got
    assert rejected(got) == [], got
    w.ok("send", "tehran", "Washington: answered on it")
    got = t.items("receive")
    assert [x["text"] for x in texts(got)] == ["Washington: answered on it"], got


def test_deleted_generations_file_counts_as_a_rollback(pair: Pair) -> None:
    """Deleting state.gen (to hide a restored client.db) must not pass: the
    database knows the file was written, so every session is treated as
    rolled back."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    (t.home / GENERATIONS_FILE).unlink(missing_ok=True)
    one_line_error(t.run("send", "washington", "no"), EXIT_ROLLBACK)


def test_altered_generations_file_is_refused(pair: Pair) -> None:
    """state.gen is sealed: one changed byte (say, to lower a mark) makes
    every command that opens the state fail with one line, exit 2, instead
    of trusting it."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    path = t.home / GENERATIONS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    line = one_line_error(t.run("send", "washington", "no"), 2)
    assert "state.gen was altered" in line, line


def test_rolled_back_prekey_store_and_replay_guard_are_reported_and_resealed(
    pair: Pair, tmp_path: Path
) -> None:
    """The responder's client.db restored from before a second first message:
    its prekey store and replay guard are older than their marks. At the next
    first message they are reported in the audit log and resealed above the
    mark (what they would let through again re-creates a session below its own
    mark, refused for sending), and the message is received."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    backup = tmp_path / "washington.db.bak"
    backup_db(w, backup)
    t.ok("contact", "rekey", "washington")
    t.ok("send", "washington", "Tehran: a second session")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: a second session"]
    before = {n: marks(w).high(n) for n in ("prekeys", "replay-guard")}

    restore_db(w, backup)
    # The stores are checked when used: the next first message uses both.
    t.ok("contact", "rekey", "washington")
    t.ok("send", "washington", "Tehran: a third session")
    proc = w.run("receive", "--json")
    assert proc.returncode == 0, transcript(proc)
    assert [x["text"] for x in texts(json_stream(proc.stdout))] == ["Tehran: a third session"]
    log = w.ok("log", "show", "--json")
    assert log.count("stored prekeys state is older than its high-water mark") == 1, log
    assert log.count("stored replay-guard state is older than its high-water mark") == 1, log
    after = generations(w)
    for name, high in before.items():
        assert after[name] > high, (name, after[name], high)
    w.ok("receive")  # reported once, not at every command
    log = w.ok("log", "show", "--json")
    assert log.count("stored prekeys state is older than its high-water mark") == 1, log


# --- (b) the whole home restored: the peer reports it ------------------------------------


def test_restored_home_is_reported_by_the_peer(pair: Pair, tmp_path: Path) -> None:
    """Restore the whole home folder (state.gen with it: not detectable
    locally) and send again: the new messages reuse ratchet positions the
    peer already consumed. The peer's receive opens each with the message key
    it kept for that position, finds a different payload validly signed by
    tehran, and reports it (exit 5, a line, a JSON record with evidence)
    instead of refusing it as a replay or showing it."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    home_backup = tmp_path / "tehran-backup"
    shutil.copytree(t.home, home_backup)
    t.ok("send", "washington", "Tehran: second")
    t.ok("send", "washington", "Tehran: third")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: second", "Tehran: third"]

    shutil.rmtree(t.home)
    shutil.copytree(home_backup, t.home)
    t.ok("send", "washington", "Tehran: rewritten second")
    proc = w.run("receive", "--json")
    assert proc.returncode == EXIT_ROLLBACK, transcript(proc)
    items = json_stream(proc.stdout)
    assert texts(items) == [], items  # the second version is never shown
    [report] = rejected(items)
    assert report["rejected"] == "peer-rolled-back", report
    assert "tehran's state was rolled back (or it equivocated)" in report["error"]
    assert len(report["evidence"]) == 4 and all(
        len(e.split()[-1]) == 64 for e in report["evidence"]
    )

    # The text form: one visible line, exit 5.
    t.ok("send", "washington", "Tehran: rewritten third")
    proc = w.run("receive")
    assert proc.returncode == EXIT_ROLLBACK, transcript(proc)
    lines = [x for x in proc.stderr.splitlines() if "PEER ROLLED BACK" in x]
    assert len(lines) == 1 and "tehran's state was rolled back" in lines[0], transcript(proc)
    assert "rewritten" not in proc.stdout, transcript(proc)
    # The audit log keeps the evidence.
    log = w.ok("log", "show", "--json")
    assert log.count("peer-rolled-back") == 2, log


def test_restored_home_that_ratcheted_since_is_reported_by_the_peer(
    pair: Pair, tmp_path: Path
) -> None:
    """The restored sender first receives the peer's reply, which moves it to
    a new ratchet chain: its next message reuses no ratchet position, only a
    sequence number. The peer still reports it, from the signed payload."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)  # washington answered with its queue grant: not yet read
    home_backup = tmp_path / "tehran-backup"
    shutil.copytree(t.home, home_backup)
    t.ok("send", "washington", "Tehran: second")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: second"]
    shutil.rmtree(t.home)
    shutil.copytree(home_backup, t.home)
    t.ok("receive")  # the grant: a new chain for tehran's next message
    t.ok("send", "washington", "Tehran: rewritten second")
    proc = w.run("receive", "--json")
    assert proc.returncode == EXIT_ROLLBACK, transcript(proc)
    items = json_stream(proc.stdout)
    assert texts(items) == [], items
    assert [x["rejected"] for x in rejected(items)] == ["peer-rolled-back"], items


def test_redelivered_envelope_stays_a_quiet_replay(pair: Pair) -> None:
    """The relay posting an already received envelope again (a new message
    id, the same bytes) is a replay, not a rollback: refused, not reported
    as the sender's fault, exit 0."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    t.ok("send", "washington", "Tehran: second")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: second"]

    async def envelopes() -> list[bytes]:
        async with w.channel() as ch:
            return [
                StoredRecord.from_bytes(m.record).envelope
                for m in ch.db.messages()
                if m.direction == "in"
            ]

    async def post(envelope: bytes) -> None:
        address = pair.card_w.addresses[0]
        async with RelayClient(address.relay) as client:
            await client.send(address.sid, envelope, random_bytes(16), sender=None)

    for env in asyncio.run(envelopes()):
        asyncio.run(post(env))
    proc = w.run("receive", "--json")
    assert proc.returncode == 0, transcript(proc)
    items = json_stream(proc.stdout)
    assert texts(items) == [], items
    reasons = {x["rejected"] for x in rejected(items)}
    assert reasons and "peer-rolled-back" not in reasons, items


# --- (c) every store's generation grows with every write ---------------------------------


def test_every_store_generation_grows_with_every_write(pair: Pair) -> None:
    """Sessions, the prekey store, the replay guard and the registrations:
    each write gives a generation above every earlier one, and state.gen
    (outside client.db) is at least as high once the command ended. On the
    old code the prekey store, replay guard and registrations stayed at 0."""
    t, w = pair.t, pair.w
    history: dict[str, dict[str, list[int]]] = {"tehran": {}, "washington": {}}

    def observe() -> None:
        for party in (t, w):
            gens = generations(party)
            for name, gen in gens.items():
                history[party.name].setdefault(name, []).append(gen)
                assert gen >= 1, (party.name, name, gen)  # a real generation, never 0
            mark = marks(party)
            for name, gen in gens.items():
                assert mark.high(name) >= gen, (party.name, name, gen, mark.high(name))

    observe()  # after register: registrations and prekeys written
    _start_conversation(t, w)  # t: session; w: session, prekeys, guard
    observe()
    t.ok("send", "washington", "two")
    w.items("receive")
    observe()
    t.ok("contact", "rekey", "washington")
    t.ok("send", "washington", "a second session")  # w: prekeys and guard again
    assert [x["text"] for x in texts(w.items("receive"))] == ["a second session"]
    observe()

    for party, stores in history.items():
        kinds = {name.split(":")[0] for name in stores}
        assert {"registrations", "prekeys", "session"} <= kinds, (party, stores)
        for name, seen in stores.items():
            assert all(g >= 1 for g in seen), (party, name, seen)
            assert seen == sorted(seen), (party, name, seen)  # never goes back
    w_stores = history["washington"]
    for name in ("prekeys", "replay-guard"):
        seen = w_stores[name]
        assert len(set(seen)) >= 2, (name, seen)  # written again, a new generation
    sessions = [s for n, s in w_stores.items() if n.startswith("session:")]
    assert len(sessions) == 2 and any(len(set(s)) >= 2 for s in sessions), w_stores
