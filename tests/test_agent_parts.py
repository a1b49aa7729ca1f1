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
    Received,
    SendResult,
    StatementExported,
    Status,
)
from securechan.protocol.payload import ContentType
from tests.adversary.parties import Party, introduce, make_people, transcript
from tests.adversary.relay import RelayProcess, running_relay
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
