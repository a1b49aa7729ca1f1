"""A thin synchronous wrapper around :class:`Channel`, for scripts::

    from securechan.client import SyncChannel

    with SyncChannel.open("/path/to/home", "passphrase") as ch:
        ch.send_text("washington", "We accept the draft.")
        for item in ch.receive():
            print(item)

Each call runs the async method to completion on a private event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from securechan.client.channel import Cancelled, Channel, QueuedMessage, UnknownPolicy
from securechan.client.group_results import GroupEntry, GroupInfo, GroupSent
from securechan.client.results import Received, Rejected, SendResult
from securechan.identity.contacts import Contact
from securechan.protocol.address import ContactCard

__all__ = ["SyncChannel"]


class SyncChannel:
    """Blocking versions of the :class:`Channel` methods."""

    def __init__(self, channel: Channel) -> None:
        self._loop = asyncio.new_event_loop()
        self.channel = channel

    @classmethod
    def open(
        cls, home: Path | str, passphrase: str | bytes, *, unknown_senders: UnknownPolicy = "refuse"
    ) -> SyncChannel:
        """Unlock the identity in ``home``."""
        return cls(Channel.open(home, passphrase, unknown_senders=unknown_senders))

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def register(self, relay_url: str) -> ContactCard:
        """See :meth:`Channel.register`."""
        card: ContactCard = self._run(self.channel.register(relay_url))
        return card

    def card(self) -> ContactCard:
        """See :meth:`Channel.card`."""
        return self.channel.card()

    def pair(
        self,
        relay_url: str | None = None,
        *,
        code: str | None = None,
        words: int = 5,
        name: str | None = None,
        on_code: Callable[[str], None] | None = None,
    ) -> Contact:
        """:meth:`Channel.pair`: pair by a spoken code."""
        result: Contact = self._run(
            self.channel.pair(relay_url, code=code, words=words, name=name, on_code=on_code)
        )
        return result

    def send_text(self, contact: str, text: str) -> SendResult:
        """See :meth:`Channel.send_text`."""
        result: SendResult = self._run(self.channel.send_text(contact, text))
        return result

    def send_file(self, contact: str, file_name: str, data: bytes) -> SendResult:
        """See :meth:`Channel.send_file`."""
        result: SendResult = self._run(self.channel.send_file(contact, file_name, data))
        return result

    def receive(self) -> list[Received | Rejected | GroupEntry]:
        """See :meth:`Channel.receive`."""
        items: list[Received | Rejected | GroupEntry] = self._run(self.channel.receive())
        return items

    # --- groups (see the Channel methods of the same names) ---------------------

    def group_create(self, name: str, members: Sequence[str]) -> GroupInfo:
        """See :meth:`Channel.group_create`."""
        result: GroupInfo = self._run(self.channel.group_create(name, members))
        return result

    def group_add(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """See :meth:`Channel.group_add`."""
        result: GroupInfo = self._run(self.channel.group_add(group, contacts))
        return result

    def group_remove(self, group: str, contacts: Sequence[str]) -> GroupInfo:
        """See :meth:`Channel.group_remove`."""
        result: GroupInfo = self._run(self.channel.group_remove(group, contacts))
        return result

    def group_leave(self, group: str) -> GroupInfo:
        """See :meth:`Channel.group_leave`."""
        result: GroupInfo = self._run(self.channel.group_leave(group))
        return result

    def group_rekey(self, group: str) -> GroupInfo:
        """See :meth:`Channel.group_rekey`."""
        result: GroupInfo = self._run(self.channel.group_rekey(group))
        return result

    def send_group(
        self, group: str, *, text: str | None = None, path: str | None = None
    ) -> GroupSent:
        """See :meth:`Channel.send_group`."""
        result: GroupSent = self._run(self.channel.send_group(group, text=text, path=path))
        return result

    def groups(self) -> list[GroupInfo]:
        """See :meth:`Channel.groups`."""
        return self.channel.groups()

    def group_show(self, group: str) -> GroupInfo:
        """See :meth:`Channel.group_show`."""
        return self.channel.group_show(group)

    def group_history(
        self, group: str, *, limit: int | None = None, before: str | None = None
    ) -> list[GroupEntry]:
        """See :meth:`Channel.group_history`."""
        return self.channel.group_history(group, limit=limit, before=before)

    def history(self, contact: str | None = None) -> list[tuple[str, str, int, int, str, str]]:
        """See :meth:`Channel.history`."""
        return self.channel.history(contact)

    def queued(self) -> list[QueuedMessage]:
        """See :meth:`Channel.queued`."""
        return self.channel.queued()

    def cancel(self, message_id: str) -> Cancelled:
        """See :meth:`Channel.cancel`."""
        return self.channel.cancel(message_id)

    def close(self) -> None:
        """Close the channel and the private loop."""
        if not self._loop.is_closed():
            self._run(self.channel.close())
            self._loop.close()
