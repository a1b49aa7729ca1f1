"""The send path and the outbox.

Reliability (``docs/RELAY.md`` §6): an envelope is written to the outbox in
the same transaction as the session state that produced it and our record
of the message, *then* posted; a crash before the relay's 2xx leaves it in
the outbox, and the next command posts it again with the same message id,
which the relay and the recipient both de-duplicate. Every post's log
receipt is verified and held to everything seen of that relay's log; the
row leaves the outbox in the commit that keeps the receipt and the newer
checkpoint (alone if the check fails or is cut short), so a crash between
the relay's 2xx and that commit posts it again, as a duplicate.

Cancelling (``securechan outbox cancel``, or a send interrupted while it
posts): every envelope of the message still in the outbox is withdrawn in
one transaction, with our record of the message; what the relay already
took cannot be taken back and is reported (:class:`Cancelled`). A session
that lost envelopes is retired (as ``contact rekey`` does): the peer could
not open a message after the gap (its first message, or more than the
ratchet's MAX_SKIP missing), so the next send starts a new one.

Owns: client.db's ``outbox``, ``outbox_messages``, ``outbox_parts`` and
``log_receipts`` tables, the ``out`` rows of ``messages``; sessions are
written through :class:`ProtocolState`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from securechan import strict_json
from securechan.audit.receipt import envelope_leaf_hash, verify_receipt
from securechan.client.context import Context
from securechan.client.db import OutboxEntry
from securechan.client.logview import Appended, RelayLogs
from securechan.client.registration import Registrar
from securechan.client.results import Cancelled, QueuedMessage, SendResult
from securechan.client.state import ProtocolState
from securechan.client.stored import StoredRecord
from securechan.errors import (
    BundleRejected,
    MalformedInput,
    NotFound,
    Reason,
    RelayError,
    RolledBack,
    SplitView,
    UntrustedKey,
    UsageError,
    VerificationFailed,
    reason_of,
)
from securechan.identity import Contact
from securechan.identity.keys import Fingerprint
from securechan.primitives import Ed25519SigningKey, sha256
from securechan.protocol.address import ContactCard, QueueGrant, open_prekey_blob
from securechan.protocol.payload import message_text
from securechan.protocol.prekeys import Prekey, PrekeyBundle
from securechan.protocol.session import Session

__all__ = ["Built", "Cancelled", "Outbox", "QueuedMessage", "Target", "encrypt"]

Target = tuple[str, bytes, bytes | None]  # (relay, sid, sender seed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    """What one send on a session made: its envelopes, and what our record
    keeps of the last one (signed payload, envelope, message key and the
    associated data); ``signed`` is empty for a queue grant (not recorded)."""

    envelopes: tuple[bytes, ...]
    signed: bytes = b""
    key: bytes = b""
    ad: bytes = b""


def encrypt(
    session: Session,
    *,
    now: int,
    text: str | None = None,
    file: tuple[str, bytes] | None = None,
    grant: QueueGrant | None = None,
) -> Built:
    """The one place the client calls Session's send methods: a text, a
    file, a queue grant, or (none of them) a receipt."""
    if grant is not None:
        return Built(envelopes=(session.send_grant(grant, now=now).envelope,))
    if text is not None:
        sent = [session.send_text(text, now=now)]
    elif file is not None:
        sent = session.send_file(file[0], file[1], now=now)
    else:
        sent = [session.send_receipt(now=now)]
    last = sent[-1]  # a file: one stored record, the last chunk's
    return Built(
        envelopes=tuple(o.envelope for o in sent), signed=last.record, key=last.key, ad=last.ad
    )


Build = Callable[[Session], Built]


class Outbox:
    """Sends on the current session with a contact (starting one if there is
    none), and posts the outbox."""

    def __init__(
        self, ctx: Context, state: ProtocolState, registrar: Registrar, logs: RelayLogs
    ) -> None:
        self._ctx = ctx
        self._state = state
        self._registrar = registrar
        self._logs = logs
        # The message the last send queued (its outbox id), what cancelling
        # it did when the send was cancelled while posting, and whether a
        # post is awaiting its answer.
        self.last_ref: bytes | None = None
        # The contact the last send was to, as read for it (its verified
        # flag, for the agent's answer, without reading contacts again).
        self.last_contact: Contact | None = None
        self.cancelled: Cancelled | None = None
        self._posting = False
        self._what: dict[str, Any] = {}

    async def send_text(self, name: str, text: str) -> SendResult:
        """See :meth:`Channel.send_text`."""
        text = message_text(text)
        what = {"kind": "text", "size": len(text.encode("utf-8"))}
        return await self.send(
            name, lambda s: encrypt(s, now=self._ctx.now(), text=text), what=what
        )

    async def send_receipt(self, name: str) -> SendResult:
        """See :meth:`Channel.send_receipt`. Kept in our record: our signed
        receipt is what proves delivery in a statement of the peer's message."""
        what = {"kind": "receipt", "size": 0}
        return await self.send(name, lambda s: encrypt(s, now=self._ctx.now()), what=what)

    async def send_file(
        self, name: str, file_name: str, data: bytes, progress: Callable[[int, int], None] | None
    ) -> SendResult:
        """See :meth:`Channel.send_file`. One stored record per file: the
        last chunk's signed payload."""
        what = {"kind": "file", "size": len(data), "name": file_name}
        return await self.send(
            name,
            lambda s: encrypt(s, now=self._ctx.now(), file=(file_name, data)),
            progress,
            what=what,
        )

    async def send(
        self,
        name: str,
        build: Build,
        progress: Callable[[int, int], None] | None = None,
        *,
        what: dict[str, Any] | None = None,
    ) -> SendResult:
        """Build one message on the current session with ``name`` (or a new
        one), commit it with the session state and the outbox, then post.
        Cancelled while posting (Ctrl-C): the message's envelopes still
        queued are withdrawn (:attr:`cancelled` says what the relays already
        had), then the cancellation goes on."""
        self.last_ref = None
        self.cancelled = None
        self._what = what or {"kind": "text", "size": 0}
        ctx = self._ctx
        self.last_contact = contact = ctx.contact(name)
        now = ctx.now()
        retired = ctx.db.retired()
        rows = [
            r for r in ctx.db.sessions(contact.fingerprint.digest) if r.conversation not in retired
        ]
        if rows:
            row = rows[0]
            targets = self.targets(contact, row.peer_grant)
            split = await self._logs.refresh(t[0] for t in targets)
            try:
                with ctx.db.transaction():
                    session = self._state.load_session(row.conversation, sending=True)
                    session.checkpoints = self._logs.carried(t[0] for t in targets)
                    seq, out = self._build(session, build)
                    self._commit(session, contact, list(out.envelopes), seq, out, targets, now)
            except RolledBack:
                self._state.report_rollbacks()
                raise RolledBack(
                    f"refused to send to {contact.name}: the conversation's state was restored "
                    "from an older copy and would reuse message keys; start a new session with "
                    f"'securechan contact rekey {contact.name}'"
                ) from None
        else:
            # First contact: the handshake, our queue grant and the message are
            # built in memory and committed together, or not at all.
            bundle = await self._fetch_bundle(contact)
            targets = self.targets(contact, None)
            session, first = Session.initiate(
                ctx.identity, contact.identity, bundle, now=now, rand=ctx.random
            )
            grant = await self._registrar.own_queue(session.conversation)
            split = await self._logs.refresh(t[0] for t in targets)
            session.checkpoints = self._logs.carried(t[0] for t in targets)
            envelopes = [first]
            if grant is not None:
                envelopes.extend(encrypt(session, now=now, grant=grant).envelopes)
            seq, out = self._build(session, build)
            envelopes.extend(out.envelopes)
            with ctx.db.transaction():
                ctx.db.add_session(session.conversation, contact.fingerprint.digest, now)
                self._state.save_handshake(session)
                if grant is not None:
                    ctx.db.mark_grant_sent(session.conversation)
                self._commit(session, contact, envelopes, seq, out, targets, now)
            ctx.audit.session_started(
                conversation=session.conversation,
                peer=contact.fingerprint,
                role="initiator",
                at=now,
            )
        ctx.audit.message(
            "message-sent",
            conversation=session.conversation,
            seq=seq[-1],
            payload_hash=sha256(out.signed),
            peer=contact.fingerprint,
            at=now,
        )
        ref = self.last_ref
        try:
            delivered, pending = await self.flush(progress=progress)
        except asyncio.CancelledError:
            if ref is not None:
                self.cancelled = self.cancel(ref.hex(), interrupted=True)
            raise
        except SplitView as e:
            split = split or e
        if split is not None:
            raise split
        return SendResult(contact=contact.name, seqs=seq, delivered=delivered, pending=pending)

    @staticmethod
    def _build(session: Session, build: Build) -> tuple[tuple[int, ...], Built]:
        first_seq = session.sent_count + 1
        out = build(session)
        return tuple(range(first_seq, session.sent_count + 1)), out

    def _commit(
        self,
        session: Session,
        contact: Contact,
        envelopes: list[bytes],
        seqs: tuple[int, ...],
        out: Built,
        targets: list[Target],
        now: int,
    ) -> None:
        """Inside the caller's transaction: the new session state, our record
        of what we sent (one record per message: a file's last chunk), and
        the envelopes in the outbox, all at once."""
        db = self._ctx.db
        self._state.save_session(session)
        record = StoredRecord(
            signed=out.signed,
            contact=contact.name,
            envelope=out.envelopes[-1],
            key=out.key,
            ad=out.ad,
        )
        db.add_message(
            session.conversation,
            contact.fingerprint.digest,
            "out",
            seqs[-1],
            now,
            record.to_bytes(),
        )
        msg_ids = []
        for env in envelopes:
            msg_id = self._ctx.random(16)
            msg_ids.append(msg_id)
            for relay_url, sid, sender in targets:
                db.add_outbox(msg_id, relay_url, sid, sender, env, now)
        # What these envelopes are, for 'outbox' and 'outbox cancel'.
        ref = self._ctx.random(8)
        meta = {**self._what, "contact": contact.name, "seqs": list(seqs)}
        db.add_outbox_message(
            ref,
            contact.fingerprint.digest,
            session.conversation,
            msg_ids,
            len(msg_ids) * len(targets),
            now,
            json.dumps(meta, separators=(",", ":")).encode("utf-8"),
        )
        self.last_ref = ref

    def targets(self, contact: Contact, row_grant: bytes | None) -> list[Target]:
        """(relay, sid, sender seed) to post to: the peer's private queue if it
        granted one, else every address on its contact card."""
        if row_grant is not None:
            g = QueueGrant.from_bytes(row_grant)
            return [(g.relay, g.sid, g.sender_seed)]
        card = self._card(contact)
        if not card.identity.same_key(contact.identity):
            raise UntrustedKey(f"the contact card of {contact.name} is for another key")
        return [(a.relay, a.sid, None) for a in card.addresses]

    @staticmethod
    def _card(contact: Contact) -> ContactCard:
        if contact.card is None:
            raise MalformedInput(
                f"{contact.name} has no relay address: add their contact card (from 'id export')"
            )
        return ContactCard.from_bytes(contact.card)

    async def _fetch_bundle(self, contact: Contact) -> PrekeyBundle:
        """Claim and verify the peer's prekey bundle from the first of its
        addresses that gives a valid one."""
        card = self._card(contact)
        last: Exception | None = None
        for address in card.addresses:
            try:
                relay = await self._ctx.relay(address.relay)
                signed, one_time = await relay.claim_bundle(address.sid)
                bundle = PrekeyBundle(
                    signed_prekey=Prekey.from_bytes(open_prekey_blob(address.key, signed)),
                    one_time_prekey=(
                        Prekey.from_bytes(open_prekey_blob(address.key, one_time))
                        if one_time is not None
                        else None
                    ),
                )
                bundle.verify(contact.identity, now=self._ctx.now())
                return bundle
            except (RelayError, VerificationFailed, MalformedInput) as e:
                last = e
        if isinstance(last, VerificationFailed):
            # A substituted or forged bundle: the relay (or the network) is
            # attacking the first contact; it belongs in the audit log.
            self._ctx.audit.rejected(Reason.BUNDLE_REJECTED, f"bundle for {contact.name}: {last}")
            raise BundleRejected(f"no valid prekey bundle for {contact.name}: {last}")
        raise last if last is not None else MalformedInput(f"{contact.name} has no address")

    async def send_grants(self) -> None:
        """Grant our private queue to each peer who granted theirs (queued in
        the outbox, posted by the next :meth:`flush`)."""
        ctx, db = self._ctx, self._ctx.db
        retired = db.retired()
        for row in db.sessions():
            if row.grant_sent or row.peer_grant is None or row.conversation in retired:
                continue
            try:
                self._state.load_session(row.conversation, sending=True)
            except RolledBack:
                continue  # never sends again; reported by close()
            try:
                grant = await self._registrar.own_queue(row.conversation)
            except RelayError:
                continue  # our relay is down: the grant goes out on a later pass
            if grant is None or ctx.find_contact(Fingerprint(row.peer)) is None:
                continue
            target = QueueGrant.from_bytes(row.peer_grant)
            with db.transaction():
                session = self._state.load_session(row.conversation, sending=True)
                out = encrypt(session, now=ctx.now(), grant=grant)
                self._state.save_session(session)
                db.mark_grant_sent(row.conversation)
                db.add_outbox(
                    ctx.random(16),
                    target.relay,
                    target.sid,
                    target.sender_seed,
                    out.envelopes[0],
                    ctx.now(),
                )

    async def flush(self, *, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """See :meth:`Channel.flush_outbox`."""
        ctx, db = self._ctx, self._ctx.db
        delivered = pending = 0
        blocked: set[tuple[str, bytes]] = set()
        bad_receipts: list[str] = []
        split: SplitView | None = None
        # The high-water mark first: nothing leaves the machine that a
        # restored client.db could make again unnoticed (client/generations.py).
        db.record_generations()
        entries = db.outbox()
        for done, entry in enumerate(entries, 1):
            if progress is not None:
                progress(done, len(entries))
            target = (entry.relay, entry.sid)
            if target in blocked:
                pending += 1
                continue
            try:
                relay = await ctx.relay(entry.relay)
                sender = Ed25519SigningKey(entry.sender) if entry.sender is not None else None
                self._posting = True
                reply = await relay.send_with_receipt(
                    entry.sid, entry.envelope, entry.msg_id, sender=sender
                )
            except RelayError:
                blocked.add(target)
                pending += 1
                continue
            finally:
                self._posting = False
            delivered += 1
            settled: list[bool] = []
            # The relay has the envelope; now hold it to its log: the receipt
            # must prove the envelope is in a checkpoint consistent with every
            # checkpoint we saw from this relay before. The outbox row is
            # settled in the one commit that keeps the receipt and the
            # checkpoint, or alone (finally) when the receipt fails or the
            # check is cut short: until then a crash leaves the row, and the
            # next flush posts it again under the same message id, which the
            # relay answers as a duplicate (docs/RELAY.md §6).
            try:
                key = await self._logs.key(entry.relay)
                checkpoint = verify_receipt(reply.receipt, entry.envelope, key)
                receipt = json.dumps(reply.receipt.to_json(), separators=(",", ":"))
                await self._logs.accept(
                    entry.relay,
                    key,
                    reply.receipt.checkpoint,
                    checkpoint,
                    # A duplicate's receipt is the one of the first post: old.
                    current=not reply.duplicate,
                    appended=Appended(
                        reply.receipt.leaf_index,
                        envelope_leaf_hash(entry.envelope),
                        reply.receipt.inclusion_proof,
                    ),
                    then=partial(self._settle, entry, receipt, settled),
                    # Lost only with the machine (power, OS crash) before the
                    # next durable commit: the row is posted again, as a
                    # duplicate, the receipt fetched again, the older
                    # checkpoint still held to (docs/AGENT.md, Measured).
                    durable=False,
                )
            except SplitView as e:
                split = split or e  # the strongest finding: reported as such
            except (VerificationFailed, MalformedInput) as e:
                ctx.audit.rejected(reason_of(e), f"receipt from {entry.relay}: {e}")
                bad_receipts.append(f"{entry.relay}: {e}")
            finally:
                if not settled:  # idempotent: a second settle finds nothing
                    with db.transaction():
                        self._settle(entry, None, settled)
        if split is not None:
            raise split
        if bad_receipts:
            raise VerificationFailed(
                "a relay stored the message but its log receipt does not verify: "
                + "; ".join(bad_receipts[:3])
            )
        return delivered, pending

    def _settle(self, entry: OutboxEntry, receipt: str | None, done: list[bool]) -> None:
        """Inside the caller's transaction: the relay has ``entry``; keep its
        receipt (JSON text) when it verified."""
        db = self._ctx.db
        db.remove_outbox(entry.id)
        db.settle_outbox(entry.msg_id)
        if receipt is not None:
            db.add_log_receipt(sha256(entry.envelope), entry.relay, receipt)
        done.append(True)

    # --- the outbox, as 'securechan outbox' shows it ---------------------------------

    def queued(self) -> list[QueuedMessage]:
        """See :meth:`Channel.queued`."""
        return queued(self._ctx)

    def cancel(self, message_id: str, *, interrupted: bool = False) -> Cancelled:
        """See :meth:`Channel.cancel`; ``interrupted``: called because the
        send was cancelled (a post may then be in flight)."""
        return withdraw(self._ctx, message_id, in_flight=interrupted and self._posting)


def queued(ctx: Context) -> list[QueuedMessage]:
    """See :meth:`Channel.queued`."""
    out = []
    for row in ctx.db.queued():
        meta: dict[str, Any] = (
            strict_json.loads(row.meta, max_size=1 << 16, what="an outbox record")
            if row.meta is not None
            else {}
        )
        out.append(
            QueuedMessage(
                id=row.key.hex() if row.ref is not None else row.key.hex()[:16],
                contact=meta.get("contact"),
                kind=str(meta.get("kind", "protocol")),
                size=int(meta.get("size", 0)),
                file_name=meta.get("name"),
                seqs=tuple(meta.get("seqs", ())),
                parts=row.parts,
                posted=row.parts - row.remaining,
                created=row.created,
                relays=row.relays,
            )
        )
    return out


def withdraw(ctx: Context, message_id: str, *, in_flight: bool = False) -> Cancelled:
    """See :meth:`Channel.cancel`."""
    db = ctx.db
    wanted = message_id.strip().lower()
    found = [q for q in queued(ctx) if q.id == wanted]
    if not found:
        raise NotFound(
            f"no queued message {message_id} (see 'securechan outbox'; a message "
            "the relays took in full cannot be cancelled)"
        )
    item = found[0]
    if item.kind == "protocol" or item.contact is None:
        raise UsageError(f"{message_id} is a protocol envelope (a queue grant): not cancellable")
    ref = bytes.fromhex(wanted)
    retired = False
    with db.transaction():
        row = next((r for r in db.queued() if r.ref == ref), None)
        taken = db.withdraw_outbox(ref)
        if taken is None or row is None:
            raise NotFound(f"no queued message {message_id}: it was posted meanwhile")
        parts, withdrawn = taken
        if withdrawn and row.conversation is not None:
            # Our record must not claim a message the contact never gets.
            if item.seqs:
                db.remove_message(row.conversation, "out", item.seqs[-1])
            if row.conversation not in db.retired():
                db.retire_session(row.conversation, ctx.now())
                retired = True
    if retired:
        ctx.audit.rejected(
            Reason.REKEYED,
            f"session retired: a message to {item.contact} was cancelled before all of it "
            "was posted; the next send starts a new one",
            conversation=row.conversation,
            at=ctx.now(),
        )
    return Cancelled(
        id=wanted,
        contact=item.contact,
        kind=item.kind,
        parts=parts,
        withdrawn=withdrawn,
        posted=parts - withdrawn,
        in_flight=1 if in_flight else 0,
        retired=retired,
    )
