"""The high-level channel: identity + contacts + sessions + relays + record.

:class:`Channel` is what the CLI and ``import securechan`` users drive::

    async with Channel.open(home, passphrase) as ch:
        await ch.register("http://127.0.0.1:8470")
        await ch.send_text("washington", "We accept the draft.")
        for item in await ch.receive():
            print(item.contact, item.text)

It is a facade (docs/ARCHITECTURE.md, The client): each concern lives in
its own module on a shared :class:`~securechan.client.context.Context`:

=============================  ==========================================
``client/state.py``            sessions, handshakes, prekeys, replay guard,
                               registrations: typed, sealed, rollback-checked
``client/registration.py``     contact addresses at relays, prekeys there
``client/outbox.py``           the send path and the outbox
``client/inbox.py``            the receive pipeline (with ``pipeline``,
                               ``hold``, ``delivery``, ``equivocation``)
``client/record.py``           history, log receipts, statements
``client/files.py``            file names and chunk reassembly
=============================  ==========================================

Queues (``docs/RELAY.md`` §2): each delegation registers a **contact
address** (a public queue) at one or more relays and publishes its prekeys
there, sealed under the address key. A first message goes to the peer's
contact address; it carries a **queue grant** for a private queue the sender
created for the replies. The responder answers through that queue and grants
its own, after which both directions use private queues secured with sender
keys. The relays never learn who talks to whom beyond network addresses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from securechan.audit.log import AuditLog
from securechan.audit.statement import Statement
from securechan.client.channel_groups import GroupMethods
from securechan.client.context import Context, RelayPool, UnknownPolicy
from securechan.client.db import ClientDB
from securechan.client.files import sanitize_filename
from securechan.client.group_results import GroupEntry
from securechan.client.groups import Groups
from securechan.client.inbox import Inbox
from securechan.client.logview import RelayLogs
from securechan.client.outbox import Cancelled, Outbox, QueuedMessage
from securechan.client.pipeline import (
    AUDIT_EACH,
    EARLY_GRACE,
    HOLD,
    MAX_HELD,
    MAX_HELD_BYTES,
    MAX_PARKED,
    UNAUTH_TRIES,
    is_first,
)
from securechan.client.policy import check_witnessed
from securechan.client.record import History, MessageRecord
from securechan.client.registration import ONE_TIME_BATCH, ONE_TIME_LOW, Registrar
from securechan.client.results import Received, Rejected, SendResult
from securechan.client.state import ProtocolState
from securechan.client.unshown import ShownCursor
from securechan.errors import NoIdentity, RelayError, UsageError
from securechan.identity import Contact, Identity, Keystore
from securechan.primitives import random_bytes
from securechan.protocol.address import ContactCard
from securechan.transport import RelayClient, RetryPolicy

__all__ = [
    "AUDIT_EACH",
    "EARLY_GRACE",
    "HOLD",
    "MAX_HELD",
    "MAX_HELD_BYTES",
    "MAX_PARKED",
    "ONE_TIME_BATCH",
    "ONE_TIME_LOW",
    "UNAUTH_TRIES",
    "Cancelled",
    "Channel",
    "QueuedMessage",
    "Received",
    "Rejected",
    "SendResult",
    "UnknownPolicy",
    "sanitize_filename",
]


class Channel(GroupMethods):
    """One unlocked home folder and its relays. Not for concurrent use from
    several tasks; several processes on one home are serialised by the
    database's write lock."""

    def __init__(
        self,
        keystore: Keystore,
        identity: Identity,
        *,
        unknown_senders: UnknownPolicy = "refuse",
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        random: Callable[[int], bytes] = random_bytes,
    ) -> None:
        db = ClientDB(keystore.home / "client.db", identity.storage_key())
        self.ctx = ctx = Context(
            keystore=keystore,
            identity=identity,
            db=db,
            # The local audit log (docs/AUDIT.md): every event is recorded
            # after the client database committed it, never inside the
            # transaction.
            audit=AuditLog.open(keystore.home, identity, clock=lambda: int(clock())),
            relays=RelayPool(retry or RetryPolicy(), clock),
            clock=clock,
            random=random,
            unknown_senders=unknown_senders,
        )
        self.state = ProtocolState(ctx)
        # What we saw of each relay's log (client/logview.py); every
        # checkpoint that passes is offered to the witness policy.
        self.logs = RelayLogs(
            db,
            ctx.audit,
            ctx.relay,
            self.state.pinned_relay_key,
            lambda url, key, note: check_witnessed(db, url, key, note, now=ctx.now()),
        )
        self.registrar = Registrar(ctx, self.state)
        self.shown = ShownCursor(db, keystore.contacts.find)  # client/unshown.py
        self.outbox = Outbox(ctx, self.state, self.registrar, self.logs)
        self.group_client = Groups(ctx, self.outbox, self.registrar.relays, self.logs)
        self.inbox = Inbox(
            ctx,
            self.state,
            self.logs,
            flush=self.outbox.flush,
            after=self._after_receive,
            groups=self.group_client.reader.sync_all,
        )
        self.group_client.receive_pass = self.inbox.receive
        self.record = MessageRecord(ctx, self.state, self.logs)

    @classmethod
    def open(
        cls,
        home: Path | str,
        passphrase: str | bytes,
        *,
        unknown_senders: UnknownPolicy = "refuse",
        retry: RetryPolicy | None = None,
    ) -> Channel:
        """Unlock the identity in ``home`` (costs one Argon2id run)."""
        keystore = Keystore(home)
        if not keystore.has_identity():
            raise NoIdentity(f"no identity in {home}; run 'securechan init'")
        identity = keystore.unlock(passphrase)
        return cls(keystore, identity, unknown_senders=unknown_senders, retry=retry)

    # --- the context, as the CLI and scripts see it -----------------------------

    @property
    def keystore(self) -> Keystore:
        """The home folder's keystore (contacts included)."""
        return self.ctx.keystore

    @property
    def identity(self) -> Identity:
        """The unlocked identity."""
        return self.ctx.identity

    @property
    def db(self) -> ClientDB:
        """The client database (client.db)."""
        return self.ctx.db

    @property
    def audit(self) -> AuditLog:
        """The local audit log (audit.db)."""
        return self.ctx.audit

    @property
    def unknown_senders(self) -> UnknownPolicy:
        """What a first message from a sender not pinned does."""
        return self.ctx.unknown_senders

    @unknown_senders.setter
    def unknown_senders(self, policy: UnknownPolicy) -> None:
        self.ctx.unknown_senders = policy

    def now(self) -> int:
        """The channel's clock, in whole seconds."""
        return self.ctx.now()

    async def relay(self, url: str) -> RelayClient:
        """The open connection to the relay at ``url``."""
        return await self.ctx.relay(url)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close relay connections and the database."""
        ctx = self.ctx
        await ctx.relays.close()
        try:
            # What was received is committed: its generations join the mark.
            ctx.db.record_generations()
            self.state.report_rollbacks()
        finally:
            ctx.db.close()
            if not ctx.audit_closed:
                ctx.audit_closed = True
                ctx.audit.checkpoint()
                ctx.audit.close()

    # --- registration ---------------------------------------------------------

    async def register(
        self,
        relay_url: str,
        *,
        pin_key: bytes | None = None,
        pin_fingerprint: bytes | None = None,
    ) -> ContactCard:
        """Create our contact address at ``relay_url`` and publish prekeys.

        The relay's key is pinned on first use, or checked against
        ``pin_key`` or ``pin_fingerprint`` (SHA-256 of the key, as the relay
        prints it at start): :class:`UntrustedKey` if it differs. Registering
        again at the same relay refreshes prekeys.
        """
        return await self.registrar.register(
            relay_url, pin_key=pin_key, pin_fingerprint=pin_fingerprint
        )

    def card(self) -> ContactCard:
        """Our contact card (identity + every registered address)."""
        return self.registrar.card()

    async def pair(
        self,
        relay_url: str | None = None,
        *,
        code: str | None = None,
        words: int = 5,
        name: str | None = None,
        on_code: Callable[[str], None] | None = None,
    ) -> Contact:
        """Pair by a spoken code (docs/PROTOCOL.md, "Pairing"): without
        ``code``, open a mailbox at the relay and hand the new code (``words``
        words, 8 bits each) to ``on_code``; with ``code``, join it. Returns
        the peer, pinned and verified "by code"; :class:`PairingFailed` (and
        nothing pinned) otherwise. The relay defaults to our first one."""
        from securechan.client.pairing import pair
        from securechan.protocol.pair_code import parse_code

        url = relay_url or next(iter(self.relays()), None)
        if url is None:
            raise UsageError("pairing needs a relay: register at one, or name one")
        parsed = parse_code(code) if code is not None else None
        return await pair(
            self.ctx,
            url,
            self.card().to_bytes(),
            code=parsed,
            words=words,
            name=name,
            on_code=on_code,
        )

    def relays(self) -> list[str]:
        """The relays we are registered at, as registered."""
        return self.registrar.relays()

    def relay_fingerprints(self) -> dict[str, str]:
        """Each relay we are registered at: SHA-256 of its pinned key, in hex
        (what ``relay serve`` prints as its fingerprint)."""
        return self.registrar.relay_fingerprints()

    # --- rollback -------------------------------------------------------------

    def rolled_back(self) -> list[str]:
        """Names of the contacts whose current session was found rolled back
        (sending to them is refused until :meth:`rekey`)."""
        return self.state.rolled_back()

    def rekey(self, name: str) -> int:
        """Retire every session with ``name``: none is sent on again, and the
        next send starts a new handshake (fresh keys, a new conversation).
        The old sessions still receive, so the peer's messages sent before it
        sees the new handshake are not lost. Returns how many were retired."""
        return self.state.rekey(name)

    # --- sending --------------------------------------------------------------

    async def send_text(self, name: str, text: str) -> SendResult:
        """Send a text message to the contact ``name``.

        The text is sent in Unicode NFC; a NUL character or more than
        ``MAX_TEXT_BYTES`` of UTF-8 is refused (:class:`MalformedInput`)
        before anything is stored or sent."""
        return await self.outbox.send_text(name, text)

    async def send_receipt(self, name: str) -> SendResult:
        """Tell ``name`` how far we have received its messages: a signed
        receipt with the hash of the last one, which the peer checks against
        its own record of what it sent (``Received.receipt_matches``)."""
        return await self.outbox.send_receipt(name)

    async def send_file(
        self,
        name: str,
        file_name: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> SendResult:
        """Send a file (chunked) to the contact ``name``. ``progress(done,
        total)`` is called as envelopes are posted.

        Cancelled while posting (Ctrl-C in the CLI, a task's ``cancel()``):
        the file's envelopes not yet posted are withdrawn from the outbox
        before ``CancelledError`` goes on, so no later command delivers
        them; :attr:`last_cancelled` then says what the relays already had.
        The same holds for :meth:`send_text`."""
        return await self.outbox.send_file(name, file_name, data, progress)

    @property
    def last_cancelled(self) -> Cancelled | None:
        """What withdrawing the last send's message did when that send was
        cancelled while posting (None: not cancelled, or cancelled before
        anything was queued)."""
        return self.outbox.cancelled

    @property
    def last_queued(self) -> str | None:
        """The outbox id of the message the last send queued (what
        :meth:`cancel` takes), or None."""
        ref = self.outbox.last_ref
        return ref.hex() if ref is not None else None

    def queued(self) -> list[QueuedMessage]:
        """The messages with envelopes still in the outbox (not yet taken by
        a relay), oldest first; ``securechan outbox`` lists them."""
        return self.outbox.queued()

    def cancel(self, message_id: str) -> Cancelled:
        """Withdraw a queued message (an id from :meth:`queued`): every
        envelope of it still in the outbox is removed, with our record of
        it, in one transaction. What a relay already took cannot be taken
        back (``Cancelled.posted``); if anything was withdrawn the session
        is retired, and the next send to the contact starts a new one.
        :class:`NotFound` for an id not queued (posted in full already),
        :class:`UsageError` for a protocol envelope (a queue grant)."""
        return self.outbox.cancel(message_id)

    async def flush_outbox(
        self, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[int, int]:
        """Post every pending envelope, oldest first; return (delivered now,
        still pending). After a failed post to a queue, nothing younger goes
        to that queue in this pass: envelopes must reach a queue in the order
        they were made, or the recipient sees a false gap and a late arrival."""
        return await self.outbox.flush(progress=progress)

    # --- receiving ------------------------------------------------------------

    async def receive(
        self, *, progress: Callable[[str, int, int], None] | None = None
    ) -> list[Received | Rejected | GroupEntry]:
        """One pass over every queue at every relay: fetch, open, store, ack,
        page after page until each queue is empty (at most ``DRAIN_MAX`` envelopes
        a queue, and the budget of failed first messages: :attr:`left_waiting`
        names the relays where some were left); ``progress(file name, bytes
        held, size)`` for each chunk of a file. Then each group's stream is read
        (a ``GroupEntry`` per record). The first call returns first what was
        stored and never shown (an agent's); each moves the shown cursor."""
        self.inbox.progress = progress
        try:  # what receive passes run by group operations kept comes first
            stashed = self.group_client.take_stashed()
            return await self.shown.handed(stashed, self.inbox.receive)
        finally:
            self.inbox.progress = None

    @property
    def left_waiting(self) -> list[str]:
        """Relays whose queues the last receive pass left with envelopes
        waiting (taken by the next pass)."""
        return list(self.inbox.left_waiting)

    def follow(
        self,
        *,
        poll: float = 2.0,
        stop: asyncio.Event | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> AsyncIterator[Received | Rejected | GroupEntry]:
        """Receive continuously: WebSocket push per queue, with polling as the
        fall-back (and every ``poll`` seconds anyway); ``progress`` as for
        :meth:`receive`; what receive passes run by group operations kept
        comes with the next item."""
        self.inbox.progress = progress
        return self.shown.follow(self._with_stashed(self.inbox.follow(poll=poll, stop=stop)))

    async def _after_receive(self) -> None:
        """Grant our queue to peers who granted theirs; owed group sends; prekeys."""
        await self.outbox.send_grants()
        await self.group_client.pay_debts()
        await self.outbox.flush()
        await self.registrar.top_up_prekeys()

    # --- reading the record ---------------------------------------------------

    def history(self, name: str | None = None) -> list[tuple[str, str, int, int, str, str]]:
        """Stored messages: (contact, direction, seq, time, summary, message id).

        The message id is the same on both sides (:func:`message_id`)."""
        history: History = self.record.history(name)
        return history

    def history_page(
        self, name: str | None = None, *, limit: int | None = None, before: str | None = None
    ) -> tuple[list[tuple[str, str, int, int, str, str]], bool]:
        """Like :meth:`history`, but only the messages stored before the one
        whose id (or unique prefix) is ``before``, and of those the newest
        ``limit``; the flag says whether older ones were left out (page on
        with ``before`` = the first row's id)."""
        return self.record.history_page(name, limit=limit, before=before)

    async def fetch_receipt(self, message_id: str) -> bool:
        """For a message we received: ask the relay it came through for the
        log receipt of its envelope (``GET /v1/log/proof/leaf``), verify it
        and hold it to everything we saw of that log, and keep it for
        statements. Returns whether a receipt is now kept; False when the
        relay does not hold the leaf or cannot be reached. Raises
        :class:`SplitView` or :class:`VerificationFailed` for a bad one."""
        return await self.record.fetch_receipt(message_id)

    def statement(self, message_id: str) -> Statement:
        """The statement of one stored message (``docs/AUDIT.md``, Statements).

        ``message_id`` is the id ``history`` shows (a prefix of at least 8 hex
        digits will do if it is unique). The statement reveals that message's
        key, and only that message's. It carries the relay's log receipt when
        one is kept (every send's; a received message's once
        :meth:`fetch_receipt` got it); the checkpoint keeps only the
        relay's own signature (cosignatures by keys the file does not name
        would make it unverifiable). Raises :class:`NotFound` for an
        unknown id and :class:`UsageError` for a message stored before
        statements existed.
        """
        return self.record.statement(message_id)

    def known_logs(self) -> list[str]:
        """Every relay whose log key we pinned (ours, and our contacts')."""
        return self.record.known_logs()

    async def unreachable_relays(self) -> dict[str, str]:
        """Every relay this home uses (its registrations and its queues) that
        does not answer now: URL -> why, in one line that names it."""
        failures: dict[str, str] = {}
        for url in sorted({*self.relays(), *(q.relay for q in self.db.queues())}):
            try:
                await (await self.relay(url)).info()
            except RelayError as e:
                failures[url] = str(e)
        return failures

    def status(self) -> dict[str, object]:
        """Relays, queues, sessions and pending envelopes."""
        db = self.ctx.db
        return {
            "identity": self.identity.name,
            "relays": self.registrar.relays(),
            "queues": len(db.queues()),
            "sessions": len(db.sessions()),
            "outbox": len(db.outbox()),
            # First messages from senders not yet pinned (their later envelopes
            # are held behind them and not counted).
            "held": sum(1 for _, _, data, _ in db.held() if is_first(data)),
            # Contacts whose conversation was restored from an older copy:
            # sending to them is refused until 'contact rekey'.
            "rolled_back": self.rolled_back(),
        }
