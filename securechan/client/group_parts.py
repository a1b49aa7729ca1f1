"""Groups: the pieces of client/groups.py that stand alone.

What a member holds, as the library shows it (:func:`group_info`), group
files (cut into ``GROUP_CHUNK_SIZE`` chunks, :func:`file_chunks`, and put
together again from the shown chunks, :func:`read_file`), and the senders'
marks a welcome carries (:func:`sender_marks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from securechan.audit.receipt import verify_receipt
from securechan.client.context import Context
from securechan.client.db_groups import DeliveryRow, GroupRow
from securechan.client.files import sanitize_filename
from securechan.client.group_carriage import decode_content
from securechan.client.group_results import GroupEntry, GroupInfo, GroupMemberInfo
from securechan.client.group_sync import GroupReader
from securechan.client.logview import RelayLogs
from securechan.errors import MalformedInput, NotFound, UsageError, VerificationFailed, reason_of
from securechan.identity.keys import Fingerprint
from securechan.primitives import sha512
from securechan.protocol.group import GroupState
from securechan.protocol.group_stream import (
    GROUP_CHUNK_SIZE,
    KIND_FILE,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    seal_record,
)
from securechan.protocol.payload import MAX_FILE_SIZE, ContentType, FileChunk

__all__ = [
    "chunk_of",
    "file_chunks",
    "group_info",
    "history",
    "post_record",
    "read_file",
    "sender_marks",
]


def group_info(ctx: Context, row: GroupRow) -> GroupInfo:
    """A stored group as :class:`GroupInfo`."""
    state = GroupState.from_bytes(row.state)
    me = ctx.identity.fingerprint.digest
    members = []
    for m in state.members:
        contact = ctx.find_contact(Fingerprint(m.fingerprint))
        members.append(
            GroupMemberInfo(
                name=contact.name if contact is not None else None,
                fingerprint=m.fingerprint.hex(),
                admin=m.admin,
                verified=contact.verified if contact is not None else m.fingerprint == me,
                you=m.fingerprint == me,
            )
        )
    return GroupInfo(
        name=row.name,
        group_id=row.group_id.hex(),
        epoch=row.epoch,
        members=tuple(members),
        head=row.head.hex(),
        records=ctx.db.transcript_count(row.group_id),
        left=row.left,
    )


def read_file(ctx: Context, reader: GroupReader, row: GroupRow, entry: str) -> tuple[str, bytes]:
    """A group file, whole, from the chunks this member was shown."""
    db, wanted = ctx.db, entry.strip().lower()
    rows = reader.all_rows(row.group_id)
    hit = [t for t in rows if t.record_hash.hex().startswith(wanted) and t.file_name]
    if len(wanted) < 8 or len(hit) != 1:
        raise NotFound(f"no file entry {entry!r} in group {row.name!r}")
    first = chunk_of(db.deliveries(row.group_id, record_hash=hit[0].record_hash))
    if first is None:
        raise NotFound(f"no file entry {entry!r} in group {row.name!r}")
    parts: dict[int, bytes] = {}
    for t in rows:
        if t.status != "shown" or t.sender != hit[0].sender or not t.file_name:
            continue
        c = chunk_of(db.deliveries(row.group_id, record_hash=t.record_hash))
        if c is not None and c.file_id == first.file_id:
            parts.setdefault(c.index, c.data)
    if len(parts) != first.count:
        raise UsageError(
            f"file {first.name!r} is not complete yet: {len(parts)} of {first.count} parts"
        )
    data = b"".join(parts[i] for i in range(first.count))
    if len(data) != first.size or sha512(data) != first.sha512:
        raise MalformedInput(f"file {first.name!r} does not match its hash")
    return sanitize_filename(first.name), data


def chunk_of(deliveries: list[DeliveryRow]) -> FileChunk | None:
    """The file chunk a (shown) record's delivery carries, or None."""
    for d in deliveries:
        delivery = GroupDelivery.from_bytes(d.delivery)
        if delivery.kind == KIND_FILE:
            _, chunk = decode_content(delivery.kind, delivery.content)
            return chunk
    return None


def file_chunks(path: str, file_id: bytes) -> list[bytes]:
    """A file as group message contents: FileChunk encodings of
    GROUP_CHUNK_SIZE bytes (the last one shorter)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise UsageError(f"{path} is larger than {MAX_FILE_SIZE} bytes")
    name = sanitize_filename(p.name)
    digest = sha512(data)
    count = max(1, -(-len(data) // GROUP_CHUNK_SIZE))
    return [
        FileChunk(
            file_id=file_id,
            name=name,
            size=len(data),
            sha512=digest,
            index=i,
            count=count,
            data=data[i * GROUP_CHUNK_SIZE : (i + 1) * GROUP_CHUNK_SIZE],
        ).to_bytes()
        for i in range(count)
    ]


def sender_marks(last: Mapping[bytes, tuple[int, bytes]]) -> dict[str, Any]:
    """Each sender's last number at the change, for joiners: the welcome's
    ``senders`` field where the core has it (GroupSenderMark), else nothing
    (the joiner then takes each sender's first number it sees as its start)."""
    marks = getattr(GroupWelcome, "marks", None)
    return {"senders": marks(last)} if callable(marks) and last else {}


def history(
    ctx: Context, reader: GroupReader, row: GroupRow, *, limit: int | None, before: str | None
) -> list[GroupEntry]:
    """The group's transcript, oldest first: before the entry whose id
    starts with ``before`` (if given), the newest ``limit`` of those."""
    entries = [reader.entry(row, t) for t in reader.all_rows(row.group_id)]
    if before is not None:
        wanted = before.strip().lower()
        idx = [i for i, e in enumerate(entries) if e.id and e.id.startswith(wanted)]
        if not idx:
            raise NotFound(f"no entry {before!r} in group {row.name!r}")
        entries = entries[: idx[0]]
    if limit is not None:
        entries = entries[-limit:] if limit > 0 else []
    return entries


async def post_record(
    ctx: Context, logs: RelayLogs, row: GroupRow, keys: StreamKeys, record: GroupRecord
) -> tuple[int, int]:
    """Post a sealed record to the epoch's stream: (position, log index).
    The receipt is verified and held to everything seen of the relay's log,
    as a send's is (a SplitView or a bad receipt is raised: the record is in
    the stream; the stream is read before anything goes pairwise)."""
    relay = await ctx.relay(row.relay)
    blob = seal_record(keys, record)
    position, receipt = await relay.post_stream_item(keys.stream_id, blob)
    try:
        key = await logs.key(row.relay)
        checkpoint = verify_receipt(receipt, blob, key)
        await logs.accept(row.relay, key, receipt.checkpoint, checkpoint)
    except VerificationFailed as e:
        ctx.audit.rejected(reason_of(e), f"group stream receipt from {row.relay}: {e}")
        raise
    return position, receipt.leaf_index


def debt_due(ctx: Context, group_id: bytes, content_type: int, body: bytes) -> bool | None:
    """Whether an owed pairwise send is due now (True), never (False: its
    record was refused), or not yet (None: its record not read yet). A
    welcome is always due; a group message only once its record is shown."""
    if content_type != int(ContentType.GROUP_MESSAGE):
        return True
    signed = GroupDelivery.from_bytes(body).signed
    rows = ctx.db.transcript(group_id, record_hash=signed.hash, limit=1)
    if not rows:
        return None
    return rows[0].status == "shown"


def owe(
    ctx: Context, group_id: bytes, content_type: int, targets: Sequence[bytes], body: bytes
) -> None:
    """Keep pairwise sends on the group's row, for ``Groups.pay_debts``."""
    with ctx.db.transaction():
        row = ctx.db.group(group_id)
        if row is not None:
            owed = tuple((int(content_type), f, body) for f in targets)
            ctx.db.put_group(replace(row, owed=(*row.owed, *owed)))
