"""The agent's unlocked key and its two clocks (docs/AGENT.md, Locking).

As gpg-agent's ``default-cache-ttl`` and ``max-cache-ttl``: the key is
forgotten ``idle_ttl`` seconds after it was last used and ``max_ttl``
seconds after it was unlocked, whichever comes first, and at once on
:meth:`KeyCache.lock`. Forgetting closes the :class:`Channel` (its database,
audit log and relay connections) and drops every reference to the
identity; Python cannot promise that no copy of the key bytes stays in
freed memory (the same limit as every Python program holding keys).

Unlocking runs Argon2id in a worker thread so the agent keeps answering
(``status``, ``lock``) meanwhile; the channel itself is built on the event
loop's thread, which owns its SQLite connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from securechan.errors import AgentLocked

if TYPE_CHECKING:
    from securechan.client.channel import Channel
    from securechan.identity import Identity

__all__ = ["DEFAULT_IDLE_TTL", "DEFAULT_MAX_TTL", "KeyCache"]

DEFAULT_IDLE_TTL = 600.0
DEFAULT_MAX_TTL = 7200.0


class KeyCache:
    def __init__(
        self,
        unlock_identity: Callable[[str], Identity],
        make_channel: Callable[[Identity], Channel],
        *,
        idle_ttl: float = DEFAULT_IDLE_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_ttl <= 0 or max_ttl <= 0:
            raise ValueError("TTLs must be positive")
        self._unlock_identity = unlock_identity
        self._make_channel = make_channel
        self.idle_ttl = idle_ttl
        self.max_ttl = max_ttl
        self._clock = clock
        self._channel: Channel | None = None
        self._unlocked_at = 0.0
        self._used_at = 0.0
        self._unlocking = asyncio.Lock()
        self.changed = asyncio.Event()  # set on every lock/unlock

    @property
    def holds_key(self) -> bool:
        """Whether a key is held (perhaps past its TTL, until :meth:`expire`)."""
        return self._channel is not None

    @property
    def locked(self) -> bool:
        return self._channel is None or self.expires_in() <= 0

    def expires_in(self) -> float:
        """Seconds until the key is forgotten (0 when locked)."""
        if self._channel is None:
            return 0.0
        now = self._clock()
        left = min(self._used_at + self.idle_ttl, self._unlocked_at + self.max_ttl) - now
        return max(0.0, left)

    def get(self, *, touch: bool = True) -> Channel:
        """The unlocked channel; raise :class:`AgentLocked`. ``touch``
        restarts the idle clock (a request by the owner does; the agent's own
        background receiving does not, or the key would never expire)."""
        if self._channel is None or self.expires_in() <= 0:
            raise AgentLocked("the agent is locked: unlock it with your passphrase")
        if touch:
            self._used_at = self._clock()
        return self._channel

    async def unlock(self, passphrase: str) -> None:
        """Unlock (Argon2id in a thread); raise ``BadPassphrase``. Unlocking
        an unlocked agent checks the passphrase and restarts both clocks."""
        async with self._unlocking:
            identity = await asyncio.to_thread(self._unlock_identity, passphrase)
            if self._channel is None:
                self._channel = self._make_channel(identity)
            now = self._clock()
            self._unlocked_at = self._used_at = now
            self.changed.set()

    async def lock(self) -> bool:
        """Forget the key now; return whether it was unlocked."""
        channel, self._channel = self._channel, None
        if channel is None:
            return False
        try:
            await channel.close()
        finally:
            self.changed.set()
        return True

    async def expire(self) -> bool:
        """Lock if a TTL ran out; return whether it did."""
        if self._channel is not None and self.expires_in() <= 0:
            return await self.lock()
        return False
