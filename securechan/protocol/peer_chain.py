"""Where a peer's message fits in its hash chain: a pure function.

Every payload carries the sender's sequence number and the hash of the
sender's previous signed payload (``docs/PROTOCOL.md`` §14, §15 steps 5-6).
:class:`ReceivedChain` is what the receiver knows of the peer's direction,
and :func:`place` fits one verified message into it: refused as a
:class:`~securechan.errors.Replay` (already received, or given up) or a
:class:`~securechan.errors.ChainBroken` (a link does not match), or accepted
with the gap events it causes. No keys, no clock, no I/O: the session calls
it only after the ratchet opened the message and its signature verified.
"""

from __future__ import annotations

from dataclasses import dataclass

from securechan.errors import ChainBroken, MessageRejected, Replay
from securechan.protocol.payload import ZERO_HASH
from securechan.protocol.ratchet import MAX_SKIP

__all__ = [
    "MAX_GAP",
    "ChainEvent",
    "GapAbandoned",
    "MessagesMissing",
    "OutOfOrder",
    "ReceivedChain",
    "place",
]

# A gap is bounded like the ratchet's skip window: a message further ahead
# could not have been opened anyway.
MAX_GAP = MAX_SKIP
# The hash of a message we gave up waiting for: its successor cannot be linked.
UNKNOWN_HASH = b"\xff" * 32


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesMissing:
    """Sequence numbers ``from_seq``..``to_seq`` (inclusive) have not arrived."""

    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutOfOrder:
    """Message ``seq`` arrived after a later one (a gap being filled)."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GapAbandoned:
    """Messages ``from_seq``..``to_seq`` are no longer awaited: more than
    1000 later messages arrived, so any of them that never came is lost."""

    from_seq: int
    to_seq: int


ChainEvent = MessagesMissing | OutOfOrder | GapAbandoned


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedChain:
    """Ordering state of the peer's direction (an immutable value)."""

    contiguous: int = 0  # every seq <= this has arrived
    last_hash: bytes = ZERO_HASH  # hash of message `contiguous`
    highest: int = 0  # highest seq seen
    # (seq, hash, prev_hash) of arrived messages beyond `contiguous`, by seq
    ahead: tuple[tuple[int, bytes, bytes], ...] = ()


def place(
    r: ReceivedChain, seq: int, digest: bytes, prev_hash: bytes
) -> tuple[ReceivedChain, list[ChainEvent]]:
    """Fit message ``seq`` into the peer's hash chain; return the new
    ordering state and the gap/reorder events. Pure; raises on conflict."""
    ahead = {s: (h, ph) for s, h, ph in r.ahead}
    if seq == 0:
        raise MessageRejected("sequence numbers start at 1")
    if seq <= r.contiguous or seq in ahead:
        raise Replay("this message was already received (or given up as lost)")
    events: list[ChainEvent] = []
    if seq - r.contiguous > MAX_GAP:
        # Memory is bounded: stop waiting for the oldest holes. They were
        # reported as missing when they opened; now they are given up.
        base = seq - MAX_GAP
        events.append(GapAbandoned(from_seq=r.contiguous + 1, to_seq=base))
        known = {s: h for s, h, _ in r.ahead if s <= base}
        r = ReceivedChain(
            contiguous=base,
            last_hash=known.get(base, UNKNOWN_HASH),
            highest=max(r.highest, base),
            ahead=tuple(e for e in r.ahead if e[0] > base),
        )
        ahead = {s: (h, ph) for s, h, ph in r.ahead}
    # The link to the previous message, when we know it.
    if seq == r.contiguous + 1:
        if r.last_hash != UNKNOWN_HASH and prev_hash != r.last_hash:
            raise ChainBroken("the message does not follow the last one received")
    elif seq - 1 in ahead and ahead[seq - 1][0] != prev_hash:
        raise ChainBroken("the message does not follow its predecessor")
    # The link from the next message, when it came first.
    if seq + 1 in ahead and ahead[seq + 1][1] != digest:
        raise ChainBroken("a later message does not follow this one")
    if seq > r.highest + 1:
        events.append(MessagesMissing(from_seq=r.highest + 1, to_seq=seq - 1))
    if seq < r.highest:
        events.append(OutOfOrder(seq=seq))
    ahead[seq] = (digest, prev_hash)
    contiguous, last_hash = r.contiguous, r.last_hash
    while contiguous + 1 in ahead:
        contiguous += 1
        last_hash = ahead.pop(contiguous)[0]
    return (
        ReceivedChain(
            contiguous=contiguous,
            last_hash=last_hash,
            highest=max(r.highest, seq),
            ahead=tuple(sorted((s, h, ph) for s, (h, ph) in ahead.items())),
        ),
        events,
    )
