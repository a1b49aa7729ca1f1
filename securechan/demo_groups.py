"""The demo's group scene (issue 17; docs/PROTOCOL.md §20).

The mediator ("muscat") and the two delegations ("tehran", and
"washington" with a second official, "washington-2") talk in one group
through muscat's relay: one transcript for all (equal heads). Muscat removes
washington-2, who gets nothing afterwards and whose post is refused by
everyone. Then tehran, played as a hostile member, posts one signed record
for everyone but shows washington other content: washington reports an
equivocation and keeps tehran's own signature over the content it was
shown, muscat sees the signed text, and the transcript stays one.

Everything is real (homes on disk, the relay process, the library's
:class:`Channel`); the hostile member signs and delivers with the group
client's own parts, as a modified client would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from securechan.client.channel import Channel
from securechan.client.group_carriage import view_of
from securechan.client.group_results import GroupEntry
from securechan.identity import Keystore
from securechan.primitives import KdfParams, random_bytes
from securechan.protocol.group import GroupPayload, SignedGroupPayload, commit_content
from securechan.protocol.group_stream import (
    KIND_TEXT,
    GroupDelivery,
    GroupRecord,
    GroupWelcome,
    StreamKeys,
    seal_record,
)
from securechan.protocol.payload import ContentType, TextBody
from securechan.transport import RetryPolicy

__all__ = ["group_scene"]

T = TypeVar("T")

MEMBERS = ("muscat", "tehran", "washington", "washington-2")
GROUP = "talks"
_FAST = RetryPolicy(attempts=2, base=0.05, cap=0.2, timeout=10.0)


async def _pump(chs: dict[str, Channel], rounds: int = 2) -> dict[str, list[GroupEntry]]:
    got: dict[str, list[GroupEntry]] = {n: [] for n in chs}
    for _ in range(rounds):
        for name, ch in chs.items():
            got[name] += [x for x in await ch.receive() if isinstance(x, GroupEntry)]
    return got


def _heads(chs: dict[str, Channel], names: tuple[str, ...]) -> set[str]:
    return {chs[n].group_show(GROUP).head for n in names}


def _signed(ch: Channel, text: str, seq: int | None = None) -> tuple[SignedGroupPayload, bytes]:
    """A message signed by ``ch`` on the view it holds (a hostile client's)."""
    row = ch.group_client.row(GROUP)
    view = view_of(row)
    me = ch.identity.fingerprint.digest
    n = seq if seq is not None else view.last.get(me, (0, b""))[0] + 1
    content = TextBody(text=text).to_bytes()
    payload = GroupPayload(
        group_id=row.group_id,
        state_hash=view.state.hash,
        sender=me,
        seq=n,
        head=view.head,
        commitment=commit_content(row.group_id, me, n, content),
        sent_at=ch.now(),
    )
    return SignedGroupPayload.sign(ch.identity, payload), content


async def _post(ch: Channel, record: GroupRecord) -> None:
    """Post a record sealed under the epoch key ``ch`` holds."""
    g = ch.group_client
    row = g.row(GROUP)
    keys = g._keys(row)
    relay = await ch.relay(row.relay)
    await relay.post_stream_item(keys.stream_id, seal_record(keys, record))


async def _deliver(ch: Channel, to: str, signed: SignedGroupPayload, content: bytes) -> None:
    fp = ch.keystore.contacts.get(to).fingerprint.digest
    body = GroupDelivery(signed=signed, kind=KIND_TEXT, content=content).to_bytes()
    await ch.group_client._pairwise([fp], ContentType.GROUP_MESSAGE, body)


async def group_scene(
    folder: Path, relay_url: str, kdf: KdfParams, step: Callable[..., T]
) -> AsyncIterator[T]:
    """Yield the scene's steps, each made by ``step`` (the demo's Step)."""
    chs: dict[str, Channel] = {}
    try:
        for name in MEMBERS:
            store = Keystore(folder / name)
            me = store.create(name, random_bytes(18).hex(), kdf=kdf)
            chs[name] = Channel(store, me, retry=_FAST)
        cards = {n: await ch.register(relay_url) for n, ch in chs.items()}
        for n, ch in chs.items():
            for other, card in cards.items():
                if other != n:
                    ch.keystore.contacts.add(card.identity, card=card.to_bytes())
        m, t, w = chs["muscat"], chs["tehran"], chs["washington"]
        created = await m.group_create(GROUP, ["tehran", "washington", "washington-2"])
        await _pump(chs)
        await t.send_group(GROUP, text="Tehran: the inspection schedule is acceptable.")
        await _pump(chs)
        await w.send_group(GROUP, text="Washington: agreed, with the sanctions timetable.")
        await _pump(chs)
        seen = {
            n: [e.text for e in chs[n].group_history(GROUP) if e.status == "shown"] for n in MEMBERS
        }
        yield step(
            id="group",
            title="the mediator and both delegations talk in one group: one transcript, "
            "equal heads",
            ok=len(_heads(chs, MEMBERS)) == 1
            and len({tuple(v) for v in seen.values()}) == 1
            and len(seen["muscat"]) == 2,
            details={
                "members": ", ".join(MEMBERS),
                "messages each member shows": str(len(seen["muscat"])),
                "head": created.head[:16] + "...",
            },
        )

        removed = chs["washington-2"]
        info = await m.group_remove(GROUP, ["washington-2"])
        await _pump(chs)
        await m.send_group(GROUP, text="Muscat: the working group continues with three.")
        # washington-2 still holds epoch 0's secret. It posts on the old
        # stream (which nobody reads after the change), and, told epoch 1's
        # stream id by a colluding relay, there too: without epoch 1's key.
        late, _ = _signed(removed, "washington-2: I am still here")
        row = removed.group_client.row(GROUP)
        kept = [w for e, _, w in removed.db.welcomes(row.group_id) if e == 0]
        old = StreamKeys.from_secret(GroupWelcome.from_bytes(kept[0]).epoch_secret)
        new_id = m.group_client._keys(m.group_client.row(GROUP)).stream_id
        relay = await removed.relay(row.relay)
        await relay.post_stream_item(old.stream_id, seal_record(old, GroupRecord(message=late)))
        guess = StreamKeys(stream_id=new_id, key=old.key)
        await relay.post_stream_item(new_id, seal_record(guess, GroupRecord(message=late)))
        got = await _pump(chs)
        stay = ("muscat", "tehran", "washington")
        refused = [e for n in stay for e in got[n] if e.status == "refused"]
        shown_after = [
            e.text
            for e in removed.group_history(GROUP)
            if e.status == "shown" and e.text and e.text.startswith("Muscat: the working")
        ]
        from_removed = [
            e for n in stay for e in chs[n].group_history(GROUP) if e.sender == "washington-2"
        ]
        yield step(
            id="attack-group-removed",
            title="muscat removes washington-2: it reads nothing after, and what it posts "
            "is never shown to anyone",
            ok=info.epoch == 1
            and len(_heads(chs, stay)) == 1
            and len(refused) == len(stay)
            and not shown_after
            and not [e for e in from_removed if e.status == "shown"],
            attack=True,
            details={
                "epoch": str(info.epoch),
                "its post on the old stream": "never read (the others follow epoch 1)",
                "its post on the new stream": refused[0].summary if refused else "NOT REFUSED",
                "shown to washington-2 after the removal": "nothing"
                if not shown_after
                else "; ".join(shown_after),
            },
        )

        honest, said = _signed(t, "Tehran: we accept the draft.")
        twin, lie = _signed(t, "Tehran: we reject the draft.", seq=honest.payload.seq)
        await _post(t, GroupRecord(message=honest))
        await _deliver(t, "muscat", honest, said)
        await _deliver(t, "washington", twin, lie)
        got = await _pump(chs)
        at_w = [e for e in got["washington"] if e.sender == "tehran"]
        at_m = [e for e in got["muscat"] if e.sender == "tehran"]
        yield step(
            id="attack-group-equivocation",
            title="tehran shows washington other content than the text it signed for the "
            "group: washington catches it and keeps tehran's signature as evidence",
            ok=[e.status for e in at_w] == ["equivocation"]
            and [(e.status, e.text) for e in at_m] == [("shown", "Tehran: we accept the draft.")]
            and len(_heads(chs, stay)) == 1,
            attack=True,
            details={
                "washington": at_w[0].summary if at_w else "NOT CAUGHT",
                "muscat shows": at_m[0].text or "" if at_m else "-",
            },
        )
    finally:
        for ch in chs.values():
            await ch.close()
