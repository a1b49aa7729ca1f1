"""Crash safety of the relay and of the client, with real processes.

The relay runs as ``securechan relay serve`` in a subprocess on 127.0.0.1 at a
port picked up front, so that a restart on the same data folder comes back at
the same URL. It is killed with SIGKILL (no shutdown code runs), never with a
polite signal, except at the very end where a clean SIGTERM stop must exit 0.

What is proved (issue 4, "Must show", crash safety):

1. A burst of 300 concurrent sends, the relay SIGKILLed after about 100 of
   them were answered 2xx: every answered send is there after the restart,
   once, under the seq it was answered with; re-sending all 300 with their
   message ids stores each exactly once (the stored ones answer
   ``duplicate``), seqs unique and increasing.
2. The client's outbox: A sends 50 texts to B while the relay is SIGKILLed and
   restarted; the failed ones stay in the outbox and are posted later; some
   are posted twice; B shows each of the 50 exactly once, in order. The next
   test pins the ordering down without timing luck: one failed post of the
   oldest envelope must not let the younger ones overtake it.
3. A client SIGKILLed between "state saved" and "sent": the envelope survives
   in the outbox, a new process posts it, B gets it once, and the next message
   uses a fresh key (no replay rejection).
4. A client that received but whose acknowledgement never reached the relay,
   and a relay that hands an envelope over again (same id, or a new id): B
   never shows a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from securechan.client.channel import Channel
from securechan.client.results import Received, Rejected, SendResult
from securechan.errors import RelayError, RelayUnavailable
from securechan.identity import Identity, Keystore
from securechan.primitives import KDF_INTERACTIVE, Ed25519SigningKey
from securechan.transport import FetchedEnvelope, RelayClient, RetryPolicy, SendReply

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
SECURECHAN = Path(sys.executable).parent / "securechan"
PASSPHRASES = {
    "alpha": "alpha's long crash-test passphrase",
    "bravo": "bravo's long crash-test one",
}
BURST = 300
KILL_AFTER = 100
KILL_DELAY = 0.002
IN_FLIGHT = 50  # connections at once: the relay is always busy with a batch
TEXTS = 50
# The client side fails fast while the relay is down, so that the outbox is
# exercised instead of the retry loop.
FAST_FAIL = RetryPolicy(attempts=2, base=0.05, cap=0.2, timeout=5.0)
PATIENT = RetryPolicy(attempts=8, base=0.1, cap=1.0, timeout=10.0)

T = TypeVar("T")


# --- the relay process ----------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (passed explicitly so restarts reuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RelayProcess:
    """``securechan relay serve`` on one data folder and one fixed port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "relay-data"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.logs: list[Path] = []

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "the relay is already running"
        n = self.starts
        self.starts += 1
        out = self.root / f"relay-{n}.out"
        err = self.root / f"relay-{n}.err"
        self.logs.append(err)
        with out.open("wb") as fout, err.open("wb") as ferr:
            self.proc = subprocess.Popen(
                [
                    str(SECURECHAN),
                    "relay",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                ],
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                env=clean_env(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text("utf-8", errors="replace")
            if f"listening on {self.url}" in text:
                return
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(
                    f"the relay exited during start-up:\n{text}\n{err.read_text('utf-8')}"
                )
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"the relay did not say 'listening on' within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sigkill(self) -> None:
        """SIGKILL now, without waiting (callable from the event loop)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    def reap(self) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=10)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.sigkill()
        rc = self.reap()
        assert rc == -signal.SIGKILL, rc

    def stop(self) -> None:
        """A graceful SIGTERM stop, which must exit 0 without a traceback."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.reap()
        assert rc == 0, f"the relay exited {rc} on SIGTERM:\n{self.stderr()}"

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stderr(self) -> str:
        return "\n".join(p.read_text("utf-8", errors="replace") for p in self.logs if p.exists())

    def assert_no_traceback(self) -> None:
        text = self.stderr()
        assert "Traceback" not in text, text
        assert " ERROR " not in text, text


@contextlib.contextmanager
def running_relay(root: Path) -> Any:
    relay = RelayProcess(root)
    relay.start()
    try:
        yield relay
        if relay.proc is not None:
            relay.stop()
        relay.assert_no_traceback()
    finally:
        relay.close()


def duplicate_sends(relay: RelayProcess) -> int:
    """How many sends the running relay answered ``200 duplicate`` (Prometheus)."""
    import urllib.request

    with urllib.request.urlopen(f"{relay.url}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if (
            line.startswith("securechan_relay_requests_total{")
            and 'route="/v1/send/{sid}"' in line
            and 'status="200"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def fetch_all(
    client: RelayClient, rid: bytes, recipient: Ed25519SigningKey
) -> list[FetchedEnvelope]:
    """Every envelope held in a queue, oldest first (bounded paging)."""
    out: list[FetchedEnvelope] = []
    after = 0
    for _ in range(50):
        page = await client.fetch(rid, recipient, after=after, limit=500)
        if not page:
            return out
        out.extend(page)
        after = page[-1].seq
    raise AssertionError("the queue did not end after 50 pages")


async def within(seconds: float, aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, timeout=seconds)


# --- 1. the relay itself ------------------------------------------------------------


def test_sigkill_mid_burst_loses_no_acknowledged_send(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay:
        asyncio.run(within(90, _burst(relay)))
    # After a SIGKILL, a restart and a clean stop, the database is sound.
    conn = sqlite3.connect(relay.data / "relay.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


async def _burst(relay: RelayProcess) -> None:
    recipient = Ed25519SigningKey.generate()
    sender = Ed25519SigningKey.generate()
    async with RelayClient(relay.url, retry=PATIENT) as admin:
        ids = await admin.create_queue(recipient, sender_key=sender.public)

    msgs = [
        (secrets.token_bytes(16), f"envelope {i:03d} ".encode() + secrets.token_bytes(48))
        for i in range(BURST)
    ]
    assert len({m for m, _ in msgs}) == BURST
    by_id = dict(msgs)
    acked: dict[int, int] = {}  # index -> seq of the 2xx
    killed_at: list[int] = []
    kill_task: list[asyncio.Task[None]] = []

    async def one(i: int) -> int:
        msg_id, data = msgs[i]
        seq, duplicate = await client.send(ids.sid, data, msg_id, sender=sender)
        assert not duplicate, f"a first send of {i} was answered duplicate"
        acked[i] = seq
        if len(acked) >= KILL_AFTER and not kill_task:
            kill_task.append(asyncio.create_task(kill()))
        return seq

    async def kill() -> None:
        # A few milliseconds past the threshold, so the relay is caught in
        # the middle of a batch rather than just after one.
        await asyncio.sleep(KILL_DELAY)
        killed_at.append(len(acked))
        relay.sigkill()

    # attempts=1: every failure surfaces instead of being retried. All 300
    # are started at once; IN_FLIGHT of them are on the wire at any moment
    # (all 300 at once would only meet the queue's rate limit, burst 200).
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT), timeout=aiohttp.ClientTimeout(total=10)
        ) as session,
        RelayClient(relay.url, retry=RetryPolicy(attempts=1), session=session) as client,
    ):
        results = await within(
            60, asyncio.gather(*(one(i) for i in range(BURST)), return_exceptions=True)
        )
        if kill_task:
            await kill_task[0]
    assert killed_at, f"only {len(acked)} sends were answered; the relay was never killed"
    assert relay.reap() == -signal.SIGKILL
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    wrong = {i: r for i, r in failed.items() if not isinstance(r, RelayError)}
    assert not wrong, f"sends failed with something else than a relay error: {wrong}"
    assert set(acked) | set(failed) == set(range(BURST))
    assert not set(acked) & set(failed)
    assert failed, "the kill came after the burst: nothing was in flight"
    assert len(set(acked.values())) == len(acked), "two acknowledged sends share a seq"

    relay.start()
    async with RelayClient(relay.url, retry=PATIENT) as client:
        # (a) everything acknowledged is there, once, as acknowledged.
        held = await fetch_all(client, ids.rid, recipient)
        held_ids = [e.msg_id for e in held]
        assert len(held_ids) == len(set(held_ids)), "an envelope is stored twice"
        for e in held:
            assert e.msg_id in by_id, "the relay holds an envelope nobody sent"
            assert e.data == by_id[e.msg_id], "a stored payload changed"
        seq_of = {e.msg_id: e.seq for e in held}
        lost = [i for i in acked if msgs[i][0] not in seq_of]
        assert not lost, f"{len(lost)} acknowledged sends were lost by the SIGKILL: {lost[:10]}"
        for i, seq in acked.items():
            assert seq_of[msgs[i][0]] == seq, f"send {i} moved from seq {seq}"
        stored_unacked = [i for i in failed if msgs[i][0] in seq_of]
        assert len(held) == len(acked) + len(stored_unacked)

        # (b) the client does not know which failures were stored: it re-sends all.
        again = await within(
            60,
            asyncio.gather(
                *(client.send(ids.sid, d, m, sender=sender) for m, d in msgs),
                return_exceptions=True,
            ),
        )
        errors = [r for r in again if isinstance(r, BaseException)]
        assert not errors, f"re-sends failed: {errors[:5]}"
        duplicates = 0
        for i, (seq, duplicate) in enumerate(again):  # type: ignore[misc]
            msg_id = msgs[i][0]
            if msg_id in seq_of:
                assert duplicate, f"the stored send {i} was stored again"
                assert seq == seq_of[msg_id], f"the duplicate of {i} answered another seq"
                duplicates += 1
            else:
                assert not duplicate, f"send {i} was answered duplicate but was not stored"
                assert seq > max(seq_of.values(), default=0)
        counted = duplicate_sends(relay)
        assert counted == duplicates, f"the relay answered {counted} duplicates, not {duplicates}"

        final = await fetch_all(client, ids.rid, recipient)
        final_ids = [e.msg_id for e in final]
        assert len(final) == BURST
        assert set(final_ids) == set(by_id), "a message id is missing or unknown"
        assert len(set(final_ids)) == BURST, "a message id is stored twice"
        assert all(e.data == by_id[e.msg_id] for e in final), "a payload changed"
        # (c) seqs are unique, increasing, and the survivors kept theirs.
        seqs = [e.seq for e in final]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == BURST
        assert all(seq_of[e.msg_id] == e.seq for e in final if e.msg_id in seq_of)
    print(
        f"\nburst: {killed_at[0]} acknowledged when SIGKILL was sent,"
        f" {len(acked)} in all (replies already on the wire),"
        f" {len(stored_unacked)} stored but unacknowledged,"
        f" {len(failed) - len(stored_unacked)} not stored;"
        f" re-send of all {BURST}: {duplicates} answered duplicate,"
        f" {BURST - duplicates} stored new"
    )


# --- the two homes ----------------------------------------------------------------------


@dataclass
class Party:
    name: str
    keystore: Keystore
    identity: Identity

    @property
    def home(self) -> Path:
        return self.keystore.home

    def channel(self, retry: RetryPolicy = FAST_FAIL) -> Channel:
        return Channel(self.keystore, self.identity, retry=retry)

    def outbox_rows(self) -> int:
        """Rows in the outbox, read by another connection (as another process would)."""
        conn = sqlite3.connect(self.home / "client.db", timeout=10)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()


def make_party(root: Path, name: str) -> Party:
    ks = Keystore(root / name)
    ident = ks.create(name, PASSPHRASES[name], kdf=KDF_INTERACTIVE)
    return Party(name, ks, ident)


async def introduce(a: Party, ach: Channel, b: Party, bch: Channel, url: str) -> None:
    """Register both, exchange contact cards, and run the handshake both ways,
    so that later messages travel on the private (secured) queues."""
    card_a = await ach.register(url)
    card_b = await bch.register(url)
    a.keystore.contacts.add(b.keystore.public_identity(), card=card_b.to_bytes())
    b.keystore.contacts.add(a.keystore.public_identity(), card=card_a.to_bytes())
    sent = await ach.send_text(b.name, "hello")
    assert sent.pending == 0
    got = await receive_texts(bch, 1)
    assert got == ["hello"]
    # A picks up B's queue grant (not shown as a message).
    shown = await ach.receive()
    assert not [x for x in shown if isinstance(x, Received) and x.text is not None]
    assert not [x for x in shown if isinstance(x, Rejected)], shown
    assert ach.db.sessions()[0].peer_grant is not None, "A did not learn B's private queue"


async def receive_all(ch: Channel, want: int, *, seconds: float = 30) -> list[Received | Rejected]:
    """Receive until ``want`` texts were shown (bounded), then one more pass."""
    items: list[Received | Rejected] = []
    deadline = time.monotonic() + seconds
    for _ in range(200):
        items.extend(await ch.receive())
        if sum(1 for x in items if isinstance(x, Received) and x.text is not None) >= want:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    items.extend(await ch.receive())  # nothing more may come
    return items


async def receive_texts(ch: Channel, want: int) -> list[str]:
    items = await receive_all(ch, want)
    rejected = [x for x in items if isinstance(x, Rejected)]
    assert not rejected, rejected
    return [x.text for x in items if isinstance(x, Received) and x.text is not None]


def private_queue(ch: Channel) -> tuple[bytes, Ed25519SigningKey]:
    rows = [q for q in ch.db.queues() if q.kind == "private"]
    assert len(rows) == 1
    return rows[0].rid, Ed25519SigningKey(rows[0].secret)


# --- 2. the outbox across a relay crash --------------------------------------------------


def test_outbox_survives_relay_sigkill_and_b_sees_each_text_once(tmp_path: Path) -> None:
    a = make_party(tmp_path, "alpha")
    b = make_party(tmp_path, "bravo")
    with running_relay(tmp_path) as relay:
        asyncio.run(within(90, _outbox(relay, a, b)))


async def _outbox(relay: RelayProcess, a: Party, b: Party) -> None:
    async with a.channel() as ach, b.channel() as bch:
        await introduce(a, ach, b, bch, relay.url)

        kill_now = threading.Event()
        restarted = threading.Event()
        chaos_error: list[BaseException] = []

        def chaos() -> None:
            try:
                if not kill_now.wait(30):
                    return
                relay.kill()
                time.sleep(0.8)  # A keeps sending into a dead relay meanwhile
                relay.start()
                restarted.set()
            except BaseException as e:  # reported by the main thread
                chaos_error.append(e)

        texts = [f"text {i:02d} {secrets.token_hex(4)}" for i in range(TEXTS)]
        results: list[SendResult] = []
        ever_pending: dict[bytes, Any] = {}
        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        try:
            for i, text in enumerate(texts):
                results.append(await ach.send_text(b.name, text))
                for entry in ach.db.outbox():
                    ever_pending[entry.msg_id] = entry
                if i == 14:
                    kill_now.set()
                await asyncio.sleep(0.03)
        finally:
            kill_now.set()
            await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive(), "the kill/restart thread hung"
        assert not chaos_error, chaos_error
        assert restarted.is_set()

        pending_after_sends = sum(1 for r in results if r.pending)
        assert any(r.pending for r in results), "no send failed: the kill missed the burst"
        assert ever_pending, "nothing ever waited in the outbox"
        for _ in range(50):
            _, pending = await ach.flush_outbox()
            if pending == 0:
                break
            await asyncio.sleep(0.1)
        assert ach.db.outbox() == [], "the outbox did not drain after the restart"
        natural_duplicates = duplicate_sends(relay)

        # A crash after the relay's 2xx but before the outbox row was removed
        # leaves exactly this state: post every such envelope again.
        now = int(time.time())
        with ach.db.transaction():
            for e in ever_pending.values():
                ach.db.add_outbox(e.msg_id, e.relay, e.sid, e.sender, e.envelope, now)
        delivered, pending = await ach.flush_outbox()
        assert (delivered, pending) == (len(ever_pending), 0)
        forced = duplicate_sends(relay) - natural_duplicates
        assert forced == len(ever_pending), "a re-post was not recognised as a duplicate"

        items = await receive_all(bch, TEXTS)
        assert not [x for x in items if isinstance(x, Rejected)], items
        shown = [x for x in items if isinstance(x, Received) and x.text is not None]
        got = [x.text for x in shown]
        missing = [t for t in texts if t not in got]
        assert not missing, f"B never got {len(missing)} texts: {missing[:5]}"
        assert len(got) == len(set(got)) == TEXTS, "B was shown a text twice"
        sent_seqs = [r.seqs[0] for r in results]
        assert sent_seqs == sorted(sent_seqs) and len(set(sent_seqs)) == TEXTS
        assert {x.text: x.seq for x in shown} == dict(zip(texts, sent_seqs, strict=True))

        # After B acknowledged, the relay no longer holds them: re-posting now
        # reaches B again, and only B's record of seen ids stands in the way.
        with ach.db.transaction():
            for e in ever_pending.values():
                ach.db.add_outbox(e.msg_id, e.relay, e.sid, e.sender, e.envelope, now)
        assert await ach.flush_outbox() == (len(ever_pending), 0)
        again = await bch.receive()
        assert again == [], f"B showed re-posted envelopes again: {again}"
        stored_in = [row[4] for row in bch.history(a.name) if row[1] == "in"]
        assert sorted(t for t in stored_in if t in texts) == sorted(texts)
    print(
        f"\noutbox: {pending_after_sends} of {TEXTS} sends returned with envelopes pending,"
        f" {len(ever_pending)} envelopes waited in the outbox,"
        f" {natural_duplicates} re-posted after the restart were already stored"
        f" (answered duplicate), {len(ever_pending)} more posted twice on purpose"
    )
    # Last, so that everything above is checked even when this fails: the
    # texts are shown in the order they were sent (see the next test).
    assert got == texts, (
        "B was shown the texts out of order: "
        f"{[(x.text[:7], x.seq, x.notes) for x in shown if x.notes]}"
    )


def test_outbox_keeps_queue_order_when_one_post_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deterministic form of what test 2 meets by chance: the relay comes
    back while the outbox is being flushed, so the oldest envelope's post
    fails and the younger ones get through. They must not overtake it."""
    a = make_party(tmp_path, "alpha")
    b = make_party(tmp_path, "bravo")
    with running_relay(tmp_path) as relay:
        asyncio.run(within(60, _order(relay, a, b, monkeypatch)))


async def _order(relay: RelayProcess, a: Party, b: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    async with a.channel() as ach, b.channel() as bch:
        await introduce(a, ach, b, bch, relay.url)
        relay.kill()
        texts = ["first", "second", "third"]
        for text in texts:
            assert (await ach.send_text(b.name, text)).delivered == 0
        queued = ach.db.outbox()
        assert len(queued) == len(texts)
        relay.start()

        # One transient failure (a reset connection) on the oldest envelope.
        client = await ach.relay(relay.url)
        # The outbox posts with send_with_receipt (it checks the log receipt).
        real_send = client.send_with_receipt
        dropped: list[bytes] = []

        async def one_reset(
            sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
        ) -> SendReply:
            if msg_id == queued[0].msg_id and not dropped:
                dropped.append(msg_id)
                raise RelayUnavailable(f"{relay.url}: connection reset (injected)")
            return await real_send(sid, envelope, msg_id, sender=sender)

        monkeypatch.setattr(client, "send_with_receipt", one_reset)
        for _ in range(10):
            _, pending = await ach.flush_outbox()
            if pending == 0:
                break
        assert dropped and ach.db.outbox() == []

        items = await receive_all(bch, len(texts))
        assert not [x for x in items if isinstance(x, Rejected)], items
        shown = [x for x in items if isinstance(x, Received) and x.text is not None]
        assert sorted(x.text for x in shown) == sorted(texts), "a text was lost or doubled"
        assert [x.text for x in shown] == texts, (
            "the outbox let younger envelopes overtake one whose post failed: B saw "
            f"{[(x.text, x.seq, x.notes) for x in shown]}"
        )


# --- 3. the sender is killed after saving, before sending -------------------------------


def test_sender_sigkilled_between_saving_and_sending(tmp_path: Path) -> None:
    a = make_party(tmp_path, "alpha")
    b = make_party(tmp_path, "bravo")
    with running_relay(tmp_path) as relay:
        asyncio.run(within(90, _sender_crash(relay, a, b)))


async def _sender_crash(relay: RelayProcess, a: Party, b: Party) -> None:
    async with b.channel() as bch:
        async with a.channel() as ach:
            await introduce(a, ach, b, bch, relay.url)
        assert a.outbox_rows() == 0

        # The relay is down, so `securechan send` saves the session and the
        # envelope, then sits in its retry loop: SIGKILL it there.
        relay.kill()
        env = clean_env()
        env["SECURECHAN_PASSPHRASE"] = PASSPHRASES[a.name]
        proc = subprocess.Popen(
            [str(SECURECHAN), "--home", str(a.home), "send", b.name, "after the crash"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while a.outbox_rows() == 0 and time.monotonic() < deadline:
                assert proc.poll() is None or a.outbox_rows() > 0, "send exited before saving"
                await asyncio.sleep(0.01)
            assert a.outbox_rows() == 1, "the envelope never reached the outbox"
            still_running = proc.poll() is None
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=10)
        assert b"Traceback" not in err, err.decode()
        if still_running:
            assert proc.returncode == -signal.SIGKILL

        relay.start()
        async with a.channel() as ach:  # a new process on the same home
            pending = ach.db.outbox()
            assert len(pending) == 1
            assert await ach.flush_outbox() == (1, 0)
            assert (await ach.send_text(b.name, "the next one")).pending == 0
            texts_out = [row for row in ach.history(b.name) if row[1] == "out"]
        got = await receive_texts(bch, 2)
        assert got == ["after the crash", "the next one"], got
        ins = [(row[2], row[4]) for row in bch.history(a.name) if row[1] == "in"]
        assert len(ins) == len({seq for seq, _ in ins}), "two received messages share a seq"
        seq_in = {text: seq for seq, text in ins}
        seq_out = {row[4]: row[2] for row in texts_out}
        # The saved-but-unsent message kept its place; the next one got the next key.
        assert seq_in["after the crash"] == seq_out["after the crash"]
        assert seq_in["the next one"] == seq_out["the next one"] == seq_in["after the crash"] + 1
    print(f"\nsender crash: `securechan send` still running when killed: {still_running}")


# --- 4. the recipient: received but not acknowledged; a relay that repeats --------------


def test_receiver_crash_before_ack_and_repeated_envelopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_party(tmp_path, "alpha")
    b = make_party(tmp_path, "bravo")
    with running_relay(tmp_path) as relay:
        asyncio.run(within(90, _receiver(relay, a, b, monkeypatch)))


async def _receiver(
    relay: RelayProcess, a: Party, b: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with a.channel() as ach, b.channel() as bch:
        await introduce(a, ach, b, bch, relay.url)
        rid, recipient = private_queue(bch)

        # Record what A posts (the envelope, its id, where and with which key).
        posted: list[tuple[bytes, bytes, bytes, Ed25519SigningKey | None]] = []
        a_relay = await ach.relay(relay.url)
        real_send = a_relay.send_with_receipt  # what the outbox posts with

        async def recording_send(
            sid: bytes, envelope: bytes, msg_id: bytes, *, sender: Ed25519SigningKey | None
        ) -> SendReply:
            posted.append((sid, envelope, msg_id, sender))
            return await real_send(sid, envelope, msg_id, sender=sender)

        monkeypatch.setattr(a_relay, "send_with_receipt", recording_send)

        # (a) B commits the message, then the relay dies before the ack lands.
        assert (await ach.send_text(b.name, "m1")).pending == 0
        m1 = posted[-1]
        b_relay = await bch.relay(relay.url)
        real_ack: Callable[..., Awaitable[int]] = b_relay.ack
        acks: list[int] = []

        async def ack_into_dead_relay(*args: Any, **kwargs: Any) -> int:
            acks.append(kwargs["up_to"])
            relay.kill()
            return await real_ack(*args, **kwargs)

        monkeypatch.setattr(b_relay, "ack", ack_into_dead_relay)
        first = await bch.receive()
        assert [x.text for x in first if isinstance(x, Received)] == ["m1"], first
        assert acks, "B never tried to acknowledge"
        monkeypatch.setattr(b_relay, "ack", real_ack)
        relay.start()

        async with RelayClient(relay.url, retry=PATIENT) as raw:
            held = await fetch_all(raw, rid, recipient)
            assert [e.msg_id for e in held] == [m1[2]], "the unacknowledged m1 should be held"
            # While held, the same id is a duplicate at the relay itself.
            sid, env, msg_id, sender = m1
            assert await raw.send(sid, env, msg_id, sender=sender) == (held[0].seq, True)
        assert await bch.receive() == [], "B showed m1 again after the crash"

        assert (await ach.send_text(b.name, "m2")).pending == 0
        m2 = posted[-1]
        assert await receive_texts(bch, 1) == ["m2"]
        async with RelayClient(relay.url, retry=PATIENT) as raw:
            assert await fetch_all(raw, rid, recipient) == [], "acknowledged envelopes remain"

            # (b) A relay (or a sender retry) hands m1 over again, same id:
            # acknowledged and deleted, so the relay stores it anew...
            sid, env, msg_id, sender = m1
            _, duplicate = await raw.send(sid, env, msg_id, sender=sender)
            assert not duplicate
            shown = await bch.receive()
            assert shown == [], f"B showed a re-delivered m1: {shown}"

            # (c) ... or under a new id, as a malicious relay could: the
            # session must refuse the replayed ciphertext, never show it.
            sid, env, _, sender = m2
            await raw.send(sid, env, secrets.token_bytes(16), sender=sender)
            shown = await bch.receive()
            assert not [x for x in shown if isinstance(x, Received)], f"m2 shown twice: {shown}"
            replay_rejections = [x.reason for x in shown if isinstance(x, Rejected)]

        # The conversation still works afterwards.
        assert (await ach.send_text(b.name, "m3")).pending == 0
        assert await receive_texts(bch, 1) == ["m3"]
        ins = [row[4] for row in bch.history(a.name) if row[1] == "in"]
        assert ins.count("m1") == ins.count("m2") == ins.count("m3") == 1, ins
    print(f"\nreceiver: a replay under a new id was refused as {replay_rejections}")
