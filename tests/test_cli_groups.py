"""Groups through the command line and the agent (issue 17; docs/CLI.md, Groups).

Real ``securechan`` subprocesses on three real homes (tehran, washington
and cairo, the mediator) and a real relay process on 127.0.0.1:

- a group conversation: created by tehran, a message from each member,
  received everywhere as ``[group NAME] sender: text``; ``history --group``
  lists the same records in the same order on every home, and ``group
  show`` the same epoch, records and transcript head;
- ``group remove``, ``group add``, ``group leave``: a removed member no
  longer gets the messages and cannot post one; the others agree again;
- an unknown group is exit 2 with one line; a change by a member who is
  not an admin is exit 1 with one line, and changes nothing;
- every ``--json`` line is NDJSON valid against docs/cli-json.schema.json;
- the same through a running agent: its JSON-RPC group methods, the thin
  command line (``group ...``, ``send --group``, ``history --group``,
  ``receive``), receive notifications carrying group entries, and shell
  completion of group names from the agent.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.agent_client import AgentClient, AsyncAgentClient
from securechan.errors import NotFound, UsageError
from tests.adversary.parties import Party, make_people, pin, receive_until, transcript
from tests.adversary.relay import RelayProcess, clean_env, running_relay, securechan_command
from tests.adversary.world import PASSPHRASES
from tests.cli_schema import validate
from tests.ndjson import ndjson

NAMES = ("tehran", "washington", "cairo")
RECEIVE_TYPES = ("Received", "Rejected", "GroupEntry")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("groups-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def runtime() -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR for the agents' sockets (107 bytes max)."""
    folder = Path(tempfile.mkdtemp(prefix="sc-grp-", dir="/tmp"))
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    mp.undo()
    subprocess.run(["rm", "-rf", str(folder)], check=False)


async def _acquaint(people: dict[str, Party], url: str) -> None:
    """Register everyone once, pin and verify every pair, and run each
    pair's handshake, so group traffic travels on the private queues."""
    cards = {}
    for p in people.values():
        async with p.channel() as ch:
            cards[p.name] = await ch.register(url)
    for a in people.values():
        for b in people.values():
            if a is not b:
                pin(a, cards[b.name])
    order = list(people.values())
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            async with a.channel() as ach, b.channel() as bch:
                assert (await ach.send_text(b.name, "hello")).pending == 0
                await receive_until(bch, 1)
                await ach.receive()


@pytest.fixture(scope="module")
def people(
    relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory, runtime: Path
) -> dict[str, Party]:
    root = tmp_path_factory.mktemp("groups")
    made = make_people(root / "pristine", root, {n: PASSPHRASES[n] for n in NAMES})
    asyncio.run(asyncio.wait_for(_acquaint(made, relay.url), 120))
    return made


def js(party: Party, *args: object, types: tuple[str, ...], code: int = 0) -> list[dict[str, Any]]:
    """``securechan ARGS --json``: the exit code wanted, every line valid NDJSON."""
    proc = party.run(*args, "--json")
    assert proc.returncode == code, transcript(proc)
    items = ndjson(proc.stdout)
    for item in items:
        validate(item, *types)
    return items


def receive(party: Party) -> list[dict[str, Any]]:
    return js(party, "receive", "--download", party.home / "downloads", types=RECEIVE_TYPES)


def group_entries(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if "status" in i]


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, transcript(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("securechan: "), transcript(proc)
    return lines[0]


def names(info: dict[str, Any], me: str) -> set[str]:
    """The members' names, ``me`` for ourselves (shown without a name)."""
    return {m["name"] if not m["you"] else me for m in info["members"]}


def shown(party: Party, group: str) -> dict[str, Any]:
    (info,) = js(party, "group", "show", group, types=("GroupInfo",))
    return info


def transcript_of(party: Party, group: str) -> list[tuple[Any, ...]]:
    rows = js(party, "history", "--group", group, types=("GroupEntry",))
    return [(r["id"], r["epoch"], r["position"], r["seq"], r["status"], r["text"]) for r in rows]


# --- a conversation of three homes -------------------------------------------------


def test_a_three_home_group_conversation(people: dict[str, Party]) -> None:
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    (made,) = js(
        t,
        "group",
        "create",
        "talks",
        "--member",
        "washington",
        "--member",
        "cairo",
        types=("GroupInfo",),
    )
    assert made["name"] == "talks" and made["epoch"] == 0 and not made["left"]
    members = {m["name"] or ("you" if m["you"] else "?"): m for m in made["members"]}
    assert set(members) == {"you", "washington", "cairo"}
    assert members["you"]["admin"] and members["you"]["verified"]
    assert not members["washington"]["admin"] and members["washington"]["verified"]

    for p in (w, c):
        receive(p)
        (listed,) = js(p, "group", "list", types=("GroupInfo",))
        assert listed["name"] == "talks" and listed["group_id"] == made["group_id"]

    said = {}
    for p in (t, w, c):
        text = f"from {p.name}: we accept point {len(said) + 1}"
        (sent,) = js(p, "send", "--group", "talks", text, types=("GroupSent",))
        assert sent["group"] == "talks" and sent["pending"] == []
        assert sorted(sent["delivered"]) == sorted(n for n in NAMES if n != p.name)
        said[p.name] = text
        for other in (t, w, c):
            if other is not p:
                receive(other)

    # Human output: '[group talks] sender: text'.
    t.ok("send", "--group", "talks", "line one\nline two")
    out = w.ok("receive")
    assert "[group talks] tehran: line one\n  | line two" in out, out
    receive(c)

    heads = {p.name: shown(p, "talks") for p in (t, w, c)}
    assert len({(h["epoch"], h["records"], h["head"]) for h in heads.values()}) == 1, heads
    histories = {p.name: transcript_of(p, "talks") for p in (t, w, c)}
    assert histories["tehran"] == histories["washington"] == histories["cairo"]
    texts = [row[5] for row in histories["tehran"] if row[4] == "shown"]
    assert texts == [said["tehran"], said["washington"], said["cairo"], "line one\nline two"]
    positions = [row[2] for row in histories["tehran"]]
    assert positions == sorted(positions)

    shown_lines = c.ok("history", "--group", "talks").splitlines()
    assert any(f"washington: {said['washington']}" in line for line in shown_lines), shown_lines
    info = c.ok("group", "show", "talks")
    assert re.search(r"^head:\s+" + heads["cairo"]["head"] + "$", info, re.M), info
    assert re.search(r"^  tehran\s+verified\s+admin ", info, re.M), info
    assert re.search(r"^  \(you\)\s+you\s+member ", info, re.M), info

    # Paging: --limit N shows the newest N and names the --before page.
    page = c.run("history", "--group", "talks", "--limit", "2", "--json")
    assert page.returncode == 0, transcript(page)
    rows = ndjson(page.stdout)
    assert [r["id"] for r in rows] == [h[0] for h in histories["cairo"][-2:]]
    before = re.search(r"--before ([0-9a-f]+)'", page.stderr)
    assert before, page.stderr
    older = js(c, "history", "--group", "talks", "--before", before[1], types=("GroupEntry",))
    assert [r["id"] for r in older] == [h[0] for h in histories["cairo"][:-2]]


def test_a_group_file_reaches_every_member(people: dict[str, Party], tmp_path: Path) -> None:
    """Each 24 KiB piece of a file is one record, shown to every member; the
    file is saved whole into --download by the receive that completes it."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    doc = tmp_path / "communique.txt"
    doc.write_bytes(b"the draft communique\n" * 3000)  # 63,000 bytes: 3 pieces
    (sent,) = js(t, "send", "--group", "talks", "--file", doc, types=("GroupSent",))
    assert sent["pending"] == []
    got = group_entries(receive(w))
    pieces = [g for g in got if g["file_name"] == "communique.txt" and g["status"] == "shown"]
    assert [g["summary"] for g in pieces] == [
        f"[file communique.txt, 63000 bytes (part {i} of 3)]" for i in (1, 2, 3)
    ], got
    (saved,) = (w.home / "downloads").glob("communique*.txt")
    assert saved.read_bytes() == doc.read_bytes()
    out = c.ok("receive", "--download", tmp_path / "cairo-downloads")
    assert "file saved as " + str(tmp_path / "cairo-downloads" / "communique.txt") in out, out
    assert (tmp_path / "cairo-downloads" / "communique.txt").read_bytes() == doc.read_bytes()
    out = t.ok("history", "--group", "talks", "--limit", "1")
    assert out.rstrip().endswith("tehran: [file communique.txt, 63000 bytes (part 3 of 3)]"), out


# --- membership -----------------------------------------------------------------------


def test_remove_and_leave(people: dict[str, Party]) -> None:
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    for p in (w, c):
        receive(p)
    (after,) = js(t, "group", "remove", "talks", "cairo", types=("GroupInfo",))
    assert names(after, "tehran") == {"tehran", "washington"}
    changes = [g for g in group_entries(receive(c)) if g["status"] == "change"]
    assert changes, "cairo sees its removal"
    assert shown(c, "talks")["left"] is True
    assert "tehran: epoch 1: removed cairo\n" in t.ok("history", "--group", "talks")

    js(t, "send", "--group", "talks", "said after cairo left", types=("GroupSent",))
    assert "said after cairo left" in [g["text"] for g in group_entries(receive(w))]
    assert "said after cairo left" not in [g["text"] for g in group_entries(receive(c))]
    line = one_line(c.run("send", "--group", "talks", "I am still here"), 2)
    assert "no longer a member" in line or "not a member" in line, line
    receive(w)
    assert "I am still here" not in [r[5] for r in transcript_of(w, "talks")]
    assert shown(t, "talks")["head"] == shown(w, "talks")["head"]


def test_a_member_added_back_talks_again(people: dict[str, Party]) -> None:
    """cairo, removed above, is added back: it reads what is said from then
    on and what it says is shown to the others."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    before = shown(t, "talks")["epoch"]
    (back,) = js(t, "group", "add", "talks", "cairo", types=("GroupInfo",))
    assert back["epoch"] > before and names(back, "tehran") == set(NAMES)
    receive(c)
    receive(w)
    assert shown(c, "talks")["left"] is False
    js(w, "send", "--group", "talks", "welcome back", types=("GroupSent",))
    got = group_entries(receive(c))
    assert "welcome back" in [g["text"] for g in got], [(g["status"], g["summary"]) for g in got]
    receive(t)
    js(c, "send", "--group", "talks", "cairo is back", types=("GroupSent",))
    for p in (t, w):
        got = group_entries(receive(p))
        assert "cairo is back" in [g["text"] for g in got], got
    assert len({shown(p, "talks")["head"] for p in (t, w, c)}) == 1


def test_leave(people: dict[str, Party]) -> None:
    t, w = people["tehran"], people["washington"]
    for p in (t, w):
        receive(p)
    (gone,) = js(w, "group", "leave", "talks", types=("GroupInfo",))
    assert gone["left"] is True
    assert "you are no longer a member" in w.ok("group", "show", "talks")
    receive(t)
    assert "washington" not in names(shown(t, "talks"), "tehran")
    # The leave's epoch is quiet: tehran (the admin) rekeyed on that receive.
    assert shown(t, "talks")["epoch"] == gone["epoch"] + 1
    (again,) = js(t, "group", "rekey", "talks", types=("GroupInfo",))
    assert again["epoch"] == gone["epoch"] + 2
    assert names(again, "tehran") == names(shown(t, "talks"), "tehran")
    line = one_line(people["cairo"].run("group", "rekey", "talks"), 2)
    assert "only an admin" in line, line
    line = one_line(w.run("send", "--group", "talks", "after leaving"), 2)
    assert "member" in line, line
    # What was said before stays readable, read-only.
    assert "welcome back" in [r[5] for r in transcript_of(w, "talks")]


def test_a_change_by_a_member_who_is_not_an_admin_is_refused(people: dict[str, Party]) -> None:
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    js(t, "group", "create", "board", "--member", "washington", "--member", "cairo",
       types=("GroupInfo",))  # fmt: skip
    receive(c)
    receive(w)
    before = shown(c, "board")
    # Refused before anything is posted (the group's rules would refuse the
    # record too): a usage error, exit 2, nothing changed anywhere.
    line = one_line(c.run("group", "remove", "board", "washington"), 2)
    assert "only an admin" in line, line
    line = one_line(c.run("group", "remove", "board", "washington", "--json"), 2)
    assert "only an admin" in line, line
    for p in (t, w, c):
        receive(p)
        info = shown(p, "board")
        assert (info["epoch"], info["records"], info["head"]) == (
            before["epoch"],
            before["records"],
            before["head"],
        )


def test_an_unknown_group_is_exit_2_with_one_line(people: dict[str, Party]) -> None:
    t = people["tehran"]
    for args in (
        ("group", "show", "no such group"),
        ("group", "add", "no such group", "cairo"),
        ("group", "leave", "no such group"),
        ("send", "--group", "no such group", "hello"),
        ("history", "--group", "no such group"),
    ):
        line = one_line(t.run(*args), 2)
        assert "no such group" in line, line
    # And bad usage never reaches the passphrase or the relay.
    one_line(t.run("group", "create", "x"), 2)
    one_line(t.run("group", "add", "talks"), 2)
    one_line(t.run("send", "--group", "talks", "washington", "hi"), 2)
    one_line(t.run("group", "create", "x", "--member", "nobody"), 2)
    # A text over the group content limit: refused before anything is signed.
    head = shown(t, "talks")["head"]
    line = one_line(t.run("send", "--group", "talks", "x" * 33_000), 2)
    assert "33000 bytes" in line and "at most 32760" in line, line
    assert shown(t, "talks")["head"] == head


# --- the same through a running agent --------------------------------------------------


def _complete(party: Party, line: str) -> list[str]:
    words = line.split(" ")
    env = {
        **clean_env(None),
        "_SECURECHAN_COMPLETE": "bash_complete",
        "COMP_WORDS": f"securechan --home {party.home} {line}",
        "COMP_CWORD": str(len(words) + 2),
    }
    proc = subprocess.run(
        securechan_command(), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [row.split(",", 1)[1] for row in proc.stdout.splitlines() if row.startswith("plain,")]


def test_the_same_through_a_running_agent(people: dict[str, Party]) -> None:
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    assert _complete(t, "group show ") == []  # no agent: names are sealed
    t.ok("agent", "start")
    try:
        with AgentClient(t.home) as agent:
            made = agent.call("groupCreate", name="mediation", members=["washington", "cairo"])
            validate(made, "GroupInfo")
            assert made["epoch"] == 0 and len(made["members"]) == 3
            listed = agent.call("groupList")["items"]
            for info in listed:
                validate(info, "GroupInfo")
            assert "mediation" in {i["name"] for i in listed}
            sent = agent.call("sendGroup", group="mediation", text="through the agent")
            validate(sent, "GroupSent")
            with pytest.raises(NotFound):
                agent.call("groupShow", group="no such group")
        assert sorted(_complete(t, "group show ")) == sorted(i["name"] for i in listed)
        assert _complete(t, "send --group med") == ["mediation"]

        for p in (w, c):
            got = group_entries(receive(p))
            assert "through the agent" in [g["text"] for g in got], got
        c.ok("agent", "start")
        with AgentClient(c.home) as cairo:  # cairo is no admin of mediation
            with pytest.raises(UsageError, match="only an admin"):
                cairo.call("groupRemove", group="mediation", contacts=["washington"])
            with pytest.raises(UsageError, match="only an admin"):
                cairo.call("groupRekey", group="mediation")
            with pytest.raises(NotFound):
                cairo.call("sendGroup", group="no such group", text="x")
        c.ok("agent", "stop")
        with AgentClient(t.home) as agent:
            page = agent.call("groupHistory", group="mediation", limit=1)
            assert len(page["items"]) == 1 and page["more"] is True
            for row in page["items"]:
                validate(row, "GroupEntry")
            fresh = agent.call("groupRekey", group="mediation")
            validate(fresh, "GroupInfo")
            assert fresh["epoch"] == 1 and len(fresh["members"]) == 3
        thin = t.run("group", "rekey", "mediation")
        assert thin.returncode == 0 and "Rekeyed group" in thin.stdout + thin.stderr, thin

        # The thin command line: the same lines and codes as in-process.
        via = js(t, "group", "show", "mediation", types=("GroupInfo",))
        assert via[0]["name"] == "mediation"
        assert "Group message #" in t.run("send", "--group", "mediation", "thin").stderr
        one_line(t.run("group", "show", "no such group"), 2)
        w.ok("send", "--group", "mediation", "an answer for the agent")
        got = t.run("receive")
        assert got.returncode == 0, transcript(got)
        assert "[group mediation] washington: an answer for the agent" in got.stdout
        doc = t.home.parent / "annex.txt"
        doc.write_bytes(b"annex\n" * 5000)  # 30,000 bytes: 2 pieces
        w.ok("send", "--group", "mediation", "--file", doc)
        got = t.run("receive", "--download", t.home.parent / "agent-downloads")
        assert got.returncode == 0, transcript(got)
        saved = t.home.parent / "agent-downloads" / "annex.txt"
        assert f"securechan: note: group file saved as {saved}" in got.stderr, transcript(got)
        assert saved.read_bytes() == doc.read_bytes()
        rows = js(t, "history", "--group", "mediation", types=("GroupEntry",))
        assert [r["text"] for r in rows if r["status"] == "shown"][-3] == (
            "an answer for the agent"
        )

        async def notified() -> dict[str, Any]:
            async with await AsyncAgentClient.connect(t.home) as sub:
                assert await sub.call("subscribeReceive") == {"subscribed": True}
                await asyncio.to_thread(c.ok, "send", "--group", "mediation", "pushed")
                while True:
                    method, params = await asyncio.wait_for(sub.next_notification(), 60)
                    if method == "receive" and params["item"].get("text") == "pushed":
                        return dict(params["item"])

        item = asyncio.run(notified())
        validate(item, "GroupEntry")
        assert item["group"] == "mediation" and item["sender"] == "cairo"
    finally:
        t.run("agent", "stop")
        c.run("agent", "stop")


# --- rendering (sans I/O): what a hostile member's text and names can do -------------


@pytest.mark.parametrize("status", ["equivocation", "forked", "withheld"])
def test_alarms_are_one_loud_line_on_stderr(status: str) -> None:
    from securechan.cli import render

    entry = {
        "group": "talks\x1b]0;owned\x07",
        "id": "00" * 8,
        "epoch": 1,
        "position": 7,
        "sender": "washington\n[group talks] tehran: forged",
        "seq": 3,
        "sent_at": "2026-12-05T05:00:00Z",
        "status": status,
        "summary": "evidence\u202e kept",
        "text": None,
        "file_name": None,
    }
    ((line, to_stderr),) = render.group_entry(entry)
    assert to_stderr and line.startswith(f"securechan: {render.GROUP_ALARMS[status]}: ")
    assert "\x1b" not in line and "\n" not in line and "\u202e" not in line
    assert "\\x1b]0;owned\\x07" in line and "\\x0a" in line and "<U+202E>" in line


def test_a_group_message_shows_its_group_and_marks_further_lines() -> None:
    from securechan.cli import render

    entry = {
        "group": "talks",
        "id": "00" * 8,
        "epoch": 0,
        "position": 2,
        "sender": "tehran",
        "seq": 1,
        "sent_at": "2026-12-05T05:00:00Z",
        "status": "shown",
        "summary": "x",
        "text": "one\n[group talks] washington: forged",
        "file_name": None,
    }
    ((line, to_stderr),) = render.group_entry(entry)
    assert not to_stderr
    assert line == "[group talks] tehran: one\n  | [group talks] washington: forged"
    pending = {**entry, "status": "content-pending", "text": None, "summary": ""}
    ((line, _),) = render.group_entry(pending)
    assert line == "[group talks] tehran #1: (content not yet received)"
