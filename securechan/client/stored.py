"""The client's own records in client.db (sealed ``state`` rows and the
``messages`` table): typed ``@wire.record`` classes, one definition each.

They are local, never sent, but go through the same strict codec as the
wire (one encoding for everything that is sealed or hashed); their bytes are
those of the hand-written schemas they replaced (tests/test_client_records.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from securechan import wire
from securechan.protocol.address import ContactAddress

__all__ = ["Registration", "Registrations", "StoredHandshake", "StoredRecord"]


@wire.record(0x00B0, "Registration")
@dataclass(frozen=True, slots=True, kw_only=True)
class Registration(wire.Record):
    """Our contact address at one relay: the relay's pinned key, the queue
    ids, the queue's recipient key and the key that seals our prekeys."""

    relay: Annotated[str, wire.text(1, max_len=512)]
    relay_key: Annotated[bytes, wire.bytes_(2, size=32)]
    rid: Annotated[bytes, wire.bytes_(3, size=16)]
    sid: Annotated[bytes, wire.bytes_(4, size=16)]
    recipient_seed: Annotated[bytes, wire.bytes_(5, size=32)]
    address_key: Annotated[bytes, wire.bytes_(6, size=32)]

    def address(self) -> ContactAddress:
        """The address as it goes on our contact card."""
        return ContactAddress(relay=self.relay, sid=self.sid, key=self.address_key)


@wire.record(0x00B1, "Registrations")
@dataclass(frozen=True, slots=True, kw_only=True)
class Registrations(wire.Record):
    """Every registration, in the order they were made (the first relay
    holds our private queues)."""

    items: Annotated[tuple[Registration, ...], wire.list_(1, max_len=64 * 400, max_items=64)]


@wire.record(0x00B2, "StoredRecord")
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredRecord(wire.Record):
    """One message of the record (a row of ``messages``), sent or received."""

    signed: Annotated[bytes, wire.bytes_(1, max_len=1 << 17)]
    contact: Annotated[str, wire.text(2, max_len=64)]
    # The envelope that carried it, its message key and the session's
    # transcript hash: what a statement reveals (audit/statement.py).
    envelope: Annotated[bytes | None, wire.bytes_(3, max_len=(1 << 20) + 65536)] = None
    key: Annotated[bytes | None, wire.bytes_(4, size=32)] = None
    ad: Annotated[bytes | None, wire.bytes_(5, size=32)] = None
    # The relay a received envelope came from (for its log receipt).
    relay: Annotated[str | None, wire.text(6, max_len=2048)] = None


@wire.record(0x00B3, "StoredHandshake")
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredHandshake(wire.Record):
    """A session's handshake transcript and the initiator's signature over
    it, kept (sealed, write-once) for statements: they show a third party
    which session a message belongs to (audit/statement.py)."""

    transcript: Annotated[bytes, wire.bytes_(1, max_len=8192)]
    signature: Annotated[bytes, wire.bytes_(2, max_len=8192)]
