"""The sans-I/O session protocol: prekeys, handshake, hybrid Double Ratchet,
signed and ordered payloads, padding. Bytes and a clock in; bytes and events
out. ``docs/PROTOCOL.md`` §11-§16 is the specification."""

from securechan.protocol.handshake import ReplayGuard
from securechan.protocol.payload import ContentType, FileChunk, Receipt
from securechan.protocol.prekeys import Prekey, PrekeyBundle, PrekeyStore
from securechan.protocol.session import (
    Event,
    MessageReceived,
    MessagesMissing,
    Outgoing,
    OutOfOrder,
    ReceiptChecked,
    Role,
    Session,
)

__all__ = [
    "ContentType",
    "Event",
    "FileChunk",
    "MessageReceived",
    "MessagesMissing",
    "OutOfOrder",
    "Outgoing",
    "Prekey",
    "PrekeyBundle",
    "PrekeyStore",
    "Receipt",
    "ReceiptChecked",
    "ReplayGuard",
    "Role",
    "Session",
]
