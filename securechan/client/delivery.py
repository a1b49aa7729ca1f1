"""What an opened envelope becomes: stored records, grants, files, results.

Called inside the envelope's transaction (client/inbox.py), after the
session accepted it: every received message is written to the record
(``messages``, with the envelope, its message key and the relay it came
from, for statements) and its ratchet position to ``positions`` (to tell a
replay from a peer's rollback, client/equivocation.py); a queue grant is
kept on the session row; file chunks go to client/files.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from securechan.client.context import Context
from securechan.client.files import file_intact, take_file
from securechan.client.group_carriage import store_pairwise
from securechan.client.pipeline import ratchet_position, stage
from securechan.client.results import Received, Rejected
from securechan.client.stored import StoredRecord
from securechan.errors import Reason
from securechan.protocol.address import QueueGrant
from securechan.protocol.group_stream import GroupDelivery, GroupWelcome
from securechan.protocol.payload import CHUNK_SIZE, ContentType, FileChunk, Receipt
from securechan.protocol.session import (
    Event,
    MessageReceived,
    MessagesMissing,
    OutOfOrder,
    ReceiptChecked,
    Session,
)

__all__ = ["Opened", "deliver"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """An envelope the session accepted: where it came from and what it said."""

    session: Session
    events: list[Event]
    envelope: bytes
    relay: str
    # Told of each stored chunk of a file: (file name, bytes held, size).
    progress: Callable[[str, int, int], None] | None = None


def deliver(ctx: Context, opened: Opened, now: int) -> list[Received | Rejected]:
    """Store what ``opened`` carried and say what is shown (inside the
    caller's transaction; stage names for anything unexpected)."""
    session, db = opened.session, ctx.db
    contact = ctx.find_contact(session.peer.fingerprint)
    name = contact.name if contact is not None else session.peer.name
    verified = contact.verified if contact is not None else False
    fingerprint = str(session.peer.fingerprint)
    out: list[Received | Rejected] = []
    notes: list[str] = []
    for ev in opened.events:
        if isinstance(ev, MessagesMissing):
            notes.append(f"messages {ev.from_seq}..{ev.to_seq} from {name} have not arrived")
        elif isinstance(ev, OutOfOrder):
            notes.append(f"message {ev.seq} arrived late (out of order)")
    for ev in opened.events:
        if isinstance(ev, ReceiptChecked):
            out.append(
                Received(
                    contact=name,
                    fingerprint=fingerprint,
                    verified=verified,
                    conversation=session.conversation,
                    seq=0,
                    sent_at=now,
                    content_type=ContentType.RECEIPT,
                    receipt_matches=ev.matches,
                    notes=(f"receipt up to {ev.up_to_seq}",),
                )
            )
        if not isinstance(ev, MessageReceived):
            continue
        with stage("store"):
            record = StoredRecord(
                signed=ev.signed,
                contact=name,
                envelope=opened.envelope,
                key=ev.key,
                ad=session.transcript_hash,
                relay=opened.relay,
            )
            db.add_message(
                session.conversation,
                session.peer.fingerprint.digest,
                "in",
                ev.seq,
                now,
                record.to_bytes(),
            )
            position = ratchet_position(opened.envelope)
            if position is not None:  # for telling a replay from a rollback
                db.add_position(db.position_key(*position), session.conversation, ev.seq)
        content = ev.content

        base = {
            "contact": name,
            "fingerprint": fingerprint,
            "verified": verified,
            "conversation": session.conversation,
            "seq": ev.seq,
            "sent_at": ev.sent_at,
            "content_type": ev.content_type,
            "notes": tuple(notes),
            "hash": ev.hash,
        }
        if isinstance(content, QueueGrant):
            with stage("payload"):
                db.set_peer_grant(session.conversation, content.to_bytes())
            continue
        if isinstance(content, (GroupDelivery, GroupWelcome)):
            # Kept for the group layer (client/group_sync.py), never shown
            # as a direct message: the group's stream orders it.
            with stage("group"):
                refused = store_pairwise(
                    ctx,
                    session.peer,
                    content,
                    pairwise=ev.signed,
                    message=f"{session.conversation.hex()}:{ev.seq}",
                    relay=opened.relay,
                    now=now,
                )
            if refused is not None:
                out.append(refused)
            continue
        if isinstance(content, FileChunk):
            with stage("file"):
                held, data = take_file(db, session.conversation, content)
            if opened.progress is not None:
                opened.progress(content.name, min(content.size, held * CHUNK_SIZE), content.size)
            if data is not None:
                if not file_intact(content, data):
                    out.append(
                        Rejected(
                            reason=Reason.FILE_CORRUPT,
                            error=f"file {content.name!r} does not match its hash",
                        )
                    )
                    continue
                out.append(Received(**base, file_name=content.name, file_data=data))  # type: ignore[arg-type]
            continue
        with stage("payload"):
            if isinstance(content, Receipt):
                out.append(Received(**base, receipt=content))  # type: ignore[arg-type]
                continue
            out.append(Received(**base, text=content if isinstance(content, str) else None))  # type: ignore[arg-type]
    return out
