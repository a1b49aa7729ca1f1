"""What a send through the agent no longer does, attacked (issue 14, the
send target; docs/AGENT.md, "Measured"; docs/AUDIT.md, "Split views between
parties").

The agent's send skips three pieces of work the in-process send does, and
each test here plays the attack that piece of work was there for:

* **no checkpoint fetch before signing** when the agent verified the relay's
  newest checkpoint in the last 10 s (the previous send's receipt): a relay
  that rolls its log back or forks it between two sends is still caught by
  the second send, from that send's own receipt;
* **no tiles for a one-leaf step**: when the receipt's leaf is the one right
  after the checkpoint held, the consistency proof is made from the
  receipt's inclusion path and checked against both signed roots; a forked
  tree's path does not pass for the honest one (the check falls back to the
  relay's tiles, which the fork cannot make consistent either);
* **one commit after the post** (the outbox row settled with the receipt and
  the checkpoint): the agent SIGKILLed after the relay took the envelope but
  before that commit leaves the row, the next command posts it again under
  the same message id, and the recipient gets the message exactly once; a
  relay that stops answering during the receipt check still has the row
  settled (nothing is posted twice).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.audit import merkle
from securechan.client.logview import Appended, appended_proof
from securechan.errors import ProofFailed
from securechan.primitives import sha256
from tests.adversary import RelayProcess, audit_rejections, running_relay
from tests.adversary.parties import Party, transcript
from tests.adversary.proxy import Exchange
from tests.adversary.world import World, world_of
from tests.test_e2e_relay import json_stream

pytestmark = pytest.mark.timeout(300)


class _Leaves:
    """An in-memory RFC 9162 tree over ``leaves`` (a merkle.NodeSource)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    def get_nodes(self, ids: Any) -> list[bytes]:
        return [merkle.root_from_leaf_hashes(self.leaves[i << lv : (i + 1) << lv]) for lv, i in ids]


def _leaves(tag: bytes, n: int) -> list[bytes]:
    return [merkle.leaf_hash(sha256(tag + i.to_bytes(4, "big"))) for i in range(n)]


def test_the_one_leaf_proof_is_the_rfc_9162_proof() -> None:
    """For every size up to 600 (powers of two and not), the proof made from
    the last leaf's inclusion path equals PROOF(m, D[m+1]) as the log makes
    it, and verifies."""
    tree = _Leaves(_leaves(b"honest", 601))
    for m in range(1, 600):
        path = tuple(merkle.inclusion_proof(tree, m, m + 1))
        made = appended_proof(Appended(m, tree.leaves[m], path))
        assert made == merkle.consistency_proof(tree, m, m + 1), m
        merkle.verify_consistency(
            m, m + 1, made, merkle.root_at(tree, m), merkle.root_at(tree, m + 1)
        )


def test_a_forked_tree_s_receipt_does_not_prove_the_honest_head() -> None:
    """The relay showed us the honest head of size m, then answers a send
    from a fork that differs in one earlier leaf: the receipt verifies
    against the fork's signed root, but the proof made from it does not join
    the honest head (nor does any tampered path or leaf)."""
    for m in (1, 2, 3, 5, 8, 13, 64, 255, 256, 257):
        honest = _Leaves(_leaves(b"honest", m + 1))
        forked = _Leaves(
            [*honest.leaves[: m - 1], sha256(b"the adversary's leaf"), honest.leaves[m]]
        )
        old_root = merkle.root_at(honest, m)
        new_root = merkle.root_at(forked, m + 1)
        path = tuple(merkle.inclusion_proof(forked, m, m + 1))
        merkle.verify_inclusion(forked.leaves[m], m, m + 1, path, new_root)  # the receipt is valid
        made = appended_proof(Appended(m, forked.leaves[m], path))
        with pytest.raises(ProofFailed):
            merkle.verify_consistency(m, m + 1, made, old_root, new_root)
        # Tampering with the honest tree's receipt does not help either.
        good = tuple(merkle.inclusion_proof(honest, m, m + 1))
        honest_new = merkle.root_at(honest, m + 1)
        tampered = [Appended(m, sha256(b"another leaf"), good)]
        if m & (m - 1):  # (from a power of two the proof is the new leaf alone)
            tampered += [
                Appended(m, honest.leaves[m], (sha256(b"x"), *good[1:])),
                Appended(m, honest.leaves[m], good[:-1]),
            ]
        for bad in tampered:
            with pytest.raises(ProofFailed):
                merkle.verify_consistency(m, m + 1, appended_proof(bad), old_root, honest_new)


# --- through a real agent, a real relay and a malicious front ---------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("relay")) as r:
        yield r


@pytest.fixture
def world(
    relay: RelayProcess,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    runtime = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # short socket paths
    pristine = tmp_path_factory.mktemp("pristine")
    with world_of(relay, pristine, tmp_path, ["tehran", "washington"]) as w:
        w.introduce("tehran", "washington")
        try:
            yield w
        finally:
            w.t.run("agent", "stop")
            subprocess.run(["rm", "-rf", str(runtime)], check=False)


def _checkpoint_gets(exchanges: list[Exchange]) -> int:
    return sum(1 for x in exchanges if x.kind == "log" and "checkpoint" in x.path)


def _agent_pid(p: Party) -> int:
    import json

    return int(json.loads(p.ok("agent", "status", "--json"))["pid"])


def _outbox(p: Party) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{p.home / 'client.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def _texts(p: Party) -> list[str]:
    proc = p.run("receive", "--json")
    assert proc.returncode == 0, transcript(proc)
    return [x["text"] for x in json_stream(proc.stdout) if x.get("text")]


def test_a_log_rolled_back_between_two_sends_is_caught_by_the_second(
    world: World, relay: RelayProcess
) -> None:
    """The first send through the agent leaves it holding the relay's newest
    checkpoint; then the relay (washington's front, where tehran's messages
    go) starts answering from a log rolled back to nothing plus one leaf of
    its own. The second send fetches no checkpoint first (the one held is
    seconds old), and is still told: its receipt cannot be reconciled with
    the checkpoint held ("two histories", exit 1, an audit entry); the message
    itself still reaches washington (it is end-to-end protected)."""
    t, w = world.t, world.w
    front = world.front["washington"]
    t.ok("agent", "start")
    t.ok("send", "washington", "Tehran: first.")
    started = time.monotonic()  # the first receipt was verified before this
    before = len(audit_rejections(t.home))
    front.fork(base="empty")
    seen = len(front.exchanges)
    proc = t.run("send", "washington", "Tehran: second.")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, transcript(proc)
    assert "shows two histories" in proc.stderr, transcript(proc)
    if elapsed < 8:  # the held checkpoint was current: no fetch before signing
        assert _checkpoint_gets(front.exchanges[seen:]) == 0, front.exchanges[seen:]
    reasons = [r["reason"] for r in audit_rejections(t.home)[before:]]
    assert "split-view" in reasons, reasons
    front.unfork()
    assert _texts(w) == ["Tehran: first.", "Tehran: second."]


def test_the_checkpoint_is_reused_only_while_it_is_current(world: World) -> None:
    """Two sends in a row through the agent: the second fetches no
    checkpoint before signing. A send through the command line without an
    agent fetches one every time (its process has verified none)."""
    t = world.t
    front = world.front["washington"]
    t.ok("send", "washington", "in-process")
    seen = len(front.exchanges)
    t.ok("send", "washington", "in-process again")
    assert _checkpoint_gets(front.exchanges[seen:]) == 1
    t.ok("agent", "start")
    t.ok("send", "washington", "through the agent")
    started = time.monotonic()
    seen = len(front.exchanges)
    t.ok("send", "washington", "through the agent again")
    if time.monotonic() - started < 8:
        assert _checkpoint_gets(front.exchanges[seen:]) == 0, front.exchanges[seen:]
    # Nothing else fetched either: the one-leaf step needs no tiles.
    kinds = [x.kind for x in front.exchanges[seen:]]
    assert kinds.count("send") == 1 and "log" not in kinds, kinds


def _block_first_tile_after_a_post(world: World) -> tuple[threading.Event, threading.Event]:
    """Hold the first tile request that follows a post at washington's front
    until ``release`` is set (``held`` says it is being held)."""
    front = world.front["washington"]
    posted, held, release = threading.Event(), threading.Event(), threading.Event()

    def on_send(x: Exchange) -> None:
        posted.set()

    def on_log(x: Exchange) -> None:
        if posted.is_set() and "/tile/" in x.path and not held.is_set():
            held.set()
            release.wait(60)

    front.on_request("send", on_send)
    front.on_request("log", on_log)
    return held, release


def test_sigkill_after_the_relay_took_it_before_the_settle_commit(world: World) -> None:
    """The relay has the envelope, the agent is checking the receipt (a
    two-leaf step: it fetches tiles) and is SIGKILLed. Nothing was answered,
    the outbox row is still there; the next command posts it again with the
    same message id, which the relay answers as a duplicate, and washington
    gets the message once."""
    t, w = world.t, world.w
    front = world.front["washington"]
    t.ok("agent", "start")
    t.ok("send", "washington", "Tehran: before.")
    # Washington writes: the log grows by a leaf tehran has not seen, so
    # tehran's next receipt is two leaves on and needs the relay's tiles.
    w.ok("send", "tehran", "Washington: in between.")
    held, release = _block_first_tile_after_a_post(world)
    pid = _agent_pid(t)
    result: list[subprocess.CompletedProcess[str]] = []
    sender = threading.Thread(target=lambda: result.append(t.run("send", "washington", "Once.")))
    sender.start()
    try:
        assert held.wait(120), "the agent never checked the receipt against the tiles"
        os.kill(pid, signal.SIGKILL)
        sender.join(60)
    finally:
        release.set()
        front.on_request("send", None)
        front.on_request("log", None)
    assert result and result[0].returncode != 0, result  # never answered "sent"
    first = [x for x in front.sent() if x.kind == "send"][-1]
    assert first.status == 201, first.status  # the relay stored it
    assert _outbox(t) == 1  # ... and the settle commit never came
    t.ok("receive")  # in-process: posts the outbox again
    assert _outbox(t) == 0
    again = [x for x in front.sent() if x.kind == "send"][-1]
    assert again is not first
    assert (again.path, again.body, _msg_id(again)) == (first.path, first.body, _msg_id(first))
    assert again.status == 200, again.status  # the relay's answer to a duplicate
    assert _texts(w) == ["Tehran: before.", "Once."]
    assert _texts(w) == []


def _msg_id(x: Exchange) -> str:
    return next(v for k, v in x.headers.items() if k.lower() == "x-message-id")


def test_a_relay_that_stops_answering_during_the_receipt_check(world: World) -> None:
    """After the relay took the envelope, every log request fails: the
    receipt cannot be checked (the send says so), but the outbox row is
    settled: nothing is posted again, washington gets the message once."""
    t, w = world.t, world.w
    front = world.front["washington"]
    t.ok("agent", "start")
    t.ok("send", "washington", "Tehran: before.")
    w.ok("send", "tehran", "Washington: in between.")  # tehran's next step needs tiles
    front.fail("log", status=503, times=-1)
    proc = t.run("send", "washington", "Tehran: during the outage.")
    front.reset()
    assert proc.returncode != 0, transcript(proc)
    assert _outbox(t) == 0
    posts = [x for x in front.sent() if x.kind == "send"]
    t.ok("receive")
    assert [x for x in front.sent() if x.kind == "send"] == posts  # nothing posted again
    assert _texts(w) == ["Tehran: before.", "Tehran: during the outage."]


def test_a_settle_commit_without_its_own_fsync_survives_sigkill(tmp_path: Path) -> None:
    """The settle commit is not fsync'ed on its own (``durable=False``): a
    process SIGKILLed right after it still leaves it in client.db (the
    kernel has the write-ahead log; only a power loss could undo it, and the
    next durable commit makes it durable). The connection's durable setting
    is back to FULL after it."""
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from securechan.client.db import ClientDB
        db = ClientDB(Path(sys.argv[1]), bytes(32))
        with db.transaction(durable=False) as conn:
            conn.execute("INSERT INTO meta (name, value) VALUES ('settled', 1)")
        assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    argv = [sys.executable, "-c", script, str(tmp_path / "client.db")]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    import sqlite3

    conn = sqlite3.connect(tmp_path / "client.db")
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'settled'").fetchone() == (1,)
    finally:
        conn.close()
