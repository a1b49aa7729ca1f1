"""The batch send of a group fan-out through the outbox.

:func:`send_group_batch` makes one group payload (a group message's
delivery or a change's welcome) for every member with a current session
in one :meth:`Session.send_group_batch <securechan.protocol.session.Session.send_group_batch>`
call (every pairwise copy signed first, then each ratchet-encrypted), keeps
every copy with its session state in the outbox in one transaction, then
posts them in one flush: the outbox's rule (state persisted before any
envelope leaves, docs/RELAY.md §6) for a whole fan-out at once. A part of
:mod:`securechan.client.outbox` (kept apart to keep each module small).
"""

from __future__ import annotations

from collections.abc import Sequence

from securechan.client.outbox import Built, Outbox, Target
from securechan.errors import NotFound, SecurechanError
from securechan.identity import Contact
from securechan.primitives import sha256
from securechan.protocol.payload import ContentType
from securechan.protocol.session import Outgoing, Session

__all__ = ["send_group_batch"]


async def send_group_batch(
    outbox: Outbox, contacts: Sequence[Contact], content_type: ContentType, body: bytes
) -> tuple[dict[str, bool], list[Contact]]:
    """One group payload to each contact with a current session, as one
    batch (``Session.send_group_batch``: every copy signed, then each
    encrypted) committed in one transaction with every copy in the
    outbox, then posted by one :meth:`flush`. Returns whether each was
    posted now, by name, and the contacts left to :meth:`send` one by
    one: no session yet, a session that cannot be loaded for sending
    (rolled back, damaged), or all of them when the batch fails (then
    nothing was committed: every session as it was). Interrupted while
    posting, the copies stay queued (the group record is in the stream
    already: its content is owed to every member) and the next flush
    posts them."""
    ctx, db = outbox._ctx, outbox._ctx.db
    retired = db.retired()
    chosen: list[tuple[Contact, bytes, list[Target]]] = []
    rest: list[Contact] = []
    for c in contacts:
        rows = [r for r in db.sessions(c.fingerprint.digest) if r.conversation not in retired]
        try:
            if not rows:
                raise NotFound("no session yet")
            chosen.append((c, rows[0].conversation, outbox.targets(c, rows[0].peer_grant)))
        except SecurechanError:
            rest.append(c)
    if not chosen:
        return {}, rest
    split = await outbox._logs.refresh(t[0] for _, _, ts in chosen for t in ts)
    now = ctx.now()
    kind = "group-welcome" if content_type is ContentType.GROUP_WELCOME else "group"
    sent: list[tuple[Contact, Session, Outgoing]] = []
    try:
        with db.transaction():
            loaded: list[tuple[Contact, Session, list[Target]]] = []
            for c, conversation, targets in chosen:
                try:
                    session = outbox._state.load_session(conversation, sending=True)
                except SecurechanError:
                    rest.append(c)  # refused by the single send, with its reason
                    continue
                session.checkpoints = outbox._logs.carried(t[0] for t in targets)
                loaded.append((c, session, targets))
            outs = Session.send_group_batch(
                [(s, content_type, body) for _, s, _ in loaded], now=now
            )
            for (c, session, targets), out in zip(loaded, outs, strict=True):
                outbox._what = {"kind": kind, "size": len(body)}
                built = Built(envelopes=(out.envelope,), signed=out.record, key=out.key, ad=out.ad)
                outbox._commit(session, c, [out.envelope], (out.seq,), built, targets, now)
                sent.append((c, session, out))
    except (SecurechanError, ValueError):
        return {}, list(contacts)  # nothing committed: each is sent on its own
    for c, session, out in sent:
        ctx.audit.message(
            "message-sent",
            conversation=session.conversation,
            seq=out.seq,
            payload_hash=sha256(out.record),
            peer=c.fingerprint,
            at=now,
        )
    failed = split is not None
    try:
        await outbox.flush()
    except SecurechanError:
        # A split view or a receipt that does not verify (flush audits it):
        # every copy is reported pending, as a single send's caller
        # (groups._send_one) reports one whose send raised.
        failed = True
    queued = {e.envelope for e in db.outbox()}
    return {c.name: not failed and out.envelope not in queued for c, _, out in sent}, rest
