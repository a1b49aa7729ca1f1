"""A small world for one attack: a real relay (shared per module), one
malicious front per delegation, and the delegations' home folders.

Each delegation registers through its own front, so that front sees the
delegation's own fetches and every envelope sent *to* it; attacks on what a
party receives are scripted on that party's front (``world.front["w"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.adversary.parties import Party, introduce, make_people
from tests.adversary.proxy import MaliciousRelay
from tests.adversary.relay import RelayProcess

__all__ = ["PASSPHRASES", "World", "world_of"]

PASSPHRASES = {
    "tehran": "tehran's long adversarial passphrase",
    "washington": "washington's long adversarial passphrase",
    "cairo": "cairo's long adversarial passphrase",
}


@dataclass
class World:
    relay: RelayProcess
    people: dict[str, Party]
    front: dict[str, MaliciousRelay]

    @property
    def t(self) -> Party:
        return self.people["tehran"]

    @property
    def w(self) -> Party:
        return self.people["washington"]

    @property
    def c(self) -> Party:
        return self.people["cairo"]

    def introduce(self, a: str, b: str, *, hello: bool = True) -> None:
        pa, pb = self.people[a], self.people[b]
        coro = introduce(pa, self.front[a].url, pb, self.front[b].url, hello=hello)
        asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.contextmanager
def world_of(relay: RelayProcess, pristine: Path, root: Path, names: list[str]) -> Iterator[World]:
    """Fresh copies of ``names`` and one front each (closed afterwards)."""
    people = make_people(pristine, root, {n: PASSPHRASES[n] for n in names})
    fronts: dict[str, MaliciousRelay] = {}
    try:
        for n in names:
            fronts[n] = MaliciousRelay(relay.url, relay.data, root / f"front-{n}")
            fronts[n].start()
        yield World(relay, people, fronts)
    finally:
        for f in fronts.values():
            f.close()
