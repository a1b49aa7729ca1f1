"""A group never gets stuck on a full stream (issue 17; docs/PROTOCOL.md
§20.4, docs/RELAY.md "Group streams").

The relay bounds each stream (``stream_max_items``, ``stream_max_bytes``:
409 ``stream_full`` for good) and a change goes into the old epoch's stream,
so on the base code a group whose stream filled could neither talk nor
change. Played on a real ``securechan relay serve`` on 127.0.0.1 started
with small stream limits through its config file's ``[limits]``, real
homes on disk, the library's Channel and the CLI:

* an admin who keeps sending crosses its client's rotation budget and
  rekeys before the stream is full; the members go on in the new epoch,
  nothing lost or refused;
* a stream past the budget by a non-admin's sends (the non-admin does not
  rekey and is never refused) is rekeyed by the admin's next receive pass;
* a stream that is full for good: a non-admin's send is one line saying an
  admin's client moves the group on; the admin's send, whose rekey cannot
  be posted either, exits 3 with one line telling the operator what to
  raise; once the operator has, the group moves on and its admin's client
  rotates under what the full stream held.

The budget is set on the admin's ``Groups.rotate_at`` (the library's knob
for a relay configured below the documented defaults, which the client
assumes: the relay publishes no limits).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from securechan.client.channel import Channel
from securechan.client.group_change import ROTATE_AT, StreamBudget
from securechan.errors import RelayRefused
from tests.adversary.relay import clean_env, running_relay, securechan_command
from tests.group_world import (
    NAMES,
    PASSPHRASE,
    Member,
    copy_members,
    make_pristine,
    mesh,
    pump,
    run,
    shown,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def _statuses(ch: Channel, group: str) -> set[str]:
    return {e.status for e in ch.group_history(group, limit=1000)}


def test_an_admin_who_keeps_sending_rekeys_before_the_stream_is_full(
    pristine: Path, tmp_path: Path
) -> None:
    """stream_max_items = 8, alpha's budget 5 items: alpha sends 12
    statements (the creation and 12 messages would need 13 items of one
    stream). Each time its stream holds 5 items alpha's client rekeys
    after the send, so no stream ever holds more than 6 (the budget and the
    rekey) and no post is refused; bravo and charlie talk in the latest
    epoch and every member shows all 14 messages, nothing refused. On the
    base code the ninth item of stream 0 was 409 stream_full."""
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            a.group_client.rotate_at = StreamBudget(items=5, bytes=10**12)
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            said = [f"statement {n}" for n in range(12)]
            for text in said:
                await a.send_group("talks", text=text)
            assert a.group_show("talks").epoch >= 2
            await pump(chs)
            await b.send_group("talks", text="bravo replies")
            await c.send_group("talks", text="charlie replies")
            await pump(chs)
            want = [("alpha", t) for t in said] + [
                ("bravo", "bravo replies"),
                ("charlie", "charlie replies"),
            ]
            heads = set()
            for n, ch in chs.items():
                assert shown(ch, "talks") == want, n
                assert _statuses(ch, "talks") <= {"change", "shown"}, n
                g = ch.group_show("talks")
                heads.add((g.epoch, g.head))
                per_epoch: dict[int, int] = {}
                for e in ch.group_history("talks", limit=1000):
                    per_epoch[e.epoch] = max(per_epoch.get(e.epoch, 0), e.position)
                assert max(per_epoch.values()) <= 6, (n, per_epoch)
            assert len(heads) == 1
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path / "relay", config="[limits]\nstream_max_items = 8\n") as relay:
        run(go(relay.url))


def test_a_stream_filled_by_a_member_is_rekeyed_by_the_admins_next_run(
    pristine: Path, tmp_path: Path
) -> None:
    """stream_max_bytes = 200,000, every client's budget 40,000 bytes (the
    byte counter): bravo, not an admin, sends until its stream holds more
    than the budget; bravo's client neither rekeys (it may not) nor is
    refused. Alpha's next receive pass rekeys the group; bravo and charlie
    talk in epoch 1, and every member shows every message. On the base
    code the group stayed in epoch 0 until its stream filled."""
    m = copy_members(pristine, tmp_path, NAMES[:3])
    budget = StreamBudget(items=ROTATE_AT.items, bytes=40_000)

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            for ch in chs.values():
                ch.group_client.rotate_at = budget
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            await a.group_create("talks", ["bravo", "charlie"])
            await pump(chs)
            said = []
            while b.group_client.row("talks").stream_bytes < budget.bytes:
                said.append(f"bravo {len(said)}")
                await b.send_group("talks", text=said[-1])
            said.append("bravo past the budget")
            await b.send_group("talks", text=said[-1])
            await c.receive()
            assert b.group_show("talks").epoch == 0
            assert c.group_show("talks").epoch == 0
            await a.receive()  # the admin's next run: its client rekeys
            assert a.group_show("talks").epoch == 1
            assert a.group_client.row("talks").stream_bytes < budget.bytes
            await pump(chs)
            await b.send_group("talks", text="bravo in epoch 1")
            await c.send_group("talks", text="charlie in epoch 1")
            await pump(chs)
            want = [("bravo", t) for t in said]
            want += [("bravo", "bravo in epoch 1"), ("charlie", "charlie in epoch 1")]
            for n, ch in chs.items():
                assert ch.group_show("talks").epoch == 1, n
                assert shown(ch, "talks") == want, n
                assert _statuses(ch, "talks") <= {"change", "shown"}, n
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path / "relay", config="[limits]\nstream_max_bytes = 200000\n") as relay:
        run(go(relay.url))


def test_a_full_stream_is_one_line_and_the_group_moves_on_once_the_limit_is_raised(
    pristine: Path, tmp_path: Path
) -> None:
    """stream_max_items = 6, the clients' default budget (far above): bravo
    sends until the relay refuses; the refusal is one line naming what
    moves the group on. Alpha (the admin) then sends from the command line:
    its client tries to rekey, the full stream refuses the change too, and
    the command exits 3 with one line telling the operator what to raise;
    nothing hangs. The operator raises stream_max_items to 14: alpha's next
    send goes, its client rekeys at 90% of the 6 items the full stream held,
    and ten statements later no stream was full. On the base code alpha's
    line said only that the stream is full."""
    m = copy_members(pristine, tmp_path, NAMES[:2])

    async def setup(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b = chs["alpha"], chs["bravo"]
            await a.group_create("talks", ["bravo"])
            await pump(chs)
            with pytest.raises(RelayRefused) as info:  # noqa: PT012 (sends until refused)
                for n in range(10):
                    await b.send_group("talks", text=f"bravo {n}")
            line = str(info.value)
            assert info.value.status == 409 and "\n" not in line
            assert "the stream is full" in line
            assert "securechan group rekey talks" in line
            assert b.group_show("talks").epoch == 0
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path / "relay", config="[limits]\nstream_max_items = 6\n") as relay:
        run(setup(relay.url))
        proc = subprocess.run(
            [
                *securechan_command(),
                *("--home", str(m["alpha"].home)),
                *("send", "--group", "talks", "the admin speaks"),
            ],
            capture_output=True,
            text=True,
            env=clean_env(PASSPHRASE),
            timeout=120,
        )
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "the stream is full" in lines[0]
        assert "cannot move to a new epoch" in lines[0]
        assert "stream_max_items" in lines[0] and "operator" in lines[0]
        # The operator raises the limit and restarts the relay. Alpha's
        # client kept what the full stream held (6 items): from now on it
        # rotates at 90% of that, so ten more statements never meet a full
        # stream (on main's rotation at the defaults the 15th item of
        # stream 0 was refused again).
        relay.stop()
        assert relay.config is not None
        relay.config.write_text("[limits]\nstream_max_items = 14\n", encoding="utf-8")
        relay.start()
        run(_after_the_raise(m))


async def _after_the_raise(m: dict[str, Member]) -> None:
    chs = {n: p.channel() for n, p in m.items()}
    try:
        a, b = chs["alpha"], chs["bravo"]
        assert a.group_client.row("talks").stream_cap[0] == 6
        said = [f"statement {n}" for n in range(10)]
        for text in said:
            await a.send_group("talks", text=text)
        assert a.group_show("talks").epoch >= 2
        await pump(chs)
        await b.send_group("talks", text="bravo again")
        await pump(chs)
        for n, ch in chs.items():
            got = [t for s, t in shown(ch, "talks") if s == "alpha"]
            assert got == said, n
            assert shown(ch, "talks")[-1] == ("bravo", "bravo again"), n
            assert _statuses(ch, "talks") <= {"change", "shown"}, n
    finally:
        for ch in chs.values():
            await ch.close()
