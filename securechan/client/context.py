"""What every part of the client stands on: one unlocked home folder.

A :class:`Context` holds the identity and keystore, the client database
(``client.db``), the local audit log, the pool of relay connections, the
clock and the randomness source. The parts above it (``state``,
``registration``, ``outbox``, ``inbox``, ``record``) each take the context
and own one concern; none reaches into another's private fields, and the
:class:`~securechan.client.channel.Channel` facade wires them together.

The clock and the randomness source are injectable, as in ``protocol/``: a
test that fixes both gets the same message ids and address keys every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from securechan.audit.log import AuditLog
from securechan.client.db import ClientDB
from securechan.identity import Contact, Identity, Keystore
from securechan.identity.keys import Fingerprint
from securechan.primitives import random_bytes
from securechan.transport import RelayClient, RetryPolicy

__all__ = ["Context", "RelayPool", "UnknownPolicy"]

# What a first message from a sender we have not pinned does: refused at
# once, or held until the sender is pinned (docs/CLI.md, receive).
UnknownPolicy = Literal["refuse", "hold"]


class RelayPool:
    """One open :class:`RelayClient` per relay URL, opened on first use."""

    def __init__(self, retry: RetryPolicy, clock: Callable[[], float]) -> None:
        self._retry = retry
        self._clock = clock
        self._clients: dict[str, RelayClient] = {}

    async def get(self, url: str) -> RelayClient:
        """The connection to ``url``, opened if needed."""
        client = self._clients.get(url)
        if client is None:
            client = RelayClient(url, retry=self._retry, clock=self._clock)
            await client.__aenter__()
            self._clients[url] = client
        return client

    async def close(self) -> None:
        """Close every connection."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


@dataclass(slots=True, kw_only=True)
class Context:
    """The shared ground of the client's parts (see the module doc)."""

    keystore: Keystore
    identity: Identity
    db: ClientDB
    audit: AuditLog
    relays: RelayPool
    clock: Callable[[], float] = time.time
    random: Callable[[int], bytes] = random_bytes
    unknown_senders: UnknownPolicy = "refuse"
    audit_closed: bool = field(default=False)

    def now(self) -> int:
        """The time, in whole seconds (what every stored row carries)."""
        return int(self.clock())

    async def relay(self, url: str) -> RelayClient:
        """The open connection to the relay at ``url``."""
        return await self.relays.get(url)

    def contact(self, name: str) -> Contact:
        """The pinned contact ``name`` (:class:`ContactNotFound` if none)."""
        return self.keystore.contacts.get(name)

    def find_contact(self, fingerprint: Fingerprint) -> Contact | None:
        """The pinned contact with this fingerprint, if any."""
        return self.keystore.contacts.find(fingerprint)
