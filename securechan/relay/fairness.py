"""First-contact fairness on contact addresses (docs/RELAY.md, "Contact addresses").

A contact address is public: anyone holding the contact card may send to
it, unsigned, so that a first message reveals nothing about its sender to
the relay (the sender's identity travels inside the HPKE-sealed first
message, docs/PROTOCOL.md). Before this module, the per-queue send rate
(``queue_rate``) and depth (``max_depth``) were one budget shared by every
sender: one stranger flooding the address spent the whole bucket (issue 15's
load run: 56 junk envelopes/s let in, 59 of 60 honest first contacts
refused) and, while the owner was away, filled the queue to ``max_depth``
so that every later first contact got ``429 queue_full``.

The only thing the relay knows about an unsigned sender is the client
address the request came from (IPv4, or the IPv6 /64 prefix, as for the
connection caps). A sender key would not help: a stranger makes a new key
for free with every send. So each contact address gives every client
address:

* a **share of its depth and bytes**: at most ``max_depth / contact_share``
  envelopes and ``queue_max_bytes / contact_share`` bytes from one client
  address held at a time (the flood fills only its own share; the owner's
  fetch and ack, or the TTL, give it back), and
* a **rate of its own**: ``contact_sender_rate`` sends per second (burst
  ``contact_sender_burst``), checked before the queue's shared bucket is
  touched, so one address cannot spend the bucket everyone else needs.

What is held is tracked in memory (``seq``, sender, size and time per
envelope of a contact address), released when the owner acknowledges and
when the envelope passes the TTL. After a restart the tracking starts empty:
each address then gets a fresh share while the owner drains what is held,
still bounded by ``max_depth`` overall. Memory: one small record per
envelope held in a contact address (at most ``max_depth`` per address) for
at most ``max_queues`` addresses (least recently used first out; an evicted
address starts again with empty shares).

An attacker with many client addresses gets one share per address: sixteen
addresses at the default share fill a contact address again. Proof of work
bound to the envelope (as hashcash) would price that; it is not done (see
docs/SECURITY.md).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from securechan.errors import LimitReached, Reason
from securechan.relay.limits import RateLimiter
from securechan.relay.storage import PutResult

__all__ = ["MIN_SHARE", "ContactFairness", "ShareExceeded"]

MIN_SHARE = 32
"""Envelopes one client address may always hold in a contact address (unless
``max_depth`` is smaller): the share is ``max(MIN_SHARE, max_depth / share)``."""


class ShareExceeded(LimitReached):
    """This client address holds its whole share of the contact address."""

    code = Reason.CONTACT_SHARE_EXCEEDED


@dataclass(slots=True)
class _Held:
    """What one contact address holds, by sender (in seq order)."""

    entries: deque[tuple[int, str, int, int]] = field(default_factory=deque)
    count: Counter[str] = field(default_factory=Counter)
    size: Counter[str] = field(default_factory=Counter)
    acked: int = 0  # the owner acknowledged every seq up to this


class ContactFairness:
    """Per-sender shares and rates on contact addresses (one relay process).

    ``share`` 0 turns the depth and byte shares off; the rate always applies.
    """

    def __init__(
        self,
        *,
        max_depth: int,
        max_bytes: int | None,
        share: int,
        rate: float,
        burst: int,
        ttl: int,
        max_queues: int = 100_000,
    ) -> None:
        if share < 0:
            raise ValueError("share must be 0 (off) or positive")
        # A share never goes below MIN_SHARE envelopes (or the whole queue, if
        # smaller): a first contact is a few envelopes (the first message,
        # what follows it before the grant comes back), and a small
        # max_depth must not make one of them too many.
        floor = min(max_depth, MIN_SHARE)
        self.depth = max(floor, max_depth // share) if share else None
        self.bytes = max(1, max_bytes // share) if share and max_bytes else None
        self.ttl = ttl
        self.max_queues = max_queues
        self.rate = RateLimiter(rate=rate, burst=burst)
        self._held: OrderedDict[bytes, _Held] = OrderedDict()

    def allow_rate(self, rid: bytes, sender: str, now: float) -> int:
        """0 if ``sender`` may send to contact address ``rid`` now, else the
        seconds to wait (takes a token when allowed)."""
        return self.rate.allow((rid, sender), now)

    async def put(
        self,
        rid: bytes,
        sender: str | None,
        size: int,
        now: int,
        put: Coroutine[Any, Any, PutResult],
    ) -> PutResult:
        """Run the storage's ``put`` within ``sender``'s share of contact
        address ``rid`` (``sender`` None: not a contact address, ``put`` as
        is). Raises :class:`ShareExceeded` without storing anything."""
        if sender is None:
            return await put
        try:
            self.reserve(rid, sender, size, now)
        except ShareExceeded:
            put.close()  # never started: nothing stored
            raise
        seq = None
        try:
            result = await put
            if not result.duplicate:
                seq = result.seq
            return result
        finally:
            self.settle(rid, sender, size, seq, now)

    def reserve(self, rid: bytes, sender: str, size: int, now: int) -> None:
        """Count an envelope of ``size`` bytes from ``sender`` against its
        share of ``rid`` before it is stored (so that concurrent sends cannot
        overshoot), or raise :class:`ShareExceeded`. Every reservation must be
        settled with :meth:`settle`."""
        held = self._held.get(rid)
        if held is None:
            held = self._held[rid] = _Held()
            if len(self._held) > self.max_queues:
                self._held.popitem(last=False)
        else:
            self._held.move_to_end(rid)
            self._expire(held, now)
        if self.depth is not None and held.count[sender] + 1 > self.depth:
            raise ShareExceeded
        if self.bytes is not None and held.size[sender] + size > self.bytes:
            raise ShareExceeded
        held.count[sender] += 1
        held.size[sender] += size

    def settle(self, rid: bytes, sender: str, size: int, seq: int | None, now: int) -> None:
        """The reserved envelope was stored at ``seq``, or not (``None``: refused,
        failed, or a duplicate of one already held)."""
        held = self._held.get(rid)
        if held is None:
            return  # evicted meanwhile: its shares start again empty
        if seq is None or seq <= held.acked:
            self._uncount(held, sender, size)
            if not held.entries and not held.count:
                del self._held[rid]
            return
        entry = (seq, sender, size, now)
        entries = held.entries
        if not entries or entries[-1][0] < seq:
            entries.append(entry)
        else:  # answered out of order (rare): keep seq order for acked()
            i = len(entries)
            while i > 0 and entries[i - 1][0] > seq:
                i -= 1
            entries.insert(i, entry)

    def acked(self, rid: bytes, up_to: int) -> None:
        """The owner acknowledged (deleted) every envelope up to ``up_to``."""
        held = self._held.get(rid)
        if held is None:
            return
        held.acked = max(held.acked, up_to)
        while held.entries and held.entries[0][0] <= up_to:
            self._drop(held)
        if not held.entries and not held.count:
            del self._held[rid]

    def forget(self, rid: bytes) -> None:
        """The queue was deleted."""
        self._held.pop(rid, None)

    def held_by(self, rid: bytes, sender: str) -> tuple[int, int]:
        """Envelopes and bytes ``sender`` holds in ``rid`` (for tests, metrics)."""
        held = self._held.get(rid)
        return (0, 0) if held is None else (held.count[sender], held.size[sender])

    def _expire(self, held: _Held, now: int) -> None:
        # Envelopes past the TTL are deleted by the relay's sweep; their share
        # comes back then (or here, whichever comes first: seq order is
        # arrival order, so the oldest are on the left).
        while held.entries and held.entries[0][3] < now - self.ttl:
            self._drop(held)

    @classmethod
    def _drop(cls, held: _Held) -> None:
        _, sender, size, _ = held.entries.popleft()
        cls._uncount(held, sender, size)

    @staticmethod
    def _uncount(held: _Held, sender: str, size: int) -> None:
        held.count[sender] -= 1
        held.size[sender] -= size
        if held.count[sender] <= 0:
            del held.count[sender]
            del held.size[sender]
