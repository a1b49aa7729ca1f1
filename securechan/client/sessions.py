"""Which session opens an envelope (the inbox's ``first-message`` and
``decrypt`` stages).

A first message makes a new session (``Session.accept``: the prekeys and the
replay guard change with it); a ratchet message is tried on the sessions its
queue can carry. Sessions are values: a failed attempt changes nothing, and
the caller stores the session that opened the envelope in the envelope's
transaction. Writes the ``sessions`` row and handshake proof of a new
session (inside the caller's transaction).
"""

from __future__ import annotations

from securechan.client.context import Context
from securechan.client.db import QueueRow
from securechan.client.pipeline import Pass
from securechan.client.state import ProtocolState
from securechan.errors import ConversationInUse, MessageRejected, SecurechanError
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.protocol.session import Event, Session

__all__ = ["accept_first", "open_ratchet"]


def open_ratchet(
    state: ProtocolState, rx: Pass, queue: QueueRow, data: bytes, now: int
) -> tuple[Session, list[Event]]:
    """Try the sessions this queue can carry: a private queue belongs to
    one conversation (and only its peer holds the sender key); the contact
    queue may carry any initiator's early messages, so there a session is
    tried only if it expects the message's ratchet key: its current or a
    skipped chain, or a new chain while the peer could start one and has no
    private queue of ours to send it to. A failed attempt changes nothing
    (sessions are values) and is counted against the pass's UNAUTH_TRIES."""
    rows = state.session_rows()
    if queue.conversation is not None:
        rows = [r for r in rows if r.conversation == queue.conversation]
    else:
        rows = [
            r
            for r in rows
            if rx.expectation(state, r).expects(data, new_chain=r.grant_sent is False)
        ]
        if not rows:
            raise MessageRejected("no session expects this message's ratchet key")
    last_error: SecurechanError = MessageRejected("no session opens this message")
    for row in rows:
        if queue.conversation is None and rx.budget.exhausted:
            break
        candidate = state.load_session(row.conversation)
        try:
            return candidate, candidate.receive(data, now=now)
        except MessageRejected as e:
            last_error = e
            if queue.conversation is None:
                rx.budget.spend()
    raise last_error


def accept_first(
    ctx: Context, state: ProtocolState, data: bytes, now: int
) -> tuple[Session, list[Event]]:
    """Accept a first message (inside the caller's transaction): the new
    session's row and handshake proof, the prekeys and replay guard after
    it. Refuses a conversation id already in use before storing anything."""
    contacts = {c.fingerprint.digest: c for c in ctx.keystore.contacts.list()}

    def lookup(fp: Fingerprint) -> PublicIdentity | None:
        c = contacts.get(fp.digest)
        return c.identity if c is not None else None

    session, store, guard, events = Session.accept(
        ctx.identity,
        state.prekeys(),
        state.guard(),
        data,
        contact=lookup,
        now=now,
        rand=ctx.random,
    )
    if ctx.db.has_session(session.conversation):
        # Issue 11, finding 5: the initiator chose an id already in use.
        # Refused before anything is stored (the existing session and the
        # prekeys are untouched).
        raise ConversationInUse(
            "the first message names the conversation id of an existing session"
        )
    state.save_prekeys(store)
    state.save_guard(guard)
    ctx.db.add_session(session.conversation, session.peer.fingerprint.digest, now)
    state.save_handshake(session)
    return session, list(events)
