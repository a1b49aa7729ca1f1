"""A session's state and its stored form (type 0x0080, ``docs/PROTOCOL.md`` §16).

:class:`SessionState` is the immutable value a
:class:`~securechan.protocol.session.Session` replaces on every accepted
message and every send; :func:`session_to_bytes` and
:func:`session_from_bytes` are its one encoding (secret: the caller seals it,
``protocol/sealed.py``). The hashes of our last messages are kept beside the
state, not in it (appending must not copy 4096 hashes), and stored with it.

Loading checks what a well-formed record cannot: that the state is ours,
that the role is known, that the packed lists have whole entries, and that
the conversation id is the one derived from the transcript (a swapped id
would let the peer's messages land in another conversation).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import wire
from securechan.errors import MalformedInput
from securechan.identity.keys import PUBLIC_IDENTITY, PublicIdentity
from securechan.protocol import handshake as hs
from securechan.protocol.payload import ZERO_HASH
from securechan.protocol.peer_chain import MAX_GAP, ReceivedChain
from securechan.protocol.ratchet import RatchetState, prune
from securechan.protocol.ratchet_record import state_from_bytes, state_to_bytes

__all__ = [
    "SENT_HASHES_KEPT",
    "SESSION",
    "Role",
    "SessionState",
    "session_from_bytes",
    "session_to_bytes",
]

# How many of our own message hashes are kept, for checking receipts.
SENT_HASHES_KEPT = 4096
_AHEAD_ENTRY = 8 + 32 + 32  # seq:u64be || hash || prev_hash


class Role(enum.IntEnum):
    """Which side started the session."""

    INITIATOR = 1
    RESPONDER = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    """Everything a session is, but our own identity and sent hashes."""

    role: Role
    conversation: bytes
    peer: PublicIdentity
    transcript_hash: bytes
    ratchet: RatchetState = field(repr=False)
    send_seq: int = 0
    send_last_hash: bytes = ZERO_HASH
    received: ReceivedChain = field(default_factory=ReceivedChain)
    generation: int = 0


@wire.record(0x0080, "Session")
@dataclass(frozen=True, slots=True, kw_only=True)
class _SessionRecord(wire.Record):
    """The stored form of a session (type 0x0080, secret). The two lists are
    packed as they always were: ``sent_hashes`` (32 bytes each, oldest
    first) and ``recv_ahead`` (``seq:u64be || hash || prev_hash``, 72 each)."""

    role: Annotated[int, wire.uint(1)]
    conversation: Annotated[bytes, wire.bytes_(2, size=16)]
    own: Annotated[bytes, wire.bytes_(3, size=32)]
    peer: Annotated[PublicIdentity, wire.nested(4, max_len=8192, of=PUBLIC_IDENTITY)]
    transcript_hash: Annotated[bytes, wire.bytes_(5, size=32)]
    ratchet: Annotated[bytes, wire.bytes_(6, max_len=1 << 20)]
    send_seq: Annotated[int, wire.uint(7)]
    send_last_hash: Annotated[bytes, wire.bytes_(8, size=32)]
    sent_hashes: Annotated[bytes, wire.bytes_(9, max_len=SENT_HASHES_KEPT * 32)]
    recv_contiguous: Annotated[int, wire.uint(10)]
    recv_last_hash: Annotated[bytes, wire.bytes_(11, size=32)]
    recv_highest: Annotated[int, wire.uint(12)]
    recv_ahead: Annotated[bytes, wire.bytes_(13, max_len=(MAX_GAP + 1) * _AHEAD_ENTRY)]
    generation: Annotated[int, wire.uint(14)]


SESSION = wire.schema_of(_SessionRecord)


def session_to_bytes(
    st: SessionState, *, own: bytes, sent: Iterable[bytes], now: int
) -> tuple[SessionState, bytes]:
    """Secret: the state's encoding, owned by the fingerprint digest ``own``.

    Skipped message keys older than 30 days at ``now`` are pruned first
    (review 2026-12, finding 6: no expired key is ever written); the pruned
    state is returned with the bytes, for the session to keep."""
    st = replace(st, ratchet=prune(st.ratchet, now))
    r = st.received
    data = _SessionRecord(
        role=int(st.role),
        conversation=st.conversation,
        own=own,
        peer=st.peer,
        transcript_hash=st.transcript_hash,
        ratchet=state_to_bytes(st.ratchet),
        send_seq=st.send_seq,
        send_last_hash=st.send_last_hash,
        sent_hashes=b"".join(sent),
        recv_contiguous=r.contiguous,
        recv_last_hash=r.last_hash,
        recv_highest=r.highest,
        recv_ahead=b"".join(s.to_bytes(8, "big") + h + ph for s, h, ph in r.ahead),
        generation=st.generation,
    ).to_bytes()
    return st, data


def session_from_bytes(
    data: bytes, *, own: bytes, now: int
) -> tuple[SessionState, tuple[bytes, ...]]:
    """Decode a state owned by ``own`` strictly: the state (skipped keys
    older than 30 days at ``now`` dropped) and our sent hashes, oldest
    first. Raises :class:`MalformedInput`."""
    rec = _SessionRecord.from_bytes(data)
    if rec.own != own:
        raise MalformedInput("this session belongs to another identity")
    try:
        role = Role(rec.role)
    except ValueError:
        raise MalformedInput("bad session role") from None
    sent, ahead = rec.sent_hashes, rec.recv_ahead
    if len(sent) % 32 or len(ahead) % _AHEAD_ENTRY:
        raise MalformedInput("bad session lists")
    if rec.conversation != hs.conversation_id(rec.transcript_hash):
        raise MalformedInput("the conversation id does not match the transcript")
    state = SessionState(
        role=role,
        conversation=rec.conversation,
        peer=rec.peer,
        transcript_hash=rec.transcript_hash,
        ratchet=prune(state_from_bytes(rec.ratchet), now),
        send_seq=rec.send_seq,
        send_last_hash=rec.send_last_hash,
        received=ReceivedChain(
            contiguous=rec.recv_contiguous,
            last_hash=rec.recv_last_hash,
            highest=rec.recv_highest,
            ahead=tuple(
                (
                    int.from_bytes(ahead[i : i + 8], "big"),
                    ahead[i + 8 : i + 40],
                    ahead[i + 40 : i + 72],
                )
                for i in range(0, len(ahead), _AHEAD_ENTRY)
            ),
        ),
        generation=rec.generation,
    )
    return state, tuple(sent[i : i + 32] for i in range(0, len(sent), 32))
