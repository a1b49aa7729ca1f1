"""The pairing mailbox: where two clients run one pairing (docs/RELAY.md, "Pairing mailbox").

magic-wormhole's mailbox server is the model (a nameplate number, a mailbox
for two sides, deleted when both close), cut down to what pairing needs:

* **Short-lived**: a mailbox lives ``ttl`` seconds (5 minutes) from its
  opening, then it is deleted with everything in it, whatever its state.
* **Two sides, one use**: the opener is side A; the first ``join`` of its
  nameplate is side B; every later join is refused (409). A guesser who
  takes the B slot therefore burns the code: the real joiner is refused,
  and the guesser's one PAKE attempt fails the opener's run. Each side
  posts each of its three phases once (the same bytes again is a no-op,
  for a retried request; other bytes are refused), so a mailbox carries
  exactly one PAKE exchange.
* **Nothing kept**: a side that closes with ``ok=false`` (its run failed)
  deletes the mailbox at once; after both sides close with ``ok=true`` it is
  deleted too. Nothing is written to disk or logged (no nameplate, token or
  body; the counters are aggregate).
* **Rate-limited per client address**: opens and joins together, ``limit``
  per ``window`` seconds (429 with Retry-After), so one address cannot sweep
  the nameplates; and at most ``max_mailboxes`` at once (503).

The state is in this process's memory: a relay run as several processes
behind one address (docs/RELAY.md) would need it shared (or the pairing
routes sent to one process). Each side proves its slot with the random
16-byte token it got at open or join; the nameplate alone grants nothing.

This module is plain logic (no HTTP library); the clock and the randomness
are injectable for tests.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from securechan.primitives import constant_time_equal
from securechan.relay.api import ApiError

__all__ = ["MAX_BODY", "PAIR_PHASES", "PairingService"]

PAIR_PHASES: Final = (1, 2, 3)
"""The phases a side posts (PAKE, CARD, CONFIRM: protocol/pairing.py)."""
MAX_BODY: Final = 40_000
"""The largest message (a sealed contact card is at most ~32.8 KB)."""
_SIDES: Final = ("A", "B")


@dataclass(slots=True)
class _Mailbox:
    nameplate: int
    created: float
    tokens: dict[str, bytes]
    messages: dict[tuple[str, int], bytes] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)


class PairingService:
    """The mailboxes of one relay process."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        limit: int = 20,
        window: float = 60.0,
        max_mailboxes: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.window = window
        self.max_mailboxes = max_mailboxes
        self._clock = clock
        self._random = random
        self._boxes: dict[int, _Mailbox] = {}
        self._recent: dict[str, collections.deque[float]] = {}

    def __len__(self) -> int:
        """Mailboxes alive now (expired ones are dropped first)."""
        self._expire()
        return len(self._boxes)

    # --- housekeeping -----------------------------------------------------------

    def _expire(self) -> None:
        now = self._clock()
        for n in [n for n, box in self._boxes.items() if now - box.created >= self.ttl]:
            del self._boxes[n]

    def _rate(self, remote: str | None) -> None:
        now = self._clock()
        key = remote or "-"
        recent = self._recent.setdefault(key, collections.deque())
        while recent and now - recent[0] >= self.window:
            recent.popleft()
        if len(recent) >= self.limit:
            wait = int(self.window - (now - recent[0])) + 1
            raise ApiError(
                "rate_limited", "too many pairing requests from this address", retry_after=wait
            )
        recent.append(now)
        if len(self._recent) > 4 * self.max_mailboxes:
            # Bounded memory: forget addresses with nothing recent.
            for k in [k for k, d in self._recent.items() if not d or now - d[-1] >= self.window]:
                del self._recent[k]

    def _nameplate(self) -> int:
        # The smallest free numbers read best (magic-wormhole does the same),
        # picked at random among the first free ones so that the next
        # nameplate is not predictable from the last.
        span = 100
        while True:
            free = [n for n in range(1, span) if n not in self._boxes]
            if len(free) >= 10 or span > 10 * (self.max_mailboxes + 100):
                break
            span *= 10
        return free[int.from_bytes(self._random(4), "big") % len(free)]

    def _box(self, nameplate: int, token: bytes) -> tuple[_Mailbox, str]:
        """The mailbox and the side this token holds, or 404 (one answer for
        "no such mailbox" and "not your token": a token guesser learns nothing)."""
        self._expire()
        box = self._boxes.get(nameplate)
        if box is not None:
            for side, t in box.tokens.items():
                if constant_time_equal(t, token):
                    return box, side
        raise ApiError("no_mailbox", "no such pairing mailbox (expired, used or never opened)")

    # --- the operations ---------------------------------------------------------

    def open(self, remote: str | None) -> tuple[int, bytes]:
        """A new mailbox: its nameplate and side A's token."""
        self._rate(remote)
        self._expire()
        if len(self._boxes) >= self.max_mailboxes:
            raise ApiError("busy", "too many pairings at once; try again", retry_after=5)
        nameplate = self._nameplate()
        token = self._random(16)
        self._boxes[nameplate] = _Mailbox(
            nameplate=nameplate, created=self._clock(), tokens={"A": token}
        )
        return nameplate, token

    def join(self, remote: str | None, nameplate: int) -> bytes:
        """Side B's token; 404 for no such mailbox, 409 when B is taken."""
        self._rate(remote)
        self._expire()
        box = self._boxes.get(nameplate)
        if box is None:
            raise ApiError("no_mailbox", "no such pairing code (expired, used or never opened)")
        if "B" in box.tokens:
            raise ApiError("conflict", "this pairing code is already in use")
        token = self._random(16)
        box.tokens["B"] = token
        return token

    def put(self, nameplate: int, token: bytes, phase: int, body: bytes) -> None:
        """Store this side's message of ``phase`` (once)."""
        box, side = self._box(nameplate, token)
        if phase not in PAIR_PHASES:
            raise ApiError("bad_request", "phase is 1, 2 or 3")
        if not 0 < len(body) <= MAX_BODY:
            raise ApiError("too_large", f"a pairing message is 1 to {MAX_BODY} bytes")
        old = box.messages.get((side, phase))
        if old is not None:
            if old != body:
                raise ApiError("conflict", "this side already sent that phase")
            return
        box.messages[(side, phase)] = body

    def get(self, nameplate: int, token: bytes, phase: int) -> bytes | None:
        """The other side's message of ``phase``, or None while it has not come."""
        box, side = self._box(nameplate, token)
        if phase not in PAIR_PHASES:
            raise ApiError("bad_request", "phase is 1, 2 or 3")
        other = _SIDES[1 - _SIDES.index(side)]
        return box.messages.get((other, phase))

    def close(self, nameplate: int, token: bytes, ok: bool) -> bool:
        """This side is done. A failed side (``ok`` false) deletes the
        mailbox now; otherwise it goes when both sides have closed.
        Returns whether the mailbox is gone."""
        box, side = self._box(nameplate, token)
        box.closed.add(side)
        if not ok or box.closed >= set(_SIDES):
            del self._boxes[nameplate]
            return True
        return False
