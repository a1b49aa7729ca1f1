"""Groups: no message goes into an epoch a former member knows (issue 17).

A leave picks no secret: the epoch it opens takes one derived from the
current epoch's (``protocol.group_stream.leave_secret``), which the leaver
held, so the epoch is *quiet*: every member refuses messages in it
(``GroupView.quiet``). It ends with a remaining member's change, which
brings a fresh secret: an admin's **rekey** (same members). This module is
the client's part (docs/PROTOCOL.md §20.4):

* :func:`rekey_quiet`, run after each receive pass (``Groups.pay_debts``):
  an admin whose client has applied a leave rekeys the group at once. Two
  admins doing so at once post two rekeys in the quiet epoch's stream; the
  stream's order decides, the second no longer follows the current state
  and is refused by every member (its author sent nothing pairwise);
* :func:`audible`, before a group message is made: an admin rekeys a quiet
  group first; a member who is not waits a little for an admin's rekey
  (receive passes), then is refused with one line saying what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from securechan.client.db_groups import GroupRow
from securechan.errors import GroupRejected, SecurechanError, UsageError
from securechan.protocol.group import GroupState

if TYPE_CHECKING:
    from securechan.client.groups import Groups

__all__ = ["audible", "rekey_quiet"]

# Pauses (seconds) between receive passes while a member who is not an
# admin waits for an admin's rekey.
REKEY_WAIT = (0.0, 0.25, 0.5, 1.0, 2.0)


def _admin(groups: Groups, row: GroupRow) -> bool:
    who = GroupState.from_bytes(row.state).member(groups.me)
    return who is not None and who.admin


async def rekey_quiet(groups: Groups) -> None:
    """Rekey every group we are an admin of whose epoch a leave opened. A
    rekey that loses to another admin's (or to any change) is refused: the
    group already has a fresh epoch; one that cannot reach the relay is
    tried again after the next pass."""
    if groups.changing:
        return  # a receive pass run by a change: the change itself comes first
    for row in groups.db_rows():
        if row.left or not row.started or not row.quiet or not _admin(groups, row):
            continue
        with contextlib.suppress(SecurechanError):
            await groups.rekey(row.group_id.hex())


async def audible(groups: Groups, group: str) -> GroupRow:
    """``Groups.current``, in an epoch messages may go into; UsageError if a
    leave left it quiet and no admin's rekey came."""
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
