"""Reading groups: pairwise carriage in, the epoch streams read and applied.

The receive side of groups (issue 17; docs/PROTOCOL.md §20, "The client"):

* :func:`store_pairwise`, called by the receive pipeline inside the
  envelope's transaction (client/delivery.py), keeps a pairwise
  ``GROUP_MESSAGE`` (the :class:`GroupDelivery`, keyed by its signed
  payload's hash, the sender's signature checked at once) or
  ``GROUP_WELCOME`` (the epoch secret, keyed by group, epoch and the change
  that opens it; a welcome to a group we do not hold makes us a member).
  Neither is shown as a direct message.
* :class:`GroupReader` then reads each group's current epoch stream from its
  cursor and applies every record in position order with
  :class:`GroupView` (protocol/group.py). Every item read becomes one
  transcript row whose status is one of ``GROUP_STATUSES``; a refused item
  (does not open, or the rules refuse it) leaves the view unchanged and
  never stops the rest. An applied message is matched with its pairwise
  content: shown, equivocation (evidence kept: the stream record and the
  pairwise payload, both signed by the sender) or content-pending; content
  that came pairwise for a record of the current member list that the
  stream never showed is reported as withheld.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from securechan.client.context import Context
from securechan.client.db_groups import GroupRow, TranscriptRow
from securechan.client.group_audit import audit_join, audit_late, audit_read
from securechan.client.group_carriage import (
    decode_content,
    describe_change,
    entry_id,
    join,
    view_of,
    with_view,
)
from securechan.client.group_results import GroupEntry
from securechan.client.results import Rejected
from securechan.errors import (
    GroupEquivocation,
    GroupForked,
    GroupRejected,
    MalformedInput,
    Reason,
    RelayError,
)
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.primitives import sha256
from securechan.protocol.group import (
    GroupChange,
    GroupState,
    GroupView,
    SignedGroupPayload,
    check_content,
)
from securechan.protocol.group_stream import (
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    check_leave,
    leave_secret,
    open_record,
)
from securechan.protocol.payload import FileChunk
from securechan.transport import StreamItem

__all__ = ["ITEM_CHARGE", "STREAM_PAGE", "GroupReader"]

STREAM_PAGE = 200  # stream items fetched at a time (the relay's limit)
# What the relay charges each stream item beyond its blob (docs/RELAY.md,
# "Group streams"; relay/storage.STREAM_ITEM_OVERHEAD, not imported: the
# client does not load the relay).
ITEM_CHARGE = 256


@dataclass(slots=True)
class _Step:
    """What reading one stream item did."""

    row: GroupRow
    entries: list[GroupEntry]
    stop: bool = False  # the epoch ended (a change applied) or we left


class GroupReader:
    """Reads and applies the groups' streams (see the module doc)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    # --- who is who -------------------------------------------------------------

    def identity(self, fingerprint: bytes) -> PublicIdentity | None:
        """The public identity of a member: ours, or a pinned contact's."""
        me = self._ctx.identity
        if fingerprint == me.fingerprint.digest:
            return me.public
        contact = self._ctx.find_contact(Fingerprint(fingerprint))
        return contact.identity if contact is not None else None

    def name(self, fingerprint: bytes) -> str:
        """A member's name here: ours, its contact name, or its fingerprint."""
        me = self._ctx.identity
        if fingerprint == me.fingerprint.digest:
            return me.name
        contact = self._ctx.find_contact(Fingerprint(fingerprint))
        return contact.name if contact is not None else fingerprint.hex()

    def secret(self, row: GroupRow) -> bytes | None:
        """The current epoch's secret, if we hold it (its welcome, checked
        against the change that opened the epoch when it was decoded)."""
        data = self._ctx.db.welcome(row.group_id, row.epoch, row.opened_by)
        if data is None:
            return None
        return GroupWelcome.from_bytes(data).epoch_secret

    def keys(self, row: GroupRow) -> StreamKeys | None:
        """The current epoch's stream keys, if we hold its secret."""
        secret = self.secret(row)
        return None if secret is None else StreamKeys.from_secret(secret)

    def entry(self, row: GroupRow, t: TranscriptRow) -> GroupEntry:
        """A transcript row as the library shows it."""
        return GroupEntry(
            group=row.name,
            id=entry_id(t.record_hash),
            epoch=t.epoch,
            position=t.position,
            sender=self.name(t.sender) if t.sender else "",
            seq=t.seq,
            sent_at=t.sent_at or t.at,
            status=t.status,
            summary=t.summary,
            text=t.text,
            file_name=t.file_name,
        )

    # --- reading ----------------------------------------------------------------------

    def rejoin(self, row: GroupRow) -> bool:
        """A group we left (or were removed from) that a later welcome names
        us in again (it came before we read our removal): join from it."""
        ctx, me = self._ctx, self._ctx.identity.fingerprint.digest
        for epoch, _, data in ctx.db.welcomes(row.group_id):
            welcome = GroupWelcome.from_bytes(data)
            author = self.identity(welcome.change.author)
            if epoch <= row.epoch or welcome.change.state.member(me) is None or author is None:
                continue
            try:
                with ctx.db.transaction():
                    join(ctx, welcome, author, row.relay, ctx.now())
            except GroupRejected:
                continue
            return True
        return False

    async def sync_all(self) -> list[GroupEntry | Rejected]:
        """Read every group we are a member of; a relay that cannot be
        reached for one group is reported and the others are read."""
        out: list[GroupEntry | Rejected] = []
        for row in self._ctx.db.groups():
            if row.left and not self.rejoin(row):
                continue
            try:
                out.extend(await self.sync(row.group_id))
            except RelayError as e:
                out.append(
                    Rejected(
                        reason=Reason.RELAY_ERROR,
                        error=f"group {row.name}: {e}",
                        relay=e.relay or row.relay,
                    )
                )
        return out

    async def sync(self, group_id: bytes) -> list[GroupEntry]:
        """Read one group's streams as far as they go; apply in order."""
        ctx, db = self._ctx, self._ctx.db
        out: list[GroupEntry] = []
        audit_join(self._ctx, group_id)
        while True:
            row = db.group(group_id)
            if row is None or row.left:
                return out
            if row.probe and not await self._find_relay(row):
                return out  # no candidate relay holds the group's stream (yet)
            row = db.group(group_id) or row
            keys = self.keys(row)
            if keys is None:
                return out  # the epoch's welcome has not come yet
            relay = await ctx.relay(row.relay)
            try:
                items, more = await relay.fetch_stream(keys.stream_id, row.cursor, STREAM_PAGE)
            except MalformedInput as e:
                # The transport refuses a page with a gap, a repeat or a
                # reordering: the relay shows this member another stream.
                out.append(self._gap(row, f"the relay's page after position {row.cursor}: {e}"))
                break
            moved = False
            for item in sorted(items, key=lambda i: i.position):
                if item.position <= row.cursor:
                    continue  # a relay repeating what we read: nothing new
                step = self._read(row, keys, item)
                out.extend(step.entries)
                row = step.row
                if step.stop:
                    moved = True
                    break
            if not moved and (not more or not items):
                break
        out.extend(self._late_content(group_id))
        return out

    async def _find_relay(self, row: GroupRow) -> bool:
        """Which relay holds the group's streams (see ``group_carriage.join``)."""
        for url in row.probe:
            try:
                relay = await self._ctx.relay(url)
                items, _ = await relay.fetch_stream(row.probe_stream, 0, 1)
            except (RelayError, MalformedInput):
                continue
            if items:
                with self._ctx.db.transaction():
                    now = self._ctx.db.group(row.group_id)
                    if now is not None:
                        self._ctx.db.put_group(replace(now, relay=url, probe=()))
                return True
        return False

    def _read(self, row: GroupRow, keys: StreamKeys, item: StreamItem) -> _Step:
        """One stream item, in its own transaction."""
        ctx, db = self._ctx, self._ctx.db
        now = ctx.now()
        entries: list[GroupEntry] = []
        if item.position != row.cursor + 1:
            gap = f"positions {row.cursor + 1}..{item.position - 1} were not shown"
            entries.append(self._gap(row, gap))
        base = TranscriptRow(
            group_id=row.group_id,
            epoch=row.epoch,
            position=item.position,
            log_index=item.log_index,
            record_hash=sha256(bytes(item.blob)),
            status="refused",
            at=now,
            stream_id=keys.stream_id,
            blob=bytes(item.blob),
            record=b"",
            summary="",
        )
        try:
            record = open_record(keys, base.blob)
        except MalformedInput:
            record = None
        stop = False
        new = row
        if record is None:
            t = replace(base, summary="a stream item that does not open (skipped by every member)")
        elif record.change is not None:
            t, new, stop = self._change(
                row, replace(base, record=record.to_bytes()), record.change, keys
            )
        elif record.message is not None:
            t, new = self._message(row, replace(base, record=record.to_bytes()), record.message)
        else:  # GroupRecord's decoder makes this unreachable
            t = replace(base, summary="an empty group record")
        with db.transaction():
            current = db.group(row.group_id)
            if current is None or current.cursor != row.cursor or current.epoch != row.epoch:
                return _Step(row=current or row, entries=entries, stop=True)  # another process
            db.add_transcript(t)
            moved = stop and not new.left  # a new epoch: its stream starts empty
            new = replace(
                new,
                cursor=0 if moved else item.position,
                stream_bytes=0 if moved else row.stream_bytes + len(item.blob) + ITEM_CHARGE,
            )
            db.put_group(new)
            if t.status == "shown" or t.status == "equivocation":
                for d in db.deliveries(row.group_id, record_hash=t.record_hash):
                    db.mark_delivery(d.record_hash)
        if t.status in ("refused", "forked", "equivocation"):
            ctx.audit.rejected(
                Reason.GROUP_FORKED
                if t.status == "forked"
                else Reason.GROUP_EQUIVOCATION
                if t.status == "equivocation"
                else Reason.GROUP_REJECTED,
                f"group {row.name} position {item.position}: {t.summary}",
                at=now,
            )
        audit_read(self._ctx, row, t, record, now)
        entries.append(self.entry(new, t))
        return _Step(row=new, entries=entries, stop=stop or new.left)

    def _gap(self, row: GroupRow, what: str) -> GroupEntry:
        now = self._ctx.now()
        summary = (
            f"stream of epoch {row.epoch}: {what}; the relay withholds or reorders group "
            "records for this member (a split view of the group)"
        )
        self._ctx.audit.rejected(Reason.GROUP_FORKED, f"group {row.name}: {summary}", at=now)
        return GroupEntry(
            group=row.name,
            id="",
            epoch=row.epoch,
            position=row.cursor + 1,
            sender="",
            seq=0,
            sent_at=now,
            status="forked",
            summary=summary,
        )

    def _change(
        self, row: GroupRow, t: TranscriptRow, change: GroupChange, keys: StreamKeys
    ) -> tuple[TranscriptRow, GroupRow, bool]:
        t = replace(t, record_hash=change.hash, sender=change.author)
        author = self.identity(change.author)
        names = {fp: self.name(fp) for fp in _members(row, change)}
        secret = self.secret(row)
        try:
            if author is None:
                raise GroupRejected("the change's author is not one of this member's contacts")
            if secret is None:  # pragma: no cover - the stream was read with it
                raise GroupRejected("the current epoch's secret is not held")
            if not row.started:
                if change.hash != row.opened_by:
                    raise GroupRejected("not the creation this member was welcomed to")
                view = GroupView.create(change, author)
                old_view = None
            else:
                old_view = view_of(row)
                view = old_view.apply_change(change, author)
                # A leave commits to the epoch derived from this one's secret.
                check_leave(change, secret)
        except GroupRejected as e:
            return replace(t, summary=str(e)), row, False
        me = self._ctx.identity.fingerprint.digest
        left = view.state.member(me) is None
        summary = describe_change(old_view.state if old_view else None, view.state, names)
        new = with_view(row, view)
        if old_view is None:
            return replace(t, status="change", summary=summary), new, False
        if change.leaves() and not left:
            _keep_leave_secret(
                self._ctx, change, leave_secret(secret, change.state), old_view, keys
            )
        new = replace(new, opened_by=change.hash, left=left)
        return replace(t, status="change", summary=summary), new, True

    def _message(
        self, row: GroupRow, t: TranscriptRow, signed: SignedGroupPayload
    ) -> tuple[TranscriptRow, GroupRow]:
        p = signed.payload
        t = replace(t, record_hash=signed.hash, sender=p.sender, seq=p.seq, sent_at=p.sent_at)
        sender = self.identity(p.sender)
        try:
            if not row.started:
                raise GroupRejected("a message before the group's creation")
            if sender is None:
                raise GroupRejected("the sender is not one of this member's contacts")
            view = view_of(row)
            view = view.accept_record(signed, sender)
        except GroupForked as e:
            return replace(t, status="forked", summary=f"{e} (a split view of the group)"), row
        except GroupEquivocation as e:
            ev = ", ".join(h.hex()[:16] for h in e.evidence if isinstance(h, bytes))
            return replace(t, status="equivocation", summary=f"{e} (evidence: {ev})"), row
        except GroupRejected as e:
            return replace(t, summary=str(e)), row
        new = with_view(row, view)
        if p.sender == self._ctx.identity.fingerprint.digest:
            new = replace(new, own_seq=max(new.own_seq, p.seq))
        return self._match(row, t, signed), new

    def _match(self, row: GroupRow, t: TranscriptRow, signed: SignedGroupPayload) -> TranscriptRow:
        """The applied record with the content this member got pairwise."""
        db, p = self._ctx.db, signed.payload
        got = db.deliveries(row.group_id, record_hash=signed.hash)
        if got:
            d = got[0]
            delivery = GroupDelivery.from_bytes(d.delivery)
            try:
                check_content(signed, delivery.content)
                text, chunk = decode_content(delivery.kind, delivery.content)
            except (GroupRejected, MalformedInput):
                return replace(
                    t,
                    status="equivocation",
                    message=d.message,
                    summary=(
                        "the content this member got is not the one the sender signed for "
                        f"everyone (evidence: record {entry_id(signed.hash)}, pairwise message "
                        f"{entry_id(sha256(d.pairwise))})"
                    ),
                )
            return _shown(t, text, chunk, d.message)
        other = [
            d for d in db.deliveries(row.group_id, sender=p.sender, seq=p.seq) if not d.matched
        ]
        if other:
            d = other[0]
            return replace(
                t,
                status="equivocation",
                message=d.message,
                summary=(
                    "the sender signed different messages for one sequence number: this member "
                    f"got {entry_id(d.record_hash)}, the stream holds {entry_id(signed.hash)}"
                ),
            )
        return replace(t, status="content-pending", summary="content not yet received")

    def all_rows(self, group_id: bytes) -> list[TranscriptRow]:
        """One group's whole transcript, in the order read."""
        rows: list[TranscriptRow] = []
        while page := self._ctx.db.transcript(group_id, after=rows[-1].id if rows else 0):
            rows.extend(page)
        return rows

    def _late_content(self, group_id: bytes) -> list[GroupEntry]:
        """Deliveries not yet matched: content for a record already read
        (arrived late) is matched now; content for a record of the current
        member list the stream never showed is reported as withheld."""
        db = self._ctx.db
        row = db.group(group_id)
        if row is None or not row.started:
            return []
        out: list[GroupEntry] = []
        state_hash = GroupState.from_bytes(row.state).hash
        me = self._ctx.identity.fingerprint.digest
        for d in db.deliveries(group_id, unmatched=True):
            signed = GroupDelivery.from_bytes(d.delivery).signed
            rows = db.transcript(group_id, record_hash=d.record_hash, limit=1)
            if not rows and d.sender == me:
                continue  # our own, not posted (the relay was down): not withheld
            if not rows:
                # Another signed payload of the sender for this number: the
                # record read (its equivocation reported when read, or now).
                rows = [
                    r for r in self.all_rows(group_id) if r.sender == d.sender and r.seq == d.seq
                ]
            if rows:
                t = rows[0]
                if t.status != "content-pending":
                    with db.transaction():
                        db.mark_delivery(d.record_hash)
                    continue
                message = GroupRecord.from_bytes(t.record).message
                if message is None:
                    continue
                new_t = self._match(row, t, message)
                with db.transaction():
                    db.update_transcript(new_t)
                    db.mark_delivery(d.record_hash)
                audit_late(self._ctx, row, new_t, message)
                out.append(self.entry(row, new_t))
            elif signed.payload.state_hash == state_hash or row.left:
                summary = (
                    f"content from {self.name(d.sender)} (group message {d.seq}) arrived "
                    "pairwise for a record the relay never put in this member's stream: "
                    "the relay withholds group records from this member"
                )
                with db.transaction():
                    db.mark_delivery(d.record_hash, 2)
                self._ctx.audit.rejected(Reason.GROUP_FORKED, f"group {row.name}: {summary}")
                out.append(
                    GroupEntry(
                        group=row.name,
                        id=entry_id(d.record_hash),
                        epoch=row.epoch,
                        position=0,
                        sender=self.name(d.sender),
                        seq=d.seq,
                        sent_at=signed.payload.sent_at,
                        status="withheld",
                        summary=summary,
                    )
                )
        return out


def _keep_leave_secret(
    ctx: Context, change: GroupChange, secret: bytes, before: GroupView, keys: StreamKeys
) -> None:
    """No one sends a welcome for a leave: its epoch's secret is derived
    (``leave_secret``); keep it as the welcome of that epoch."""
    derived = GroupWelcome(
        change=change,
        epoch_secret=secret,
        head_before=before.head,
        stream_of_change=keys.stream_id,
        previous=before.state,
    )
    state = change.state
    ctx.db.put_welcome(
        state.group_id, state.epoch, change.hash, change.author, derived.to_bytes(), ctx.now()
    )


def _members(row: GroupRow, change: GroupChange) -> set[bytes]:
    out = {m.fingerprint for m in change.state.members}
    if row.state:
        out |= {m.fingerprint for m in GroupState.from_bytes(row.state).members}
    return out


def _shown(
    t: TranscriptRow, text: str | None, chunk: FileChunk | None, message: str
) -> TranscriptRow:
    if chunk is not None:
        part = f" (part {chunk.index + 1} of {chunk.count})" if chunk.count > 1 else ""
        summary = f"[file {chunk.name}, {chunk.size} bytes{part}]"
        return replace(t, status="shown", file_name=chunk.name, summary=summary, message=message)
    return replace(t, status="shown", text=text, summary=text or "", message=message)
