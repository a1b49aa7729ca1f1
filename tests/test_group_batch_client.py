"""The group client's batch fan-out (docs/PROTOCOL.md §20.8), end to end:
real relay process on 127.0.0.1, real homes, real SQLite, the library's
Channel, the members behind a scriptable proxy that looks into the
sender's client.db whenever a pairwise copy reaches it.

What it must keep: every pairwise copy of a group message (and of a
welcome) is committed to the sender's outbox, with its session, before
the first one is posted; every member shows the message; the pairwise
sessions go on as before (the members answer, one by one and as groups).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from securechan.testing.malicious_relay import Exchange, MaliciousRelay
from tests.group_world import NAMES, copy_members, make_pristine, mesh, pump, run, shown
from tests.test_relay_crash import running_relay


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def test_every_copy_is_queued_before_any_is_posted(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES)
    queued_at_post: list[int] = []
    watching = [False]

    def outbox_size() -> int:
        with sqlite3.connect(m["alpha"].home / "client.db", timeout=30) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def look(x: Exchange) -> None:
        # A pairwise envelope reaching a member's queue: how many copies
        # does the sender's outbox hold at this moment?
        if watching[0]:
            queued_at_post.append(outbox_size())

    async def go(url: str, proxy: MaliciousRelay) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            # alpha (the sender, and the group's streams) at the relay; the
            # others' queues behind the proxy.
            await mesh(chs, url, {n: proxy.url for n in NAMES[1:]})
            a = chs["alpha"]
            for n in NAMES[1:]:  # every session exists (the batch's case)
                await a.send_text(n, f"hello {n}")
                await chs[n].send_text("alpha", "hello alpha")
            await pump(chs)
            assert outbox_size() == 0
            proxy.on_request("send", look)
            watching[0] = True
            await a.group_create("talks", list(NAMES[1:]))
            watching[0] = False
            # The three welcomes: all in the outbox when the first is posted.
            assert queued_at_post[:1] == [3], queued_at_post
            await pump(chs)
            queued_at_post.clear()
            watching[0] = True
            sent = await a.send_group("talks", text="the opening statement")
            watching[0] = False
            assert queued_at_post == [3, 2, 1], queued_at_post
            assert set(sent.delivered) == set(NAMES[1:]) and sent.pending == ()
            assert outbox_size() == 0
            await pump(chs)
            for n in NAMES[1:]:
                assert shown(chs[n], "talks") == [("alpha", "the opening statement")]
            # The chains go on: members answer in the group and pairwise,
            # alpha sends again, one by one and as a group.
            await chs["bravo"].send_group("talks", text="bravo answers")
            await chs["charlie"].send_text("alpha", "a direct word")
            await pump(chs)
            await a.send_text("charlie", "a direct answer")
            await a.send_group("talks", text="alpha again")
            got = await pump(chs)
            texts = [getattr(i, "text", None) for i in got["charlie"]]
            assert "a direct answer" in texts
            for n in NAMES[1:]:
                assert [t for _, t in shown(chs[n], "talks")] == [
                    "the opening statement",
                    "bravo answers",
                    "alpha again",
                ]
        finally:
            for ch in chs.values():
                await ch.close()

    with (
        running_relay(tmp_path) as relay,
        MaliciousRelay(relay.url, relay.data, tmp_path / "proxy") as proxy,
    ):
        run(go(relay.url, proxy), 300)
