"""What was received and not yet shown: a cursor into client.db's messages
(docs/AGENT.md, Receiving).

A receive pass commits every message it accepts to the ``messages`` table
before it acknowledges it to the relay (client/inbox.py). The agent keeps
receiving while no client listens; what it received is then in the store
but not yet handed to a ``receive`` caller. The **shown cursor** (``meta``
row ``received_shown``) is the row id of ``messages`` up to which received
messages were handed to one; :func:`unshown` rebuilds the items after it
from the store, so they survive the agent's crash or stop, and
:func:`mark_shown` moves it after a caller got them. Both the agent's
``receive`` and the library's ``Channel.receive`` (:class:`ShownCursor`,
which the in-process ``securechan receive`` uses) use them, so each message
is shown once whichever of them runs next.

A rebuilt item gets the notes of the pass that accepted it (messages
missing, a message arriving late): they follow from the order in which the
conversation's messages were stored, replayed as the protocol's ordering
state placed them (:func:`_chain_notes`, protocol/peer_chain.py ``place``).
What the store does not keep, the rebuilt items lack: the separate
``receipt_matches`` item of a receipt check, and refused envelopes (those
are in the audit log, and were sent to subscribers as they happened). A
file is rebuilt from its chunks' stored messages (each carries its chunk)
when its last chunk is after the cursor; its chunks were taken out of
``file_chunks`` when it completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

from securechan.client.db import ClientDB, StoredMessage
from securechan.client.files import file_intact
from securechan.client.group_results import GroupEntry
from securechan.client.results import Received, Rejected
from securechan.client.stored import StoredRecord
from securechan.errors import MalformedInput, Reason, StorageError
from securechan.identity import Contact
from securechan.identity.keys import Fingerprint
from securechan.primitives import sha256
from securechan.protocol.address import QueueGrant
from securechan.protocol.payload import ContentType, FileChunk, Payload, Receipt, SignedPayload
from securechan.protocol.peer_chain import MAX_GAP

__all__ = ["ShownCursor", "mark_shown", "start_cursor", "unshown"]

_PAGE = 500
Items = list[Received | Rejected]
FindContact = Callable[[Fingerprint], Contact | None]


def _received(
    db: ClientDB, after: int, peer: bytes | None = None
) -> Iterator[tuple[StoredMessage, StoredRecord, Payload]]:
    while page := db.messages(peer, after=after, limit=_PAGE):
        for m in page:
            if m.direction != "in":
                continue
            try:
                rec = StoredRecord.from_bytes(m.record)
                payload = SignedPayload.from_bytes_unverified(rec.signed).payload
            except MalformedInput as e:
                raise StorageError(f"{db.path}: a stored message is damaged: {e}") from None
            yield m, rec, payload
        after = page[-1].id


# Stored payloads a receive never returns as direct messages: the hello, and
# group carriage (receive returns the group's transcript entries instead).
_NOT_ITEMS = (ContentType.HELLO, ContentType.GROUP_MESSAGE, ContentType.GROUP_WELCOME)


def start_cursor(db: ClientDB) -> int:
    """The shown cursor; set to the newest message when it was never set
    (on a home that never had one, everything stored before counts as shown)."""
    cursor = db.shown_cursor()
    if cursor is None:
        cursor = db.last_message_id()
        with db.transaction():
            db.set_shown_cursor(cursor)
    return cursor


def mark_shown(db: ClientDB, up_to: int | None = None) -> None:
    """Everything stored up to ``up_to`` (default: now) was shown."""
    with db.transaction():
        db.set_shown_cursor(db.last_message_id() if up_to is None else up_to)


def unshown(db: ClientDB, find_contact: FindContact, after: int, up_to: int | None = None) -> Items:
    """The received messages stored after the row id ``after`` (and up to
    ``up_to``, if given), as the items the pass that accepted them returned
    (see the module for what they lack), in the order they were stored."""
    out: list[tuple[int, Received | Rejected]] = []
    files: dict[tuple[bytes, bytes], tuple[FileChunk, bytes]] = {}
    notes = _Notes(db)
    for m, rec, payload in _received(db, after):
        if up_to is not None and m.id > up_to:
            break
        content = payload.content()
        if isinstance(content, QueueGrant) or payload.content_type in _NOT_ITEMS:
            continue  # housekeeping, or group carriage (the group's transcript shows it)
        if isinstance(content, FileChunk):
            files.setdefault((m.conversation, content.file_id), (content, m.peer))
            continue
        item = _item(rec, payload, m, find_contact)
        item["notes"] = notes.of(m, str(item["contact"]))
        if isinstance(content, Receipt):
            out.append((m.id, Received(**item, receipt=content)))  # type: ignore[arg-type]
        else:
            text = content if isinstance(content, str) else None
            out.append((m.id, Received(**item, text=text)))  # type: ignore[arg-type]
    for (conversation, file_id), (first, peer) in files.items():
        done = _file(db, find_contact, (conversation, peer, file_id), first, after, notes)
        if done is not None and (up_to is None or done[0] <= up_to):
            out.append(done)
    out.sort(key=lambda pair: pair[0])
    return [item for _, item in out]


def _chain_notes(seqs: list[tuple[int, int]], name: str) -> dict[int, tuple[str, ...]]:
    """The notes each message of one conversation got when it was accepted,
    from ``(row id, seq)`` in the order they were stored: the ordering
    state of protocol/peer_chain.py ``place`` replayed on sequence numbers
    (the hash links were checked when they arrived), and the notes
    client/delivery.py makes of its events."""
    contiguous = highest = 0
    ahead: set[int] = set()
    out: dict[int, tuple[str, ...]] = {}
    for row, seq in seqs:
        if seq - contiguous > MAX_GAP:  # the oldest holes were given up
            contiguous = seq - MAX_GAP
            highest = max(highest, contiguous)
            ahead = {s for s in ahead if s > contiguous}
        notes: list[str] = []
        if seq > highest + 1:
            notes.append(f"messages {highest + 1}..{seq - 1} from {name} have not arrived")
        if seq < highest:
            notes.append(f"message {seq} arrived late (out of order)")
        out[row] = tuple(notes)
        ahead.add(seq)
        while contiguous + 1 in ahead:
            contiguous += 1
            ahead.discard(contiguous)
        highest = max(highest, seq)
    return out


class _Notes:
    """Each rebuilt message's notes, one replay per conversation."""

    def __init__(self, db: ClientDB) -> None:
        self._db = db
        self._done: dict[bytes, dict[int, tuple[str, ...]]] = {}

    def of(self, m: StoredMessage, name: str) -> tuple[str, ...]:
        if m.conversation not in self._done:
            seqs = [
                (x.id, x.seq)
                for x, _, _ in _received(self._db, 0, m.peer)
                if x.conversation == m.conversation
            ]
            self._done[m.conversation] = _chain_notes(seqs, name)
        return self._done[m.conversation].get(m.id, ())


def _item(
    rec: StoredRecord, payload: Payload, m: StoredMessage, find_contact: FindContact
) -> dict[str, object]:
    contact = find_contact(payload.sender)
    return {
        "contact": contact.name if contact is not None else rec.contact,
        "fingerprint": str(payload.sender),
        "verified": contact.verified if contact is not None else False,
        "conversation": m.conversation,
        "seq": m.seq,
        "sent_at": payload.sent_at,
        "content_type": payload.content_type,
        "hash": sha256(rec.signed),
    }


def _file(
    db: ClientDB,
    find_contact: FindContact,
    where: tuple[bytes, bytes, bytes],
    chunk: FileChunk,
    after: int,
    notes: _Notes,
) -> tuple[int, Received | Rejected] | None:
    """The file (conversation, peer, file id) if its chunks are all stored
    and the one that completed it (the last stored) is after ``after``."""
    conversation, peer, file_id = where
    chunks: dict[int, bytes] = {}
    last: tuple[StoredMessage, StoredRecord, Payload] | None = None
    for m, rec, payload in _received(db, 0, peer):
        content = payload.content()
        if m.conversation != conversation or not isinstance(content, FileChunk):
            continue
        if content.file_id != file_id or content.index in chunks:
            continue
        chunks[content.index] = content.data
        last = (m, rec, payload)
    if last is None or len(chunks) != chunk.count or last[0].id <= after:
        return None
    data = b"".join(chunks[i] for i in sorted(chunks))
    if not file_intact(chunk, data):
        error = f"file {chunk.name!r} does not match its hash"
        return last[0].id, Rejected(reason=Reason.FILE_CORRUPT, error=error)
    item = _item(last[1], last[2], last[0], find_contact)
    item["content_type"] = ContentType.FILE
    item["notes"] = notes.of(last[0], str(item["contact"]))
    return last[0].id, Received(**item, file_name=chunk.name, file_data=data)  # type: ignore[arg-type]


_Item = TypeVar("_Item")


class ShownCursor:
    """The shown cursor as a :class:`~securechan.client.channel.Channel`
    keeps it for its caller (``Channel.receive`` and ``Channel.follow``), so
    a program using the library, ``securechan receive`` and an agent agree
    on what was shown: the first receive of a channel returns first what is
    stored after the cursor (what an agent, or a pass whose caller never got
    its items, received), then each receive moves the cursor past
    everything stored. Only messages stored before the channel was opened
    are rebuilt: what a group operation's pass received since is handed
    over by the channel itself (its stash), not twice.

    The agent keeps the cursor itself (its items wait in memory until a
    ``receive`` call takes them, agent/methods.py): its channel sets
    :attr:`enabled` to False."""

    def __init__(self, db: ClientDB, find_contact: FindContact) -> None:
        self._db = db
        self._find = find_contact
        self._opened_at = db.last_message_id()
        self._restored = False
        self.enabled = True

    def _earlier(self) -> Items:
        if self._restored:
            return []
        self._restored = True
        cursor = start_cursor(self._db)
        if cursor >= self._opened_at:
            return []
        return unshown(self._db, self._find, cursor, up_to=self._opened_at)

    async def handed(
        self,
        stashed: Sequence[Received | Rejected | GroupEntry],
        receive: Callable[[], Awaitable[Sequence[Received | Rejected | GroupEntry]]],
    ) -> list[Received | Rejected | GroupEntry]:
        """What was stored and never shown (first call only), ``stashed``,
        then what the pass ``receive`` returns; the cursor then moves past
        everything stored. The whole is one claim (:meth:`_claim`): a second
        receiver of the same home waits, then finds the cursor past what the
        first stored, instead of rebuilding it as never shown."""
        if not self.enabled:
            return [*stashed, *await receive()]
        async with self._claim():
            out: list[Received | Rejected | GroupEntry] = [*self._earlier(), *stashed]
            out += await receive()
            mark_shown(self._db)
        return out

    @contextlib.asynccontextmanager
    async def _claim(self) -> AsyncIterator[None]:
        """An exclusive ``flock`` on ``HOME/receive.lock`` from before a
        receive pass until the cursor moved past what it stored: two
        receivers of one home in-process (``receive --follow`` in one
        terminal, ``receive`` in another) would otherwise each show what the
        other stored but had not yet marked. Polled, so a cancelled wait
        leaves nothing behind; the kernel drops it when a process dies."""
        fd = os.open(self._db.path.parent / "receive.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)

    async def follow(
        self, items: AsyncIterator[_Item]
    ) -> AsyncIterator[Received | Rejected | _Item]:
        """``Channel.follow``'s items, the never shown first; the cursor
        moves after each item is handed over."""
        if not self.enabled:
            async for item in items:
                yield item
            return
        async with self._claim():
            earlier = self._earlier()
            mark_shown(self._db)
        for rebuilt in earlier:
            yield rebuilt
        async for item in items:
            yield item
            mark_shown(self._db)
