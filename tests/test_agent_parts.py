"""The agent's shown cursor, typed library results, pairing and refusals
(docs/AGENT.md), with a real agent process and a real relay process.

Attacks and faults played: the agent SIGKILLed after it received messages
and a file while no client listened (they must be shown once by the next
``receive``, through a new agent or in-process, and never again).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.agent_client import AgentClient, AsyncAgentClient
from securechan.client.agent_paths import socket_path
from securechan.client.policy import export_statement
from securechan.client.results import (
    AgentStatus,
    ContactInfo,
    Received,
    SendResult,
    StatementExported,
    Status,
)
from securechan.protocol.payload import ContentType
from tests.adversary.parties import Party, introduce, make_people, transcript
from tests.adversary.relay import RelayProcess, clean_env, running_relay, securechan_command
from tests.adversary.world import PASSPHRASES


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("parts-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parts-pristine")


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def pair(
    relay: RelayProcess, pristine: Path, tmp_path: Path, runtime: Path
) -> Iterator[tuple[Party, Party]]:
    people = make_people(
        pristine,
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = people["tehran"], people["washington"]
    asyncio.run(asyncio.wait_for(introduce(t, relay.url, w, relay.url), 60))
    yield t, w
    t.run("agent", "stop")


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _refused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


def _pending(home: Path) -> int:
    with AgentClient(home) as agent:
        return int(agent.call("status")["pending"])


def _kill_agent(home: Path) -> None:
    with AgentClient(home) as agent:
        pid = agent.call("status")["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: _refused(socket_path(home)))


def _items(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, transcript(proc)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _received_while_nobody_listened(t: Party, w: Party, tmp_path: Path) -> bytes:
    """w sends two texts and a file; t's agent receives them in the
    background (no client asks) and is SIGKILLed. Returns the file."""
    data = os.urandom(100_000)  # 4 chunks of 32 KiB
    (tmp_path / "minutes.bin").write_bytes(data)
    t.ok("agent", "start", "--poll", "0.5")
    w.ok("send", "tehran", "first, while nobody listened")
    w.ok("send", "tehran", "--file", tmp_path / "minutes.bin")
    w.ok("send", "tehran", "second, while nobody listened")
    # two texts and one file (its four chunks make one item)
    _wait_for(lambda: _pending(t.home) >= 3)
    _kill_agent(t.home)
    return data


def _texts(items: list[dict[str, Any]]) -> list[str]:
    return [x["text"] for x in items if x.get("text")]


def test_what_a_killed_agent_received_is_shown_once_by_the_next_agent(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    t, w = pair
    data = _received_while_nobody_listened(t, w, tmp_path)
    t.ok("agent", "start")
    download = tmp_path / "in"
    download.mkdir()
    first = _items(t.run("receive", "--json", "--download", download))
    assert _texts(first) == ["first, while nobody listened", "second, while nobody listened"]
    files = [x for x in first if x["type"] == "file"]
    assert [(x["file_name"], x["contact"]) for x in files] == [("minutes.bin", "washington")]
    assert Path(files[0]["file"]).read_bytes() == data
    # As the pass that accepted them returned them: from the verified
    # contact, in the order sent (the file after its four chunks' seqs).
    assert all(x["verified"] is True and x["contact"] == "washington" for x in first)
    assert len({x["fingerprint"] for x in first}) == 1
    seqs = [x["seq"] for x in first]
    assert seqs == sorted(seqs) and seqs[1] - seqs[0] == 4
    assert "rejected" not in json.dumps(first)
    # Shown once: the next receive, and one after yet another restart, show nothing.
    assert _items(t.run("receive", "--json")) == []
    _kill_agent(t.home)
    t.ok("agent", "start")
    assert _items(t.run("receive", "--json")) == []
    # What arrives now is shown once too, after what was shown before.
    w.ok("send", "tehran", "third")
    assert _texts(_items(t.run("receive", "--json"))) == ["third"]
    assert _items(t.run("receive", "--json")) == []


def test_what_a_killed_agent_received_is_shown_once_in_process(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    t, w = pair
    data = _received_while_nobody_listened(t, w, tmp_path)
    # No agent now: the in-process command shows it, from the store, once.
    download = tmp_path / "in"
    download.mkdir()
    first = _items(t.run("receive", "--json", "--download", download))
    assert _texts(first) == ["first, while nobody listened", "second, while nobody listened"]
    assert [p.read_bytes() == data for p in download.iterdir()] == [True]
    assert _items(t.run("receive", "--json")) == []
    # And a new agent does not show it again.
    t.ok("agent", "start")
    assert _items(t.run("receive", "--json")) == []


def test_a_home_used_before_any_agent_shows_nothing_old(pair: tuple[Party, Party]) -> None:
    """A home with messages received in-process and no cursor yet: the
    first agent shows only what arrives after it, not the whole history."""
    t, w = pair
    w.ok("send", "tehran", "received in-process")
    assert _texts(_items(t.run("receive", "--json"))) == ["received in-process"]
    t.ok("agent", "start")
    assert _items(t.run("receive", "--json")) == []


# --- the library's AgentClient returns Channel's result types --------------------------


def test_agent_client_returns_the_result_types_of_channel(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    """Each typed method of AgentClient and AsyncAgentClient returns the
    type Channel (or the client function the CLI calls) returns for the
    same call, with the same values where the JSON carries them."""
    t, w = pair

    async def in_process() -> tuple[Any, Any, Any, Any, Any]:
        async with w.channel() as wc:
            sent = await wc.send_text("tehran", "in-process")
        async with t.channel() as tc:
            got = [x for x in await tc.receive() if getattr(x, "text", None)]
            rows = tc.history("washington")
            status = tc.status()
            exported = await export_statement(tc, rows[-1][5], tmp_path / "in-process.txt")
        return sent, got, rows, status, exported

    sent_ch, got_ch, rows_ch, status_ch, exported_ch = asyncio.run(in_process())
    t.ok("agent", "start")
    with AgentClient(t.home) as agent:
        sent = agent.send_text("washington", "through the agent")
        assert type(sent) is type(sent_ch) is SendResult
        assert sent.contact == "washington" and sent.pending == 0 and len(sent.seqs) == 1
        w_sent = asyncio.run(_send(w, "tehran", "for the agent"))
        _wait_for(lambda: _pending(t.home) >= 1)
        got = agent.receive()
        assert [type(x) for x in got] == [type(x) for x in got_ch] == [Received]
        mine = got[0]
        assert isinstance(mine, Received)
        assert (mine.text, mine.contact, mine.seq, mine.verified) == (
            "for the agent",
            "washington",
            w_sent.seqs[0],
            True,
        )
        assert mine.content_type is ContentType.TEXT and isinstance(mine.sent_at, int)
        rows = agent.history("washington")
        assert type(rows) is type(rows_ch) and {type(r) for r in rows} == {tuple}
        assert rows[: len(rows_ch)] == rows_ch  # the same rows, the same values
        status = agent.status()
        assert type(status) is AgentStatus and type(status.channel) is Status
        assert status.channel == Status.from_mapping(status_ch)
        exported = agent.statement_export(rows[-1][5], tmp_path / "agent.txt")
        assert type(exported) is type(exported_ch) is StatementExported
        assert exported.file == str(tmp_path / "agent.txt")

    async def the_async_twin() -> None:
        async with await AsyncAgentClient.connect(t.home) as agent:
            sent = await agent.send_text("washington", "async")
            assert type(sent) is SendResult
            assert await agent.receive() == []
            assert await agent.history("washington") == [*rows, *(await agent.history())[-1:]]
            assert type(await agent.status()) is AgentStatus
            out = tmp_path / "async.txt"
            assert type(await agent.statement_export(rows[-1][5], out)) is StatementExported

    asyncio.run(the_async_twin())
    t.ok("agent", "stop")

    async def after() -> Any:
        async with t.channel() as tc:
            return tc.history("washington")

    # What the agent returned is what Channel returns for the same home.
    assert asyncio.run(after())[: len(rows)] == rows


async def _send(party: Party, contact: str, text: str) -> SendResult:
    async with party.channel() as ch:
        return await ch.send_text(contact, text)


# --- pairing through the agent; the commands that still refuse ---------------------------


@pytest.fixture
def strangers(
    relay: RelayProcess, pristine: Path, tmp_path: Path, runtime: Path
) -> Iterator[tuple[Party, Party]]:
    """Two registered delegations that know nothing of each other yet."""
    people = make_people(
        pristine,
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = people["tehran"], people["washington"]
    for p in (t, w):
        p.ok("register", "--relay", relay.url)
    yield t, w
    for p in (t, w):
        p.run("agent", "stop")


def test_pair_goes_through_the_agent(strangers: tuple[Party, Party], relay: RelayProcess) -> None:
    """Both sides have an agent: tehran's `securechan pair` makes the code
    through its agent (the code comes back as a notification, before the
    pairing ends) and washington's program joins with AgentClient.pair; both
    agents then use the new contact at once."""
    t, w = strangers
    t.ok("agent", "start")
    w.ok("agent", "start")
    # The method as docs/AGENT.md describes it, in raw frames: bad parameters.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(30)
        raw.connect(str(socket_path(t.home)))
        f = raw.makefile("rb")
        raw.sendall(
            b'{"jsonrpc":"2.0","id":1,"method":"pair","params":{"words":"five"}}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"pair","params":{"code":"1-a-b","words":3}}\n'
            b'{"jsonrpc":"2.0","id":3,"method":"pair","params":{"words":40}}\n'
        )
        answers = {a["id"]: a["error"] for a in (json.loads(f.readline()) for _ in range(3))}
    assert answers[1]["code"] == -32602
    assert (answers[2]["code"], answers[2]["data"]["reason"]) == (-32000, "usage")
    assert (answers[3]["code"], answers[3]["data"]["reason"]) == (-32000, "usage")
    # The agent's lock (the TTL ran out): the command unlocks it, then pairs.
    with AgentClient(t.home) as agent:
        agent.lock()
    maker = subprocess.Popen(
        [*securechan_command(), "--home", str(t.home), "pair", "--relay", relay.url],
        env=clean_env(t.passphrase),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert maker.stdout is not None
    code = maker.stdout.readline().strip()
    assert code.count("-") >= 5, code
    with AgentClient(w.home) as agent:
        joined = agent.pair(relay.url, code=code)
    assert type(joined) is ContactInfo
    assert (joined.name, joined.verified) == ("tehran", True) and joined.safety_number
    out, err = maker.communicate(timeout=120)
    assert maker.returncode == 0, err
    assert "Paired with washington" in out and "an agent is running" not in err
    # Pinned and verified on both sides, and usable through both agents now.
    assert json.loads(t.ok("contact", "show", "washington", "--json"))["verified"] is True
    with AgentClient(t.home) as agent:
        assert agent.send_text("washington", "paired through the agents").pending == 0
    _wait_for(lambda: _pending(w.home) >= 1)
    with AgentClient(w.home) as agent:
        got = agent.receive()
    texts = [x.text for x in got if isinstance(x, Received) and x.text]
    assert texts == ["paired through the agents"]


# What still refuses while an agent holds the home (docs/AGENT.md, "What the
# agent serves"): `receive --unknown hold` through an agent started without
# `--unknown hold`, in one line saying how to restart it, exit 2, before
# asking for any passphrase; through an agent started with it, it is served
# (tests/test_agent_hold.py). `register`, `receive --follow`, `outbox`,
# `outbox cancel`, `policy` and `contact rekey` go through the agent
# (tests/test_agent_home.py).
REFUSING = [
    ("receive", "--unknown", "hold"),
    ("receive", "--follow", "--unknown", "hold"),
]


@pytest.mark.parametrize("args", REFUSING, ids=lambda a: " ".join(a[:2]))
def test_commands_the_agent_does_not_serve_refuse_in_one_line(
    pair: tuple[Party, Party], args: tuple[str, ...]
) -> None:
    t, _ = pair
    t.ok("agent", "start")
    proc = t.run(*args)
    assert proc.returncode == 2, transcript(proc)
    assert proc.stderr.startswith("securechan: --unknown hold is not served by this agent: ")
    assert "'securechan agent start --unknown hold'" in proc.stderr, transcript(proc)
    assert len(proc.stderr.splitlines()) == 1, transcript(proc)
    assert proc.stdout == ""
    # Started with --unknown hold, the same command is served.
    t.ok("agent", "stop")
    t.ok("agent", "start", "--unknown", "hold")
    served = t.run(*args, *(("--timeout", "1") if "--follow" in args else ()))
    assert served.returncode == 0, transcript(served)


def test_statement_export_goes_through_the_agent(pair: tuple[Party, Party], tmp_path: Path) -> None:
    t, _ = pair
    t.ok("agent", "start")
    t.ok("send", "washington", "to be proven")
    (row,) = [r for r in _items(t.run("history", "--json")) if r["summary"] == "to be proven"]
    out = tmp_path / "proof.txt"
    proc = t.run("statement", "export", row["id"], "-o", out, "--json")
    assert proc.returncode == 0 and "an agent is running" not in proc.stderr, transcript(proc)
    assert json.loads(proc.stdout)["file"] == str(out) and out.exists()
    again = t.run("statement", "export", row["id"], "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr, transcript(again)
    t.ok("agent", "stop")
    assert t.run("statement", "verify", out).returncode == 0


def test_agent_md_lists_exactly_the_notifications() -> None:
    """Every notification the agent sends is in docs/AGENT.md's table, and
    nothing else is (the methods' table is checked in tests/test_agent.py)."""
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "AGENT.md").read_text()
    start = text.index("Notifications (no `id`)")
    section = text[start : text.index("\n## ", start)]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    sent: set[str] = set()
    for path in (root / "securechan" / "agent").glob("*.py"):
        sent |= set(re.findall(r'(?:_notify|tell)\(\s*"(\w+)"', path.read_text()))
    assert sent == documented == {"receive", "relayUnavailable", "locked", "error", "pairingCode"}
