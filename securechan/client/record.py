"""Reading the record: history, log receipts of received messages, and
statements (``docs/AUDIT.md``, Statements).

Owns nothing it writes but the ``log_receipts`` rows of received messages;
reads the ``messages`` table (written by the outbox and the inbox), the
``relay_logs`` table (client/logview.py) and the handshake proofs
(:class:`ProtocolState`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from securechan.audit.note import keep_signatures
from securechan.audit.receipt import Receipt as LogReceipt
from securechan.audit.receipt import envelope_leaf_hash, verify_receipt
from securechan.audit.statement import LogPlacement, Statement, message_id
from securechan.client.context import Context
from securechan.client.db import StoredMessage
from securechan.client.files import file_summary
from securechan.client.logview import RelayLogs, pinned_keys
from securechan.client.state import ProtocolState
from securechan.client.stored import StoredRecord
from securechan.errors import ContactNotFound, NotFound, RelayError, UsageError
from securechan.identity.keys import Fingerprint
from securechan.primitives import sha256
from securechan.protocol.address import QueueGrant
from securechan.protocol.payload import ContentType, FileChunk, Receipt, SignedPayload

__all__ = ["History", "MessageRecord"]

# (contact, direction, seq, time, summary, message id)
History = list[tuple[str, str, int, int, str, str]]
_PAGE = 500  # messages read from the database at a time


# Payloads kept in the record but not listed as direct messages: the hello,
# and group carriage (a group's transcript lists those: Channel.group_history).
_NOT_SHOWN = (ContentType.HELLO, ContentType.GROUP_MESSAGE, ContentType.GROUP_WELCOME)


class MessageRecord:
    """The stored messages of one home, as the user reads them."""

    def __init__(self, ctx: Context, state: ProtocolState, logs: RelayLogs) -> None:
        self._ctx = ctx
        self._state = state
        self._logs = logs

    def history(self, name: str | None = None) -> History:
        """See :meth:`Channel.history`: every stored message, read from the
        database a page at a time."""
        peer = None
        if name is not None:
            peer = self._ctx.contact(name).fingerprint.digest
        out = []
        for m in self._all_messages(peer):
            rec = StoredRecord.from_bytes(m.record)
            payload = SignedPayload.from_bytes_unverified(rec.signed).payload
            content = payload.content()
            if isinstance(content, QueueGrant) or payload.content_type in _NOT_SHOWN:
                continue  # housekeeping, or group carriage: kept in the store, not shown
            if isinstance(content, str):
                summary = content
            elif isinstance(content, FileChunk):
                shown = file_summary(content)
                if shown is None:
                    continue  # a file is shown once, at its last chunk
                summary = shown
            elif isinstance(content, Receipt):
                summary = f"[receipt up to {content.up_to_seq}]"
            else:
                summary = "[empty]"
            out.append(
                (rec.contact, m.direction, m.seq, payload.sent_at, summary, message_id(rec.signed))
            )
        return out

    def _all_messages(self, peer: bytes | None) -> Iterator[StoredMessage]:
        after = 0
        while page := self._ctx.db.messages(peer, after=after, limit=_PAGE):
            yield from page
            after = page[-1].id

    def history_page(
        self, name: str | None, *, limit: int | None, before: str | None
    ) -> tuple[History, bool]:
        """See :meth:`Channel.history_page`."""
        rows = self.history(name)
        if before is not None:
            wanted = before.strip().lower()
            if not 8 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
                raise UsageError("--before takes a message id: 8 to 64 hex digits")
            at = [i for i, r in enumerate(rows) if r[5].startswith(wanted)]
            if not at:
                raise NotFound(f"no stored message has the id {wanted}")
            if len(at) > 1:
                raise UsageError(f"the id {wanted} is ambiguous: give more digits")
            rows = rows[: at[0]]
        if limit is not None and len(rows) > limit:
            return (rows[len(rows) - limit :] if limit else []), True
        return rows, False

    def find(self, wanted_id: str) -> tuple[StoredMessage, StoredRecord]:
        """The one stored message whose id starts with ``wanted_id``."""
        wanted = wanted_id.strip().lower()
        if not 8 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
            raise UsageError("a message id is 8 to 64 hex digits")
        found = []
        for m in self._all_messages(None):
            rec = StoredRecord.from_bytes(m.record)
            if sha256(rec.signed).hex().startswith(wanted):
                found.append((m, rec))
        if not found:
            raise NotFound(f"no stored message has the id {wanted}")
        if len(found) > 1:
            raise UsageError(f"the id {wanted} is ambiguous: give more digits")
        return found[0]

    async def fetch_receipt(self, wanted_id: str) -> bool:
        """See :meth:`Channel.fetch_receipt`."""
        _, rec = self.find(wanted_id)
        envelope, relay_url = rec.envelope, rec.relay
        if envelope is None or relay_url is None:
            return False
        db = self._ctx.db
        if db.log_receipts(sha256(envelope)):
            return True
        try:
            key = await self._logs.key(relay_url)
            relay = await self._ctx.relay(relay_url)
            receipt = await relay.leaf_receipt(envelope_leaf_hash(envelope))
            if receipt is None:
                return False
            checkpoint = verify_receipt(receipt, envelope, key)
            await self._logs.accept(relay_url, key, receipt.checkpoint, checkpoint)
        except RelayError:
            return False
        with db.transaction():
            db.add_log_receipt(
                sha256(envelope), relay_url, json.dumps(receipt.to_json(), separators=(",", ":"))
            )
        return True

    def statement(self, wanted_id: str) -> Statement:
        """See :meth:`Channel.statement`."""
        m, rec = self.find(wanted_id)
        if rec.envelope is None or rec.key is None or rec.ad is None:
            raise UsageError("this message was stored without what a statement needs")
        peer = self._ctx.find_contact(Fingerprint(m.peer))
        if peer is None:
            raise ContactNotFound("the message's contact is no longer pinned")
        proof = self._state.load_handshake(m.conversation)
        me, them = self._ctx.identity.public.to_bytes(), peer.identity.to_bytes()
        return Statement(
            signed=rec.signed,
            sender=me if m.direction == "out" else them,
            recipient=them if m.direction == "out" else me,
            envelope=rec.envelope,
            message_key=rec.key,
            transcript=proof.transcript,
            transcript_signature=proof.signature,
            placement=self._placement(rec.envelope),
            receipt=self._receipt_for(m, rec.signed),
        )

    def _placement(self, envelope: bytes) -> LogPlacement | None:
        """The envelope's place in a relay's log, from a kept receipt; the
        checkpoint keeps only the relay's own signature (cosignatures by
        keys the file does not name would make it unverifiable)."""
        db = self._ctx.db
        for relay_url, text in db.log_receipts(sha256(envelope)):
            known = db.relay_log(relay_url)
            if known is None:
                continue
            receipt = LogReceipt.from_json_text(text)
            log_key = pinned_keys(known[0])[0]
            own = keep_signatures(receipt.checkpoint, [log_key])
            if own is None:
                continue
            return LogPlacement(
                log_key=log_key.to_text(),
                leaf_index=receipt.leaf_index,
                checkpoint=own,
                inclusion_proof=receipt.inclusion_proof,
            )
        return None

    def _receipt_for(self, m: StoredMessage, signed: bytes) -> bytes | None:
        """The recipient's signed receipt (ours for a received message, the
        peer's for a sent one) covering exactly message ``m``: up to its
        sequence number, with its hash. Only an exact one: a later receipt
        would need the messages in between revealed to link the chain."""
        digest = sha256(signed)
        for other in self._ctx.db.messages(m.peer, limit=1 << 40):
            if other.conversation != m.conversation or other.direction == m.direction:
                continue
            candidate = StoredRecord.from_bytes(other.record).signed
            content = SignedPayload.from_bytes_unverified(candidate).payload.content()
            if (
                isinstance(content, Receipt)
                and content.up_to_seq == m.seq
                and content.chain_hash == digest
            ):
                return bytes(candidate)
        return None

    def known_logs(self) -> list[str]:
        """Every relay whose log key we pinned (ours, and our contacts')."""
        return [relay for relay, _, _ in self._ctx.db.relay_logs()]
