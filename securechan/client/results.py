"""What the client's operations return: a received message, a refused
envelope, the outcome of a send.

These are the public result types of :class:`securechan.client.Channel`
(re-exported from ``securechan.client``); the CLI renders them. They live in
their own module so every part of the client (inbox, outbox, record) can
build them without importing the facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from securechan.errors import Reason
from securechan.protocol.payload import ContentType, Receipt

__all__ = ["Received", "Rejected", "SendResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A message that passed every check, as stored and shown."""

    contact: str
    fingerprint: str
    verified: bool
    conversation: bytes
    seq: int
    sent_at: int
    content_type: ContentType
    text: str | None = None
    file_name: str | None = None
    file_data: bytes | None = field(default=None, repr=False)
    receipt: Receipt | None = None
    receipt_matches: bool | None = None
    notes: tuple[str, ...] = ()
    hash: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """An envelope that was refused, with the local reason."""

    reason: Reason
    error: str
    held: bool = False
    # For a split view: the two signed checkpoints that conflict.
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """What a send did: sequence numbers, and how many envelopes the relays
    confirmed now (the rest stay in the outbox and are retried)."""

    contact: str
    seqs: tuple[int, ...]
    delivered: int
    pending: int
