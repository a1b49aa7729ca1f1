"""``securechan agent start --unknown hold`` (docs/AGENT.md, "What the agent
serves"): the agent's background receiving holds a first message from a
sender not pinned instead of refusing it, ``receive --unknown hold``
through that agent shows it as the in-process command does, and pinning
the sender lets it through. Through an agent started without it,
``receive --unknown hold`` refuses in one line saying how to restart it.

A real agent process, a real relay process, CLI subprocesses; the stranger
acts as an attacker can: anyone with our contact card posts a first message
to our contact queue. Each test fails on the code before this change (no
``agent start --unknown``; the refusal said to stop the agent).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.agent_client import AgentClient
from tests.adversary.parties import Party, make_people, transcript
from tests.adversary.relay import RelayProcess, running_relay
from tests.adversary.world import PASSPHRASES
from tests.cli_schema import validate

HELD_LINE = re.compile(
    r"^securechan: refused an envelope: unknown-sender: .*"
    r"\(held: pin the sender, then run receive again\)$"
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("hold-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hold-pristine")


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def stranger(
    relay: RelayProcess, pristine: Path, tmp_path: Path, runtime: Path
) -> Iterator[tuple[Party, Party]]:
    """washington, registered; tehran, registered, holding washington's
    contact card (washington has not pinned tehran)."""
    people = make_people(
        pristine,
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = people["tehran"], people["washington"]
    for p in (t, w):
        p.ok("register", "--relay", relay.url)
        p.ok("id", "export", "-o", tmp_path / f"{p.name}.id")
    t.ok("contact", "add", tmp_path / "washington.id")
    yield t, w
    for p in (t, w):
        p.run("agent", "stop")


def _status(home: Path) -> dict[str, Any]:
    with AgentClient(home) as agent:
        info: dict[str, Any] = agent.call("status")
    return info


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# `receive --unknown hold`; and a plain `receive`: the agent's policy decides
# what its background passes did, whichever command collects the result.
@pytest.mark.parametrize("asked", [("--unknown", "hold"), ()], ids=["unknown-hold", "plain"])
def test_an_agent_started_with_unknown_hold_holds_a_strangers_first_message(
    stranger: tuple[Party, Party], tmp_path: Path, asked: tuple[str, ...]
) -> None:
    t, w = stranger
    started = w.ok("agent", "start", "--unknown", "hold", "--poll", "0.5")
    assert "first messages from unpinned senders held" in started
    status = w.run("agent", "status", "--json")
    info = json.loads(status.stdout)
    validate(info, "AgentStatus")
    assert info["unknown_senders"] == "hold"
    assert "unknown senders: hold" in w.ok("agent", "status")

    t.ok("send", "washington", "Tehran: a first word, unasked")
    # The agent's background pass took it from the relay and held it: not
    # refused, not lost (a refusal would leave held at 0).
    _wait_for(lambda: (_status(w.home)["channel"] or {}).get("held") == 1)

    proc = w.run("receive", *asked)
    assert proc.returncode == 0, transcript(proc)
    assert proc.stdout == "", transcript(proc)
    assert "a first word" not in proc.stderr, transcript(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and HELD_LINE.match(lines[0]), transcript(proc)
    assert "tehran" in lines[0], transcript(proc)
    assert _status(w.home)["channel"]["held"] == 1  # shown, still held

    # Pinning the sender lets it through (contact add works while the
    # agent runs; the agent reads the contacts fresh at its next pass).
    w.ok("contact", "add", tmp_path / "tehran.id")
    got = w.run("receive", *asked, "--json")
    assert got.returncode == 0, transcript(got)
    items = [json.loads(line) for line in got.stdout.splitlines()]
    for item in items:
        validate(item, "Received")
    assert [(x["contact"], x["text"]) for x in items if x["text"]] == [
        ("tehran", "Tehran: a first word, unasked")
    ], transcript(got)
    assert _status(w.home)["channel"]["held"] == 0
    # The conversation goes on through the agent.
    t.ok("send", "washington", "Tehran: a second word")
    _wait_for(lambda: _status(w.home)["pending"] >= 1)
    again = w.run("receive", "--json")
    texts = [json.loads(x)["text"] for x in again.stdout.splitlines()]
    assert [x for x in texts if x] == ["Tehran: a second word"], transcript(again)


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_an_agent_started_without_it_refuses_receive_unknown_hold_with_the_hint(
    stranger: tuple[Party, Party], follow: bool
) -> None:
    t, w = stranger
    w.ok("agent", "start", "--poll", "0.5")
    assert _status(w.home)["unknown_senders"] == "refuse"
    assert "unknown senders: refuse" in w.ok("agent", "status")
    t.ok("send", "washington", "Tehran: refused as it arrives")
    _wait_for(lambda: _status(w.home)["pending"] >= 1)
    proc = w.run("receive", *(["--follow"] if follow else []), "--unknown", "hold")
    assert proc.returncode == 2, transcript(proc)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "securechan: --unknown hold is not served by this agent: it refuses first "
        "messages from senders you have not pinned as they arrive; restart it with "
        "'securechan agent stop' and 'securechan agent start --unknown hold'"
    ], transcript(proc)
    # Refused before any work: what the agent received waits for `receive`.
    assert _status(w.home)["pending"] >= 1
    assert _status(w.home)["channel"]["held"] == 0
