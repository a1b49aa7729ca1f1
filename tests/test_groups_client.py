"""The group client end to end (issue 17; GROUPS-SPEC §2-§3): real relay
process on 127.0.0.1, real homes on disk, real SQLite, the library's
Channel. Members act as the attacker would where a test says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechan.client.group_results import GROUP_STATUSES
from tests.group_world import (
    NAMES,
    copy_members,
    entries,
    make_pristine,
    mesh,
    pump,
    run,
    shown,
)
from tests.test_relay_crash import running_relay


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def test_three_members_see_one_transcript(pristine: Path, tmp_path: Path) -> None:
    m = copy_members(pristine, tmp_path, NAMES[:3])

    async def go(url: str) -> None:
        chs = {n: p.channel() for n, p in m.items()}
        try:
            await mesh(chs, url)
            a, b, c = chs["alpha"], chs["bravo"], chs["charlie"]
            info = await a.group_create("talks", ["bravo", "charlie"])
            assert info.epoch == 0 and len(info.members) == 3 and info.records == 1
            got = await pump(chs)
            for n in ("bravo", "charlie"):
                [g] = chs[n].groups()
                assert (g.name, g.group_id, g.head) == ("talks", info.group_id, info.head)
                assert [e.status for e in entries(got[n])] == ["change"]
            sent = await a.send_group("talks", text="opening statement")
            assert (sent.seq, sent.pending) == (1, ())
            assert set(sent.delivered) == {"bravo", "charlie"}
            await pump(chs)
            await b.send_group("talks", text="bravo replies")
            await pump(chs)
            await c.send_group("talks", text="charlie mediates")
            await a.send_group("talks", text="alpha again")
            await pump(chs)
            want = [
                ("alpha", "opening statement"),
                ("bravo", "bravo replies"),
                ("charlie", "charlie mediates"),
                ("alpha", "alpha again"),
            ]
            for n, ch in chs.items():
                assert shown(ch, "talks") == want, n
                assert all(e.status in GROUP_STATUSES for e in ch.group_history("talks"))
            heads = {ch.group_show("talks").head for ch in chs.values()}
            assert len(heads) == 1
            # Group carriage is not listed as direct messages.
            for ch in chs.values():
                assert not [h for h in ch.history() if "opening" in h[4]]
        finally:
            for ch in chs.values():
                await ch.close()

    with running_relay(tmp_path) as relay:
        run(go(relay.url))
