"""The receive pipeline's shared pieces: its bounds, its stages, one pass.

The pipeline, per envelope: fetch answer -> decode -> first message or
session lookup + decrypt -> payload (grants, receipts) -> file assembly ->
stored record -> audit -> ack (client/inbox.py drives it; client/hold.py
decides what waits; client/delivery.py stores what opened). Two rules hold
it together:

* No envelope blocks a queue. An expected refusal (a SecurechanError) is
  audited and the envelope marked seen; an unexpected exception at any
  stage (a bug, a store constraint) rolls the envelope's transaction back,
  then the envelope is *set aside*: parked in client.db (the newest
  MAX_PARKED, never retried), marked seen, acknowledged to the relay, and
  audited as "internal-error" naming the stage. The envelopes behind it are
  delivered. Only a failing store (StorageError: the disk, a lock) stops the
  pass, without marking anything: that is not the envelope's fault, and the
  next pass retries it.
* Bounded work before authentication (docs/SECURITY.md, issue 11). A ratchet
  message on the contact queue is tried only against sessions whose state
  expects its ratchet key (Session.expects: a lookup, no key use); failed
  expensive attempts (a decapsulation) are counted per contact queue and
  pass, and past UNAUTH_TRIES the rest of that queue waits for the next
  pass, unacknowledged. A held envelope is retried only when what it waits
  for happens (its chain's first message is accepted, or its sender is
  pinned), never on every pass.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from securechan import wire
from securechan.audit.log import AuditLog
from securechan.client.db import SessionRow
from securechan.client.results import Rejected
from securechan.client.state import ProtocolState
from securechan.errors import MalformedInput, Reason, SecurechanError
from securechan.protocol.handshake import FIRST, ReplayGuard
from securechan.protocol.ordering import Bounds, Budget
from securechan.protocol.prekeys import PrekeyStore
from securechan.protocol.ratchet import RatchetHeader
from securechan.protocol.session import MESSAGE, Session
from securechan.transport import FetchedEnvelope

__all__ = [
    "AUDIT_EACH",
    "EARLY_GRACE",
    "HOLD",
    "MAX_HELD",
    "MAX_HELD_BYTES",
    "MAX_PARKED",
    "UNAUTH_TRIES",
    "Pass",
    "Quiet",
    "Unexpected",
    "is_first",
    "ratchet_position",
    "report_unexpected",
    "stage",
]

# What is held, for how long, and when it is retried is decided by the pure
# machine in securechan/protocol/ordering.py (HoldQueue); the client stores
# its rows (client.db's held / held_keys tables) and does what it decides.
# A message that arrives ahead of its session's first message is held
# EARLY_GRACE seconds for the first message to come, and at most MAX_HELD
# envelopes, MAX_HELD_BYTES in all, are held (held first messages of unknown
# senders included); past that, what would be held is refused at once.
# Work before authentication, per contact queue and receive pass:
# UNAUTH_TRIES failed expensive attempts (a ratchet decryption that could
# involve a decapsulation and up to 2 x MAX_SKIP chain steps, or a first
# message's HPKE open); the rest of the queue waits for the next pass.
HOLD = Bounds()
EARLY_GRACE = HOLD.grace
MAX_HELD = HOLD.count
MAX_HELD_BYTES = HOLD.size
UNAUTH_TRIES = HOLD.tries
# Envelopes set aside after an unexpected failure: the newest kept in client.db.
MAX_PARKED = 64
# Refusals decided by a lookup, per reason, queue and pass: this many are
# audited and reported one by one, the rest in one entry with their count.
AUDIT_EACH = 8


class Unexpected(Exception):
    """An exception no stage of the receive pipeline expects (a bug, a
    database constraint): the envelope is set aside, the queue moves on."""

    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error

    def describe(self) -> str:
        """The exception's class and (shortened) message, for the audit log."""
        return f"{type(self.error).__name__}: {str(self.error)[:200]}"


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the pipeline stage for anything unexpected raised inside it.
    Refusals (the errors tree: every parser raises MalformedInput for bad
    bytes) pass unchanged, as does a failing store (sqlite3.OperationalError:
    the disk, a lock). Anything else is a bug, a ValueError included: it is
    never reported as the peer's fault."""
    try:
        yield
    except (SecurechanError, Unexpected, sqlite3.OperationalError):
        raise
    except Exception as e:
        raise Unexpected(name, e) from e


def report_unexpected(audit: AuditLog, e: Unexpected, what: str) -> Rejected:
    """Audit an unexpected failure (best effort: the audit write may be what
    fails) and say it in one line."""
    detail = f"{what}: {e.stage}: {e.describe()}"
    with contextlib.suppress(Exception):
        audit.rejected(Reason.INTERNAL_ERROR, detail)
    return Rejected(reason=Reason.INTERNAL_ERROR, error=detail)


@dataclass(frozen=True, slots=True)
class Quiet:
    """An envelope decided by a lookup: held until ``key`` (of ``kind``)
    happens, or refused for ``reason``."""

    env: FetchedEnvelope
    kind: str  # "chain" (held) or "refuse"
    key: bytes = b""
    reason: Reason = Reason.ERROR
    error: str = ""


@dataclass(slots=True)
class Pass:
    """One receive pass: its budget of unauthenticated work and what it
    read once."""

    budget: Budget = field(default_factory=lambda: Budget.of(HOLD))
    sessions: dict[bytes, Session] = field(default_factory=dict)
    chains: list[bytes] = field(default_factory=list)  # first messages accepted
    rows: list[SessionRow] | None = None
    prekeys: PrekeyStore | None = None
    guard: ReplayGuard | None = None
    # Envelopes of the queue being read that were decided without any key
    # use: written in one transaction (HeldEnvelopes.flush_quiet), before the ack.
    quiet: list[Quiet] = field(default_factory=list)

    def reset(self) -> None:
        """Start a new pass: a full budget, nothing cached."""
        fresh = Pass()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def expectation(self, state: ProtocolState, row: SessionRow) -> Session:
        """The session as last stored, read once per pass for
        :meth:`Session.expects` (never used to decrypt)."""
        cached = self.sessions.get(row.conversation)
        if cached is None:
            cached = self.sessions[row.conversation] = state.load_session(row.conversation)
        return cached

    def session_changed(self) -> None:
        """A session was stored: the cached expectations are stale."""
        self.sessions.clear()
        self.rows = None


def ratchet_position(data: bytes) -> tuple[bytes, int] | None:
    """(sender ratchet key, message number) of an envelope's ratchet header,
    without opening it; ``None`` if it has none."""
    try:
        if wire.peek_type(data) == FIRST.type_id:
            data = wire.decode(FIRST, data)["message"]
        header = RatchetHeader.from_bytes(wire.decode(MESSAGE, data)["header"])
    except MalformedInput:
        return None
    return header.dh, header.n


def is_first(data: bytes) -> bool:
    """Whether ``data`` is (typed as) a first message."""
    try:
        return wire.peek_type(data) == FIRST.type_id
    except MalformedInput:
        return False
