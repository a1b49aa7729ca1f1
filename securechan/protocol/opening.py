"""Opening one envelope with its revealed message key.

A statement (``docs/AUDIT.md``, Statements) shows a third party that a given
envelope, the one the relay logged, carries a given signed payload. The
sender or the recipient reveals that envelope's message key and the
associated-data prefix (the session's transcript hash); with them anyone can
decrypt that one envelope, and nothing else: each message key comes from a
one-way KDF step of its chain (Signal's Double Ratchet, §2.2), so it reveals
neither the chain key nor any other message's key.

The envelope is either a ratchet message (type 0x0062) or a first message
(type 0x0052) whose ``message`` field is the ratchet message; the key opens
the ratchet message's ChaCha20-Poly1305 ciphertext under the associated data
``transcript_hash || header``, with the AEAD key and nonce derived from the
message key and the header's reuse guard, exactly as the recipient's session
did (``docs/PROTOCOL.md`` §13).

:func:`open_ratchet_message` does the same and checks the payload's
signature: a client that kept the message key of a ratchet position uses it
on a message refused as a :class:`~securechan.errors.Replay` of that
position, to tell a relay's replay (the same signed payload) from a peer
restored from a backup (a validly signed, different payload).
"""

from __future__ import annotations

from securechan import wire
from securechan.errors import MalformedInput, VerificationFailed
from securechan.identity.keys import PublicIdentity
from securechan.primitives import message_open
from securechan.protocol.handshake import FIRST, FirstMessage
from securechan.protocol.padding import unpad
from securechan.protocol.payload import SignedPayload
from securechan.protocol.ratchet import RatchetHeader
from securechan.protocol.session import RatchetMessage

__all__ = ["KEY_SIZE", "open_envelope", "open_ratchet_message"]

KEY_SIZE = 32


def open_envelope(envelope: bytes, key: bytes, ad: bytes) -> bytes:
    """Return the signed payload record inside ``envelope``.

    Raises :class:`MalformedInput` for an envelope that is not a well-formed
    message, and :class:`VerificationFailed` when ``key`` and ``ad`` do not
    open it (one error for every wrong key, header or ciphertext). The
    payload's signature is not checked here.
    """
    if len(key) != KEY_SIZE or len(ad) != 32:
        raise MalformedInput("a message key and a transcript hash are 32 bytes each")
    if wire.peek_type(envelope) == FIRST.type_id:
        envelope = FirstMessage.from_bytes(envelope).message
    rec = RatchetMessage.from_bytes(envelope)
    header = RatchetHeader.from_bytes(rec.header)
    padded = message_open(key, rec.ciphertext, ad + header.to_bytes(), reuse_guard=header.guard)
    try:
        return unpad(padded)
    except MalformedInput:
        # Authenticated yet badly padded: only the key's owner could make it.
        raise VerificationFailed("the opened envelope is not a padded payload") from None


def open_ratchet_message(
    envelope: bytes, key: bytes, ad: bytes, *, sender: PublicIdentity
) -> bytes:
    """Open ``envelope`` with a known message key and associated-data prefix
    and return its signed payload record, *verified*: signed by ``sender``.

    Pure (no session state). Raises :class:`MalformedInput` for an envelope
    that is not a message, :class:`VerificationFailed` when the key does not
    open it, and :class:`~securechan.errors.BadSignature` (a
    ``VerificationFailed``) when the payload is not validly signed by
    ``sender``. Which recipient and conversation the payload names is the
    caller's to compare."""
    signed_bytes = open_envelope(envelope, key, ad)
    try:
        signed = SignedPayload.from_bytes_unverified(signed_bytes)
    except MalformedInput:
        raise VerificationFailed("the opened envelope is not a signed payload") from None
    if signed.payload.sender != sender.fingerprint:
        raise VerificationFailed("the opened payload names another sender")
    signed.verify(sender)
    return signed_bytes
