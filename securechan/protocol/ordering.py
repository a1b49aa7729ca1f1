"""Holding envelopes that cannot be opened yet: a pure state machine.

A ratchet message can overtake the first message of its session (the relay
or the network reorders them), and a first message from a sender who is not
pinned yet waits for the user. The receiver keeps such envelopes for a while
and tries them again only when what they wait for happens. This module
decides *what* to keep, for how long, when to try again and when to give
up; the client stores the envelopes and does what it is told (in the style
of h11's ``_state.py`` and magic-wormhole's ``_order.py``; the diagram is in
``docs/PROTOCOL.md`` §15).

Sans-I/O: no clock (``now`` is passed in), no files, no keys. The state is
the list of held entries (:meth:`HoldQueue.rows`, :meth:`HoldQueue.from_rows`):
the client persists exactly those rows, nothing else.

One envelope's life::

    arrived --(fits the bounds)--> held(waiting W, until T) --W happens--> retried
       |                              |                                    |
       +--(hold full)--> refused      +--tick(now > T)--> expired/refused   +--> settled
                                                                           +--> held(waiting W')

``W`` is ``("chain", ratchet key)``: the first message of that chain is
accepted, with deadline ``T = at + grace``; or ``("sender", fingerprint)``:
that sender is pinned, with no deadline (the user decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import DecryptionFailed, MessageRejected

__all__ = [
    "CHAIN",
    "SENDER",
    "Bounds",
    "Budget",
    "Entry",
    "Expired",
    "Hold",
    "HoldQueue",
    "Refuse",
    "Release",
    "Retry",
    "may_be_early",
]

CHAIN: Literal["chain"] = "chain"
SENDER: Literal["sender"] = "sender"
WaitKind = Literal["chain", "sender"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """The limits of the hold (docs/SECURITY.md, issue 11): at most ``count``
    envelopes and ``size`` bytes held in all, an envelope waiting for its
    chain kept ``grace`` seconds, and at most ``tries`` failed expensive
    attempts per contact queue and receive pass (:class:`Budget`)."""

    count: int = 256
    size: int = 4 << 20
    grace: int = 600
    tries: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One held envelope, as stored: its id, size, what it waits for and
    when it was held."""

    msg_id: bytes
    size: int
    wait: WaitKind
    key: bytes
    at: int

    def until(self, bounds: Bounds) -> int | None:
        """The deadline: past it (``now > until``) the envelope is refused.
        ``None``: a first message waiting for its sender waits for the user."""
        return self.at + bounds.grace if self.wait == CHAIN else None


# Decisions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep (or go on keeping) ``msg_id`` until ``(wait, key)`` happens, at
    most until ``until`` (``None``: no deadline)."""

    msg_id: bytes
    wait: WaitKind
    key: bytes
    until: int | None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not keep ``msg_id``: the hold is full. Refuse it now."""

    msg_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Try these held envelopes again, oldest first: what they waited for
    happened. Each stays held until :meth:`HoldQueue.settled` or
    :meth:`HoldQueue.rewait` says how the try went."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Expired:
    """These held envelopes waited past their deadline: refuse them."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """Forget ``msg_id`` (opened, or refused for good)."""

    msg_id: bytes


# The machine -----------------------------------------------------------


@dataclass(slots=True)
class HoldQueue:
    """The held envelopes and the rules for them. Each method is one event;
    its return value is the decision, already applied to this state."""

    bounds: Bounds = field(default_factory=Bounds)
    _held: dict[bytes, Entry] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[Entry] | tuple[Entry, ...], bounds: Bounds) -> HoldQueue:
        """The machine whose state is ``rows`` (as :meth:`rows` gave them)."""
        q = cls(bounds)
        for row in rows:
            q._held[row.msg_id] = row
        return q

    def rows(self) -> tuple[Entry, ...]:
        """The state, oldest first: what the caller persists."""
        return tuple(self._held.values())

    @property
    def count(self) -> int:
        return len(self._held)

    @property
    def size(self) -> int:
        return sum(e.size for e in self._held.values())

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._held

    def _hold(self, e: Entry) -> Hold:
        self._held[e.msg_id] = e
        return Hold(e.msg_id, e.wait, e.key, e.until(self.bounds))

    def arrived(
        self, msg_id: bytes, size: int, wait: WaitKind, key: bytes, *, now: int
    ) -> Hold | Refuse:
        """An envelope that cannot be opened yet, waiting for ``(wait,
        key)``: held if it fits the bounds, else refused. An envelope held
        already stays as it is."""
        old = self._held.get(msg_id)
        if old is not None:
            return Hold(msg_id, old.wait, old.key, old.until(self.bounds))
        if self.count >= self.bounds.count or self.size + size > self.bounds.size:
            return Refuse(msg_id, "the hold is full")
        return self._hold(Entry(msg_id=msg_id, size=size, wait=wait, key=key, at=now))

    def chain_accepted(self, key: bytes) -> Retry:
        """The first message of the chain with ratchet key ``key`` was
        accepted: retry what waits for it."""
        return self._ready(CHAIN, key)

    def sender_pinned(self, fingerprint: bytes) -> Retry:
        """The sender ``fingerprint`` was pinned: retry what waits for it."""
        return self._ready(SENDER, fingerprint)

    def _ready(self, wait: WaitKind, key: bytes) -> Retry:
        return Retry(tuple(m for m, e in self._held.items() if e.wait == wait and e.key == key))

    def settled(self, msg_id: bytes) -> Release:
        """A retried envelope was opened, or refused for good."""
        self._held.pop(msg_id, None)
        return Release(msg_id)

    def rewait(self, msg_id: bytes, wait: WaitKind, key: bytes) -> Hold | Release:
        """A retried envelope now waits for something else (a first message
        whose chain was known but whose sender is not pinned); its time held
        is kept, so the bounds and deadlines still hold."""
        old = self._held.get(msg_id)
        if old is None:
            return Release(msg_id)
        return self._hold(replace(old, wait=wait, key=key))

    def tick(self, now: int) -> Expired:
        """Time passed: refuse what waited past its deadline."""
        gone = []
        for m, e in self._held.items():
            until = e.until(self.bounds)
            if until is not None and now > until:
                gone.append(m)
        for m in gone:
            del self._held[m]
        return Expired(tuple(gone))

    def waiting_senders(self) -> tuple[bytes, ...]:
        """The fingerprints held first messages wait for (the caller tells
        :meth:`sender_pinned` which of them are pinned now)."""
        return tuple(dict.fromkeys(e.key for e in self._held.values() if e.wait == SENDER))


@dataclass(slots=True)
class Budget:
    """Failed expensive attempts left on one contact queue in one receive
    pass (a decapsulation, or a ratchet decryption that may step a chain):
    past ``Bounds.tries`` the rest of the queue waits for the next pass."""

    left: int

    @classmethod
    def of(cls, bounds: Bounds) -> Budget:
        return cls(bounds.tries)

    def spend(self) -> None:
        self.left -= 1

    @property
    def exhausted(self) -> bool:
        return self.left <= 0


def may_be_early(*, contact_queue: bool, ratchet_message: bool, error: Exception) -> bool:
    """Could an envelope refused with ``error`` be a ratchet message that
    overtook the first message of its session? Only on the contact queue
    (where a session's first messages travel), only a ratchet message that no
    session could decrypt; a replay, reflection or absurd counter is refused
    at once."""
    return contact_queue and ratchet_message and type(error) in (DecryptionFailed, MessageRejected)
