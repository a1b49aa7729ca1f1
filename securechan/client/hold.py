"""What waits: envelopes decided by a lookup, and the hold.

An envelope on the contact queue is first looked at without using any key
(:meth:`HeldEnvelopes.decide_quietly`): not an envelope, a first message
naming a prekey we do not hold or already accepted, or a ratchet message no
session expects are decided here, written in one transaction per queue and
pass. What may only be early (a message that overtook its session's first
message, a first message from a sender not yet pinned) is held; *whether*
to hold, for how long and when to retry is decided by the pure machine
``protocol/ordering.py`` (:class:`HoldQueue`); this module stores what it
decides (client.db's ``held``, ``held_keys`` and ``refused_chains`` tables)
and retries through the inbox's ``reopen``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from securechan import wire
from securechan.client.context import Context
from securechan.client.db import HeldRow, QueueRow
from securechan.client.pipeline import AUDIT_EACH, EARLY_GRACE, HOLD, Pass, Quiet, is_first, stage
from securechan.client.results import Received, Rejected
from securechan.client.state import ProtocolState
from securechan.errors import MalformedInput, Reason, Replay, UnknownPrekey, reason_of
from securechan.identity.keys import Fingerprint
from securechan.primitives import sha256
from securechan.protocol.handshake import FIRST, FirstMessage
from securechan.protocol.ordering import CHAIN, Hold, HoldQueue, Retry, may_be_early
from securechan.protocol.session import MESSAGE, message_chain
from securechan.transport import FetchedEnvelope

__all__ = ["HeldEnvelopes", "Reopen", "may_be_early_here"]

Results = list[Received | Rejected]
# Try a held envelope again (the inbox's full path, from_hold=True).
Reopen = Callable[[QueueRow, FetchedEnvelope, int], Results]


def may_be_early_here(queue: QueueRow, data: bytes, error: Exception) -> bool:
    """Could this refused envelope be a message that overtook the first
    message of its session? Only on the contact queue (where a session's
    first messages travel), only a ratchet message that no session could
    decrypt (a replay, reflection or absurd counter is refused at once)."""
    try:
        ratchet = wire.peek_type(data) == MESSAGE.type_id
    except MalformedInput:
        return False
    return may_be_early(contact_queue=queue.kind == "contact", ratchet_message=ratchet, error=error)


class HeldEnvelopes:
    """The quiet decisions and the hold of one home."""

    def __init__(self, ctx: Context, state: ProtocolState, rx: Pass, reopen: Reopen) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._state = state
        self._rx = rx
        self._reopen = reopen

    # --- deciding by lookup ---------------------------------------------------

    def decide_quietly(self, queue: QueueRow, env: FetchedEnvelope, now: int) -> Quiet | None:
        """What an envelope on the contact queue is, if a lookup decides it
        (no key used, no transaction): not an envelope; a first message
        naming a prekey we do not hold, or already accepted; a ratchet
        message whose ratchet key no session expects (held for the first
        message of its chain). ``None``: it needs the full path."""
        if queue.kind != "contact":
            return None
        try:
            return self._decide_by_lookup(env, now)
        except MalformedInput as e:
            return Quiet(env, "refuse", reason=Reason.MALFORMED_INPUT, error=str(e))

    def _decide_by_lookup(self, env: FetchedEnvelope, now: int) -> Quiet | None:
        with stage("decode"):
            try:
                kind = wire.peek_type(env.data)
            except MalformedInput:
                kind = -1
            if kind not in (FIRST.type_id, MESSAGE.type_id):
                return Quiet(
                    env, "refuse", reason=Reason.MESSAGE_REJECTED, error="not a securechan envelope"
                )
            chain = message_chain(env.data)
            if chain is None:
                return Quiet(
                    env, "refuse", reason=Reason.MALFORMED_INPUT, error="a malformed envelope"
                )
            if self._db.chain_refused(chain):
                return None  # the unknown-sender path (Inbox.open_or_refuse)
        if kind == FIRST.type_id:
            with stage("first-message"):
                return self._first_by_lookup(env, now)
        with stage("decrypt"):
            if self._rx.rows is None:
                self._rx.rows = self._db.sessions()
            for row in self._rx.rows:
                session = self._rx.expectation(self._state, row)
                if session.expects(env.data, new_chain=row.grant_sent is False):
                    return None
        return Quiet(env, "chain", key=chain)

    def _first_by_lookup(self, env: FetchedEnvelope, now: int) -> Quiet | None:
        """Refuse a first message by lookups alone: replayed, or naming a
        prekey we do not hold (before any decapsulation)."""
        try:
            first = FirstMessage.from_bytes(env.data)
        except MalformedInput as e:
            return Quiet(env, "refuse", reason=Reason.MALFORMED_INPUT, error=str(e))
        if self._rx.prekeys is None:
            self._rx.prekeys = self._state.prekeys()
            self._rx.guard = self._state.guard()
        store, guard = self._rx.prekeys, self._rx.guard
        try:
            if guard is not None:
                guard.check(sha256(first.hpke))
            store.signed_key(first.signed_prekey_id, now=now)
            if first.one_time_prekey_id is not None:
                store.take_one_time(first.one_time_prekey_id, now=now)
        except (UnknownPrekey, Replay) as e:
            return Quiet(env, "refuse", reason=reason_of(e), error=str(e))
        return None

    def flush_quiet(self, queue: QueueRow) -> Results:
        """Write the quietly decided envelopes in one transaction: hold what
        fits under MAX_HELD / MAX_HELD_BYTES, refuse the rest; mark all seen.
        Refusals are audited and reported one by one up to AUDIT_EACH per
        reason, the rest in one entry with a count: a flood costs a bounded
        number of audit entries, not one per envelope."""
        batch, self._rx.quiet = self._rx.quiet, []
        if not batch:
            return []
        now = self._ctx.now()
        refused: dict[Reason, list[str]] = {}
        with self._db.transaction():
            order = self.order()
            for q in batch:
                if self._db.seen(q.env.msg_id):
                    continue
                if q.kind == "chain":
                    if not self.hold(queue, q.env, now, CHAIN, q.key, order=order):
                        refused.setdefault(Reason.DECRYPTION_FAILED, []).append(
                            "no session expects its ratchet key and the hold is full"
                        )
                else:
                    refused.setdefault(q.reason, []).append(q.error)
                self._db.mark_seen(q.env.msg_id, now)
            self._db.set_last_seq(queue.rid, max(q.env.seq for q in batch))
        out: Results = []
        for reason, errors in refused.items():
            rest = errors[AUDIT_EACH:]
            if len(rest) == 1:
                errors, rest = errors[: AUDIT_EACH + 1], []
            for error in errors[:AUDIT_EACH] + (
                [f"{len(rest)} more envelopes: {rest[0]}"] if rest else []
            ):
                self._ctx.audit.rejected(reason, error, at=now)
                out.append(Rejected(reason=reason, error=error))
        return out

    # --- the hold -------------------------------------------------------------------

    def order(self) -> HoldQueue:
        """The hold's machine, from the rows client.db keeps (read inside the
        caller's transaction, so a rolled-back envelope leaves no trace)."""
        return HoldQueue.from_rows(self._db.held_index(), HOLD)

    def hold(
        self,
        queue: QueueRow,
        env: FetchedEnvelope,
        now: int,
        kind: Literal["chain", "sender"],
        key: bytes,
        *,
        order: HoldQueue | None = None,
    ) -> bool:
        """Ask the machine (``order``, or the one stored now) whether to hold
        ``env`` until ``(kind, key)`` happens and store what it decides,
        inside the caller's transaction; False (not held): the hold is full."""
        machine = self.order() if order is None else order
        decision = machine.arrived(env.msg_id, len(env.data), kind, key, now=now)
        if not isinstance(decision, Hold):
            return False
        self._db.hold(env.msg_id, queue.relay, env.data, now)
        self._db.set_held_key(env.msg_id, decision.wait, decision.key)
        return True

    def expire(self) -> Results:
        """Refuse the held messages that waited EARLY_GRACE for their chain's
        first message (a first message waiting for its sender stays)."""
        now = self._ctx.now()
        with self._db.transaction():
            expired = self.order().tick(now).ids
            for msg_id in expired:
                self._db.unhold(msg_id)
        if not expired:
            return []
        error = f"held {EARLY_GRACE} s for the first message of its session, which never came"
        if len(expired) > 1:
            error = f"{len(expired)} envelopes: {error}"
        self._ctx.audit.rejected(Reason.DECRYPTION_FAILED, error, at=now)
        return [Rejected(reason=Reason.DECRYPTION_FAILED, error=error)]

    def release_senders(self) -> Results:
        """Retry the held first messages whose sender has been pinned since
        (a lookup per envelope; the others are not touched)."""
        out: Results = []
        contact_queues = self._contact_queues()
        order = self.order()
        for fp in order.waiting_senders():
            if fp and self._ctx.find_contact(Fingerprint(fp)) is not None:
                out.extend(self._retry_ids(order.sender_pinned(fp), contact_queues))
        return out

    def upgrade(self) -> Results:
        """Rows held before schema 6 do not say what they wait for: a ratchet
        message is given its chain (the machine then expires it as any
        other), a first message is tried once."""
        out: Results = []
        legacy = self._db.held_unlabelled()
        if not legacy:
            return out
        contact_queues = self._contact_queues()
        for row in legacy:
            if is_first(row.envelope):
                out.extend(self._retry_held(row, contact_queues))
                continue
            chain = message_chain(row.envelope)
            with self._db.transaction():
                if chain is None:
                    self._db.unhold(row.msg_id)
                else:
                    self._db.set_held_key(row.msg_id, CHAIN, chain)
        return out

    def release_chains(self) -> Results:
        """After a first message was accepted: retry what was held waiting for
        its chain (the messages that overtook it, or followed it while its
        sender was not pinned)."""
        out: Results = []
        if not self._rx.chains:
            return out
        contact_queues = self._contact_queues()
        while self._rx.chains:
            chain = self._rx.chains.pop(0)
            out.extend(self._retry_ids(self.order().chain_accepted(chain), contact_queues))
        return out

    def _contact_queues(self) -> dict[str, QueueRow]:
        return {q.relay: q for q in self._db.queues() if q.kind == "contact"}

    def _retry_ids(self, retry: Retry, contact_queues: dict[str, QueueRow]) -> Results:
        """Do what the machine decided: try these held envelopes again."""
        out: Results = []
        for msg_id in retry.ids:
            row = self._db.held_row(msg_id)
            if row is not None:
                out.extend(self._retry_held(row, contact_queues))
        return out

    def _retry_held(self, row: HeldRow, contact_queues: dict[str, QueueRow]) -> Results:
        queue = contact_queues.get(row.relay)
        if queue is None:
            return []
        now = self._ctx.now()
        env = FetchedEnvelope(seq=0, msg_id=row.msg_id, data=row.envelope, received=now)
        return self._reopen(queue, env, now)
