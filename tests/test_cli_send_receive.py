"""Issue 13, the send/receive side of the CLI, end to end: real relay
processes on 127.0.0.1, real ``securechan`` subprocesses, real homes.

- ``receive`` drains every queue (a file of more than one fetch page of
  chunks arrives in one run), with progress (bytes, rate, ETA) on a
  terminal for a large incoming file;
- ``history`` shows every message (more than the old 1,000-row cap) and
  pages with ``--limit``/``--before`` saying that it does;
- a ``send`` that leaves envelopes queued says so and exits 3;
- a text over the limit is refused in one line with the limit;
- Ctrl-C during ``send --file`` withdraws the file: no later command
  delivers it;
- ``outbox`` lists what is queued and ``outbox cancel`` withdraws it.

Each test fails on main (8201c23; run with main's ``securechan/`` first on
PYTHONPATH): receive saved no file (200 of 240 chunks taken); no progress
line; history listed 1,000 of 1,005 rows and had no --limit; the send with
one relay down printed "sent, 3 envelopes still queued" and exited 0; a
100 KiB text asked for the passphrase first ("no passphrase" without one);
Ctrl-C printed an empty line before "securechan: interrupted" (the test
stops there; the issue saw the file delivered by the next command); no
``outbox`` command (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.outbox import encrypt
from securechan.client.stored import StoredRecord
from securechan.protocol.payload import CHUNK_SIZE, MAX_TEXT_BYTES
from tests.cli_schema import validate
from tests.test_e2e_relay import (
    Party,
    RelayProcess,
    _env,
    introduce,
    json_stream,
    one_line_error,
    pin,
    register,
    transcript,
)
from tests.test_e2e_relay import people as people
from tests.test_e2e_relay import pristine as pristine

PAGE = 200  # client/inbox.py PAGE (and the cap on main): one fetch page


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay of this test alone (some tests stop and restart it)."""
    r = RelayProcess(tmp_path / "relay-data", tmp_path / "relay.log")
    r.start()
    try:
        yield r
    finally:
        r.stop()


class Gate:
    """A TCP forwarder in front of the relay that can refuse every
    connection (closed at once: the relay seems down) while keeping its
    port, so that no other process takes the port meanwhile, as happened
    to a relay restarted on its old port under load."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if not self.open:
                conn.close()
                continue
            up = socket.create_connection(self.target)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gate(relay: RelayProcess) -> Iterator[Gate]:
    g = Gate(relay.url)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def tw(relay: RelayProcess, people: dict[str, Party]) -> tuple[Party, Party]:
    t, w = people["tehran"], people["washington"]
    introduce(t, w, relay.url)
    return t, w


def items(p: Party, *args: object) -> list[dict[str, Any]]:
    proc = p.run(*args, "--json")
    assert proc.returncode == 0, transcript(proc)
    out: list[dict[str, Any]] = []
    for x in json_stream(proc.stdout):  # one object per line, or a list
        out.extend(x if isinstance(x, list) else [x])
    return out


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# --- 1. receive drains everything --------------------------------------------------


def test_receive_takes_a_file_of_more_than_one_page_in_one_run(
    tw: tuple[Party, Party], tmp_path: Path
) -> None:
    """More chunks than one fetch page (PAGE envelopes): one 'receive'
    saves the file (main took 200 envelopes, exited 0, printed nothing)."""
    t, w = tw
    size = (PAGE + 40) * CHUNK_SIZE
    src = _random_file(tmp_path / "big.bin", size)
    t.ok("send", "washington", "--file", src)
    down = tmp_path / "down"
    got = items(w, "receive", "--download", down)
    files = [x for x in got if x.get("file")]
    assert len(files) == 1, got
    assert Path(files[0]["file"]).read_bytes() == src.read_bytes()
    # Nothing left: a second run finds nothing.
    assert items(w, "receive", "--download", down) == []


# --- 2. progress on an incoming file --------------------------------------------------


def _run_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; return (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if chunk:
                shown += chunk
                continue
            break  # end of file (EIO): the child closed the terminal
        if proc.poll() is not None:
            break
    proc.wait(timeout=120)
    assert proc.stdout is not None
    proc.stdout.close()
    os.close(master)
    return proc.returncode, shown.decode("utf-8", "replace")


def test_receive_shows_progress_of_a_large_file_on_a_terminal(
    tw: tuple[Party, Party], tmp_path: Path
) -> None:
    t, w = tw
    src = _random_file(tmp_path / "report.bin", 5 * 1024 * 1024)
    t.ok("send", "washington", "--file", src)
    code, shown = _run_on_terminal(
        w.argv("receive", "--download", tmp_path / "down"), _env(w.passphrase)
    )
    assert code == 0, shown
    assert "Traceback" not in shown
    assert "Receiving report.bin:" in shown, shown
    assert "of 5.2 MB" in shown and "MB/s" in shown and "ETA" in shown, shown
    assert (tmp_path / "down" / "report.bin").read_bytes() == src.read_bytes()
    # Not in a pipe, nor with --json.
    t.ok("send", "washington", "--file", src)
    proc = w.run("receive", "--download", tmp_path / "down2")
    assert "Receiving" not in proc.stderr and proc.returncode == 0, transcript(proc)


# --- 3. history shows everything, paged -----------------------------------------------


def _store_sent_texts(p: Party, peer: str, texts: list[str]) -> None:
    """Make and store sent texts the way ``send`` commits them (session
    state and record in one transaction, ``client/outbox.py``), without
    posting them: a thousand sends through the relay take minutes here."""

    async def go() -> None:
        async with p.channel() as ch:
            contact = ch.ctx.contact(peer)
            (row,) = ch.db.sessions(contact.fingerprint.digest)
            for text in texts:
                with ch.db.transaction():
                    session = ch.state.load_session(row.conversation, sending=True)
                    out = encrypt(session, now=ch.now(), text=text)
                    ch.state.save_session(session)
                    record = StoredRecord(
                        signed=out.signed,
                        contact=peer,
                        envelope=out.envelopes[-1],
                        key=out.key,
                        ad=out.ad,
                    )
                    ch.db.add_message(
                        session.conversation,
                        contact.fingerprint.digest,
                        "out",
                        session.sent_count,
                        ch.now(),
                        record.to_bytes(),
                    )

    asyncio.run(go())


def test_history_shows_more_than_a_thousand_messages_and_pages(
    tw: tuple[Party, Party],
) -> None:
    t, _ = tw
    n = 1005
    t.ok("send", "washington", "line 0")  # a real send starts the session
    _store_sent_texts(t, "washington", [f"line {i}" for i in range(1, n)])
    rows = items(t, "history")
    said = [r["summary"] for r in rows if r["summary"].startswith("line ")]
    assert said == [f"line {i}" for i in range(n)]  # main stopped at the oldest 1,000 rows
    # --limit: the newest N, and a note that names the next page back.
    proc = t.run("history", "--limit", "10")
    assert proc.returncode == 0, transcript(proc)
    shown = proc.stdout.splitlines()
    assert len(shown) == 10 and shown[-1].endswith(f"line {n - 1}"), shown
    note = [ln for ln in proc.stderr.splitlines() if "older messages" in ln]
    assert len(note) == 1, transcript(proc)
    before = note[0].split("--before ")[1].rstrip("'")
    page = items(t, "history", "--limit", "10", "--before", before)
    assert [r["summary"] for r in page] == [f"line {i}" for i in range(n - 20, n - 10)]
    # A bad cursor is a usage error on one line.
    one_line_error(t.run("history", "--before", "00000000"), 2)


# --- 4. a send that leaves envelopes queued -------------------------------------------


def test_send_that_leaves_envelopes_queued_says_so_and_exits_3(
    relay: RelayProcess,
    gate: Gate,
    people: dict[str, Party],
) -> None:
    """washington has two addresses (the second through a gate that goes
    down); the envelope for the first is taken, the one for the second
    stays queued. main printed 'sent, 3 envelopes still queued' and exited 0."""
    t, w = people["tehran"], people["washington"]
    card_t = register(t, relay.url)
    register(w, relay.url)
    card_w = register(w, gate.url)  # both addresses
    pin(t, card_w)
    pin(w, card_t)
    gate.open = False
    proc = t.run("send", "washington", "hello")
    line = one_line_error(proc, 3)
    assert "still queued" in line and "securechan outbox" in line, line
    queued = items(t, "outbox")
    # The first message's envelopes (handshake, queue grant, text), each
    # for two addresses: the half for the one that is up was taken.
    assert len(queued) == 1 and queued[0]["posted"] * 2 == queued[0]["parts"] > 0, queued
    gate.open = True
    t.ok("status")  # posts it
    assert items(t, "outbox") == []
    # And a send with every address up exits 0.
    t.ok("send", "washington", "again")


# --- 5. a text over the limit ----------------------------------------------------------


def test_text_over_the_limit_is_refused_in_one_line(tw: tuple[Party, Party]) -> None:
    t, w = tw
    text = "x" * (300 * 1024)
    proc = subprocess.run(
        t.argv("send", "washington", "-"),
        input=text,
        capture_output=True,
        text=True,
        env=_env(t.passphrase),
        timeout=120,
        check=False,
    )
    line = one_line_error(proc, 2)  # (one line on main too, through stdin)
    assert str(MAX_TEXT_BYTES) in line and "--file" in line, line
    # As an argument (under the kernel's 128 KiB limit for one), and before
    # the passphrase is asked for: no passphrase source is needed to learn
    # that the text is too long (main unlocked the identity first, and
    # without a passphrase source failed on that instead).
    big = subprocess.run(
        t.argv("send", "washington", "é" * (50 * 1024)),
        capture_output=True,
        text=True,
        env=_env(None),
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    line = one_line_error(big, 2)
    assert f"the text is {100 * 1024} bytes" in line and "--file" in line, line
    # Nothing was queued or sent.
    assert items(t, "outbox") == []
    assert items(w, "receive") == []


# --- 6. Ctrl-C during send --file --------------------------------------------------------


def _outbox_rows(home: Path) -> int:
    db = sqlite3.connect(f"file:{home / 'client.db'}?mode=ro", uri=True, timeout=5)
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)
    except sqlite3.OperationalError:
        return -1
    finally:
        db.close()


def test_ctrl_c_during_send_file_withdraws_the_file(
    tw: tuple[Party, Party], tmp_path: Path
) -> None:
    """SIGINT once posting has started: one line, exit 130, no traceback;
    the rest of the file is withdrawn, so neither the next send nor the
    next receive delivers it (main: an aiohttp traceback, and the next
    command posted the rest of the "cancelled" file)."""
    t, w = tw
    t.ok("send", "washington", "first")  # the session exists: the file is all chunks
    src = _random_file(tmp_path / "big.bin", 1200 * CHUNK_SIZE)
    proc = subprocess.Popen(
        t.argv("send", "washington", "--file", src),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(t.passphrase),
        text=True,
    )
    deadline = time.monotonic() + 120
    peak = 0
    while time.monotonic() < deadline and proc.poll() is None:
        n = _outbox_rows(t.home)
        peak = max(peak, n)
        if peak > 100 and 0 < n < peak - 20:
            break  # committed, and posting under way
        time.sleep(0.01)
    assert proc.poll() is None, "the send ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = one_line_error(done, 130)
    assert "interrupted" in line and "withdrawn" in line, line
    assert _outbox_rows(t.home) == 0
    assert items(t, "outbox") == []
    t.ok("send", "washington", "after the cancel")
    got = items(w, "receive", "--download", tmp_path / "down")
    assert not [x for x in got if x.get("file")], got
    assert [x["text"] for x in got if x.get("type") == "text"] == ["first", "after the cancel"]
    # History does not claim the cancelled file was sent.
    assert not [r for r in items(t, "history") if "big.bin" in r["summary"]]


# --- 7. outbox lists and cancels ------------------------------------------------------------


def test_outbox_lists_and_cancels_a_queued_message(
    relay: RelayProcess, gate: Gate, people: dict[str, Party], tmp_path: Path
) -> None:
    t, w = people["tehran"], people["washington"]
    introduce(t, w, gate.url)  # everything through the gate
    t.ok("send", "washington", "before")
    gate.open = False
    try:
        one_line_error(t.run("send", "washington", "never to be sent"), 3)
        src = _random_file(tmp_path / "notes.txt", 1000)
        one_line_error(t.run("send", "washington", "--file", src), 3)
        queued = items(t, "outbox")
        assert [(q["contact"], q["kind"], q["size"]) for q in queued] == [
            ("washington", "text", len("never to be sent")),
            ("washington", "file", 1000),
        ]
        assert queued[1]["file_name"] == "notes.txt" and queued[0]["posted"] == 0
        for q in queued:
            validate(q, "QueuedMessage")  # docs/cli-json.schema.json
        listed = t.run("outbox")
        assert listed.returncode == 0 and queued[0]["id"] in listed.stdout, transcript(listed)
        done = t.run("outbox", "cancel", queued[1]["id"], "--json")
        assert done.returncode == 0, transcript(done)
        cancelled = json.loads(done.stdout)
        validate(cancelled, "Cancelled")
        assert cancelled["id"] == queued[1]["id"] and cancelled["withdrawn"] >= 1
        assert [q["kind"] for q in items(t, "outbox")] == ["text"]
        done = t.run("outbox", "cancel", queued[0]["id"])
        assert done.returncode == 0 and "withdrawn" in done.stderr, transcript(done)
        assert items(t, "outbox") == []
        # Cancelling it again, or an unknown id: one line, exit 2.
        one_line_error(t.run("outbox", "cancel", queued[0]["id"]), 2)
        one_line_error(t.run("outbox", "cancel", "00" * 8), 2)
    finally:
        gate.open = True
    t.ok("send", "washington", "after")
    got = items(w, "receive", "--download", tmp_path / "down")
    texts = [x["text"] for x in got if x.get("type") == "text"]
    assert texts == ["before", "after"], got
    assert [Path(x["file"]).name for x in got if x.get("file")] == []
    assert items(t, "outbox") == []
