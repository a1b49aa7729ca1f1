"""A small world for group tests: delegations with real homes on disk, a real
relay process on 127.0.0.1, every party a pinned contact of every other.

Used by tests/test_groups_client.py (and open to the other issue-17 tests).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from securechan.client.channel import Channel
from securechan.client.group_results import GroupEntry
from securechan.client.results import Received, Rejected
from securechan.identity import Identity, Keystore
from securechan.primitives import KDF_INTERACTIVE
from securechan.transport import RetryPolicy

PASSPHRASE = "a long passphrase for the group tests"  # noqa: S105 (a test home)
NAMES = ("alpha", "bravo", "charlie", "delta")
FAST = RetryPolicy(attempts=2, base=0.05, cap=0.2, timeout=10.0)

Item = Received | Rejected | GroupEntry


def make_pristine(root: Path) -> Path:
    """Unregistered identities (cheapest Argon2id the keystore takes)."""
    for name in NAMES:
        Keystore(root / name).create(name, PASSPHRASE, kdf=KDF_INTERACTIVE)
    return root


@dataclass
class Member:
    name: str
    keystore: Keystore
    identity: Identity

    @property
    def home(self) -> Path:
        return self.keystore.home

    def channel(self) -> Channel:
        return Channel(self.keystore, self.identity, retry=FAST)


def copy_members(pristine: Path, tmp: Path, names: Iterable[str] = NAMES) -> dict[str, Member]:
    out = {}
    for name in names:
        shutil.copytree(pristine / name, tmp / name)
        ks = Keystore(tmp / name)
        out[name] = Member(name, ks, ks.unlock(PASSPHRASE))
    return out


async def mesh(chs: dict[str, Channel], url: str, at: dict[str, str] | None = None) -> None:
    """Register everyone at ``url`` (or the one ``at`` names for it); everyone
    pins everyone (contact cards)."""
    at = at or {}
    cards = {name: await ch.register(at.get(name, url)) for name, ch in chs.items()}
    for name, ch in chs.items():
        for other, card in cards.items():
            if other != name:
                ch.keystore.contacts.add(card.identity, card=card.to_bytes())


async def pump(chs: dict[str, Channel], rounds: int = 2) -> dict[str, list[Item]]:
    """Every party receives, ``rounds`` times over (grants, welcomes, streams)."""
    got: dict[str, list[Item]] = {name: [] for name in chs}
    for _ in range(rounds):
        for name, ch in chs.items():
            got[name].extend(await ch.receive())
    return got


def entries(items: list[Item]) -> list[GroupEntry]:
    return [i for i in items if isinstance(i, GroupEntry)]


def shown(ch: Channel, group: str) -> list[tuple[str, str | None]]:
    """(sender, text) of the shown messages of a group's history."""
    return [(e.sender, e.text) for e in ch.group_history(group) if e.status == "shown"]


def run(coro: object, seconds: float = 180) -> object:
    return asyncio.run(asyncio.wait_for(coro, seconds))  # type: ignore[arg-type]


def pairwise_kinds(ch: Channel) -> list[int]:
    """The content types of every pairwise message this home received, in
    the order stored (its pairwise inbox, as client.db's record holds it)."""
    from securechan.client.stored import StoredRecord
    from securechan.protocol.payload import SignedPayload

    out = []
    for m in ch.db.messages(limit=100_000):
        if m.direction != "in":
            continue
        signed = StoredRecord.from_bytes(m.record).signed
        out.append(int(SignedPayload.from_bytes_unverified(signed).payload.content_type))
    return out
