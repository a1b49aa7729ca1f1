"""The receive pipeline: fetch, open, store, acknowledge.

One pass (:meth:`Inbox.receive`) reads every queue at every relay until it
is empty, a page of ``PAGE`` envelopes at a time, each page acknowledged
once its envelopes are committed. The pass is bounded by what was waiting
when it started, not by the relay's say: at most ``DRAIN_MAX`` envelopes per
queue (a peer that keeps sending cannot keep ``receive`` running; the relay's
per-queue byte quota bounds what waits anyway), and on a contact queue the
bounded budget of failed first messages (client/pipeline.py); what is left
is named in :attr:`Inbox.left_waiting` and taken by the next pass. Each
envelope is decided by a lookup (client/hold.py) or opened by its session
in one transaction with everything it changes (client/delivery.py), then
the queue is acknowledged once. The rules (no envelope blocks a queue;
bounded work before authentication) are in client/pipeline.py.

Owns: client.db's ``seen``, ``parked`` and ``sessions`` rows it creates,
``queues.last_seq``; sessions, prekeys and the replay guard are written
through :class:`ProtocolState`. A received envelope is acknowledged to the
relay only after the new session state and the message are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

from securechan import wire
from securechan.client.context import Context
from securechan.client.db import QueueRow
from securechan.client.delivery import Opened, deliver
from securechan.client.equivocation import peer_rollback
from securechan.client.group_results import GroupEntry
from securechan.client.hold import HeldEnvelopes, may_be_early_here
from securechan.client.logview import RelayLogs
from securechan.client.pipeline import (
    HOLD,
    MAX_PARKED,
    Pass,
    Unexpected,
    is_first,
    report_unexpected,
    stage,
)
from securechan.client.results import Received, Rejected
from securechan.client.sessions import accept_first, open_ratchet
from securechan.client.state import ProtocolState
from securechan.errors import (
    MalformedInput,
    MessageRejected,
    Reason,
    RelayError,
    Replay,
    SecurechanError,
    SplitView,
    StorageError,
    UnknownPrekey,
    UnknownSender,
    VerificationFailed,
    reason_of,
)
from securechan.identity.keys import PublicIdentity
from securechan.primitives import Ed25519SigningKey
from securechan.protocol.handshake import FIRST
from securechan.protocol.ordering import CHAIN, SENDER, Budget, Hold
from securechan.protocol.session import MESSAGE, Event, MessageReceived, Session, message_chain
from securechan.transport import FetchedEnvelope

__all__ = ["DRAIN_MAX", "PAGE", "Inbox"]

Results = list[Received | Rejected]
# What a pass yields: besides messages and refusals, one GroupEntry per
# group record read in the pass (client/group_sync.py).
PassResults = list[Received | Rejected | GroupEntry]
PAGE = 200  # envelopes fetched (and then acknowledged) at a time
DRAIN_MAX = 100_000  # envelopes taken from one queue in one pass (~3 GB of file chunks)


class Inbox:
    """Receives for one home. ``flush`` posts the outbox (before a pass);
    ``after`` runs after a pass (grants, prekey top-up), its relay failures
    reported with the pass."""

    def __init__(
        self,
        ctx: Context,
        state: ProtocolState,
        logs: RelayLogs,
        *,
        flush: Callable[[], Awaitable[object]],
        after: Callable[[], Awaitable[None]],
        groups: Callable[[], Awaitable[list[GroupEntry | Rejected]]] | None = None,
    ) -> None:
        self._ctx = ctx
        self._db = ctx.db
        self._state = state
        self._logs = logs
        self._flush = flush
        self._after = after
        self._groups = groups
        self._rx = Pass()  # the receive pass under way (budget, caches)
        self.held = HeldEnvelopes(ctx, state, self._rx, self._reopen)
        # Relays whose queue the last pass left with envelopes still waiting
        # (the DRAIN_MAX or first-message bound), and the hook told of each
        # stored chunk of an incoming file: (file name, bytes held, size).
        self.left_waiting: list[str] = []
        self.progress: Callable[[str, int, int], None] | None = None

    async def receive(self) -> PassResults:
        """See :meth:`Channel.receive`."""
        self._rx.reset()
        held = self.held
        out: PassResults = []
        out += held.upgrade()
        out += held.expire() + held.release_senders()
        out.extend(held.release_chains())
        await self._flush()
        self.left_waiting = []
        for queue in self._db.queues():
            out.extend(await self._drain(queue))
        out.extend(
            Rejected(
                reason=Reason.SPLIT_VIEW,
                error=f"{e} (the checkpoint came from {peer})",
                evidence=e.evidence,
            )
            for e, peer in await self._logs.check_carried()
        )
        if self._groups is not None:
            # The groups' streams, after the pairwise payloads are stored:
            # a relay that fails here does not lose what was received above.
            try:
                out.extend(await self._groups())
            except (RelayError, MalformedInput) as e:
                url = e.relay if isinstance(e, RelayError) else None
                out.append(
                    Rejected(reason=Reason.RELAY_ERROR, error=f"group streams: {e}", relay=url)
                )
        # What follows must not lose what was received above (it is stored
        # and acknowledged already): its failures are reported with it.
        try:
            await self._after()
        except SplitView as e:
            out.append(Rejected(reason=Reason.SPLIT_VIEW, error=str(e), evidence=e.evidence))
        except (RelayError, VerificationFailed, MalformedInput) as e:
            url = e.relay if isinstance(e, RelayError) else None
            out.append(
                Rejected(reason=Reason.RELAY_ERROR, error=f"after receiving: {e}", relay=url)
            )
        return out

    async def _drain(self, queue: QueueRow) -> Results:
        """Every envelope waiting in one queue, page by page (bounded: see
        the module's docstring)."""
        out: Results = []
        held = self.held
        self._rx.budget = Budget.of(HOLD)
        after, taken = queue.last_seq, 0
        while True:
            try:
                with stage("fetch"):
                    relay = await self._ctx.relay(queue.relay)
                    envelopes = await relay.fetch(
                        queue.rid, Ed25519SigningKey(queue.secret), after=after, limit=PAGE
                    )
            except RelayError as e:
                out.append(Rejected(reason=Reason.RELAY_ERROR, error=str(e), relay=queue.relay))
                return out
            except MalformedInput as e:
                # A relay answering garbage for one queue must not stop the
                # others: report it, record it, go on.
                self._ctx.audit.rejected(
                    Reason.MALFORMED_INPUT, f"fetch answer from {queue.relay}: {e}"
                )
                out.append(Rejected(reason=Reason.RELAY_ERROR, error=f"{queue.relay}: {e}"))
                return out
            except Unexpected as e:
                out.append(
                    report_unexpected(self._ctx.audit, e, f"fetch answer from {queue.relay}")
                )
                return out
            done = 0
            stopped = False
            for env in envelopes:
                if queue.kind == "contact" and self._rx.budget.exhausted:
                    stopped = True  # the rest waits for the next pass (bounded work per pass)
                    break
                out.extend(self._process(queue, env))
                done = env.seq
            out.extend(held.flush_quiet(queue))
            if done:
                out.extend(await self._ack(queue, done))
            taken += len(envelopes)
            if stopped or (len(envelopes) == PAGE and taken >= DRAIN_MAX):
                self.left_waiting.append(queue.relay)
                return out
            if len(envelopes) < PAGE or done <= after:
                return out  # the relay has no more (or went backwards: stop)
            after = done

    async def follow(
        self, *, poll: float = 2.0, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Received | Rejected | GroupEntry]:
        """See :meth:`Channel.follow`."""
        stop = stop or asyncio.Event()
        wake = asyncio.Event()

        async def listen(queue: QueueRow) -> None:
            while not stop.is_set():
                try:
                    relay = await self._ctx.relay(queue.relay)
                    async for _ in relay.subscribe(queue.rid, Ed25519SigningKey(queue.secret)):
                        wake.set()
                except (RelayError, MalformedInput):
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)

        listeners = [asyncio.create_task(listen(q)) for q in self._db.queues()]
        try:
            while not stop.is_set():
                for item in await self.receive():
                    yield item
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=poll)
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)

    def _process(self, queue: QueueRow, env: FetchedEnvelope) -> Results:
        now = self._ctx.now()
        results: Results = []
        try:
            quiet = self.held.decide_quietly(queue, env, now)
            if quiet is not None:
                self._rx.quiet.append(quiet)
                return []
            # Whatever is decided in its own transaction comes after the
            # quiet ones before it (the queue's position only moves forward).
            results.extend(self.held.flush_quiet(queue))
            if self._db.seen(env.msg_id):
                with self._db.transaction():
                    self._db.set_last_seq(queue.rid, env.seq)
            else:
                with stage("refuse"):
                    results.extend(self.open_or_refuse(queue, env, now))
        except Unexpected as e:
            results.append(self._set_aside(queue, env, now, e))
        except sqlite3.OperationalError as e:
            raise StorageError(f"{self._db.path}: {e}") from None
        results.extend(self.held.release_chains())
        return results

    async def _ack(self, queue: QueueRow, up_to: int) -> Results:
        """One acknowledgement per queue and pass, after everything up to
        ``up_to`` is committed locally."""
        try:
            with stage("ack"):
                relay = await self._ctx.relay(queue.relay)
                await relay.ack(queue.rid, Ed25519SigningKey(queue.secret), up_to=up_to)
        except RelayError:
            pass  # acknowledged next time; the message ids are already marked seen
        except Unexpected as e:
            # Seen already: a later ack (up_to a later seq) covers it.
            return [report_unexpected(self._ctx.audit, e, f"ack to {queue.relay}")]
        return []

    def _set_aside(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, e: Unexpected
    ) -> Rejected:
        """An envelope failed in a way no stage expects: its transaction was
        rolled back (state unchanged); park it, mark it seen so it is never
        retried, and let the queue move on."""
        with self._db.transaction():
            self._db.unhold(env.msg_id)
            self._db.park(env.msg_id, queue.relay, e.stage, env.data, now, keep=MAX_PARKED)
            self._db.mark_seen(env.msg_id, now)
            if env.seq:
                self._db.set_last_seq(queue.rid, env.seq)
        what = f"envelope {env.msg_id.hex()[:16]} set aside"
        return report_unexpected(self._ctx.audit, e, what)

    def _reopen(self, queue: QueueRow, env: FetchedEnvelope, now: int) -> Results:
        """Try a held envelope again (the hold's retry)."""
        try:
            with stage("refuse"):
                return self.open_or_refuse(queue, env, now, from_hold=True)
        except Unexpected as e:
            return [self._set_aside(queue, env, now, e)]

    def open_or_refuse(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, *, from_hold: bool = False
    ) -> Results:
        """Open an envelope, or record why not. A first message from an
        unknown sender refuses (or, with the hold policy, keeps) the messages
        that follow it on the same ratchet chain too, quietly: they are part
        of the same refusal, not separate attacks."""
        db, held = self._db, self.held
        hold_unknown = self._ctx.unknown_senders == "hold"
        chain = message_chain(env.data)
        if chain is not None and db.chain_refused(chain) and not from_hold:
            with db.transaction():
                if hold_unknown:
                    held.hold(queue, env, now, CHAIN, chain)
                db.mark_seen(env.msg_id, now)
                db.set_last_seq(queue.rid, env.seq)
            return []
        try:
            return self._open(queue, env, now, reopen=from_hold)
        except StorageError:
            raise  # the disk, not the envelope: nothing is marked, the next pass retries
        except SecurechanError as e:
            found = peer_rollback(self._ctx, env.data, e, now) if isinstance(e, Replay) else None
            if found is not None:
                with db.transaction():
                    db.mark_seen(env.msg_id, now)
                    db.set_last_seq(queue.rid, env.seq)
                return [found]
            if is_first(env.data) and not isinstance(e, (UnknownPrekey, Replay, MalformedInput)):
                self._rx.budget.spend()  # a decapsulation was spent on it
            if not from_hold and chain is not None and may_be_early_here(queue, env.data, e):
                # Possibly ahead of the first message of its session (the
                # relay or the network reordered them): keep it, retried when
                # a first message of its chain is accepted, refused once
                # EARLY_GRACE passed.
                with db.transaction():
                    kept = held.hold(queue, env, now, CHAIN, chain)
                    if kept:
                        db.mark_seen(env.msg_id, now)
                        db.set_last_seq(queue.rid, env.seq)
                if kept:
                    return []
            unknown = isinstance(e, UnknownSender)
            hold = unknown and hold_unknown
            with db.transaction():
                if unknown and chain is not None:
                    db.refuse_chain(chain, now)
                if hold and isinstance(e, UnknownSender):
                    who = e.identity
                    fp = who.fingerprint if isinstance(who, PublicIdentity) else None
                    sender = fp.digest if fp is not None else b""
                    if from_hold:
                        if isinstance(held.order().rewait(env.msg_id, SENDER, sender), Hold):
                            db.set_held_key(env.msg_id, SENDER, sender)
                    else:
                        hold = held.hold(queue, env, now, SENDER, sender)
                if from_hold and not hold:
                    held.order().settled(env.msg_id)
                    db.unhold(env.msg_id)  # refused for good
                db.mark_seen(env.msg_id, now)
                if env.seq:
                    db.set_last_seq(queue.rid, env.seq)
            if from_hold and hold:
                return []  # still unknown: stays held, already reported
            self._ctx.audit.rejected(reason_of(e), str(e), at=now)
            return [Rejected(reason=reason_of(e), error=str(e), held=hold)]

    def _open(
        self, queue: QueueRow, env: FetchedEnvelope, now: int, *, reopen: bool = False
    ) -> Results:
        db = self._db
        with stage("decode"):
            try:
                kind = wire.peek_type(env.data)
            except MalformedInput:
                raise MessageRejected("not a securechan envelope") from None
        with db.transaction():
            if db.seen(env.msg_id) and not reopen:
                # Another process on this home took it while we fetched.
                return []
            if kind == FIRST.type_id:
                with stage("first-message"):
                    session, events = accept_first(self._ctx, self._state, env.data, now)
            elif kind == MESSAGE.type_id:
                with stage("decrypt"):
                    session, events = open_ratchet(self._state, self._rx, queue, env.data, now)
            else:
                raise MessageRejected("not a securechan envelope")
            with stage("store"):
                self._state.save_session(session)
            opened = Opened(
                session=session,
                events=events,
                envelope=env.data,
                relay=queue.relay,
                progress=self.progress,
            )
            results = deliver(self._ctx, opened, now)
            with stage("store"):
                db.mark_seen(env.msg_id, now)
                if env.seq:
                    db.set_last_seq(queue.rid, env.seq)
                if reopen:
                    db.unhold(env.msg_id)
        self._rx.session_changed()
        if kind == FIRST.type_id:
            chain = message_chain(env.data)
            if chain is not None:
                with db.transaction():
                    db.unrefuse_chain(chain)
                self._rx.chains.append(chain)
        try:
            with stage("audit"):
                self._audit_opened(kind, session, events, results, now)
        except Unexpected as e:
            # Stored and seen already: what was received is still shown.
            results.append(report_unexpected(self._ctx.audit, e, "audit log"))
        return results

    def _audit_opened(
        self, kind: int, session: Session, events: list[Event], results: Results, now: int
    ) -> None:
        audit, peer = self._ctx.audit, session.peer.fingerprint
        if kind == FIRST.type_id:
            audit.session_started(
                conversation=session.conversation, peer=peer, role="responder", at=now
            )
        for ev in events:
            if isinstance(ev, MessageReceived) and ev.checkpoints:
                self._logs.carry_in(ev.checkpoints, session.peer.name)
            if isinstance(ev, MessageReceived):
                audit.message(
                    "message-received",
                    conversation=session.conversation,
                    seq=ev.seq,
                    payload_hash=ev.hash,
                    peer=peer,
                    at=now,
                )
        for item in results:
            if isinstance(item, Rejected):
                audit.rejected(
                    item.reason, item.error, conversation=session.conversation, peer=peer, at=now
                )
