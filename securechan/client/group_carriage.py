"""Groups: what the read and send sides share, and the pairwise carriage in.

:func:`store_pairwise` is called by the receive pipeline inside the
envelope's transaction (client/delivery.py): it keeps a pairwise
``GROUP_MESSAGE`` (the :class:`GroupDelivery`, keyed by its signed payload's
hash, the sender's signature checked at once: only a message's sender may
deliver it) or ``GROUP_WELCOME`` (the epoch secret, keyed by group, epoch
and the change that opens it, from that change's author; a welcome to a
group this member does not hold, naming it, makes it a member: for a
creation it reads stream 0 from its start, for a later change its view
starts from the welcome, ``GroupView.join``). Neither is shown as a direct
message. The rest are small helpers of client/group_sync.py and
client/groups.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from securechan import wire
from securechan.client.context import Context
from securechan.client.db_groups import DeliveryRow, GroupRow, TranscriptRow
from securechan.client.results import Rejected
from securechan.errors import GroupRejected, MalformedInput
from securechan.identity import Contact
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.protocol.address import ContactCard
from securechan.protocol.group import ZERO, GroupState, GroupView
from securechan.protocol.group_stream import (
    GROUP_CHUNK_SIZE,
    KIND_TEXT,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
)
from securechan.protocol.payload import MAX_FILE_SIZE, FileChunk, TextBody

__all__ = [
    "ENTRY_ID_HEX",
    "decode_content",
    "describe_change",
    "entry_id",
    "fan_out",
    "join",
    "local_name",
    "store_pairwise",
    "view_of",
    "with_view",
]

ENTRY_ID_HEX = 16  # as message ids (securechan.audit.statement.message_id)


def entry_id(record_hash: bytes) -> str:
    """A transcript record's id: the first 16 hex digits of its hash."""
    return record_hash.hex()[:ENTRY_ID_HEX]


def view_of(row: GroupRow) -> GroupView:
    """The view a stored group row holds."""
    return GroupView(
        state=GroupState.from_bytes(row.state),
        head=row.head,
        last=dict(row.last),
        heads=row.heads,
        quiet=row.quiet,
    )


def with_view(row: GroupRow, view: GroupView) -> GroupRow:
    """``row`` holding ``view``."""
    return replace(
        row,
        state=view.state.to_bytes(),
        epoch=view.state.epoch,
        head=view.head,
        heads=view.heads,
        last=dict(view.last),
        started=True,
        quiet=view.quiet,
    )


def local_name(ctx: Context, wanted: str, group_id: bytes) -> str:
    """The group's local name: the creator's, with " (2)", " (3)"... on a
    clash with another group's."""
    taken = {r.name for r in ctx.db.groups() if r.group_id != group_id}
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted} ({n})"
    return name


def describe_change(old: GroupState | None, new: GroupState, names: dict[bytes, str]) -> str:
    """One line for people: what a change did."""

    def who(fp: bytes) -> str:
        return names.get(fp, fp.hex()[:16])

    if old is None:
        members = ", ".join(who(m.fingerprint) for m in new.members)
        return f"group {new.name!r} created with {members}"
    before = {m.fingerprint: m for m in old.members}
    after = {m.fingerprint: m for m in new.members}
    parts = []
    added = [who(f) for f in after if f not in before]
    removed = [who(f) for f in before if f not in after]
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    for f, m in after.items():
        if f in before and before[f].admin != m.admin:
            parts.append(("made admin " if m.admin else "no longer admin ") + who(f))
    if new.name != old.name:
        parts.append(f"renamed to {new.name!r}")
    return f"epoch {new.epoch}: " + ("; ".join(parts) or "no change")


def decode_content(kind: int, content: bytes) -> tuple[str | None, FileChunk | None]:
    """(text, file chunk) of a group message's content; MalformedInput."""
    if kind == KIND_TEXT:
        return TextBody.from_bytes(content).text, None
    chunk = wire.decode_record(FileChunk, content)
    expected = max(1, -(-chunk.size // GROUP_CHUNK_SIZE))
    last = chunk.size - (chunk.count - 1) * GROUP_CHUNK_SIZE
    want = last if chunk.index == chunk.count - 1 else GROUP_CHUNK_SIZE
    if (
        chunk.size > MAX_FILE_SIZE
        or chunk.count != expected
        or chunk.index >= chunk.count
        or len(chunk.data) != want
        or not chunk.name
        or "/" in chunk.name
        or chunk.name in (".", "..")
    ):
        raise MalformedInput("an inconsistent group file chunk")
    return None, chunk


# The batch fan-out (outbox_batch.send_group_batch, given by the caller: the
# outbox is above this module): (posted now, by name; contacts left over).
Batch = Callable[[Sequence[Contact]], Awaitable[tuple[dict[str, bool], list[Contact]]]]
# One send on its own: (posted now, queued at least).
SendOne = Callable[[Contact], Awaitable[tuple[bool, bool]]]


async def fan_out(
    ctx: Context, targets: Sequence[bytes], batch: Batch, send_one: SendOne
) -> tuple[list[str], list[str], list[bytes]]:
    """One group payload (a delivery or a welcome) to each member in
    ``targets``: (delivered, pending) names and the fingerprints owed (not
    even queued). The members with a current session get it as one
    ``batch`` (``outbox_batch.send_group_batch`` on ``Session.send_group_batch``:
    every pairwise copy signed first, then encrypted, all committed with
    the outbox in one transaction before anything is posted;
    docs/PROTOCOL.md §20.8); the rest (no session yet...) one by one
    through ``send_one``, as before."""
    delivered: list[str] = []
    pending: list[str] = []
    owed: list[bytes] = []
    contacts: list[Contact] = []
    for fp in targets:
        contact = ctx.find_contact(Fingerprint(fp))
        if contact is None:
            pending.append(f"{fp.hex()} (not a contact)")
        else:
            contacts.append(contact)
    posted, rest = await batch(contacts)
    for name, sent in posted.items():
        (delivered if sent else pending).append(name)
    for contact in rest:
        sent, queued = await send_one(contact)
        (delivered if sent else pending).append(contact.name)
        if not queued:
            owed.append(contact.fingerprint.digest)
    return delivered, pending, owed


def store_pairwise(
    ctx: Context,
    peer: PublicIdentity,
    content: GroupDelivery | GroupWelcome,
    *,
    pairwise: bytes,
    message: str,
    relay: str,
    now: int,
) -> Rejected | None:
    """Keep a pairwise group payload (inside the envelope's transaction);
    a Rejected for one that must not be kept (state unchanged)."""
    db, me = ctx.db, ctx.identity.fingerprint.digest
    try:
        if isinstance(content, GroupDelivery):
            p = content.signed.payload
            if p.sender != peer.fingerprint.digest:
                raise GroupRejected("a group message delivered by another member than its sender")
            content.signed.verify(peer)
            db.add_delivery(
                DeliveryRow(
                    record_hash=content.signed.hash,
                    group_id=p.group_id,
                    sender=p.sender,
                    seq=p.seq,
                    received=now,
                    matched=False,
                    delivery=content.to_bytes(),
                    pairwise=pairwise,
                    message=message,
                )
            )
            return None
        change = content.change
        state = change.state
        change.verify(peer)  # the welcome comes from the change's author
        if state.member(me) is None:
            raise GroupRejected("a welcome to a group state this member is not in")
        db.put_welcome(
            state.group_id, state.epoch, change.hash, change.author, content.to_bytes(), now
        )
        row = db.group(state.group_id)
        if row is not None and not (row.left and state.epoch > row.epoch):
            return None  # a member already: the reader takes the secret when it applies it
        join(ctx, content, peer, relay, now)
        return None
    except GroupRejected as e:
        return Rejected(reason=e.code, error=f"group payload from {peer.name}: {e}")


def join(ctx: Context, welcome: GroupWelcome, author: PublicIdentity, relay: str, now: int) -> None:
    """A welcome to a group we do not hold (or left): become a member. A
    creation's: read stream 0 from its start (the creation is its first
    record). A later change's: start the view from the welcome. Which relay
    holds the group's streams is found on the first read: the first of the
    relay the welcome came through and the author's relays whose copy of the
    change's stream is not empty (:meth:`GroupReader.sync`)."""
    probe = _candidates(ctx, author, relay)
    _join(ctx, welcome, author, relay, now, probe)


def _candidates(ctx: Context, author: PublicIdentity, relay: str) -> tuple[str, ...]:
    out: list[str] = [relay]
    contact = ctx.find_contact(author.fingerprint)
    if contact is not None and contact.card is not None:
        with contextlib.suppress(MalformedInput):
            out.extend(a.relay for a in ContactCard.from_bytes(contact.card).addresses)
    return tuple(dict.fromkeys(out))


def _join(
    ctx: Context,
    welcome: GroupWelcome,
    author: PublicIdentity,
    relay: str,
    now: int,
    probe: tuple[str, ...],
) -> None:
    change = welcome.change
    state = change.state
    gid = state.group_id
    name = local_name(ctx, state.name, gid)
    if state.epoch == 0:
        ctx.db.put_group(
            GroupRow(
                group_id=gid,
                name=name,
                relay=relay,
                epoch=0,
                state=state.to_bytes(),
                head=ZERO,
                heads=(),
                started=False,
                created=now,
                opened_by=change.hash,
                probe=probe,
                probe_stream=welcome.stream_of_change,
            )
        )
        return
    # Each sender's last number at the change (GroupSenderMark): the joiner
    # expects the same next numbers as the members who were there.
    view = GroupView.join(change, author, welcome.previous, welcome.head_before, welcome.last())
    old = ctx.db.group(gid)
    row = GroupRow(
        group_id=gid,
        name=old.name if old is not None else name,
        relay=old.relay if old is not None else relay,
        epoch=state.epoch,
        state=b"",
        head=ZERO,
        heads=(),
        created=old.created if old is not None else now,
        own_seq=old.own_seq if old is not None else 0,
        opened_by=change.hash,
        joined=True,
        probe=() if old is not None else probe,
        probe_stream=welcome.stream_of_change,
    )
    ctx.db.put_group(with_view(row, view))
    ctx.db.add_transcript(
        TranscriptRow(
            group_id=gid,
            epoch=state.epoch - 1,
            position=0,
            log_index=-1,
            record_hash=change.hash,
            status="change",
            at=now,
            stream_id=welcome.stream_of_change,
            blob=b"",
            record=GroupRecord(change=change).to_bytes(),
            summary="joined: " + describe_change(welcome.previous, state, {}),
            sender=change.author,
        )
    )
