"""Group transcripts and statements of group messages, from the client's
store (issue 17; docs/AUDIT.md, "Group transcripts").

:func:`group_bundle` builds the bundle of one group
(:class:`~securechan.audit.group_transcript.GroupTranscript`) from what this
member holds: every stream item it read (``group_transcript`` rows, in the
order read), the epoch secrets of the welcomes that opened those epochs, the
contents that arrived pairwise and matched, the authors' pinned identities,
and the relay's newest checkpoint with an RFC 9162 inclusion proof for every
item, fetched now (the checkpoint is held to everything seen of that log,
as every checkpoint is: a relay that answers with another history is a
:class:`SplitView`). :func:`group_statement_bundle` is the same, ending at
one message and disclosing only its content. Both verify the bundle before
returning it (against the relay key pinned for the group's relay), so a
member never writes a file a third party would refuse.

``--from``/``--to`` are record numbers as the verifier prints them: 1, 2,
... over the records this member applied (changes and messages), from its
first (the creation, or the change it joined by). The bundle always starts
there (the verifier replays the group from it); ``to`` ends it, and only
the messages numbered ``from``..``to`` have their content disclosed.

The write functions create the file with ``O_EXCL`` (never over an existing
one).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from securechan.audit.checkpoint import Checkpoint, open_checkpoint
from securechan.audit.group_transcript import (
    MAX_ITEMS,
    GroupTranscript,
    TranscriptItem,
    TranscriptJoin,
)
from securechan.audit.group_transcript_verify import VerifiedTranscript, verify_transcript
from securechan.audit.merkle import verify_inclusion
from securechan.audit.receipt import envelope_leaf_hash
from securechan.client.context import Context
from securechan.client.db_groups import GroupRow, TranscriptRow
from securechan.client.groups import Groups
from securechan.client.logview import RelayLogs
from securechan.client.results import TranscriptExported
from securechan.errors import (
    NotFound,
    ProofFailed,
    RelayRefused,
    StorageError,
    UsageError,
)
from securechan.identity.keys import PublicIdentity
from securechan.protocol.group import GroupChange
from securechan.protocol.group_stream import GroupDelivery, GroupRecord, GroupWelcome
from securechan.transport import RelayClient
from securechan.transport_streams import MAX_STREAM_PAGE, StreamItem

__all__ = [
    "GroupRecordHost",
    "export_group",
    "export_group_statement",
    "find_group_message",
    "group_bundle",
    "group_statement_bundle",
    "item_proofs",
]

_PAGES_AT_ONCE = 4
"""Stream pages an export asks for at once (the relay answers 8 at a time)."""

# Row statuses (client/group_results.py) of records the member applied.
_MESSAGES = frozenset({"shown", "content-pending", "equivocation"})
_APPLIED = _MESSAGES | {"change"}


class GroupRecordHost(Protocol):
    """What these functions need of a Channel."""

    ctx: Context
    group_client: Groups
    logs: RelayLogs


def _rows(ctx: Context, group_id: bytes) -> list[TranscriptRow]:
    rows: list[TranscriptRow] = []
    after = 0
    while page := ctx.db.transcript(group_id, after=after):
        rows.extend(page)
        after = page[-1].id
    return rows


def _content(ctx: Context, group_id: bytes, record_hash: bytes) -> bytes | None:
    for d in ctx.db.deliveries(group_id, record_hash=record_hash):
        return GroupDelivery.from_bytes(d.delivery).content
    return None


async def group_bundle(
    host: GroupRecordHost,
    group: str,
    *,
    first: int | None = None,
    last: int | None = None,
    only: bytes | None = None,
) -> tuple[GroupTranscript, VerifiedTranscript, GroupRow]:
    """The verified bundle of ``group`` (a local name or group id hex):
    records 1..``last`` (all when None), contents of messages numbered
    ``first``..``last`` (or only of the message whose record hash is
    ``only``, which then ends the bundle). ``UsageError`` for a bad range,
    ``NotFound`` for a secret or record not held; relay errors as raised."""
    ctx = host.ctx
    row = host.group_client.row(group)
    if (first is not None and first < 1) or (last is not None and last < 1):
        raise UsageError("record numbers start at 1")
    if first is not None and last is not None and first > last:
        raise UsageError("--from is after --to")
    rows = _rows(ctx, row.group_id)
    join: TranscriptJoin | None = None
    secrets: dict[int, bytes] = {}
    picked: list[tuple[TranscriptRow, bytes | None]] = []
    authors: set[bytes] = set()
    number = 0
    for t in rows:
        if t.position == 0:  # the change we joined by (client/group_carriage.py)
            change = _change(t)
            welcome = GroupWelcome.from_bytes(
                ctx.db.welcome(row.group_id, change.state.epoch, change.hash) or b""
            )
            if welcome.previous is None:  # pragma: no cover - a join's welcome has one
                raise NotFound("the welcome this member joined by has no previous state")
            join = TranscriptJoin(
                change=change,
                previous=welcome.previous,
                head_before=welcome.head_before,
                senders=welcome.senders,
            )
            secrets[change.state.epoch] = welcome.epoch_secret
            authors.add(change.author)
            number += 1
            continue
        if t.status in _APPLIED:
            number += 1
        if last is not None and number > last:
            break
        content = None
        if t.status == "shown" and (
            t.record_hash == only if only is not None else (first is None or number >= first)
        ):
            content = _content(ctx, row.group_id, t.record_hash)
        if t.status == "change" and t.record:
            # The secret of the epoch this change opens (the creation's: of
            # epoch 0); none if the change removed us: no later stream read.
            change = _change(t)
            data = ctx.db.welcome(row.group_id, change.state.epoch, change.hash)
            if data is not None:
                secrets[change.state.epoch] = GroupWelcome.from_bytes(data).epoch_secret
        if t.sender:
            authors.add(t.sender)
        picked.append((t, content))
        if only is not None and t.record_hash == only:
            break
    if last is not None and number < last:
        raise UsageError(f"group {row.name!r} has {number} records; --to {last} is beyond")
    if not picked:
        raise UsageError(f"group {row.name!r} has no record to export yet")
    if len(picked) > MAX_ITEMS:
        raise UsageError(
            f"group {row.name!r} has more than {MAX_ITEMS} stream items to this point: "
            "too many for one bundle; end it earlier with --to"
        )
    relay = await ctx.relay(row.relay)
    key = await host.logs.key(row.relay)
    note = await relay.log_checkpoint()
    checkpoint = open_checkpoint(note, key)
    await host.logs.accept(row.relay, key, note, checkpoint)
    proofs = await item_proofs(relay, [t for t, _ in picked], checkpoint)
    items = [
        TranscriptItem(
            stream_id=t.stream_id,
            position=t.position,
            blob=t.blob,
            log_index=t.log_index,
            inclusion_proof=b"".join(proofs[(t.stream_id, t.position)]),
            content=content,
        )
        for t, content in picked
    ]
    identities: list[PublicIdentity] = []
    for fp in sorted(authors):
        who = host.group_client.reader.identity(fp)
        if who is not None:
            identities.append(who)
    bundle = GroupTranscript.build(
        group_id=row.group_id,
        items=items,
        epoch_secrets=secrets,
        identities=identities,
        checkpoint=note,
        log_key=key,
        join=join,
    )
    return bundle, verify_transcript(bundle, relay_key=key), row


async def item_proofs(
    relay: RelayClient,
    rows: Sequence[TranscriptRow],
    checkpoint: Checkpoint,
    *,
    paged: bool = True,
) -> dict[tuple[bytes, int], tuple[bytes, ...]]:
    """The inclusion proof of every row's item in the tree of ``checkpoint``,
    by (stream id, position), each checked against its signed root: read
    from the streams' pages with their proofs (``GET
    /v1/streams/{id}/items?size=N``, :data:`MAX_STREAM_PAGE` items a
    request, up to :data:`_PAGES_AT_ONCE` pages in flight), so an export of n items of one
    stream costs about n / 200 requests, not n. A relay that serves no
    proofs with its pages (an older one: 400) is asked for each proof
    (``GET /v1/log/proof/inclusion``), as every relay is with ``paged=False``
    (``bench/bench_group_export.py`` compares the two).

    The relay is not trusted: a page with a gap, a repeat or a missing
    proof is :class:`MalformedInput` (the transport's checks), a page that
    ends before an item this member read, or that holds at one of its
    positions another blob or leaf than it read (the relay now shows
    another stream), or a wrong proof is :class:`ProofFailed`: nothing is
    written."""
    wanted: dict[bytes, dict[int, TranscriptRow]] = defaultdict(dict)
    for t in rows:
        wanted[t.stream_id][t.position] = t
    try:
        if paged:
            slots = asyncio.Semaphore(_PAGES_AT_ONCE)
            found = await asyncio.gather(
                *(
                    _stream_proofs(relay, sid, held, checkpoint, slots)
                    for sid, held in wanted.items()
                )
            )
            return {key: proof for part in found for key, proof in part.items()}
    except RelayRefused as e:
        if e.status != 400:
            raise
    return {
        (t.stream_id, t.position): _checked(
            t, await relay.inclusion_proof(t.log_index, checkpoint.size), checkpoint
        )
        for t in rows
    }


async def _stream_proofs(
    relay: RelayClient,
    stream_id: bytes,
    held: dict[int, TranscriptRow],
    checkpoint: Checkpoint,
    slots: asyncio.Semaphore,
) -> dict[tuple[bytes, int], tuple[bytes, ...]]:
    """The proofs of the items ``held`` (by position) of one stream: its
    pages from the first of them to the last, all asked for at once (at
    most :data:`_PAGES_AT_ONCE` in flight), each checked."""
    first, last = min(held), max(held)
    starts = range(first - 1, last, MAX_STREAM_PAGE)

    async def page(after: int) -> list[StreamItem]:
        async with slots:
            items, _ = await relay.fetch_stream(
                stream_id, after, min(MAX_STREAM_PAGE, last - after), size=checkpoint.size
            )
        return items

    out: dict[tuple[bytes, int], tuple[bytes, ...]] = {}
    for after, items in zip(starts, await asyncio.gather(*map(page, starts)), strict=True):
        for item in items:
            t = held.get(item.position)
            if t is None:
                continue  # not in this export (a refused blob, or past its end)
            if item.blob != t.blob or item.log_index != t.log_index:
                raise ProofFailed(
                    f"the relay's group stream holds another item at position {item.position}"
                    " than this member read from it"
                )
            out[(stream_id, item.position)] = _checked(t, item.inclusion or (), checkpoint)
        # The transport checked the positions: after + 1, after + 2, ...
        if len(items) < min(MAX_STREAM_PAGE, last - after):
            end = after + len(items)
            raise ProofFailed(
                f"the relay's group stream ends at position {end}, before position "
                f"{end + 1} this member read: it withholds or dropped items"
            )
    return out


def _checked(t: TranscriptRow, proof: Sequence[bytes], checkpoint: Checkpoint) -> tuple[bytes, ...]:
    """``proof``, once it proves the row's blob at its leaf under the
    checkpoint's root (:class:`ProofFailed` otherwise)."""
    try:
        verify_inclusion(
            envelope_leaf_hash(t.blob), t.log_index, checkpoint.size, proof, checkpoint.root_hash
        )
    except ProofFailed as e:
        raise ProofFailed(
            f"the relay's inclusion proof of group stream item {t.position} is wrong: {e}"
        ) from None
    return tuple(proof)


def _change(t: TranscriptRow) -> GroupChange:
    record = GroupRecord.from_bytes(t.record)
    if record.change is None:  # pragma: no cover - rows of status change hold one
        raise NotFound("a change row without its change")
    return record.change


def find_group_message(host: GroupRecordHost, message_id: str) -> tuple[GroupRow, bytes] | None:
    """The group and record hash of the group message whose id (16 hex
    digits as ``history --group`` shows, or a unique prefix of at least 8)
    is ``message_id``, or None; ``UsageError`` for a prefix of several."""
    wanted = message_id.strip().lower()
    if len(wanted) < 8:
        return None
    ctx = host.ctx
    found: dict[bytes, GroupRow] = {}
    for row in ctx.db.groups():
        for t in _rows(ctx, row.group_id):
            if t.status in _MESSAGES and t.record_hash.hex().startswith(wanted):
                found[t.record_hash] = row
    if len(found) > 1:
        raise UsageError(f"{message_id!r} names {len(found)} group messages; give more digits")
    return next(((row, h) for h, row in found.items()), None)


async def group_statement_bundle(
    host: GroupRecordHost, message_id: str
) -> tuple[GroupTranscript, VerifiedTranscript, GroupRow]:
    """The verified statement bundle of one group message (by its id):
    ``NotFound`` if no group holds it, ``UsageError`` if its content is not
    here (never arrived, or did not match: nothing to prove)."""
    found = find_group_message(host, message_id)
    if found is None:
        raise NotFound(f"no group message {message_id!r}")
    row, record_hash = found
    bundle, verified, row = await group_bundle(host, row.group_id.hex(), only=record_hash)
    if len(verified.disclosed) != 1:
        raise UsageError(
            f"the content of group message {message_id} is not held here (not received, "
            "or it did not match what its sender signed): no statement to make"
        )
    verified.statement()
    return bundle, verified, row


def _write(output: Path, bundle: GroupTranscript) -> None:
    try:
        data = bundle.to_bytes()
    except ValueError:  # over the wire limits (64 MiB of items)
        raise UsageError(
            "the transcript is larger than one bundle can be; end it earlier with --to"
        ) from None
    try:
        with open(output, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise UsageError(f"{output} exists; choose another name") from None
    except OSError as e:
        raise StorageError(f"cannot write {output}: {e.strerror}") from None


def _exported(
    output: Path, bundle: GroupTranscript, v: VerifiedTranscript, row: GroupRow, mid: str | None
) -> TranscriptExported:
    return TranscriptExported(
        file=str(output),
        group=row.name,
        group_id=row.group_id.hex(),
        records=sum(1 for e in v.entries if e.status not in ("refused", "unreadable")),
        disclosed=len(v.disclosed),
        final_head=v.final_head.hex(),
        log_size=v.checkpoint.size,
        message_id=mid,
    )


async def export_group(
    host: GroupRecordHost,
    group: str,
    output: Path,
    *,
    first: int | None = None,
    last: int | None = None,
) -> TranscriptExported:
    """Write the verified transcript bundle of ``group`` to ``output``."""
    if output.exists():
        raise UsageError(f"{output} exists; choose another name")
    bundle, verified, row = await group_bundle(host, group, first=first, last=last)
    _write(output, bundle)
    return _exported(output, bundle, verified, row, None)


async def export_group_statement(
    host: GroupRecordHost, message_id: str, output: Path
) -> TranscriptExported:
    """Write the verified statement bundle of one group message to ``output``."""
    if output.exists():
        raise UsageError(f"{output} exists; choose another name")
    bundle, verified, row = await group_statement_bundle(host, message_id)
    _write(output, bundle)
    return _exported(output, bundle, verified, row, verified.disclosed[0].message_id)
