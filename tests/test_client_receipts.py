"""The client holds the relay to its transparency log: every send's receipt
is verified, checkpoints from one relay must be consistent, and a relay that
shows two histories is caught with both signed checkpoints as evidence.
Real relay process on 127.0.0.1; real SQLite files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from securechan.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from securechan.audit.log import AuditLog
from securechan.client.logview import pinned_keys
from securechan.errors import SplitView
from securechan.primitives import Ed25519SigningKey, random_bytes
from tests.test_relay_crash import introduce, make_party, running_relay


def _relay_key(data: Path) -> Ed25519SigningKey:
    """The relay's own signing key, read from its data folder: the test plays a
    relay operator who signs a second, forked history."""
    return Ed25519SigningKey(bytes.fromhex((data / "relay.key").read_text().strip()))


def test_receipts_are_verified_and_checkpoints_kept(tmp_path: Path) -> None:
    a, b = make_party(tmp_path, "alpha"), make_party(tmp_path, "bravo")

    async def go(url: str) -> None:
        async with a.channel() as ach, b.channel() as bch:
            await introduce(a, ach, b, bch, url)
            for i in range(3):
                assert (await ach.send_text(b.name, f"m{i}")).pending == 0
            known = ach.db.relay_log(url)
            assert known is not None and known[1] is not None
            key = pinned_keys(known[0])[0]  # Ed25519 and ML-DSA-44 keys
            cp = open_checkpoint(known[1], key)
            assert cp.size >= 3  # every envelope so far is in the log

    with running_relay(tmp_path) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url), 60))
    with AuditLog.open(a.home, read_only=True) as log:
        kinds = [e.kind for e in log.entries()]
    assert "relay-checkpoint-seen" in kinds


def test_a_forked_history_is_caught(tmp_path: Path) -> None:
    a, b = make_party(tmp_path, "alpha"), make_party(tmp_path, "bravo")

    async def go(url: str, data: Path) -> None:
        async with a.channel() as ach, b.channel() as bch:
            await introduce(a, ach, b, bch, url)
            assert (await ach.send_text(b.name, "before the fork")).pending == 0
            known = ach.db.relay_log(url)
            assert known is not None and known[1] is not None
            key = pinned_keys(known[0])[0]  # Ed25519 and ML-DSA-44 keys
            seen = open_checkpoint(known[1], key)
            # The operator signs another tree of the same size and shows it to
            # alpha as if it were the history alpha saw before.
            fork = Checkpoint(origin=seen.origin, size=seen.size, root_hash=random_bytes(32))
            forged = sign_checkpoint(_relay_key(data), key.name, fork)
            with ach.db.transaction():
                ach.db.set_relay_log(url, known[0], forged)
            with pytest.raises(SplitView) as info:
                await ach.send_text(b.name, "after the fork")
            assert set(info.value.evidence) == {forged} | {info.value.evidence[1]}
            # Both pieces of evidence verify under the relay's key: together
            # they prove the relay signed two histories.
            for note in info.value.evidence:
                open_checkpoint(note, key)

    with running_relay(tmp_path) as relay:
        asyncio.run(asyncio.wait_for(go(relay.url, relay.data), 60))
    with AuditLog.open(a.home, read_only=True) as log:
        rows = [e for e in log.entries() if e.kind == "rejected"]
    assert any("split-view" in json.dumps(e.describe()) for e in rows)
