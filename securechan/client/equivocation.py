"""A replay that is not a re-delivery: the peer's state rolled back (a
restored backup), or the peer equivocated.

A message refused as a replay sits at a ratchet position whose message we
already received, or (once opened) carries a sequence number already
received. The same envelope or signed payload again is a re-delivery (a
quiet replay). A payload the peer validly signed that differs from the one
we received there is reported, with the hashes of both, never hidden.
Reads client.db's ``positions`` and ``messages`` tables.
"""

from __future__ import annotations

from securechan.client.context import Context
from securechan.client.db import StoredMessage
from securechan.client.pipeline import ratchet_position
from securechan.client.results import Rejected
from securechan.client.stored import StoredRecord
from securechan.errors import MalformedInput, Reason, Replay, VerificationFailed
from securechan.identity.keys import Fingerprint
from securechan.primitives import sha256
from securechan.protocol.opening import open_envelope
from securechan.protocol.payload import SignedPayload

__all__ = ["peer_rollback"]


def peer_rollback(ctx: Context, data: bytes, error: Replay, now: int) -> Rejected | None:
    """The finding for a replayed envelope ``data``, or ``None`` for an
    ordinary (re-delivered, forged or garbled) replay. See the module doc."""
    db = ctx.db
    found = _payload_at_position(ctx, data)
    if found is not None:
        stored, rec, signed_bytes = found
    else:
        # Opened by the session, refused for its sequence number (a
        # rolled-back sender that ratcheted since uses a fresh position):
        # the protocol hands over the verified payload (Replay.signed).
        handed: object = getattr(error, "signed", None)
        if not isinstance(handed, bytes):
            return None
        signed_bytes = handed
        try:
            p = SignedPayload.from_bytes_unverified(signed_bytes).payload
        except MalformedInput:
            return None
        stored_msg = db.message(p.conversation, "in", p.seq)
        if stored_msg is None:
            return None
        stored, rec = stored_msg, StoredRecord.from_bytes(stored_msg.record)
    contact = ctx.find_contact(Fingerprint(stored.peer))
    first = rec.envelope
    if contact is None or first is None or first == data or signed_bytes == rec.signed:
        return None
    try:
        signed = SignedPayload.from_bytes_unverified(signed_bytes)
        p = signed.payload
        if (
            p.sender != contact.fingerprint
            or p.recipient != ctx.identity.fingerprint
            or p.conversation != stored.conversation
        ):
            return None
        signed.verify(contact.identity)
    except (VerificationFailed, MalformedInput):
        return None  # not the peer's: an ordinary (forged or garbled) replay
    evidence = (
        f"received payload sha256 {sha256(rec.signed).hex()}",
        f"second payload sha256 {sha256(signed_bytes).hex()}",
        f"received envelope sha256 {sha256(first).hex()}",
        f"second envelope sha256 {sha256(data).hex()}",
    )
    error_text = (
        f"{contact.name}'s state was rolled back (or it equivocated): a second, different "
        f"message #{p.seq} signed by {contact.name} takes the place of message "
        f"#{stored.seq} already received; not shown"
    )
    ctx.audit.rejected(
        Reason.PEER_ROLLED_BACK,
        f"{error_text}; " + "; ".join(evidence),
        conversation=stored.conversation,
        peer=contact.fingerprint,
        at=now,
    )
    return Rejected(reason=Reason.PEER_ROLLED_BACK, error=error_text, evidence=evidence)


def _payload_at_position(
    ctx: Context, data: bytes
) -> tuple[StoredMessage, StoredRecord, bytes] | None:
    """The stored message received at ``data``'s ratchet position, its
    record, and ``data`` opened with the message key kept for it (not yet
    checked for a signature); ``None`` if any of that is missing or the key
    does not open it."""
    position = ratchet_position(data)
    if position is None:
        return None
    db = ctx.db
    hit = db.position(db.position_key(*position))
    if hit is None:
        return None
    stored = db.message(hit[0], "in", hit[1])
    if stored is None:
        return None
    rec = StoredRecord.from_bytes(stored.record)
    if rec.key is None or rec.ad is None or rec.envelope == data:
        return None
    try:
        return stored, rec, open_envelope(data, rec.key, rec.ad)
    except (VerificationFailed, MalformedInput):
        return None
