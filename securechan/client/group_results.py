"""What the client's group operations return (issue 17; docs/CLI.md, Groups).

:class:`GroupInfo` describes a group as this member holds it (``group
show``/``group list``, and what ``group create/add/remove/leave`` return);
:class:`GroupSent` is the outcome of ``send --group``; :class:`GroupEntry`
is one record of a group's transcript as ``history --group`` lists it and
as ``receive`` reports it. Each has ``to_json()`` with the fields in
``JSON_FIELDS``, as in :mod:`securechan.client.results`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from securechan.timestamps import iso_utc

__all__ = ["GROUP_STATUSES", "GroupEntry", "GroupInfo", "GroupMemberInfo", "GroupSent"]

# What became of one record of a group's transcript, for this member:
# shown           a message whose content arrived and matches its commitment;
# content-pending the record is in the transcript, its content has not arrived
#                 (the sender or the relay withholds it from this member, or it
#                 is on its way);
# equivocation    the content this member got is not the one the sender signed
#                 for everyone (evidence kept: both signed by the sender);
# change          a membership change (``summary`` says what changed);
# refused         a stream item every member skips (does not open, or the
#                 group's rules refuse it: ``summary`` says why);
# forked          the relay showed this member a transcript another member
#                 never had (a split view of the group);
# withheld        content arrived pairwise for a record the relay never put in
#                 this member's stream.
GROUP_STATUSES = (
    "shown",
    "content-pending",
    "equivocation",
    "change",
    "refused",
    "forked",
    "withheld",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMemberInfo:
    """One member: the contact name this member knows it by (None for a
    member who is not a contact: then only its fingerprint), its
    fingerprint (hex), whether it is an admin, and whether its safety
    number was verified (``you`` for this member)."""

    name: str | None
    fingerprint: str
    admin: bool
    verified: bool
    you: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "admin": self.admin,
            "verified": self.verified,
            "you": self.you,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfo:
    """A group as this member holds it."""

    name: str
    group_id: str  # hex
    epoch: int
    members: tuple[GroupMemberInfo, ...]
    head: str  # the transcript head (hex): equal for members who agree
    records: int  # records in this member's transcript
    policy: str = "admins"  # who may change the membership: admins; anyone may leave
    left: bool = False  # this member left or was removed (read-only now)

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "group_id",
        "epoch",
        "members",
        "head",
        "records",
        "policy",
        "left",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group_id": self.group_id,
            "epoch": self.epoch,
            "members": [m.to_json() for m in self.members],
            "head": self.head,
            "records": self.records,
            "policy": self.policy,
            "left": self.left,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSent:
    """What ``send --group`` did: the message's id and group sequence number,
    its place in the relay's stream and log, and per member whether the
    pairwise delivery was confirmed by a relay now (the rest wait in the
    outbox: ``securechan outbox``)."""

    group: str
    id: str
    seq: int
    position: int
    log_index: int
    delivered: tuple[str, ...]
    pending: tuple[str, ...]

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "group",
        "id",
        "seq",
        "position",
        "log_index",
        "delivered",
        "pending",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "id": self.id,
            "seq": self.seq,
            "position": self.position,
            "log_index": self.log_index,
            "delivered": list(self.delivered),
            "pending": list(self.pending),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupEntry:
    """One record of a group's transcript, for this member.

    ``id`` is the record's id (what ``statement export`` takes: the hex of
    the record's hash, shortened as message ids are); ``sender`` the
    author's contact name (or fingerprint hex); ``seq`` its group sequence
    number (0 for a change); ``status`` one of :data:`GROUP_STATUSES`;
    ``text``/``file_name`` when shown; ``summary`` one line for people."""

    group: str
    id: str
    epoch: int
    position: int
    sender: str
    seq: int
    sent_at: int
    status: str
    summary: str
    text: str | None = None
    file_name: str | None = None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "group",
        "id",
        "epoch",
        "position",
        "sender",
        "seq",
        "sent_at",
        "status",
        "summary",
        "text",
        "file_name",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "id": self.id,
            "epoch": self.epoch,
            "position": self.position,
            "sender": self.sender,
            "seq": self.seq,
            "sent_at": iso_utc(self.sent_at),
            "status": self.status,
            "summary": self.summary,
            "text": self.text,
            "file_name": self.file_name,
        }
