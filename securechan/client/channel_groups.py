"""The Channel's group methods (issue 17; docs/LIBRARY.md, Groups).

A mixin of :class:`~securechan.client.channel.Channel`: each method hands
over to :class:`~securechan.client.groups.Groups` (``self.group_client``).
Groups are named locally (each member names a group as its creator did; a
clash gets " (2)"); a group id in hex works wherever a name does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from securechan.client.group_results import GroupEntry, GroupInfo, GroupSent
from securechan.client.groups import Groups
from securechan.client.results import Received, Rejected

__all__ = ["GroupMethods"]


class GroupMethods:
    """``group_create``, ``group_add``, ``group_remove``, ``group_admin``, ``group_leave``,
    ``groups``, ``group_show``, ``send_group``, ``group_history``."""

    group_client: Groups

    async def group_create(
        self, name: str, members: Sequence[str], *, admins: Sequence[str] = ()
    ) -> GroupInfo:
        """Create a group of us (its admin) and the contacts ``members``:
        the creation is signed, posted to the group's stream at our first
        relay and read back, then each member gets its welcome pairwise.
        Each of ``admins`` (contacts) is a member too, an admin from epoch 0
        (e.g. the mediator and each delegation's head).
        :class:`UsageError` for a bad name or member list (1 to 20 members,
        name at most 64 bytes), :class:`ContactNotFound` for an unknown
        contact, :class:`RelayError` if the relay cannot be reached."""
        return await self.group_client.create(name, members, admins)

    async def group_admin(
        self, group: str, contacts: Sequence[str], *, grant: bool = True
    ) -> GroupInfo:
        """Make members admins (``grant``) or plain members again (admins
        only): a change with a new epoch, as ``group_add``. A name is a
        contact's, or our own identity's (to step down ourselves).
        :class:`UsageError` for one who is not a member, a change that
        changes nothing, or one that would leave no admin."""
        return await self.group_client.admin(group, contacts, grant=grant)

    async def group_add(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """Add contacts to a group (admins only): a new epoch whose secret
        every member of the new state gets pairwise; the new members start
        at this change (they never read earlier records)."""
        return await self.group_client.add(group, contacts)

    async def group_remove(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """Remove members (admins only): a new epoch whose secret the removed
        never get; no later content is sent to them, their records are
        refused by every member."""
        return await self.group_client.remove(group, contacts)

    async def group_leave(self, group: str) -> GroupInfo:
        """Leave a group (the last admin cannot: :meth:`group_admin` first):
        the group is read-only here from then on (``GroupInfo.left``); a
        remaining admin rekeys it (docs/PROTOCOL.md §20.4)."""
        return await self.group_client.leave(group)

    async def group_rekey(self, group: str) -> GroupInfo:
        """Give the group a fresh epoch secret, same members (admins only).
        Done by itself after a member leaves (its leave opens a quiet epoch
        in which no message goes: docs/PROTOCOL.md §20.4); any time by hand."""
        return await self.group_client.rekey(group)

    def groups(self) -> list[GroupInfo]:
        """Every group this home holds (left ones too), in the order created."""
        return self.group_client.all_groups()

    def group_show(self, group: str) -> GroupInfo:
        """One group: members (with verification), epoch, transcript head."""
        return self.group_client.info(self.group_client.row(group))

    async def send_group(
        self, group: str, *, text: str | None = None, path: str | None = None
    ) -> GroupSent:
        """Send a text or a file (one record per GROUP_CHUNK_SIZE chunk) to a
        group: the signed payload is posted to the group's stream first and
        the content is sent pairwise only once the stream accepted it."""
        return await self.group_client.send(group, text=text, path=path)

    def group_file(self, group: str, entry: str) -> tuple[str, bytes]:
        """A file sent to the group, whole: ``entry`` is the id (or a prefix
        of at least 8 hex digits) of any of its shown chunks (``GroupEntry``
        with a ``file_name``). Returns (sanitised file name, data), checked
        against the file's SHA-512. :class:`NotFound` for no such file entry,
        :class:`UsageError` while parts are missing."""
        return self.group_client.file(group, entry)

    def group_history(
        self, group: str, *, limit: int | None = None, before: str | None = None
    ) -> list[GroupEntry]:
        """The group's transcript as this member read it, oldest first: one
        entry per stream record (status per ``GROUP_STATUSES``); with
        ``before`` (an entry id or prefix) only older ones, the newest
        ``limit`` of them."""
        return self.group_client.history(group, limit=limit, before=before)

    async def _with_stashed(
        self, items: AsyncIterator[Received | Rejected | GroupEntry]
    ) -> AsyncIterator[Received | Rejected | GroupEntry]:
        async for item in items:
            for kept in self.group_client.take_stashed():
                yield kept
            yield item
