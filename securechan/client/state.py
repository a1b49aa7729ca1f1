"""The client's persisted protocol state, typed (libsignal's
``storage/traits.rs`` in spirit: the protocol's objects, not string keys).

Every protocol store is a sealed row of client.db's ``state`` table, under a
name the callers no longer spell: :class:`ProtocolState` loads and saves
sessions, handshake proofs, the prekey store, the replay guard and our relay
registrations, through :class:`ClientDB`'s ``load_state``/``save_state``
(which seal them and check them against the high-water mark in
``state.gen``, client/generations.py). It also owns what follows from that
mark: rolled-back sessions, reported once and refused for sending until
``rekey`` retires them.
"""

from __future__ import annotations

from securechan.client.context import Context
from securechan.client.db import SessionRow
from securechan.client.stored import Registration, Registrations, StoredHandshake
from securechan.errors import MalformedInput, Reason, UsageError
from securechan.identity.keys import Fingerprint
from securechan.protocol.handshake import ReplayGuard
from securechan.protocol.prekeys import PrekeyStore
from securechan.protocol.session import Session

__all__ = ["ProtocolState"]

_SESSION = "session:"


class ProtocolState:
    """Typed access to the sealed protocol stores of one home."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._db = ctx.db

    # --- registrations ------------------------------------------------------

    def registrations(self) -> list[Registration]:
        """Our registrations, oldest first."""
        loaded = self._db.load_state("registrations", "registration", b"")
        if loaded is None:
            return []
        return list(Registrations.from_bytes(loaded[1]).items)

    def save_registrations(self, regs: list[Registration]) -> None:
        """Replace the registrations (inside the caller's transaction)."""
        data = Registrations(items=tuple(regs)).to_bytes()
        self._db.save_state("registrations", "registration", b"", None, data)

    def pinned_relay_key(self, relay_url: str) -> bytes | None:
        """The key pinned when we registered at ``relay_url``, if we did."""
        reg = next((r for r in self.registrations() if r.relay == relay_url), None)
        return reg.relay_key if reg is not None else None

    # --- prekeys and the replay guard --------------------------------------------

    def prekeys(self) -> PrekeyStore:
        """Our prekey store (a new one if none is stored)."""
        ident = self._ctx.identity
        loaded = self._db.load_state("prekeys", "prekeys", ident.fingerprint.digest)
        if loaded is None:
            return PrekeyStore.new(ident)
        return PrekeyStore.from_bytes(loaded[1])

    def save_prekeys(self, store: PrekeyStore) -> None:
        """Store the prekey store (inside the caller's transaction)."""
        digest = self._ctx.identity.fingerprint.digest
        self._db.save_state("prekeys", "prekeys", digest, None, store.to_bytes())

    def guard(self) -> ReplayGuard:
        """The replay guard of accepted first messages."""
        loaded = self._db.load_state("replay-guard", "replay-guard", b"")
        return ReplayGuard() if loaded is None else ReplayGuard.from_bytes(loaded[1])

    def save_guard(self, guard: ReplayGuard) -> None:
        """Store the replay guard (inside the caller's transaction)."""
        self._db.save_state("replay-guard", "replay-guard", b"", None, guard.to_bytes())

    # --- sessions and their handshakes ------------------------------------------

    def session_rows(self) -> list[SessionRow]:
        """Every session row (retired ones included: they still receive)."""
        return self._db.sessions()

    def load_session(self, conversation: bytes, *, sending: bool = False) -> Session:
        """A stored session. Loaded for ``sending``, a session older than its
        high-water mark (``state.gen``) raises :class:`RolledBack`: its next
        message would reuse a message key and nonce already used. Receiving
        on it goes on (it never encrypts); it stays marked until re-keyed."""
        loaded = self._db.load_state(
            _SESSION + conversation.hex(), "session", conversation, refuse_rolled_back=sending
        )
        if loaded is None:
            raise MalformedInput("unknown conversation")
        return Session.from_bytes(
            self._ctx.identity, loaded[1], now=self._ctx.now(), rand=self._ctx.random
        )

    def save_session(self, session: Session) -> None:
        """Store a session at its generation (inside the caller's transaction)."""
        conv = session.conversation
        self._db.save_state(
            _SESSION + conv.hex(),
            "session",
            conv,
            session.generation,
            session.to_bytes(now=self._ctx.now()),
        )

    def save_handshake(self, session: Session) -> None:
        """Keep a new session's transcript and signature for statements."""
        if session.handshake_proof is None:  # pragma: no cover - new sessions have one
            return
        transcript, signature = session.handshake_proof
        conv = session.conversation
        data = StoredHandshake(transcript=transcript, signature=signature).to_bytes()
        self._db.save_state("handshake:" + conv.hex(), "handshake", conv, None, data)

    def load_handshake(self, conversation: bytes) -> StoredHandshake:
        """The handshake proof of a session (:class:`MalformedInput` for a
        session older than statements)."""
        loaded = self._db.load_state("handshake:" + conversation.hex(), "handshake", conversation)
        if loaded is None:
            raise UsageError(
                "this session was started before statements were bound to the handshake; "
                "a statement needs a message of a newer session"
            )
        return StoredHandshake.from_bytes(loaded[1])

    # --- rollback -------------------------------------------------------------

    def report_rollbacks(self) -> None:
        """One audit entry per store found rolled back (client/generations.py)."""
        while self._db.rollbacks:
            name = self._db.rollbacks.pop(0)
            conversation = (
                bytes.fromhex(name[len(_SESSION) :]) if name.startswith(_SESSION) else None
            )
            self._ctx.audit.rejected(
                Reason.ROLLED_BACK,
                f"stored {name.split(':')[0]} state is older than its high-water mark "
                "(client.db restored from an older copy)",
                conversation=conversation,
            )

    def rolled_back(self) -> list[str]:
        """Names of the contacts whose current session was found rolled back
        (sending to them is refused until :meth:`rekey`)."""
        marked = self._db.generations.rolled_back()
        retired = self._db.retired()
        out: list[str] = []
        for row in self._db.sessions():
            if _SESSION + row.conversation.hex() in marked and row.conversation not in retired:
                contact = self._ctx.find_contact(Fingerprint(row.peer))
                name = contact.name if contact is not None else row.peer.hex()[:16]
                if name not in out:
                    out.append(name)
        return out

    def rekey(self, name: str) -> int:
        """Retire every session with ``name`` (see :meth:`Channel.rekey`)."""
        contact = self._ctx.contact(name)
        now = self._ctx.now()
        rows = self._db.sessions(contact.fingerprint.digest)
        with self._db.transaction():
            retired = self._db.retired()
            fresh = [r for r in rows if r.conversation not in retired]
            for row in fresh:
                self._db.retire_session(row.conversation, now)
        for row in fresh:
            self._ctx.audit.rejected(
                Reason.REKEYED,
                f"session retired by 'contact rekey {name}'; the next send starts a new one",
                conversation=row.conversation,
                peer=contact.fingerprint,
                at=now,
            )
        return len(fresh)
