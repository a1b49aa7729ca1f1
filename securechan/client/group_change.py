"""Groups: membership changes, and no message into an epoch a former member
knows (issue 17; docs/PROTOCOL.md §20.4, §20.6).

:func:`make_change` is every change's send side (create aside): sign the
new state with a commitment to the stream of the epoch it opens, post it
sealed to the current epoch's stream, read the stream until it is applied,
and only then send the :class:`GroupWelcome` pairwise to every other member
of the new state. A change that loses to a concurrent one is refused
(:class:`GroupRejected`): nothing was sent pairwise.

A leave picks no secret: the epoch it opens takes one derived from the
current epoch's (``protocol.group_stream.leave_secret``), which the leaver
held, so that epoch is *quiet*: every member refuses messages in it
(``GroupView.quiet``), and no welcome is sent (each member derives the
secret). It ends with a remaining member's change, which brings a fresh
secret: an admin's **rekey** (same members).

* :func:`rekey_quiet`, run after each receive pass (``Groups.pay_debts``):
  an admin whose client has applied a leave rekeys the group at once. Two
  admins doing so at once post two rekeys in the quiet epoch's stream; the
  stream's order decides, the second no longer follows the current state
  and is refused by every member (its author sent nothing pairwise);
* :func:`audible`, before a group message is made: an admin rekeys a quiet
  group first; a member who is not waits a little for an admin's rekey
  (receive passes), then is refused with one line saying what to do.

A stream is bounded at the relay (``stream_max_items``, ``stream_max_bytes``:
409 ``stream_full`` for good) and a change goes into the old epoch's
stream, so a group whose stream filled could neither talk nor change. An
admin's client therefore rekeys **before** the stream is full: once the
epoch's stream holds :data:`ROTATE_AT` (90% of the relay's documented
defaults; the relay publishes no limits) items or bytes, after a send, a
receive pass or before a send (:func:`rekey_due`, :func:`audible`). A
message refused as ``stream_full`` all the same (a relay with smaller
limits) makes an admin's client rekey and send it once more in the new
epoch (:func:`after_full`); a member who is not an admin gets one line
saying an admin's client moves the group on; a change the full stream
refuses gets one line telling the operator to raise the relay's limits.
Either way the client keeps what the full stream held (``learn_full``)
and later rotates under 90% of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from securechan.client.context import Context
from securechan.client.db_groups import GroupRow
from securechan.client.group_carriage import view_of
from securechan.client.group_results import GroupEntry, GroupInfo
from securechan.client.group_sync import GroupReader
from securechan.client.results import Received, Rejected
from securechan.errors import (
    ContactNotFound,
    GroupRejected,
    MalformedInput,
    RelayError,
    RelayRefused,
    SecurechanError,
    UsageError,
)
from securechan.protocol.group import GroupChange, GroupMember, GroupState
from securechan.protocol.group_stream import GroupRecord, GroupWelcome, StreamKeys, leave_secret
from securechan.terminal_text import inline

__all__ = [
    "RELAY_STREAM_BYTES",
    "RELAY_STREAM_ITEMS",
    "ROTATE_AT",
    "GroupsLike",
    "StreamBudget",
    "admin_change",
    "after_full",
    "audible",
    "last_admin",
    "learn_full",
    "make_change",
    "rekey_due",
    "stream_full",
]

# Pauses (seconds) between receive passes while a member who is not an
# admin waits for an admin's rekey.
REKEY_WAIT = (0.0, 0.25, 0.5, 1.0, 2.0)
# A change refused because a record came first (it names the head it was
# made on) is made again on the new head, at most this many times in all.
CHANGE_TRIES = 3

# The relay's documented defaults for one stream (docs/RELAY.md, "Group
# streams": stream_max_items, stream_max_bytes, each item charged its blob
# + 256). The relay does not publish its limits (GET /v1/info names none),
# so the client assumes these; a relay configured lower is met by the
# stream_full path (after_full).
RELAY_STREAM_ITEMS = 100_000
RELAY_STREAM_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamBudget:
    """How much of an epoch's stream an admin's client lets fill before it
    rekeys the group (docs/PROTOCOL.md §20.4): ``items`` items or ``bytes``
    bytes as the relay charges them. The room left above it is for the
    change (at most one 16 KiB item) and for members who send meanwhile."""

    items: int
    bytes: int

    def reached(self, row: GroupRow) -> bool:
        """Whether the stream of ``row``'s epoch, as far as read, holds it."""
        return row.cursor >= self.items or row.stream_bytes >= self.bytes

    def under(self, cap: tuple[int, int]) -> StreamBudget:
        """This budget kept at 90% of a stream the relay found full at
        ``cap`` (items, bytes; (0, 0): none seen), at least one item."""
        items, size = cap
        if not items:
            return self
        return StreamBudget(
            items=max(1, min(self.items, items * 9 // 10)),
            bytes=max(1, min(self.bytes, size * 9 // 10)),
        )


# 90% of the defaults: 10,000 items and 6.4 MiB of room for the change and
# for the sends of members until an admin's client runs.
ROTATE_AT = StreamBudget(items=RELAY_STREAM_ITEMS * 9 // 10, bytes=RELAY_STREAM_BYTES * 9 // 10)


class GroupsLike(Protocol):
    """What this module uses of ``client.groups.Groups``."""

    reader: GroupReader
    changing: bool
    rotate_at: StreamBudget
    receive_pass: Callable[[], Awaitable[list[Received | Rejected | GroupEntry]]] | None
    stashed: list[Received | Rejected | GroupEntry]

    @property
    def ctx(self) -> Context: ...

    def row(self, group: str) -> GroupRow: ...

    def info(self, row: GroupRow) -> GroupInfo: ...

    async def current(self, group: str) -> GroupRow: ...

    async def rekey(self, group: str) -> GroupInfo: ...

    def secret_of(self, row: GroupRow) -> bytes: ...

    async def post(
        self, row: GroupRow, keys: StreamKeys, record: GroupRecord
    ) -> tuple[int, int]: ...

    async def welcome(
        self, welcome: GroupWelcome, *, exclude: bytes
    ) -> tuple[list[str], list[str]]: ...


async def make_change(
    groups: GroupsLike,
    group: str,
    members: Callable[[GroupState], tuple[GroupMember, ...]],
    *,
    rekey: bool,
) -> GroupInfo:
    """The change of ``group`` to ``members(current state)`` (the same
    members: only with ``rekey``), made, posted, applied, then welcomed."""
    for attempt in range(CHANGE_TRIES):
        info = await _try_change(
            groups, group, members, rekey=rekey, last=attempt + 1 == CHANGE_TRIES
        )
        if info is not None:
            return info
    raise AssertionError("unreachable: the last try raises")  # pragma: no cover


async def _try_change(
    groups: GroupsLike,
    group: str,
    members: Callable[[GroupState], tuple[GroupMember, ...]],
    *,
    rekey: bool,
    last: bool,
) -> GroupInfo | None:
    """One try; None when a record came first (made again on the new head)."""
    ctx = groups.ctx
    row = await groups.current(group)
    view = view_of(row)
    old = view.state
    try:
        state = GroupState(
            group_id=old.group_id,
            epoch=old.epoch + 1,
            name=old.name,
            members=members(old),
            previous=old.hash,
        )
    except (MalformedInput, ValueError) as e:
        raise UsageError(f"cannot change group {row.name!r}: {e}") from None
    if state.members == old.members and not rekey:
        raise UsageError(f"group {row.name!r} would not change")
    me = ctx.identity.fingerprint.digest
    who = old.member(me)
    if who is None or (not who.admin and state.member(me) is not None):
        what = "rekey it" if rekey else "change its members"
        raise UsageError(f"only an admin of group {row.name!r} may {what}")
    current = groups.secret_of(row)
    keys = StreamKeys.from_secret(current)
    leaving = state.member(me) is None
    # A leave picks no secret: the epoch it opens is derived from the
    # current one (quiet until a remaining admin's rekey).
    secret = leave_secret(current, state) if leaving else ctx.random(32)
    change = GroupChange.sign(
        ctx.identity,
        state,
        next_stream=StreamKeys.from_secret(secret).commitment,
        head=view.head,  # applied only on this head: a joiner's head_before is bound
    )
    welcome = GroupWelcome(
        change=change,
        epoch_secret=secret,
        head_before=view.head,
        stream_of_change=keys.stream_id,
        previous=old,
        senders=GroupWelcome.marks(view.last),  # each sender's last number, for joiners
    )
    if not leaving:
        with ctx.db.transaction():
            ctx.db.put_welcome(
                old.group_id, state.epoch, change.hash, me, welcome.to_bytes(), ctx.now()
            )
    try:
        await groups.post(row, keys, GroupRecord(change=change))
    except RelayRefused as e:
        if not stream_full(e):
            raise
        await learn_full(groups, row)
        # The change goes into the epoch's stream, which is full for good:
        # only the relay's operator can make room (no silent hang).
        raise RelayRefused(
            409,
            f"{_said(e)}; group {row.name!r} cannot move to a new epoch (its change goes "
            "into the full stream): ask the relay's operator to raise stream_max_items and "
            "stream_max_bytes ([limits], docs/RELAY.md)",
            relay=e.relay,
        ) from None
    await groups.reader.sync(row.group_id)
    after = groups.row(row.group_id.hex())
    if after.opened_by != change.hash:
        mine = ctx.db.transcript(row.group_id, record_hash=change.hash, limit=1)
        why = mine[0].summary if mine else "another change came first"
        if mine and "another transcript head" in why and not last:
            return None  # a message came first: make it again on the new head
        raise GroupRejected(
            f"the change to group {row.name!r} was refused ({why}); look at the group and try again"
        )
    if not leaving:  # the others derive a leave's secret: no welcome
        await groups.welcome(welcome, exclude=me)
    return groups.info(after)


def _admin(groups: GroupsLike, row: GroupRow) -> bool:
    who = GroupState.from_bytes(row.state).member(groups.ctx.identity.fingerprint.digest)
    return who is not None and who.admin


def _filling(groups: GroupsLike, row: GroupRow) -> bool:
    """An admin's group whose epoch's stream holds the rotation budget."""
    return (
        not row.left
        and row.started
        and not row.quiet
        and groups.rotate_at.under(row.stream_cap).reached(row)
        and _admin(groups, row)
    )


async def rekey_due(groups: GroupsLike, group: str | None = None) -> None:
    """Rekey every group we are an admin of (or only ``group``) whose epoch
    a leave opened, or whose epoch's stream holds :attr:`rotate_at`. A
    rekey that loses to another admin's (or to any change) is refused: the
    group already has a fresh epoch; one that cannot reach the relay, or
    finds the stream full, is tried again after the next pass (a send says
    why: :func:`after_full`)."""
    if groups.changing:
        return  # a receive pass run by a change: the change itself comes first
    for row in groups.ctx.db.groups():
        if group is not None and row.group_id.hex() != group:
            continue
        quiet = not row.left and row.started and row.quiet and _admin(groups, row)
        if quiet or _filling(groups, row):
            with contextlib.suppress(SecurechanError):
                await groups.rekey(row.group_id.hex())


def stream_full(e: RelayError) -> bool:
    """A post refused because the stream is full (409 ``stream_full``: the
    only 409 of a stream post, docs/RELAY.md)."""
    return isinstance(e, RelayRefused) and e.status == 409


def _said(e: RelayRefused) -> str:
    """What the relay said, without the 'relay URL refused the request' lead."""
    return str(e).split("refused the request: ", 1)[-1]


async def learn_full(groups: GroupsLike, row: GroupRow) -> None:
    """Keep what ``row``'s epoch's stream held (read to its end) when the
    relay refused a post as full: the relay publishes no limits, so later
    epochs rotate at 90% of it (:meth:`StreamBudget.under`), also after
    the operator raised the limit (an earlier rotation, never a stuck
    group). The smallest seen is kept."""
    with contextlib.suppress(SecurechanError):
        await groups.reader.sync(row.group_id)
    db = groups.ctx.db
    with db.transaction():
        now = db.group(row.group_id)
        if now is None or now.epoch != row.epoch or now.cursor == 0:
            return  # the epoch moved on meanwhile: not that stream's count
        seen = (now.cursor, now.stream_bytes)
        old = now.stream_cap
        cap = seen if not old[0] else (min(old[0], seen[0]), min(old[1], seen[1]))
        db.put_group(replace(now, stream_cap=cap))


async def after_full(groups: GroupsLike, row: GroupRow, e: RelayRefused, *, again: bool) -> None:
    """A message of ``row``'s group refused because its stream is full: an
    admin's client rekeys (the caller sends the message once more, in the
    new epoch); otherwise (not an admin, or already sent again once) the
    refusal is raised as one line saying what moves the group on. A change
    the full stream refuses too raises its own line (:func:`make_change`)."""
    await learn_full(groups, row)
    if again or not _admin(groups, row):
        raise RelayRefused(
            409,
            f"{_said(e)}; group {row.name!r} moves to a new epoch when an admin's client "
            f"next runs (or an admin runs: securechan group rekey {row.name}), then send again",
            relay=e.relay,
        ) from None
    with contextlib.suppress(GroupRejected):  # another change came first: moved on all the same
        await groups.rekey(row.group_id.hex())


async def audible(groups: GroupsLike, group: str) -> GroupRow:
    """``Groups.current``, in an epoch messages may go into; UsageError if a
    leave left it quiet and no admin's rekey came."""
    row = await groups.current(group)
    if _filling(groups, row):
        # The stream is near its bound: move on first, while the change fits.
        with contextlib.suppress(GroupRejected):  # another change came first
            await groups.rekey(group)
        row = await groups.current(group)
    for pause in REKEY_WAIT:
        if not row.quiet or row.left:
            return row
        if _admin(groups, row):
            with contextlib.suppress(GroupRejected):  # another change came first
                await groups.rekey(group)
        elif groups.receive_pass is not None:
            await asyncio.sleep(pause)
            groups.stashed.extend(await groups.receive_pass())
        else:
            break
        row = await groups.current(group)
    if row.quiet and not row.left:
        raise UsageError(
            f"group {row.name!r} is waiting for an admin to rekey it after a member left "
            "(no message goes into an epoch a former member knows); try again later, or "
            f"ask an admin to run: securechan group rekey {row.name}"
        )
    return row


# --- admins (docs/CLI.md, Groups: "group admin") ----------------------------------


def last_admin(old: GroupState, me: bytes, what: str, name: str) -> None:
    """Raise :class:`UsageError` if ``me`` is the only admin of the group
    (locally ``name``; ``what``: "leave" or "step down"): a group keeps at
    least one admin, so the line says what to do first."""
    who = old.member(me)
    if who is None or not who.admin or any(m.admin for m in old.members if m is not who):
        return
    if len(old.members) == 1:
        return  # no one else to make an admin: the member list's own rule refuses it
    raise UsageError(
        f"you are the last admin of group {name!r} and cannot {what}: first make another "
        f"member an admin (securechan group admin {name} CONTACT)"
    )


def admin_change(
    ctx: Context, name: str, contacts: Sequence[str], *, grant: bool
) -> Callable[[GroupState], tuple[GroupMember, ...]]:
    """The member list of the group (locally ``name``) with each of
    ``contacts`` made an admin (``grant``) or a plain member. A contact
    name, or our own identity's name (to step down ourselves); each must be
    a member; a group keeps one admin."""
    me = ctx.identity.fingerprint.digest
    named: dict[bytes, str] = {}
    for who in contacts:
        try:
            named[ctx.contact(who).fingerprint.digest] = who
        except ContactNotFound:
            if who != ctx.identity.name:
                raise
            named[me] = who

    def change(old: GroupState) -> tuple[GroupMember, ...]:
        for fp, who in named.items():
            if old.member(fp) is None:
                shown = inline(who)
                add = f"securechan group add {name} {shown}"
                raise UsageError(f"{shown} is not a member of group {name!r} (add it first: {add})")
        new = tuple(
            GroupMember(fingerprint=m.fingerprint, admin=grant) if m.fingerprint in named else m
            for m in old.members
        )
        if not any(m.admin for m in new):
            last_admin(old, me, "step down", name)
            raise UsageError(f"group {name!r} would have no admin left")
        return new

    return change
