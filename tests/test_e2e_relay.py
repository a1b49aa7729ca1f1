"""End to end through a real relay process (issue 4, "Must show").

A real ``securechan relay serve --port 0`` runs on 127.0.0.1; delegations
with their own home folders talk through it, driven by real ``securechan``
processes (``--home`` per party, the passphrase in ``SECURECHAN_PASSPHRASE``)
and by the library's :class:`~securechan.client.channel.Channel`.

Covered: register, exchange contact files, compare and verify safety
numbers, text and a multi-MB file both ways, ``receive --follow``, order and
exactly-once delivery, history and status; the same through the library;
received files never escape the download folder nor overwrite anything; the
relay's data folder holds no names, fingerprints or plaintext; first
messages from unknown senders; a relay that goes down and comes back loses
and duplicates nothing.

Identities use the cheapest Argon2id the keystore accepts (``--kdf
interactive``), made once per module and copied per test; the CLI test runs
``init`` itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan import wire
from securechan.client.channel import Channel, sanitize_filename
from securechan.client.results import Received
from securechan.errors import MalformedInput
from securechan.identity import Keystore
from securechan.identity.safety import safety_number
from securechan.primitives import KDF_INTERACTIVE
from securechan.protocol.address import ContactCard
from securechan.protocol.payload import FILE_CHUNK, FileChunk
from securechan.terminal_text import is_flagged
from tests.ndjson import ndjson, one

KDF = ("--kdf", "interactive")
MIB = 1024 * 1024
PASSPHRASES = {
    "tehran": "tehran's long test passphrase",
    "washington": "washington's long test passphrase",
    "cairo": "cairo's long test passphrase",
    "delhi": "delhi's long test passphrase",
}
SAFETY_NUMBER_RE = re.compile(r"\d{5}(?: \d{5}){11}")
# History rows the protocol adds on its own (not part of what people said).
INTERNAL = {"[hello]", "[private queue granted]"}
DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}


# --- processes ---------------------------------------------------------------------


def _command() -> list[str]:
    """The console script next to the running interpreter."""
    found = shutil.which("securechan", path=str(Path(sys.executable).parent))
    assert found is not None, f"no securechan console script next to {sys.executable}"
    return [found]


def _env(passphrase: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    if passphrase is not None:
        env["SECURECHAN_PASSPHRASE"] = passphrase
    return env


def transcript(proc: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(map(str, proc.args[1:]))
    return (
        f"$ securechan {cmd}\nexit {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI's failure contract: exit code, one line on stderr, no traceback."""
    assert proc.returncode == code, transcript(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, transcript(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr\n{transcript(proc)}"
    assert lines[0].startswith("securechan: "), transcript(proc)
    return lines[0]


# The commands printing one line per item (the rest print one object).
LIST_COMMANDS = {("log", "show"), ("contact", "list"), ("policy", "show")}


def json_stream(text: str) -> list[Any]:
    """The JSON documents printed one after another (``receive --json``)."""
    return list(ndjson(text))


def texts(items: list[Any]) -> list[dict[str, Any]]:
    return [x for x in items if isinstance(x, dict) and x.get("type") == "text"]


class RelayProcess:
    """``securechan relay serve`` in a child process."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.log = log
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._pump = threading.Thread()

    def start(self) -> None:
        """Start (again, on the same port and data once it ran) and wait for
        the "listening on" line."""
        with open(self.log, "ab") as log:
            self.proc = proc = subprocess.Popen(
                [*_command(), "relay", "serve", "--port", str(self.port), "--data", self.data],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=_env(),
                text=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                proc.kill()
                proc.wait()
                self._close(proc)
                pytest.fail(f"the relay did not start: {seen}\n{self.log.read_text()}")
            seen.append(line)
            m = re.match(r"listening on (http://127\.0\.0\.1:(\d+))$", line.strip())
            if m:
                self.url, port = m.group(1), int(m.group(2))
                assert self.port in (0, port)
                self.port = port
                return

    def _close(self, proc: subprocess.Popen[str]) -> None:
        self._pump.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM; the relay must shut down cleanly (exit 0)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self._close(proc)
            pytest.fail("the relay did not stop on SIGTERM")
        self._close(proc)
        log = self.log.read_text()
        assert code == 0, f"relay exit {code}\n{log}"
        assert "Traceback" not in log, log


@dataclasses.dataclass(frozen=True)
class Party:
    """One delegation: a name and a home folder."""

    name: str
    home: Path

    @property
    def passphrase(self) -> str:
        return PASSPHRASES[self.name]

    def argv(self, *args: object) -> list[str]:
        return [*_command(), "--home", str(self.home), *map(str, args)]

    def run(self, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=_env(self.passphrase),
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in proc.stderr, transcript(proc)
        return proc

    def ok(self, *args: object, cwd: Path | None = None) -> str:
        proc = self.run(*args, cwd=cwd)
        assert proc.returncode == 0, transcript(proc)
        return proc.stdout

    def json(self, *args: object) -> Any:
        """One object for a single result; a list (one line each, NDJSON)
        for the list commands."""
        out = self.ok(*args, "--json")
        return (
            ndjson(out)
            if tuple(map(str, args[:2])) in LIST_COMMANDS or args[0] == "history"
            else one(out)
        )

    def items(self, *args: object, cwd: Path | None = None) -> list[Any]:
        return json_stream(self.ok(*args, "--json", cwd=cwd))

    def channel(self) -> Channel:
        return Channel.open(self.home, self.passphrase)

    def keystore(self) -> Keystore:
        return Keystore(self.home)


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    root = tmp_path_factory.mktemp("relay")
    r = RelayProcess(root / "data", root / "relay.log")
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unregistered identities, made once per module."""
    root = tmp_path_factory.mktemp("pristine")
    for name, passphrase in PASSPHRASES.items():
        Keystore(root / name).create(name, passphrase, kdf=KDF_INTERACTIVE)
    return root


@pytest.fixture
def people(pristine: Path, tmp_path: Path) -> dict[str, Party]:
    """Fresh copies of the pristine identities for one test."""
    out = {}
    for name in PASSPHRASES:
        shutil.copytree(pristine / name, tmp_path / name)
        out[name] = Party(name, tmp_path / name)
    return out


def register(party: Party, url: str) -> ContactCard:
    async def go() -> ContactCard:
        async with party.channel() as ch:
            return await ch.register(url)

    return asyncio.run(go())


def contact_file(card: ContactCard, path: Path) -> Path:
    """What 'id export' writes after 'register': identity, then contact card."""
    path.write_text(card.identity.to_text() + card.to_text(), encoding="ascii")
    return path


def pin(party: Party, card: ContactCard, *, verify: bool = True) -> None:
    store = party.keystore()
    store.contacts.add(card.identity, card=card.to_bytes())
    if verify:
        own = store.public_identity()
        store.contacts.verify(card.identity.name, str(safety_number(own, card.identity)), own)


def introduce(a: Party, b: Party, url: str) -> tuple[ContactCard, ContactCard]:
    """Register both at ``url`` and pin + verify each other."""
    card_a, card_b = register(a, url), register(b, url)
    pin(a, card_b)
    pin(b, card_a)
    return card_a, card_b


@dataclasses.dataclass(frozen=True)
class Pair:
    t: Party
    w: Party
    card_w: ContactCard


@pytest.fixture
def pair(relay: RelayProcess, people: dict[str, Party]) -> Pair:
    """tehran and washington, registered at the module's relay, verified."""
    t, w = people["tehran"], people["washington"]
    _, card_w = introduce(t, w, relay.url)
    return Pair(t, w, card_w)


def _start_conversation(a: Party, b: Party) -> None:
    a.ok("send", b.name, f"{a.name}: opening the channel")
    got = texts(b.items("receive"))
    assert [x["text"] for x in got] == [f"{a.name}: opening the channel"]


# --- 1. the CLI, end to end ------------------------------------------------------------


def test_cli_end_to_end(relay: RelayProcess, tmp_path: Path) -> None:
    t = Party("tehran", tmp_path / "tehran")
    w = Party("washington", tmp_path / "washington")
    exported: dict[str, Path] = {}
    for p in (t, w):
        made = p.json("init", "--name", p.name, *KDF)
        assert made["name"] == p.name
        p.ok("register", "--relay", relay.url)
        exported[p.name] = tmp_path / f"{p.name}.id"
        p.ok("id", "export", "-o", exported[p.name])
        text = exported[p.name].read_text("ascii")
        assert "-----BEGIN SECURECHAN PUBLIC IDENTITY-----" in text
        assert "-----BEGIN SECURECHAN CONTACT CARD-----" in text
    t.ok("contact", "add", exported["washington"])
    w.ok("contact", "add", exported["tehran"])

    shown_t = t.json("contact", "show", "washington")
    shown_w = w.json("contact", "show", "tehran")
    assert shown_t["verified"] is False
    assert shown_t["safety_number"] == shown_w["safety_number"]
    assert SAFETY_NUMBER_RE.fullmatch(shown_t["safety_number"])
    t.ok("contact", "verify", "washington", shown_w["safety_number"])
    w.ok("contact", "verify", "tehran", shown_t["safety_number"])
    assert t.json("contact", "show", "washington")["verified"] is True
    assert w.json("contact", "show", "tehran")["verified"] is True

    # Text, both ways.
    history_t: list[tuple[str, str]] = []  # what tehran's history must show
    for sender, receiver, line in (
        (t, w, "Tehran: we accept the draft agenda."),
        (w, t, "Washington: agreed; Geneva on the 14th."),
    ):
        sent = sender.json("send", receiver.name, line)
        assert sent["contact"] == receiver.name
        assert sent["pending"] == 0
        got = texts(receiver.items("receive"))
        assert [(x["contact"], x["verified"], x["text"]) for x in got] == [
            (sender.name, True, line)
        ]
        assert isinstance(got[0]["seq"], int)
        assert got[0]["seq"] >= 1
        history_t.append(("out" if sender is t else "in", line))

    # A multi-MB file, both ways; the saved name is the sanitised original.
    for sender, receiver, name in (
        (t, w, "tehran draft #1 (annex).bin"),
        (w, t, "washington reply, v2.bin"),
    ):
        data = os.urandom(3 * MIB + 12345)
        src = tmp_path / "outgoing" / sender.name / name
        src.parent.mkdir(parents=True)
        src.write_bytes(data)
        sent = sender.json("send", receiver.name, "--file", src)
        assert sent["pending"] == 0
        assert len(sent["seqs"]) > 1  # chunked
        folder = tmp_path / "downloads" / receiver.name
        items = receiver.items("receive", "--download", folder)
        files = [x for x in items if x.get("type") == "file"]
        assert len(files) == 1, items
        assert files[0]["contact"] == sender.name
        assert files[0]["verified"] is True
        saved = Path(files[0]["file"])
        assert saved.parent.resolve() == folder.resolve()
        assert saved.name == sanitize_filename(name)
        assert saved.name == name  # nothing unsafe in it: kept (tests/test_filenames.py)
        assert saved.read_bytes() == data
        assert sorted(os.listdir(folder)) == [saved.name]
        history_t.append(("out" if sender is t else "in", f"[file {name}, {len(data)} bytes]"))

    # receive --follow picks up what is sent while it runs, in order.
    follow = subprocess.Popen(
        w.argv("receive", "--follow", "--timeout", "5", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_env(w.passphrase),
        text=True,
    )
    try:
        time.sleep(0.3)
        lines = [f"Tehran: follow-up point {i}" for i in (1, 2, 3)]
        for line in lines:
            assert follow.poll() is None, "receive --follow ended early"
            t.ok("send", "washington", line)
            history_t.append(("out", line))
        assert follow.poll() is None, "receive --follow ended before the last send"
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    assert "Traceback" not in err
    got = texts(json_stream(out))
    assert [x["text"] for x in got] == lines
    assert all(x["contact"] == "tehran" and x["verified"] is True for x in got)
    seqs = [x["seq"] for x in got]
    assert seqs == sorted(set(seqs))
    assert texts(w.items("receive")) == []  # nothing left over, nothing twice

    for p in (t, w):
        status = p.json("status")
        assert status["outbox"] == 0
        assert status["relays"] == [relay.url]

    # The stored conversation, in order, the same on both sides.
    def conversation(p: Party, peer: str) -> list[tuple[str, str]]:
        rows = p.json("history", peer)
        assert all(r["contact"] == peer for r in rows)
        return [(r["direction"], r["summary"]) for r in rows if r["summary"] not in INTERNAL]

    mirror = {"in": "out", "out": "in"}
    assert conversation(t, "washington") == history_t
    assert conversation(w, "tehran") == [(mirror[d], s) for d, s in history_t]


# --- 2. order and exactly-once -----------------------------------------------------------


def test_twenty_texts_arrive_in_order_exactly_once(pair: Pair) -> None:
    t, w = pair.t, pair.w
    lines = [f"Tehran: point {i:02d} of the agenda" for i in range(1, 21)]
    for line in lines:
        t.ok("send", "washington", line)
    got = texts(w.items("receive"))
    assert [x["text"] for x in got] == lines
    seqs = [x["seq"] for x in got]
    assert seqs == sorted(set(seqs))
    assert all(x["contact"] == "tehran" and x["verified"] is True for x in got)

    again = w.run("receive", "--json")
    assert again.returncode == 0, transcript(again)
    assert (again.stdout, again.stderr) == ("", "")
    history = [r["summary"] for r in w.json("history", "tehran") if r["direction"] == "in"]
    assert [s for s in history if s not in INTERNAL] == lines
    assert t.json("status")["outbox"] == 0


def test_concurrent_receivers_show_each_message_once(pair: Pair) -> None:
    """Several 'receive' processes on one home (say '--follow' in one terminal
    and a plain 'receive' in another) while another command holds the home's
    write lock: each message is shown by exactly one of them, and none
    reports the others' messages as refused replays."""
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    lines = [f"Tehran: item {i}" for i in range(1, 11)]

    async def send() -> None:
        async with t.channel() as ch:
            for line in lines:
                await ch.send_text("washington", line)

    asyncio.run(send())
    # Another command (a 'send', say) holds the write lock of washington's
    # database while the receivers fetch: they all find the envelopes new and
    # wait for the lock to store them.
    lock = sqlite3.connect(w.home / "client.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        procs = [
            subprocess.Popen(
                w.argv("receive", "--json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=_env(w.passphrase),
                text=True,
            )
            for _ in range(3)
        ]
        time.sleep(3)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    items = [x for out, _ in outputs for x in json_stream(out)]
    assert sorted(x["text"] for x in texts(items)) == sorted(lines)
    for out, _ in outputs:
        seqs = [x["seq"] for x in texts(json_stream(out))]
        assert seqs == sorted(seqs)
    assert [x for x in items if "rejected" in x] == []


# --- 3. the library ------------------------------------------------------------------------


def test_library_api(relay: RelayProcess, people: dict[str, Party], tmp_path: Path) -> None:
    t, w = people["tehran"], people["washington"]
    memo = b"MEMORANDUM\n" + os.urandom(2 * MIB)
    reply = os.urandom(MIB + 7)

    async def main() -> None:
        async with t.channel() as tehran, w.channel() as washington:
            for ch in (tehran, washington):
                card = await ch.register(relay.url)
                (tmp_path / f"{ch.identity.name}.card").write_text(card.to_text())
            for ch, peer in ((tehran, "washington"), (washington, "tehran")):
                card = ContactCard.from_text((tmp_path / f"{peer}.card").read_text())
                ch.keystore.contacts.add(card.identity, card=card.to_bytes())
                sn = ch.keystore.contacts.safety_number(peer, ch.identity.public)
                ch.keystore.contacts.verify(peer, str(sn), ch.identity.public)

            sent = await tehran.send_text("washington", "We accept the draft.")
            assert sent.pending == 0
            [msg] = [r for r in await washington.receive() if isinstance(r, Received) and r.text]
            assert (msg.contact, msg.verified, msg.text) == ("tehran", True, "We accept the draft.")

            await washington.send_text("tehran", "Noted.")
            await washington.send_file("tehran", "reply.bin", reply)
            got = [r for r in await tehran.receive() if isinstance(r, Received)]
            assert [r.text for r in got if r.text] == ["Noted."]
            [f] = [r for r in got if r.file_data is not None]
            assert (f.contact, f.file_name, f.file_data) == ("washington", "reply.bin", reply)

            await tehran.send_file("washington", "memo.txt", memo)
            [f] = [r for r in await washington.receive() if isinstance(r, Received) and r.file_data]
            assert (f.file_name, f.file_data) == ("memo.txt", memo)
            assert not [r for r in await washington.receive() if isinstance(r, Received)]

            convo = [
                (d, s) for _, d, _, _, s, _ in tehran.history("washington") if s not in INTERNAL
            ]
            assert convo == [
                ("out", "We accept the draft."),
                ("in", "Noted."),
                ("in", f"[file reply.bin, {len(reply)} bytes]"),
                ("out", f"[file memo.txt, {len(memo)} bytes]"),
            ]
            assert tehran.status()["outbox"] == 0

    asyncio.run(main())


# --- 4. downloads are safe ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        ".",
        "",
        "/etc/shadow",
        "CON",
        "con.txt",
        "NUL.tar.gz",
        "COM1",
        "lpt9.log",
        "CON .txt",
        "a/b\\c",
        "..\\..\\evil.txt",
        "C:\\Windows\\System32\\evil.dll",
        "\x07bell.txt",
        "name\x00.txt",
        "evil.txt\n",
        "\u202egnp.exe",
        ".hidden",
        "...",
        " . ",
        "caf\u00e9.txt",
        "x" * 300,
        "a" * 99 + ".txt",
    ],
    ids=lambda name: ascii(name)[1:-1] if len(name) < 40 else f"{len(name)}-chars",
)
def test_sanitize_filename(name: str) -> None:
    clean = sanitize_filename(name)
    assert clean
    assert len(clean.encode("utf-8")) <= 200  # tests/test_filenames.py has the rest
    assert not any(is_flagged(c) for c in clean), clean
    assert "/" not in clean and "\\" not in clean
    assert not clean.startswith(".")
    assert clean not in {".", ".."}
    # Windows ignores trailing dots and spaces, and a device name stays a
    # device name with any extension ("NUL.tar.gz") or trailing spaces.
    assert clean == clean.rstrip(" ."), clean
    assert clean.split(".", 1)[0].rstrip(" ").upper() not in DEVICE_NAMES, clean
    assert sanitize_filename(clean) == clean


@pytest.mark.parametrize("name", ["report.pdf", "Draft communique v2.docx", "a-b_c.tar.gz"])
def test_sanitize_filename_keeps_plain_names(name: str) -> None:
    assert sanitize_filename(name) == name


def test_hostile_file_names_end_to_end(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, w = pair.t, pair.w
    folder = tmp_path / "inbox" / "downloads"  # "../../x" from here is tmp_path/x
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not to be touched")
    (folder / "evil.txt").symlink_to(outside)  # a trap at the sanitised name
    (folder / "report.txt").write_bytes(b"an older report")

    def files_outside() -> dict[str, bytes]:
        skip = {t.home, w.home, folder}
        return {
            str(p.relative_to(tmp_path)): p.read_bytes()
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file() and not p.is_symlink() and not any(s in p.parents for s in skip)
        }

    before = files_outside()
    # (name, content): the sanitised names collide with the trap, the older
    # report and each other.
    sends = [
        ("../../evil.txt", b"A"),
        ("..\\..\\evil.txt", b"B"),
        ("..", b"C"),
        ("CON", b"D"),
        ("a/b\\c", b"E"),
        ("\x07bell.txt", b"F"),
        (".hidden", b"G"),
        ("report.txt", b"H"),
        ("report.txt", b"I"),
    ]

    def unchecked(cls: type[FileChunk], data: bytes) -> FileChunk:
        return cls(**wire.decode(FILE_CHUNK, data))

    async def hostile_peer() -> None:
        async with t.channel() as ch:
            # An honest client refuses to send a path; a hostile one skips
            # that check, and the recipient must cope.
            with monkeypatch.context() as m:
                m.setattr(FileChunk, "from_bytes", classmethod(unchecked))
                for name, data in sends:
                    await ch.send_file("washington", name, data)

    _start_conversation(t, w)
    asyncio.run(hostile_peer())
    items = w.items("receive", "--download", folder, cwd=folder)
    saved = {x["file"]: x for x in items if x.get("type") == "file"}
    by_content = {Path(p).read_bytes(): Path(p) for p in saved}
    for name, data in sends:
        path = by_content.get(data)
        if "/" in name or name == "..":
            assert path is None, f"{name!r} was saved as {path}"  # refused: fine
            continue
        assert path is not None, f"{name!r} was neither saved nor {items}"
        assert path.parent.resolve() == folder.resolve()
        stem, dot, ext = sanitize_filename(name).rpartition(".")
        stem, ext = (stem, ext) if dot else (ext, "")
        assert re.fullmatch(re.escape(stem) + r"( \(\d+\))?" + re.escape(dot + ext), path.name)
    assert len(saved) == len([n for n, _ in sends if "/" not in n and n != ".."])
    # Nothing overwritten, nothing written through the trap, nothing outside.
    assert (folder / "report.txt").read_bytes() == b"an older report"
    assert (folder / "evil.txt").is_symlink()
    assert outside.read_bytes() == b"not to be touched"
    assert files_outside() == before
    assert not list(tmp_path.parent.glob("evil*"))
    for p in folder.iterdir():
        assert not p.name.startswith(".")
    # After the refused envelopes, the conversation goes on.
    t.ok("send", "washington", "Tehran: still here")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: still here"]


def test_refused_first_send_leaves_the_conversation_working(pair: Pair) -> None:
    """An honest client refuses to send a path as a file name. When that is
    the very first message to a contact, the refusal must not leave a
    half-made session behind: the next message still has to arrive."""
    t, w = pair.t, pair.w

    async def send() -> None:
        async with t.channel() as ch:
            with pytest.raises(MalformedInput):
                await ch.send_file("washington", "../../evil.txt", b"x")
            assert ch.status()["outbox"] == 0
            await ch.send_text("washington", "Tehran: first words")

    asyncio.run(send())
    items = w.items("receive")
    assert [x["text"] for x in texts(items)] == ["Tehran: first words"], items


# --- 5. what the relay stores ------------------------------------------------------------------


def test_relay_data_holds_no_names_fingerprints_or_plaintext(
    people: dict[str, Party], tmp_path: Path
) -> None:
    relay = RelayProcess(tmp_path / "relay-data", tmp_path / "relay.log")
    relay.start()
    t, w = people["tehran"], people["washington"]
    said = {
        "tehran": ["Tehran: the enrichment clause stays as drafted.", "Tehran: Geneva suits us."],
        "washington": ["Washington: we propose a phased timetable.", "Washington: confirmed."],
    }
    annex = b"CONFIDENTIAL ANNEX B: list of detainees for the exchange\n" * 3000
    annex += os.urandom(200_000)
    needles: dict[str, bytes] = {}
    for party in (t, w):
        pub = party.keystore().public_identity()
        fp = pub.fingerprint
        key = bytes(pub.public_key)
        needles |= {
            f"name {party.name}": party.name.encode(),
            f"fingerprint of {party.name}": fp.digest,
            f"half fingerprint of {party.name}": fp.digest[:16],
            f"hex fingerprint of {party.name}": fp.digest.hex().encode(),
            f"HEX fingerprint of {party.name}": fp.digest.hex().upper().encode(),
            f"shown fingerprint of {party.name}": str(fp).encode(),
            f"public key of {party.name} (head)": key[:32],
            f"public key of {party.name} (tail)": key[-32:],
        }
        for i, line in enumerate(said[party.name]):
            needles[f"text {i} of {party.name}"] = line.encode()
    needles["annex text"] = b"CONFIDENTIAL ANNEX B"
    for off in range(0, len(annex) - 64, len(annex) // 16):
        needles[f"annex bytes at {off}"] = annex[off : off + 64]
    needles["annex name"] = b"annex-b.txt"

    def leaks() -> list[str]:
        files = [p for p in sorted(relay.data.rglob("*")) if p.is_file()]
        assert "relay.db" in {p.name for p in files}
        found = []
        for p in files:
            raw = p.read_bytes()
            low = raw.lower()
            for label, needle in needles.items():
                if needle in (low if label.startswith("name") else raw):
                    found.append(f"{label} in {p.name}")
        return found

    async def converse() -> list[str]:
        async with t.channel() as tc, w.channel() as wc:
            card_t, card_w = await tc.register(relay.url), await wc.register(relay.url)
            pin(t, card_w)
            pin(w, card_t)
            for line in said["tehran"]:
                await tc.send_text("washington", line)
            await tc.send_file("washington", "annex-b.txt", annex)
            pending = leaks()  # everything still waits on the relay
            stored = sum(p.stat().st_size for p in relay.data.rglob("*") if p.is_file())
            assert stored > len(annex)  # the envelopes are there to be searched
            assert len([r for r in await wc.receive() if isinstance(r, Received)]) >= 3
            for line in said["washington"]:
                await wc.send_text("tehran", line)
            await wc.send_file("tehran", "annex-b.txt", annex)
            await tc.receive()
            await tc.send_text("washington", said["tehran"][0])  # left unread
            return pending

    try:
        pending = asyncio.run(converse())
        assert pending == []
        assert leaks() == []
    finally:
        relay.stop()
    assert leaks() == []


# --- 6. first messages from unknown senders ----------------------------------------------------


def test_unknown_sender_is_refused(
    relay: RelayProcess, pair: Pair, people: dict[str, Party]
) -> None:
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    c = people["cairo"]
    register(c, relay.url)
    pin(c, pair.card_w)  # cairo holds washington's card; not the reverse
    c.ok("send", "washington", "Cairo: a private word")

    proc = w.run("receive")
    assert proc.returncode == 0, transcript(proc)
    assert proc.stdout == "", transcript(proc)  # nothing shown
    assert "a private word" not in proc.stderr
    notes = proc.stderr.splitlines()
    assert any("cairo" in line for line in notes), transcript(proc)
    assert w.run("receive").stdout == ""
    assert w.json("status")["held"] == 0
    # The pinned contact's conversation is untouched.
    t.ok("send", "washington", "Tehran: still here")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: still here"]
    # One first message, one note.
    assert len(notes) == 1, transcript(proc)
    assert notes[0].startswith("securechan: "), transcript(proc)


def test_unknown_sender_is_held_until_pinned(
    relay: RelayProcess, pair: Pair, people: dict[str, Party], tmp_path: Path
) -> None:
    t, w = pair.t, pair.w
    _start_conversation(t, w)
    d = people["delhi"]
    card_d = register(d, relay.url)
    pin(d, pair.card_w)
    d.ok("send", "washington", "Delhi: please call us")

    proc = w.run("receive", "--unknown", "hold")
    assert proc.returncode == 0, transcript(proc)
    assert proc.stdout == "", transcript(proc)
    assert "please call" not in proc.stderr
    assert "held" in proc.stderr, transcript(proc)
    assert w.json("status")["held"] == 1

    w.ok("contact", "add", contact_file(card_d, tmp_path / "delhi.id"))
    got = texts(w.items("receive"))
    assert [(x["contact"], x["text"]) for x in got] == [("delhi", "Delhi: please call us")], (
        "a held first message is not released once its sender is pinned"
    )
    assert w.json("status")["held"] == 0
    d.ok("send", "washington", "Delhi: second message")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Delhi: second message"]


# --- 7. the relay goes down and comes back ------------------------------------------------------


def test_relay_down_then_back(people: dict[str, Party], tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay-data", tmp_path / "relay.log")
    relay.start()
    t, w = people["tehran"], people["washington"]
    try:
        introduce(t, w, relay.url)
        _start_conversation(t, w)

        relay.stop()
        down1 = t.run("send", "washington", "Tehran: sent while the relay was down (1)")
        assert down1.returncode == 3, transcript(down1)
        assert down1.stdout == ""
        # status says what is queued, names the dead relay, and exits 3.
        status = t.run("status", "--json")
        assert status.returncode == 3, transcript(status)
        down = one(status.stdout)
        assert (down["outbox"], down["unreachable"]) == (1, [relay.url]), down
        assert one_line_error(status, 3).startswith(f"securechan: relay {relay.url} is unreachable")
        down2 = t.run("send", "washington", "Tehran: sent while the relay was down (2)")
        assert down2.returncode == 3, transcript(down2)

        relay.start()  # same port, same data
        sent = t.json("send", "washington", "Tehran: the relay is back (3)")
        assert sent["pending"] == 0
        assert sent["delivered"] == 3
        assert t.json("status")["outbox"] == 0
        got = texts(w.items("receive"))
        assert [x["text"] for x in got] == [
            "Tehran: sent while the relay was down (1)",
            "Tehran: sent while the relay was down (2)",
            "Tehran: the relay is back (3)",
        ]
        seqs = [x["seq"] for x in got]
        assert seqs == sorted(set(seqs))
        assert w.run("receive", "--json").stdout == ""
        # The CLI's contract for the failed sends: one line, exit 3.
        for proc in (down1, down2):
            assert "no relay" in one_line_error(proc, 3)
    finally:
        relay.stop()


def test_register_checks_the_published_relay_fingerprint(
    relay: RelayProcess, people: dict[str, Party]
) -> None:
    """register --relay-fingerprint: the operator's published fingerprint,
    not the first answer, decides; a wrong one registers nothing (exit 4)."""
    import hashlib
    import urllib.request

    from securechan.protocol.relay_auth import b64d

    with urllib.request.urlopen(f"{relay.url}/v1/relay", timeout=10) as r:  # noqa: S310
        fingerprint = hashlib.sha256(b64d(json.load(r)["relay_key"], size=32)).hexdigest()
    t = people["tehran"]
    wrong = "00" * 32
    line = one_line_error(t.run("register", "--relay", relay.url, "--relay-fingerprint", wrong), 4)
    assert "fingerprint" in line
    assert not (t.home / "identity.card").exists()
    assert not (t.home / "client.db").exists() or not t.json("status")["relays"]
    one_line_error(t.run("register", "--relay", relay.url, "--relay-fingerprint", "abc"), 2)
    out = t.json("register", "--relay", relay.url, "--relay-fingerprint", fingerprint.upper())
    assert out["relay_fingerprints"] == {relay.url: fingerprint}
