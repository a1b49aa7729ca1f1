"""Group events in the local audit log (issue 17; docs/AUDIT.md, kinds
``group-message-sent``, ``group-message-received``, ``group-change``).

The reader (client/group_sync.py) calls one function per event, after
client.db has committed the transcript row it is about:

* :func:`audit_read`: a stream item accepted: a membership change, our own
  message (its record accepted by the stream), another member's message
  whose content passed every check (shown);
* :func:`audit_late`: a message whose content came after its record,
  matched then: shown (``group-message-received``) or not the content the
  sender signed for everyone (a ``rejected`` entry, ``group-equivocation``,
  as when the content comes first);
* :func:`audit_join`: the change we joined a group by (its welcome), before
  the new epoch's first item is read.

Crash policy, as for direct messages (client/inbox.py): the entry is
appended after client.db's commit, so a crash (power loss, SIGKILL) between
the two loses that one entry and never writes it twice: the item is behind
the group's cursor and is not read again. A join is the exception that is
repaired: no stream read repeats it, so each read of the group's new epoch
(until its first item) looks for its entry and writes it if it is missing.
Refused items are ``rejected`` entries, written by the reader as before.
"""

from __future__ import annotations

from typing import Literal

from securechan.audit.log_records import GroupChangeEvent
from securechan.client.context import Context
from securechan.client.db_groups import GroupRow, TranscriptRow
from securechan.errors import Reason
from securechan.protocol.group import GroupState, SignedGroupPayload
from securechan.protocol.group_stream import GroupRecord, GroupWelcome

__all__ = ["audit_join", "audit_late", "audit_message", "audit_read"]


def _log_index(t: TranscriptRow) -> int | None:
    return t.log_index if t.log_index >= 0 else None


def audit_read(
    ctx: Context, old: GroupRow, t: TranscriptRow, record: GroupRecord | None, at: int
) -> None:
    """The entry of a stream item read into ``t`` from group row ``old``
    (the row before the item), if the item was accepted."""
    if record is None or t.status not in ("change", "shown", "content-pending"):
        return
    if record.change is not None:
        before = GroupState.from_bytes(old.state) if old.started else None
        ctx.audit.group_change(
            record.change, before, position=t.position, log_index=_log_index(t), at=at
        )
    elif record.message is not None:
        if t.sender == ctx.identity.fingerprint.digest:
            # Ours: the stream accepted it (whether or not we still hold
            # the content we kept to send pairwise).
            audit_message(ctx, "group-message-sent", t, record.message, at)
        elif t.status == "shown":
            audit_message(ctx, "group-message-received", t, record.message, at)


def audit_message(
    ctx: Context,
    kind: Literal["group-message-sent", "group-message-received"],
    t: TranscriptRow,
    signed: SignedGroupPayload,
    at: int | None = None,
) -> None:
    """One group message entry for transcript row ``t``."""
    ctx.audit.group_message(
        kind, signed, epoch=t.epoch, position=t.position, log_index=_log_index(t), at=at
    )


def audit_late(ctx: Context, row: GroupRow, t: TranscriptRow, signed: SignedGroupPayload) -> None:
    """The entry of a content-pending record of ``row``'s group that the
    content that came later now matched (``t``, as updated)."""
    if t.sender == ctx.identity.fingerprint.digest:
        return  # our own: its group-message-sent was written when read
    if t.status == "shown":
        audit_message(ctx, "group-message-received", t, signed)
    elif t.status == "equivocation":
        ctx.audit.rejected(
            Reason.GROUP_EQUIVOCATION,
            f"group {row.name} position {t.position}: {t.summary}",
            at=ctx.now(),
        )


def audit_join(ctx: Context, group_id: bytes) -> None:
    """The change we joined ``group_id`` by, entered once: ``group_carriage``
    stored it (a transcript row at position 0) in the welcome envelope's
    transaction; until the new epoch's first item is read, this looks for
    its entry and writes it if it is not there."""
    db = ctx.db
    row = db.group(group_id)
    if row is None or row.left or not row.started or row.cursor != 0:
        return
    rows = db.transcript(group_id, record_hash=row.opened_by, limit=1)
    if not rows or rows[0].position != 0 or rows[0].status != "change":
        return
    t = rows[0]
    key = (group_id, t.record_hash)
    for e in ctx.audit.newest("group-change", since=t.at):
        f = e.fields
        if isinstance(f, GroupChangeEvent) and (f.group, f.change_hash) == key:
            return
    change = GroupRecord.from_bytes(t.record).change
    data = db.welcome(group_id, row.epoch, row.opened_by)
    previous = GroupWelcome.from_bytes(data).previous if data is not None else None
    if change is None or previous is None:
        return  # unreachable: a join is made from a welcome with the state it replaces
    ctx.audit.group_change(change, previous, position=0, at=t.at)
