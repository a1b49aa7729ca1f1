"""More than one admin: ``group admin``, ``group create --admin``, the last
admin's leave (issue 17: "the mediator plus each delegation's head";
docs/CLI.md, Groups).

Real ``securechan`` subprocesses on three real homes (tehran and
washington, the delegations; cairo, the mediator), a real relay process
on 127.0.0.1, and a running agent for ``groupAdmin``. The revoked admin
plays the attacker: it signs a change with its own key and posts it
sealed into the group's stream, as its client would have.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.client.agent_client import AgentClient
from securechan.client.group_carriage import view_of
from securechan.errors import UsageError
from securechan.primitives import random_bytes
from securechan.protocol.group import GroupChange, GroupState
from securechan.protocol.group_stream import GroupRecord, StreamKeys, seal_record
from tests.adversary.parties import Party, transcript
from tests.adversary.relay import RelayProcess, running_relay
from tests.cli_schema import validate
from tests.test_cli_groups import _acquaint, _complete, js, one_line, receive, shown

NAMES = ("tehran", "washington", "cairo")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("admins-relay")) as r:
        yield r


@pytest.fixture(scope="module")
def runtime() -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR for the agent's socket."""
    folder = Path(tempfile.mkdtemp(prefix="sc-adm-", dir="/tmp"))
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    mp.undo()
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(scope="module")
def people(
    relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory, runtime: Path
) -> dict[str, Party]:
    from tests.adversary.parties import make_people
    from tests.adversary.world import PASSPHRASES

    root = tmp_path_factory.mktemp("admins")
    made = make_people(root / "pristine", root, {n: PASSPHRASES[n] for n in NAMES})
    asyncio.run(asyncio.wait_for(_acquaint(made, relay.url), 120))
    return made


def roles(party: Party, group: str) -> dict[str, bool]:
    """Member name -> admin, as ``party`` shows the group (``party.name``
    for itself)."""
    info = shown(party, group)
    return {(party.name if m["you"] else m["name"]): m["admin"] for m in info["members"]}


def same_everywhere(parties: list[Party], group: str) -> dict[str, Any]:
    """Every party shows the same epoch, head and roles (the number of
    records differs for one who joined later)."""
    infos = {p.name: shown(p, group) for p in parties}
    assert len({(i["epoch"], i["head"]) for i in infos.values()}) == 1, infos
    assert len({tuple(sorted(roles(p, group).items())) for p in parties}) == 1
    return infos[parties[0].name]


def test_the_mediator_made_admin_adds_and_removes(people: dict[str, Party]) -> None:
    """tehran creates the group with cairo and makes cairo an admin; cairo
    then adds washington and removes it again, and every member applies
    each change. On the base code there was no command to grant admin."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    js(t, "group", "create", "talks", "--member", "cairo", types=("GroupInfo",))
    receive(c)
    assert roles(c, "talks") == {"tehran": True, "cairo": False}

    (granted,) = js(t, "group", "admin", "talks", "cairo", types=("GroupInfo",))
    assert granted["epoch"] == 1
    assert {m["name"]: m["admin"] for m in granted["members"] if not m["you"]} == {"cairo": True}
    receive(c)
    assert roles(c, "talks") == {"tehran": True, "cairo": True}
    out = c.ok("history", "--group", "talks")
    assert "tehran: epoch 1: made admin cairo" in out, out
    human = c.ok("group", "show", "talks")
    assert "(you)" in human and human.count(" admin ") == 2, human

    (added,) = js(c, "group", "add", "talks", "washington", types=("GroupInfo",))
    assert added["epoch"] == 2
    receive(t)
    receive(w)
    info = same_everywhere([t, w, c], "talks")
    assert info["epoch"] == 2
    assert roles(w, "talks") == {"tehran": True, "cairo": True, "washington": False}

    js(c, "send", "--group", "talks", "the mediator speaks", types=("GroupSent",))
    for p in (t, w):
        assert "the mediator speaks" in [g["text"] for g in receive(p) if "status" in g]

    (removed,) = js(c, "group", "remove", "talks", "washington", types=("GroupInfo",))
    assert removed["epoch"] == 3
    receive(t)
    receive(w)
    assert shown(w, "talks")["left"] is True
    info = same_everywhere([t, c], "talks")
    assert info["epoch"] == 3 and roles(t, "talks") == {"tehran": True, "cairo": True}
    assert "cairo: epoch 3: removed washington" in t.ok("history", "--group", "talks")


def test_a_revoked_admin_is_refused_by_its_cli_and_by_every_member(
    people: dict[str, Party],
) -> None:
    """cairo is made admin, then no longer: its ``group remove`` is refused
    before anything is posted. Played as the attacker, cairo signs the
    change itself and posts it sealed into the current stream: every
    member's client (its own too) refuses it, and all still agree."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    js(t, "group", "create", "board", "--member", "washington", "--member", "cairo",
       types=("GroupInfo",))  # fmt: skip
    js(t, "group", "admin", "board", "cairo", types=("GroupInfo",))
    (revoked,) = js(t, "group", "admin", "board", "cairo", "--revoke", types=("GroupInfo",))
    assert revoked["epoch"] == 2
    for p in (w, c):
        receive(p)
    before = same_everywhere([t, w, c], "board")
    assert roles(c, "board") == {"tehran": True, "washington": False, "cairo": False}
    assert "tehran: epoch 2: no longer admin cairo" in w.ok("history", "--group", "board")

    line = one_line(c.run("group", "remove", "board", "washington"), 2)
    assert "only an admin" in line, line
    line = one_line(c.run("group", "admin", "board", "cairo"), 2)
    assert "only an admin" in line, line

    async def attack() -> None:
        async with c.channel() as ch:
            row = ch.group_client.row("board")
            view = view_of(row)
            old = view.state
            wanted = GroupState(
                group_id=old.group_id,
                epoch=old.epoch + 1,
                name=old.name,
                members=tuple(
                    m for m in old.members if m.fingerprint != w.identity.fingerprint.digest
                ),
                previous=old.hash,
            )
            change = GroupChange.sign(
                ch.identity,
                wanted,
                next_stream=StreamKeys.from_secret(random_bytes(32)).commitment,
                head=view.head,
            )
            keys = ch.group_client._keys(row)
            relay = await ch.relay(row.relay)
            await relay.post_stream_item(
                keys.stream_id, seal_record(keys, GroupRecord(change=change))
            )

    asyncio.run(attack())
    for p in (t, w, c):
        receive(p)
        history = js(p, "history", "--group", "board", types=("GroupEntry",))
        last = history[-1]
        assert last["status"] == "refused" and "only an admin" in last["summary"], (p.name, last)
    after = same_everywhere([t, w, c], "board")
    assert after["epoch"] == before["epoch"] == 2
    assert roles(t, "board") == {"tehran": True, "washington": False, "cairo": False}


def test_the_last_admin_cannot_be_revoked_or_leave(people: dict[str, Party]) -> None:
    """The only admin cannot leave (the line says what to do first) nor step
    down; a grant to a non-member, a change that changes nothing and a
    grant by a member who is not an admin are refused, one line, exit 2;
    nothing changes anywhere."""
    t, w = people["tehran"], people["washington"]
    js(t, "group", "create", "solo", "--member", "washington", types=("GroupInfo",))
    receive(w)
    before = same_everywhere([t, w], "solo")

    line = one_line(t.run("group", "leave", "solo"), 2)
    assert "last admin" in line and "securechan group admin solo CONTACT" in line, line
    line = one_line(t.run("group", "admin", "solo", "tehran", "--revoke"), 2)
    assert "last admin" in line and "securechan group admin solo CONTACT" in line, line
    line = one_line(t.run("group", "admin", "solo", "washington", "--revoke"), 2)
    assert "would not change" in line, line
    line = one_line(t.run("group", "admin", "solo", "cairo"), 2)
    assert "not a member" in line and "securechan group add solo cairo" in line, line
    line = one_line(w.run("group", "admin", "solo", "washington"), 2)
    assert "only an admin" in line, line
    one_line(t.run("group", "admin", "solo"), 2)  # no CONTACT: usage, before the passphrase
    one_line(t.run("group", "admin", "solo", "washington", "washington"), 2)
    one_line(t.run("group", "admin", "no such group", "washington"), 2)
    receive(w)
    after = same_everywhere([t, w], "solo")
    assert (after["epoch"], after["head"]) == (before["epoch"], before["head"])
    assert shown(t, "solo")["left"] is False


def test_the_creator_leaves_after_granting_and_the_new_admin_rekeys(
    people: dict[str, Party],
) -> None:
    """tehran makes cairo an admin and leaves; cairo's client reads the leave
    and rekeys at once (the leave's epoch is quiet: docs/PROTOCOL.md §20.4);
    washington then talks in the fresh epoch, cairo reads it, tehran gets
    nothing. On the base code the creator could never leave."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    js(t, "group", "create", "handover", "--member", "washington", "--member", "cairo",
       types=("GroupInfo",))  # fmt: skip
    js(t, "group", "admin", "handover", "cairo", types=("GroupInfo",))
    for p in (w, c):
        receive(p)
    (gone,) = js(t, "group", "leave", "handover", types=("GroupInfo",))
    assert gone["left"] is True and gone["epoch"] == 2

    receive(c)  # applies the leave, then rekeys (an admin, after the pass)
    assert shown(c, "handover")["epoch"] == 3
    receive(w)
    info = same_everywhere([w, c], "handover")
    assert info["epoch"] == 3 and roles(w, "handover") == {"washington": False, "cairo": True}
    out = w.ok("history", "--group", "handover")
    assert "tehran: epoch 2: removed tehran" in out and "cairo: epoch 3: no change" in out, out

    js(w, "send", "--group", "handover", "after the handover", types=("GroupSent",))
    assert "after the handover" in [g["text"] for g in receive(c) if "status" in g]
    assert "after the handover" not in [g.get("text") for g in receive(t)]
    # The new admin may rekey by hand too, as any admin.
    (rekeyed,) = js(c, "group", "rekey", "handover", types=("GroupInfo",))
    assert rekeyed["epoch"] == 4
    receive(w)
    assert same_everywhere([w, c], "handover")["epoch"] == 4


def test_create_with_admin_gives_two_admins_at_epoch_0_everywhere(
    people: dict[str, Party],
) -> None:
    """``--admin cairo``: cairo is a member and an admin from the creation on,
    on every member's side, and may change the group at once."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    (made,) = js(t, "group", "create", "council", "--member", "washington", "--admin", "cairo",
                 types=("GroupInfo",))  # fmt: skip
    assert made["epoch"] == 0 and len(made["members"]) == 3
    for p in (w, c):
        receive(p)
    info = same_everywhere([t, w, c], "council")
    assert info["epoch"] == 0
    assert roles(w, "council") == {"tehran": True, "washington": False, "cairo": True}
    out = w.ok("group", "show", "council")
    assert "cairo" in out and out.count(" admin ") == 2, out
    # Named both ways is one member; named twice in --admin is a usage error.
    one_line(t.run("group", "create", "x", "--member", "cairo", "--admin", "nobody"), 2)
    one_line(
        t.run("group", "create", "x", "--member", "w", "--admin", "cairo", "--admin", "cairo"), 2
    )

    (changed,) = js(c, "group", "admin", "council", "washington", types=("GroupInfo",))
    assert changed["epoch"] == 1
    for p in (t, w):
        receive(p)
    same_everywhere([t, w, c], "council")
    assert set(roles(t, "council").values()) == {True}
    # The creator steps down (its own name), and is a plain member everywhere.
    (down,) = js(t, "group", "admin", "council", "tehran", "--revoke", types=("GroupInfo",))
    assert down["epoch"] == 2
    for p in (w, c):
        receive(p)
    same_everywhere([t, w, c], "council")
    assert roles(c, "council") == {"tehran": False, "washington": True, "cairo": True}
    line = one_line(t.run("group", "remove", "council", "washington"), 2)
    assert "only an admin" in line, line


def test_group_admin_through_a_running_agent(people: dict[str, Party]) -> None:
    """JSON-RPC ``groupCreate`` with ``admins`` and ``groupAdmin``; the thin
    command line (``group create --admin``, ``group admin [--revoke]``)
    through the agent, with the in-process lines and codes; completion."""
    t, w, c = people["tehran"], people["washington"], people["cairo"]
    t.ok("agent", "start")
    try:
        with AgentClient(t.home) as agent:
            made = agent.call(
                "groupCreate", name="agency", members=["washington"], admins=["cairo"]
            )
            validate(made, "GroupInfo")
            assert made["epoch"] == 0
            assert sum(m["admin"] for m in made["members"]) == 2
            granted = agent.call("groupAdmin", group="agency", contacts=["washington"])
            validate(granted, "GroupInfo")
            assert granted["epoch"] == 1 and all(m["admin"] for m in granted["members"])
            revoked = agent.call("groupAdmin", group="agency", contacts=["cairo"], revoke=True)
            assert revoked["epoch"] == 2
            assert {m["name"]: m["admin"] for m in revoked["members"] if not m["you"]} == {
                "washington": True,
                "cairo": False,
            }
            with pytest.raises(UsageError, match="would not change"):
                agent.call("groupAdmin", group="agency", contacts=["cairo"], revoke=True)
        assert "agency" in _complete(t, "group admin ")
        assert _complete(t, "group admin agency wa") == ["washington"]

        # The thin command line, as in-process.
        (via,) = js(t, "group", "admin", "agency", "cairo", types=("GroupInfo",))
        assert via["epoch"] == 3
        proc = t.run("group", "admin", "agency", "cairo", "--revoke")
        assert proc.returncode == 0, transcript(proc)
        assert "member(s) of agency no longer admin" in proc.stderr, transcript(proc)
        line = one_line(t.run("group", "admin", "agency", "nobody"), 2)
        assert "nobody" in line, line
        (made2,) = js(t, "group", "create", "agency2", "--member", "washington", "--admin",
                      "cairo", types=("GroupInfo",))  # fmt: skip
        assert sum(m["admin"] for m in made2["members"]) == 2
    finally:
        t.run("agent", "stop")
    for p in (w, c):
        receive(p)
    same_everywhere([t, w, c], "agency")
    assert roles(c, "agency") == {"tehran": True, "washington": True, "cairo": False}
    assert roles(w, "agency2") == {"tehran": True, "washington": False, "cairo": True}


def test_the_last_admin_rule_in_the_client() -> None:
    """The client's check before a leave or a step-down: the only admin of a
    group with other members is told what to do first; one of several
    admins, a plain member, or the only member (refused by the member
    list's own rule: a group has 1 to 20 members) passes it."""
    from securechan.client.group_change import last_admin
    from securechan.protocol.group import GroupMember

    a, b, c = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32

    def state(*members: tuple[bytes, bool]) -> GroupState:
        return GroupState(
            group_id=bytes(32),
            epoch=0,
            name="g",
            members=tuple(GroupMember(fingerprint=f, admin=x) for f, x in members),
            previous=bytes(32),
        )

    with pytest.raises(UsageError, match=r"last admin of group 'talks' and cannot leave: .*"
                       r"\(securechan group admin talks CONTACT\)"):  # fmt: skip
        last_admin(state((a, True), (b, False)), a, "leave", "talks")
    last_admin(state((a, True), (b, True), (c, False)), a, "leave", "talks")
    last_admin(state((a, True), (b, False)), b, "leave", "talks")
    last_admin(state((a, True)), a, "leave", "talks")
