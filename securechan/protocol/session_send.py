"""The send half of a session, in two pure steps: sign, then seal.

A send (``docs/PROTOCOL.md`` §15) is :func:`sign_next` (the payload with the
next sequence number and the hash of our previous message, signed with the
sender's composite key, §14) followed by :func:`seal` (Padmé padding and one
step of the hybrid Double Ratchet, §13). Neither changes anything: both
take the immutable :class:`SessionState` and return new values, and
:class:`~securechan.protocol.session.Session` commits the new state only
when every step has succeeded. That is what lets a batch send
(``Session.send_group_batch``) sign every pairwise copy of a group fan-out
first and encrypt them after, and leave every session as it was when any
step of any copy fails.

Encodings are made once each, with the wire codec's record encoder on the
values at hand (``wire.encode``): the same canonical bytes as
``Payload.to_bytes``, ``SignedPayload.to_bytes`` and
``RatchetMessage.to_bytes`` (tests/vectors pins them), without building the
intermediate record objects those methods go through.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated

from securechan import wire
from securechan.identity.keys import Identity
from securechan.primitives import sha256
from securechan.protocol.padding import pad
from securechan.protocol.payload import (
    CONTEXT_MESSAGE,
    PAYLOAD,
    SIGNED_PAYLOAD,
    ContentType,
    Payload,
)
from securechan.protocol.ratchet import Random, ratchet_encrypt
from securechan.protocol.ratchet_cache import RatchetCache
from securechan.protocol.session_state import SessionState

__all__ = ["MESSAGE", "Outgoing", "RatchetMessage", "Signed", "seal", "sign_next"]


@wire.record(0x0062, "RatchetMessage")
@dataclass(frozen=True, slots=True, kw_only=True)
class RatchetMessage(wire.Record):
    """A ratchet message on the wire: the header's exact bytes (parse them
    with ``RatchetHeader.from_bytes``) and the ciphertext."""

    header: Annotated[bytes, wire.bytes_(1, max_len=4096)]
    ciphertext: Annotated[bytes, wire.bytes_(2, max_len=1 << 20)]


MESSAGE = wire.schema_of(RatchetMessage)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """One message made by a :class:`Session`: everything the caller persists
    (with the session state) before it releases ``envelope``.

    ``record`` is the signed payload record (our own record of what we
    said); ``key`` and ``ad`` open this one envelope and no other
    (``docs/AUDIT.md``, Statements): keep them as secret as the message."""

    seq: int
    envelope: bytes = field(repr=False)  # the ratchet message to post
    record: bytes = field(repr=False)  # the SignedPayload record
    key: bytes = field(repr=False)  # the message key
    ad: bytes  # the associated-data prefix (the transcript hash, public)


@dataclass(frozen=True, slots=True)
class Signed:
    """A payload signed for the next send of the state of ``generation``:
    its sequence number, the SignedPayload encoding and its SHA-256 (the
    link of our hash chain). Sealed only on that same state."""

    generation: int
    seq: int
    record: bytes = field(repr=False)
    digest: bytes


def sign_next(
    me: Identity,
    st: SessionState,
    checkpoints: tuple[str, ...],
    content_type: ContentType,
    body: bytes,
    *,
    now: int,
) -> Signed:
    """Sign the next payload of ``st`` (changes nothing)."""
    seq = st.send_seq + 1
    if checkpoints:
        payload_bytes = Payload(
            sender=me.fingerprint,
            recipient=st.peer.fingerprint,
            conversation=st.conversation,
            seq=seq,
            sent_at=now,
            content_type=content_type,
            body=body,
            prev_hash=st.send_last_hash,
            checkpoints=checkpoints,
        ).to_bytes()
    else:  # the common case: the same bytes, one encoder call
        payload_bytes = wire.encode(
            PAYLOAD,
            {
                "sender": me.fingerprint.digest,
                "recipient": st.peer.fingerprint.digest,
                "conversation": st.conversation,
                "seq": seq,
                "sent_at": now,
                "content_type": int(content_type),
                "body": body,
                "prev_hash": st.send_last_hash,
            },
        )
    signature = me.sign(payload_bytes, context=CONTEXT_MESSAGE)
    record = wire.encode(
        SIGNED_PAYLOAD, {"payload": payload_bytes, "signature": signature}, check_nested=False
    )
    return Signed(st.generation, seq, record, sha256(record))


def seal(
    st: SessionState, signed: Signed, *, cache: RatchetCache, rand: Random
) -> tuple[SessionState, Outgoing]:
    """Pad and ratchet-encrypt ``signed``: the state after it and the
    message (changes nothing; the caller commits the state)."""
    if signed.generation != st.generation or signed.seq != st.send_seq + 1:
        raise ValueError("a payload signed for another state of the session")
    ratchet, header, ciphertext, key = ratchet_encrypt(
        st.ratchet, pad(signed.record), st.transcript_hash, cache=cache, rand=rand
    )
    envelope = wire.encode(
        MESSAGE, {"header": header.to_bytes(), "ciphertext": ciphertext}, check_nested=False
    )
    new = replace(
        st,
        ratchet=ratchet,
        send_seq=signed.seq,
        send_last_hash=signed.digest,
        generation=st.generation + 1,
    )
    out = Outgoing(
        seq=signed.seq, envelope=envelope, record=signed.record, key=key, ad=st.transcript_hash
    )
    return new, out
