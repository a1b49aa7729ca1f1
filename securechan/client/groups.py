"""Groups: create, change, send; what a member holds (issue 17).

The send side of groups (docs/PROTOCOL.md §20, "The client"; the read side
is client/group_sync.py):

* A membership change (create, add, remove, leave) is signed with
  :meth:`GroupChange.sign`, posted sealed to the current epoch's stream (the
  creation: the first item of stream 0, under a fresh epoch secret), and the
  stream is read until the change is applied; only then is a
  :class:`GroupWelcome` (the change and the new epoch's secret) sent
  pairwise to every other member of the new state, through the sessions and
  the outbox. A change that loses to a concurrent one is refused
  (:class:`GroupRejected`): nothing was sent pairwise.
* A group message (:meth:`Groups.send`): sync; sign the payload on the
  current state and head with our next sequence number; post it sealed;
  read the stream up to it; if it was refused (a change came first: "made
  for another member list") make it again on the new state, at most
  ``SEND_TRIES`` times; only then send the :class:`GroupDelivery` pairwise
  to every other member of the state it was accepted under. Nothing is sent
  pairwise before the record is in the stream, so a member removed by a
  concurrent change never gets the content. A file goes as one record per
  ``GROUP_CHUNK_SIZE`` chunk.

Every member must be a pinned contact of every other (their signatures are
checked with the pinned identities); the group's streams live at the relay
of its creator (the first one it registered at); a joiner reads them at the
relay its welcome came through (docs/LIBRARY.md, Groups).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from securechan.client.context import Context
from securechan.client.db_groups import DeliveryRow, GroupRow
from securechan.client.group_carriage import entry_id, fan_out, local_name, view_of
from securechan.client.group_change import (
    ROTATE_AT,
    StreamBudget,
    admin_change,
    after_full,
    audible,
    last_admin,
    make_change,
    rekey_due,
    stream_full,
)
from securechan.client.group_parts import (
    debt_due,
    file_chunks,
    group_info,
    history,
    owe,
    post_record,
    read_file,
)
from securechan.client.group_results import GroupEntry, GroupInfo, GroupSent
from securechan.client.group_sync import GroupReader
from securechan.client.logview import RelayLogs
from securechan.client.outbox import Built, Outbox
from securechan.client.outbox_batch import send_group_batch
from securechan.client.results import Received, Rejected
from securechan.errors import (
    GroupRejected,
    MalformedInput,
    NotFound,
    RelayError,
    RelayRefused,
    SecurechanError,
    UsageError,
)
from securechan.identity import Contact
from securechan.identity.keys import Fingerprint
from securechan.protocol.group import (
    ZERO,
    GroupChange,
    GroupMember,
    GroupPayload,
    GroupState,
    SignedGroupPayload,
    commit_content,
)
from securechan.protocol.group_stream import (
    KIND_FILE,
    KIND_TEXT,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
)
from securechan.protocol.payload import (
    ContentType,
    TextBody,
    message_text,
)
from securechan.protocol.session import Session

__all__ = ["SEND_TRIES", "WELCOME_WAIT", "Groups"]

SEND_TRIES = 3  # a message refused because a change came first is made again
# Pauses (seconds) between receive passes while a new epoch's welcome is awaited.
WELCOME_WAIT = (0.25, 0.5, 1.0, 2.0)


class Groups:
    """The client's groups, on a context, the outbox and the reader."""

    def __init__(
        self, ctx: Context, outbox: Outbox, relays: Callable[[], list[str]], logs: RelayLogs
    ) -> None:
        self._ctx = ctx
        self._outbox = outbox
        self._logs = logs
        self._relays = relays
        self.reader = GroupReader(ctx)
        # A receive pass, run when a group's new epoch key has not come yet
        # (its welcome travels pairwise); what it returned waits here for the
        # next Channel.receive, so nothing received is lost.
        self.receive_pass: (
            Callable[[], Awaitable[list[Received | Rejected | GroupEntry]]] | None
        ) = None
        self.stashed: list[Received | Rejected | GroupEntry] = []
        self.changing = False  # a change under way (its receive passes do not rekey)
        # An admin's client rekeys a group once its epoch's stream holds this
        # (group_change.ROTATE_AT: 90% of the relay's documented defaults); a
        # library user whose relay is configured lower sets it lower.
        self.rotate_at: StreamBudget = ROTATE_AT

    # --- what we hold -----------------------------------------------------------

    @property
    def ctx(self) -> Context:
        return self._ctx

    def row(self, group: str) -> GroupRow:
        """The group with this local name (or group id hex); NotFound."""
        for row in self._ctx.db.groups():
            if row.name == group or row.group_id.hex() == group.lower():
                return row
        raise NotFound(f"no group {group!r} (see 'securechan group list')")

    def info(self, row: GroupRow) -> GroupInfo:
        """A stored group as :class:`GroupInfo`."""
        return group_info(self._ctx, row)

    def all_groups(self) -> list[GroupInfo]:
        """Every group, in the order created."""
        return [self.info(r) for r in self._ctx.db.groups()]

    def history(
        self, group: str, *, limit: int | None = None, before: str | None = None
    ) -> list[GroupEntry]:
        """See :meth:`Channel.group_history`."""
        return history(self._ctx, self.reader, self.row(group), limit=limit, before=before)

    def file(self, group: str, entry: str) -> tuple[str, bytes]:
        """See :meth:`Channel.group_file`."""
        return read_file(self._ctx, self.reader, self.row(group), entry)

    # --- changes ------------------------------------------------------------------

    async def create(
        self, name: str, members: Sequence[str], admins: Sequence[str] = ()
    ) -> GroupInfo:
        """See :meth:`Channel.group_create`."""
        ctx = self._ctx
        relays = self._relays()
        if not relays:
            raise UsageError("a group needs a relay for its stream: register at one first")
        me = ctx.identity.fingerprint.digest
        contacts = [ctx.contact(m) for m in members]
        heads = {me} | {ctx.contact(a).fingerprint.digest for a in admins}
        prints = {c.fingerprint.digest for c in contacts} | heads
        try:
            state = GroupState(
                group_id=ctx.random(32),
                epoch=0,
                name=name,
                members=tuple(GroupMember(fingerprint=f, admin=f in heads) for f in sorted(prints)),
                previous=ZERO,
            )
        except (MalformedInput, ValueError) as e:
            raise UsageError(f"cannot create group {name!r}: {e}") from None
        secret = ctx.random(32)
        keys = StreamKeys.from_secret(secret)
        change = GroupChange.sign(ctx.identity, state, next_stream=keys.commitment, head=ZERO)
        welcome = GroupWelcome(
            change=change, epoch_secret=secret, head_before=ZERO, stream_of_change=keys.stream_id
        )
        now = ctx.now()
        with ctx.db.transaction():
            ctx.db.put_welcome(state.group_id, 0, change.hash, me, welcome.to_bytes(), now)
            ctx.db.put_group(
                GroupRow(
                    group_id=state.group_id,
                    name=local_name(ctx, name, state.group_id),
                    relay=relays[0],
                    epoch=0,
                    state=state.to_bytes(),
                    head=ZERO,
                    heads=(),
                    started=False,
                    created=now,
                    opened_by=change.hash,
                )
            )
        row = self.row(state.group_id.hex())
        try:
            await self.post(row, keys, GroupRecord(change=change))
        except RelayError:
            # Not in the stream (or its answer lost: an orphan no one reads):
            # nothing to keep; the user creates it again.
            with ctx.db.transaction():
                ctx.db.forget_group(state.group_id)
            raise
        await self.reader.sync(state.group_id)
        row = self.row(state.group_id.hex())
        if not row.started or GroupState.from_bytes(row.state).hash != state.hash:
            raise GroupRejected(f"the creation of group {name!r} was not applied in its stream")
        await self.welcome(welcome, exclude=me)
        return self.info(self.row(state.group_id.hex()))

    async def add(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """See :meth:`Channel.group_add`."""
        new = [self._ctx.contact(c).fingerprint.digest for c in contacts]

        def change(old: GroupState) -> tuple[GroupMember, ...]:
            have = {m.fingerprint: m for m in old.members}
            for f in new:
                have.setdefault(f, GroupMember(fingerprint=f, admin=False))
            return tuple(have[f] for f in sorted(have))

        return await self._change(group, change)

    async def remove(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """See :meth:`Channel.group_remove`."""
        gone = {self._ctx.contact(c).fingerprint.digest for c in contacts}
        return await self._change(
            group, lambda old: tuple(m for m in old.members if m.fingerprint not in gone)
        )

    async def leave(self, group: str) -> GroupInfo:
        """See :meth:`Channel.group_leave`."""
        me = self._ctx.identity.fingerprint.digest
        name = self.row(group).name

        def change(old: GroupState) -> tuple[GroupMember, ...]:
            last_admin(old, me, "leave", name)
            return tuple(m for m in old.members if m.fingerprint != me)

        return await self._change(group, change)

    async def admin(self, group: str, contacts: Sequence[str], *, grant: bool) -> GroupInfo:
        """See :meth:`Channel.group_admin`."""
        change = admin_change(self._ctx, self.row(group).name, contacts, grant=grant)
        return await self._change(group, change)

    async def rekey(self, group: str) -> GroupInfo:
        """See :meth:`Channel.group_rekey`: a change with the same members
        and a fresh epoch secret (admins only)."""
        return await self._change(group, lambda old: old.members, rekey=True)

    async def _change(
        self,
        group: str,
        members: Callable[[GroupState], tuple[GroupMember, ...]],
        *,
        rekey: bool = False,
    ) -> GroupInfo:
        changing, self.changing = self.changing, True
        try:
            return await make_change(self, group, members, rekey=rekey)
        finally:
            self.changing = changing

    async def welcome(
        self, welcome: GroupWelcome, *, exclude: bytes
    ) -> tuple[list[str], list[str]]:
        """Send ``welcome`` pairwise to every member of its state but us."""
        body = welcome.to_bytes()
        targets = [m.fingerprint for m in welcome.change.state.members if m.fingerprint != exclude]
        gid = welcome.change.state.group_id
        return await self._pairwise(targets, ContentType.GROUP_WELCOME, body, gid)

    async def _pairwise(
        self,
        targets: Sequence[bytes],
        content_type: ContentType,
        body: bytes,
        group_id: bytes | None = None,
    ) -> tuple[list[str], list[str]]:
        """One pairwise message to each target; (delivered, pending) names.
        One that could not even be queued (no session yet and the peer's
        relay down) is owed: kept on the group's row and sent again after
        each receive pass (:meth:`pay_debts`)."""
        delivered, pending, owed = await fan_out(
            self._ctx,
            targets,
            lambda cs: send_group_batch(self._outbox, cs, content_type, body),
            lambda c: self._send_one(c, content_type, body),
        )
        if owed and group_id is not None:
            owe(self._ctx, group_id, content_type, owed, body)
        return delivered, pending

    async def _send_one(
        self, contact: Contact, content_type: ContentType, body: bytes
    ) -> tuple[bool, bool]:
        """(posted to the relay now, queued in the outbox at least)."""
        now = self._ctx.now

        def build(session: Session) -> Built:
            out = session.send_group(content_type, body, now=now())
            return Built(envelopes=(out.envelope,), signed=out.record, key=out.key, ad=out.ad)

        kind = "group-welcome" if content_type is ContentType.GROUP_WELCOME else "group"
        try:
            res = await self._outbox.send(
                contact.name, build, what={"kind": kind, "size": len(body)}
            )
        except SecurechanError:
            # No session and the peer's relay is down, rolled back, or a split
            # view found after queuing: owed only if nothing was queued.
            return False, self._outbox.last_ref is not None
        return res.pending == 0, True

    async def pay_debts(self) -> None:
        """Send again what could not be queued (see :meth:`_pairwise`);
        first rekey the groups a leave left quiet or whose stream is filling
        (``group_change.rekey_due``)."""
        await rekey_due(self)
        for row in self._ctx.db.groups():
            if not row.owed:
                continue
            still: list[tuple[int, bytes, bytes]] = []
            for ct, fp, body in row.owed:
                contact = self._ctx.find_contact(Fingerprint(fp))
                if contact is None:
                    continue
                due = debt_due(self._ctx, row.group_id, ct, body)
                queued = due is False or (
                    due is True and (await self._send_one(contact, ContentType(ct), body))[1]
                )
                if not queued:
                    still.append((ct, fp, body))
            with self._ctx.db.transaction():
                now = self._ctx.db.group(row.group_id)
                if now is not None:
                    left = [o for o in now.owed if o not in row.owed]
                    self._ctx.db.put_group(replace(now, owed=(*still, *left)))

    # --- messages ------------------------------------------------------------------

    async def send(self, group: str, *, text: str | None, path: str | None) -> GroupSent:
        """See :meth:`Channel.send_group`."""
        if (text is None) == (path is None):
            raise UsageError("send to a group takes a text or a file")
        contents: list[tuple[int, bytes]]
        if text is not None:
            contents = [(KIND_TEXT, TextBody(text=message_text(text)).to_bytes())]
        else:
            contents = [(KIND_FILE, c) for c in file_chunks(str(path), self._ctx.random(16))]
        sent: GroupSent | None = None
        delivered: set[str] = set()
        pending: set[str] = set()
        for kind, content in contents:
            sent = await self._send_record(group, kind, content)
            delivered |= set(sent.delivered)
            pending |= set(sent.pending)
        if sent is None:
            raise UsageError("nothing to send")
        return replace(
            sent, delivered=tuple(sorted(delivered - pending)), pending=tuple(sorted(pending))
        )

    async def _send_record(self, group: str, kind: int, content: bytes) -> GroupSent:
        ctx, db = self._ctx, self._ctx.db
        me = ctx.identity.fingerprint.digest
        full_once = False  # sent again once after a rekey for a full stream
        for _ in range(SEND_TRIES):
            row = await audible(self, group)
            view = view_of(row)
            if view.state.member(me) is None:
                raise UsageError(f"you are not a member of group {row.name!r}")
            # Our next number: after our last accepted one. A member added
            # back whose welcome had no marks for it (its view does not hold
            # its own last number) continues from what it stored.
            seq = (view.last[me][0] if me in view.last else row.own_seq) + 1
            payload = GroupPayload(
                group_id=row.group_id,
                state_hash=view.state.hash,
                sender=me,
                seq=seq,
                head=view.head,
                commitment=commit_content(row.group_id, me, seq, content),
                sent_at=ctx.now(),
            )
            signed = SignedGroupPayload.sign(ctx.identity, payload)
            delivery = GroupDelivery(signed=signed, kind=kind, content=content)
            with db.transaction():
                db.add_delivery(
                    DeliveryRow(
                        record_hash=signed.hash,
                        group_id=row.group_id,
                        sender=me,
                        seq=seq,
                        received=ctx.now(),
                        matched=False,
                        delivery=delivery.to_bytes(),
                        pairwise=b"",
                        message="",
                    )
                )
            keys = self._keys(row)
            try:
                position, log_index = await self.post(row, keys, GroupRecord(message=signed))
            except RelayError as e:
                if isinstance(e, RelayRefused) and stream_full(e):
                    # Not in the stream, for good: an admin's client moves the
                    # group on and sends once more; else one line says who does.
                    await after_full(self, row, e, again=full_once)
                    full_once = True
                    continue
                # The record may be in the stream (an answer lost): its content
                # is owed to the others, sent once a read shows it (pay_debts).
                others = [m.fingerprint for m in view.state.members if m.fingerprint != me]
                owe(ctx, row.group_id, ContentType.GROUP_MESSAGE, others, delivery.to_bytes())
                raise
            await self.reader.sync(row.group_id)
            mine = db.transcript(row.group_id, record_hash=signed.hash, limit=1)
            if mine and mine[0].status == "shown":
                targets = [m.fingerprint for m in view.state.members if m.fingerprint != me]
                got, wait = await self._pairwise(
                    targets, ContentType.GROUP_MESSAGE, delivery.to_bytes(), row.group_id
                )
                await rekey_due(self, row.group_id.hex())  # its stream may now be filling
                return GroupSent(
                    group=row.name,
                    id=entry_id(signed.hash),
                    seq=seq,
                    position=mine[0].position,
                    log_index=mine[0].log_index if mine[0].log_index >= 0 else log_index,
                    delivered=tuple(got),
                    pending=tuple(wait),
                )
            why = mine[0].summary if mine else "it is not in the stream"
            if mine and "another member list" not in why:
                raise GroupRejected(f"group {row.name!r} refused our message: {why}")
            del position
        raise GroupRejected(
            f"group {group!r} kept changing: the message was refused {SEND_TRIES} times"
        )

    # --- the stream ------------------------------------------------------------------

    def take_stashed(self) -> list[Received | Rejected | GroupEntry]:
        """What receive passes run by group operations returned (see above)."""
        out, self.stashed = self.stashed, []
        return out

    async def current(self, group: str) -> GroupRow:
        """The group, synced; UsageError if we cannot act in it now."""
        row = self.row(group)
        await self.reader.sync(row.group_id)
        row = self.row(row.group_id.hex())
        for pause in WELCOME_WAIT:
            waiting = not row.started or self.reader.keys(row) is None
            if row.left or not waiting or self.receive_pass is None:
                break
            # A change was applied whose welcome has not been read: read the
            # pairwise inbox (and the streams); its author sends the welcome
            # right after it saw the change applied, so wait a little.
            self.stashed.extend(await self.receive_pass())
            row = self.row(row.group_id.hex())
            if not row.started or self.reader.keys(row) is None:
                await asyncio.sleep(pause)
        if row.left:
            raise UsageError(f"you are no longer a member of group {row.name!r}")
        if not row.started or self.reader.keys(row) is None:
            raise UsageError(
                f"group {row.name!r} is waiting for its current epoch's key; run receive"
            )
        return row

    def _keys(self, row: GroupRow) -> StreamKeys:
        return StreamKeys.from_secret(self.secret_of(row))

    def secret_of(self, row: GroupRow) -> bytes:
        secret = self.reader.secret(row)
        if secret is None:
            raise UsageError(
                f"group {row.name!r} is waiting for its current epoch's key; run receive"
            )
        return secret

    async def post(self, row: GroupRow, keys: StreamKeys, record: GroupRecord) -> tuple[int, int]:
        return await post_record(self._ctx, self._logs, row, keys, record)
