"""The commands that refused while an agent ran now go through it
(docs/AGENT.md, "What the agent serves"): ``register``, ``outbox``,
``outbox cancel``, ``policy set``, ``policy show``, ``contact rekey`` and
``receive --follow``; and the library's ``Channel.receive`` keeps the shown
cursor the agent keeps. A real agent process, a real relay process (with a
witness the relay accepts), CLI subprocesses.

Each test here fails on the code before this change: the commands refused
with exit 2 while an agent ran, and the library's receive neither showed
what an agent received and never showed nor moved the cursor.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.agent_client import AgentClient
from securechan.client.agent_paths import socket_path
from securechan.client.results import Cancelled, QueuedMessage, Received
from tests.adversary.parties import Party, introduce, make_people, receive_until, transcript
from tests.adversary.relay import RelayProcess, clean_env, securechan_command
from tests.adversary.world import PASSPHRASES
from tests.cli_schema import validate

WITNESS_PASS = "the witness's long passphrase for tests"  # noqa: S105 - a test's


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Party:
    wit = Party("witness", tmp_path_factory.mktemp("home-witness") / "w", WITNESS_PASS)
    wit.ok("witness", "init", "--name", "witness.example/w", "--kdf", "interactive")
    return wit


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, witness: Party) -> Iterator[RelayProcess]:
    """A relay that accepts the witness's cosignatures."""
    r = RelayProcess(tmp_path_factory.mktemp("home-relay"))
    r.data.mkdir(mode=0o700, parents=True)
    key = json.loads(witness.ok("witness", "key", "--json"))["verifier_key"]
    (r.data / "witnesses.txt").write_text(key + "\n", encoding="utf-8")
    r.start()
    try:
        yield r
    finally:
        r.close()
    r.assert_no_traceback()


def _log_key(relay: RelayProcess) -> str:
    out = (relay.root / "relay-0.out").read_text(encoding="utf-8")
    found = re.search(r"^log verifier key: (\S+)$", out, re.M)
    assert found, out
    return found[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home-pristine")


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def people(pristine: Path, tmp_path: Path, runtime: Path) -> Iterator[tuple[Party, Party]]:
    """tehran and washington, not registered anywhere yet."""
    got = make_people(
        pristine,
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = got["tehran"], got["washington"]
    yield t, w
    for p in (t, w):
        p.run("agent", "stop")


@pytest.fixture
def pair(people: tuple[Party, Party], relay: RelayProcess) -> tuple[Party, Party]:
    t, w = people
    asyncio.run(asyncio.wait_for(introduce(t, relay.url, w, relay.url), 60))
    return t, w


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _pending(home: Path) -> int:
    with AgentClient(home) as agent:
        return int(agent.call("status")["pending"])


def _served(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Exit 0, and not the refusal of a home in use."""
    assert proc.returncode == 0, transcript(proc)
    assert "an agent is running" not in proc.stderr, transcript(proc)
    return proc


def _lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _served(proc).stdout.splitlines()]


def _texts(items: list[Any]) -> list[str]:
    out = []
    for x in items:
        text = x.get("text") if isinstance(x, dict) else getattr(x, "text", None)
        if text:
            out.append(text)
    return out


# --- register -----------------------------------------------------------------------


def test_register_through_the_agent_listens_on_the_new_queue(
    people: tuple[Party, Party], relay: RelayProcess
) -> None:
    """tehran's agent starts with no address at all and polls only every
    10 minutes; `register` through it creates the address, and the first
    message washington sends there is pushed to the agent over the WebSocket
    it opened on the new queue, without a restart."""
    t, w = people
    t.ok("agent", "start", "--poll", "600")
    out = _lines(t.run("register", "--relay", relay.url, "--json"))
    assert len(out) == 1
    validate(out[0], "Registered")
    assert out[0]["relays"] == [relay.url]
    card = t.home / "identity.card"
    assert card.exists()  # written by the command, as in-process
    text = _served(t.run("register", "--relay", relay.url))
    assert text.stdout.startswith(f"Registered at {relay.url} (relay fingerprint ")
    # washington registers and pins tehran's new card, then writes first.
    w.ok("register", "--relay", relay.url)
    exported = t.home.parent / "tehran.pub"
    exported.write_text(t.ok("id", "export"), encoding="ascii")
    w.ok("contact", "add", exported)
    theirs = w.home.parent / "washington.pub"
    theirs.write_text(w.ok("id", "export"), encoding="ascii")
    t.ok("contact", "add", theirs)  # contacts.json: read fresh by the agent
    w.ok("send", "tehran", "to your new address")
    _wait_for(lambda: _pending(t.home) >= 1, timeout=30)
    got = _lines(t.run("receive", "--json"))
    assert "to your new address" in _texts(got)


# --- outbox and outbox cancel ------------------------------------------------------


def test_outbox_and_cancel_go_through_the_agent(
    pair: tuple[Party, Party], relay: RelayProcess
) -> None:
    """The relay is down: a send through the agent stays in the outbox;
    `outbox` lists it through the agent (the same objects the in-process
    command prints), `outbox cancel` withdraws it through the agent, and
    washington never receives it once the relay is back."""
    t, w = pair
    t.ok("agent", "start", "--poll", "600")
    relay.stop()
    try:
        queued = t.run("send", "washington", "never to be delivered")
        assert queued.returncode == 3, transcript(queued)
        listed = _lines(t.run("outbox", "--json"))
        for item in listed:
            validate(item, "QueuedMessage")
        (mine,) = [x for x in listed if x["kind"] == "text"]
        text = _served(t.run("outbox"))
        assert text.stdout.startswith(f"{mine['id']}  washington  text  ")
        with AgentClient(t.home) as agent:  # the library's twin
            typed = agent.queued()
            assert [type(x) for x in typed] == [QueuedMessage] * len(listed)
            assert [x.to_json() for x in typed] == listed
        done = _lines(t.run("outbox", "cancel", mine["id"], "--json"))
        validate(done[0], "Cancelled")
        assert done[0]["withdrawn"] >= 1 and done[0]["posted"] == 0
        assert [x for x in _lines(t.run("outbox", "--json")) if x["kind"] == "text"] == []
        again = t.run("outbox", "cancel", mine["id"])
        assert again.returncode == 2 and len(again.stderr.splitlines()) == 1, transcript(again)
        with AgentClient(t.home) as agent:
            assert agent.queued() == [] or all(x.kind != "text" for x in agent.queued())
    finally:
        relay.start()
    t.ok("agent", "stop")
    # In-process now: the same (empty) listing, nothing posted.
    assert [x for x in _lines(t.run("outbox", "--json")) if x["kind"] == "text"] == []
    t.ok("status")
    assert "never to be delivered" not in _texts(_lines(w.run("receive", "--json")))


def test_outbox_cancel_through_the_library_agent_client(
    pair: tuple[Party, Party], relay: RelayProcess
) -> None:
    t, _ = pair
    t.ok("agent", "start", "--poll", "600")
    relay.stop()
    try:
        with AgentClient(t.home) as agent:
            sent = agent.send_text("washington", "withdrawn by a program")
            assert sent.pending >= 1
            (mine,) = [x for x in agent.queued() if x.kind == "text"]
            done = agent.cancel(mine.id)
            assert type(done) is Cancelled and done.withdrawn >= 1 and done.contact == "washington"
    finally:
        relay.start()


# --- policy set / show, and the agent's next statement ------------------------------------


def test_policy_set_through_the_agent_governs_its_next_statement(
    pair: tuple[Party, Party], relay: RelayProcess, witness: Party, tmp_path: Path
) -> None:
    """A message's statement exported through the agent is not witnessed;
    the witness cosigns the relay's log; `policy set` through the agent;
    the agent's next statement of the same message is witnessed."""
    t, _ = pair
    t.ok("agent", "start", "--poll", "600")
    _served(t.run("send", "washington", "to be witnessed"))
    (row,) = [r for r in _lines(t.run("history", "--json")) if r["summary"] == "to be witnessed"]
    before = _lines(t.run("statement", "export", row["id"], "-o", tmp_path / "a.txt", "--json"))
    assert before[0]["witnessed"] is False
    witness.ok("witness", "cosign", "--relay", relay.url, "--log-key", _log_key(relay))
    wkey = witness.ok("witness", "key").strip()
    shown = _lines(t.run("policy", "set", "--relay", relay.url, "--witness", wkey, "--json"))
    validate(shown[0], "PolicyInfo")
    assert shown[0] == {"relay": relay.url, "witnesses": [wkey], "required": 1}
    text = _served(t.run("policy", "set", "--relay", relay.url, "--witness", wkey))
    assert text.stdout == f"{relay.url}: 1 of 1 witnesses must cosign\n"
    after = _lines(t.run("statement", "export", row["id"], "-o", tmp_path / "b.txt", "--json"))
    assert after[0]["witnessed"] is True, after
    show = _lines(t.run("policy", "show", "--json"))
    for item in show:
        validate(item, "PolicyInfo")
    assert show[0]["relay"] == relay.url and show[0]["witnessed_size"] >= 1
    via_text = _served(t.run("policy", "show")).stdout
    t.ok("agent", "stop")
    # In-process: the same lines and objects (the witnessed checkpoint is the same).
    assert _served(t.run("policy", "show")).stdout == via_text
    assert _lines(t.run("policy", "show", "--json")) == show
    assert t.run("statement", "verify", tmp_path / "b.txt").returncode == 0


def test_unknown_relay_policy_through_the_agent_is_one_line(pair: tuple[Party, Party]) -> None:
    t, _ = pair
    t.ok("agent", "start", "--poll", "600")
    proc = t.run("policy", "set", "--relay", "http://127.0.0.1:9")
    assert proc.returncode == 2, transcript(proc)
    assert proc.stderr.startswith("securechan: http://127.0.0.1:9 is none of your")
    assert len(proc.stderr.splitlines()) == 1 and "an agent is running" not in proc.stderr


# --- contact rekey ------------------------------------------------------------------------


def test_contact_rekey_through_the_agent_starts_a_new_session(pair: tuple[Party, Party]) -> None:
    t, w = pair
    t.ok("agent", "start", "--poll", "600")
    proc = _served(t.run("contact", "rekey", "washington"))
    assert re.fullmatch(
        r"Retired [1-9]\d* session\(s\) with washington; the next send starts a new one\.\n",
        proc.stderr,
    ), transcript(proc)
    _served(t.run("send", "washington", "on a new session"))
    got = _lines(w.run("receive", "--json"))
    assert "on a new session" in _texts(got), got
    assert not [x for x in got if "rejected" in x], got
    missing = t.run("contact", "rekey", "nobody")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1, transcript(missing)


# --- receive --follow through the agent; --unknown hold ----------------------------------


def test_follow_through_the_agent_prints_what_arrives_and_ends_on_ctrl_c(
    pair: tuple[Party, Party],
) -> None:
    t, w = pair
    t.ok("agent", "start", "--poll", "600")
    with subprocess.Popen(
        [*securechan_command(), "--home", str(t.home), "receive", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(t.passphrase),
    ) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        try:
            time.sleep(3)  # subscribed and its first pass done
            assert follower.poll() is None, follower.stderr.read()
            w.ok("send", "tehran", "sent after the follower started")
            line = follower.stdout.readline()  # blocks until the item is printed
            item = json.loads(line)
            validate(item, "Received")
            assert item["text"] == "sent after the follower started"
            assert item["contact"] == "washington"
            follower.send_signal(signal.SIGINT)
            code = follower.wait(30)
            err = follower.stderr.read()
            assert code == 130, err
            assert err.strip() == "securechan: interrupted", err
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    # Shown once: the agent's next receive does not show it again.
    assert "sent after the follower started" not in _texts(_lines(t.run("receive", "--json")))
    # --timeout ends it, exit 0, in text: the same line shape as in-process.
    w.ok("send", "tehran", "within the timeout")
    timed = _served(t.run("receive", "--follow", "--timeout", "3"))
    assert re.search(r"washington.*within the timeout", timed.stdout), transcript(timed)


def test_receive_unknown_hold_refuses_in_one_line_saying_why(pair: tuple[Party, Party]) -> None:
    t, _ = pair
    t.ok("agent", "start")
    proc = t.run("receive", "--unknown", "hold")
    assert proc.returncode == 2, transcript(proc)
    assert proc.stderr.startswith("securechan: --unknown hold is not served by this agent: ")
    assert (
        "restart it with 'securechan agent stop' and 'securechan agent start --unknown hold'"
        in (proc.stderr)
    )
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""


# --- the library's receive and the agent's agree on what was shown -------------------------


def _kill_agent(home: Path) -> None:
    with AgentClient(home) as agent:
        pid = agent.call("status")["pid"]
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(socket_path(home)))
            except (ConnectionRefusedError, FileNotFoundError):
                return True
        return False

    _wait_for(gone)


def test_library_receive_and_agent_receive_show_nothing_twice(pair: tuple[Party, Party]) -> None:
    t, w = pair
    t.ok("receive")  # the cursor exists, at the newest message
    w.ok("send", "tehran", "for the library")

    async def library() -> list[str]:
        async with t.channel() as ch:
            return _texts(await receive_until(ch, 1))

    assert library_texts(library) == ["for the library"]
    # The agent does not show again what the library showed.
    t.ok("agent", "start", "--poll", "0.5")
    assert "for the library" not in _texts(_lines(t.run("receive", "--json")))
    # The other way: the agent received it, died before any `receive`; the
    # library shows it (once), then the next agent does not.
    w.ok("send", "tehran", "for the agent, shown by the library")
    _wait_for(lambda: _pending(t.home) >= 1)
    _kill_agent(t.home)

    async def library_twice() -> tuple[list[str], list[str]]:
        async with t.channel() as ch:
            first = [x for x in await ch.receive() if isinstance(x, Received)]
            second = [x for x in await ch.receive() if isinstance(x, Received)]
        return _texts(first), _texts(second)

    first, second = asyncio.run(library_twice())
    assert first == ["for the agent, shown by the library"] and second == []
    t.ok("agent", "start")
    assert _lines(t.run("receive", "--json")) == []


def library_texts(run: Any) -> list[str]:
    texts: list[str] = asyncio.run(run())
    return texts


# --- the new methods in raw frames, as docs/AGENT.md describes them ---------------------


def test_the_new_methods_answer_as_agent_md_describes(
    pair: tuple[Party, Party], relay: RelayProcess
) -> None:
    """A client written against docs/AGENT.md's Methods and Errors only:
    newline-delimited JSON-RPC 2.0 on the socket, parameters by name."""
    import socket

    t, _ = pair
    t.ok("agent", "start", "--poll", "600")
    url = relay.url
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(60)
        raw.connect(str(socket_path(t.home)))
        reader = raw.makefile("rb")
        n = 0

        def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal n
            n += 1
            frame = {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
            raw.sendall(json.dumps(frame).encode() + b"\n")
            while True:
                answer = json.loads(reader.readline())
                if answer.get("id") == n:  # not a notification
                    return dict(answer)

        def error(answer: dict[str, Any]) -> tuple[int, str | None, int | None]:
            e = answer["error"]
            data = e.get("data") or {}
            return e["code"], data.get("reason"), data.get("exit")

        try:
            listed = call("outbox")["result"]
            assert set(listed) == {"items", "now"} and isinstance(listed["items"], list)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed["now"])
            not_queued = call("outboxCancel", message_id="00" * 8)
            assert error(not_queued) == (-32000, "not-found", 2), not_queued
            assert error(call("outboxCancel"))[0] == -32602
            assert error(call("contactRekey"))[0] == -32602
            nobody = call("contactRekey", contact="nobody")
            assert error(nobody)[:2] == (-32000, "contact-not-found"), nobody
            rekeyed = call("contactRekey", contact="washington")["result"]
            assert rekeyed["contact"] == "washington" and rekeyed["retired"] >= 1
            shown = call("policyShow")["result"]["items"]
            assert shown == [{"relay": url, "witnesses": [], "required": 0}]
            for item in shown:
                validate(item, "PolicyInfo")
            assert error(call("policySet", relay=url, witnesses="a key"))[0] == -32602
            assert error(call("policySet", relay=url))[0] == -32602
            elsewhere = call("policySet", relay="http://127.0.0.1:9", witnesses=[])
            assert error(elsewhere)[:2] == (-32000, "not-found"), elsewhere
            removed = call("policySet", relay=url, witnesses=[])["result"]
            assert removed == {"relay": url, "witnesses": [], "required": 0}
            assert error(call("register", relays=[]))[0] == -32602
            assert error(call("register", relays=url))[0] == -32602
            two = call("register", relays=[url, url], fingerprint="00" * 32)
            assert error(two)[:2] == (-32000, "usage"), two
            short = call("register", relays=[url], fingerprint="abc")
            assert error(short)[:2] == (-32000, "usage"), short
            wrong = call("register", relays=[url], fingerprint="00" * 32)
            assert error(wrong)[:2] == (-32000, "untrusted-key"), wrong
            again = call("register", relays=[url])["result"]
            assert set(again) == {"relays", "relay_fingerprints", "card"}
            assert again["relays"] == [url] and again["card"]
            validate({k: again[k] for k in ("relays", "relay_fingerprints")}, "Registered")
        finally:
            reader.close()


# --- items rebuilt after a crash keep the notes of their pass ---------------------------


def test_items_rebuilt_after_a_crash_keep_the_notes_of_their_pass(
    pair: tuple[Party, Party], relay: RelayProcess
) -> None:
    """washington queues three texts while the relay is down and withdraws
    the middle one: tehran's agent receives the first and the third, the
    third with a note that a message has not arrived. The agent is
    SIGKILLed before any `receive`; the next agent rebuilds both from the
    store, with the notes its subscriber saw live."""
    t, w = pair
    texts = ("before the gap", "withdrawn", "after the gap")
    relay.stop()
    try:
        for text in texts:
            queued = w.run("send", "tehran", text)
            assert queued.returncode == 3, transcript(queued)
        mine = [x for x in _lines(w.run("outbox", "--json")) if x["kind"] == "text"]
        assert len(mine) == 3
        _served(w.run("outbox", "cancel", mine[1]["id"]))
    finally:
        relay.start()
    t.ok("agent", "start", "--poll", "0.5")
    live: dict[str, dict[str, Any]] = {}
    with AgentClient(t.home) as sub:
        sub.call("subscribeReceive")
        w.ok("status")  # posts what is left in the outbox
        deadline = time.monotonic() + 60
        while "after the gap" not in live:
            got = sub.next_notification(max(0.1, deadline - time.monotonic()))
            assert got is not None, f"timed out; live so far: {live}"
            method, params = got
            if method == "receive" and params["item"].get("text"):
                live[params["item"]["text"]] = params["item"]
    assert "withdrawn" not in live
    assert live["after the gap"]["notes"], live  # the gap, as the live pass saw it
    assert live["before the gap"]["notes"] == []
    _kill_agent(t.home)
    t.ok("agent", "start")
    rebuilt = {x["text"]: x for x in _lines(t.run("receive", "--json")) if x.get("text")}
    assert set(rebuilt) == {"before the gap", "after the gap"}
    for text, item in rebuilt.items():
        assert item["notes"] == live[text]["notes"], (text, item, live[text])
