"""The audit log's typed appends: one method per kind of security event
(one for both directions of a message).

A part of :class:`securechan.audit.log.AuditLog` (which inherits these);
each builds the kind's fields record (:mod:`securechan.audit.log_records`)
and appends it with :meth:`AuditLog._append`.
"""

from __future__ import annotations

from typing import Any, Literal

from securechan.audit.log_records import (
    KINDS,
    AuditEntry,
    GroupChangeEvent,
    GroupMessageEvent,
    MessageEvent,
    PartyEvent,
    PrekeysRotated,
    Rejection,
    RelayCheckpointSeen,
    SessionEvent,
    clean_detail,
)
from securechan.errors import Reason
from securechan.identity.events import SecurityEvent
from securechan.identity.keys import Fingerprint
from securechan.protocol.group import GroupChange, GroupState, SignedGroupPayload

__all__ = ["AuditEvents", "group_action"]


def group_action(old: GroupState | None, new: GroupState, author: bytes) -> str:
    """What a change from ``old`` to ``new`` by ``author`` did, one of
    :data:`~securechan.audit.log_records.GROUP_ACTIONS`: ``create`` (no
    ``old``), ``leave`` (the author went and nothing else changed), ``add``,
    ``remove``, ``admin``, ``rename`` (that alone changed), ``rekey``
    (nothing changed but the epoch), ``change`` (several of these at once)."""
    if old is None:
        return "create"
    before = {m.fingerprint: m.admin for m in old.members}
    after = {m.fingerprint: m.admin for m in new.members}
    removed = before.keys() - after.keys()
    parts = {
        "add": bool(after.keys() - before.keys()),
        "remove": bool(removed),
        "admin": any(before[f] != a for f, a in after.items() if f in before),
        "rename": new.name != old.name,
    }
    done = [k for k, v in parts.items() if v]
    if done == ["remove"] and removed == {author}:
        return "leave"
    if len(done) == 1:
        return done[0]
    return "change" if done else "rekey"


class AuditEvents:
    """``record`` (the identity layer's event sink) and the typed appends."""

    def _append(self, kind: str, fields: Any, at: int | None) -> AuditEntry:
        raise NotImplementedError

    def record(self, event: SecurityEvent) -> None:
        """The :data:`~securechan.identity.events.EventSink` of the identity layer.

        Maps each keystore and contact event to an entry of the same kind.
        Failures propagate: a security record that silently drops events
        would be worse than a loud error.
        """
        kind = event.kind.value
        if KINDS.get(kind) is not PartyEvent:
            raise ValueError(f"no audit entry kind for event {kind!r}")
        old = event.old_fingerprint
        fields = PartyEvent(
            name=event.name,
            fingerprint=Fingerprint.parse(event.fingerprint).digest,
            old_fingerprint=Fingerprint.parse(old).digest if old is not None else None,
        )
        self._append(kind, fields, event.at)

    def message(
        self,
        kind: Literal["message-sent", "message-received"],
        *,
        conversation: bytes,
        seq: int,
        payload_hash: bytes,
        peer: Fingerprint,
        at: int | None = None,
    ) -> AuditEntry:
        """A message we signed and queued (``message-sent``) or one that
        passed every check (``message-received``): its conversation,
        sequence number, SHA-256 of its signed payload record, and the
        peer's key (the recipient's or the sender's)."""
        fields = MessageEvent(
            conversation=conversation, seq=seq, payload_hash=payload_hash, peer=peer.digest
        )
        return self._append(kind, fields, at)

    def group_message(
        self,
        kind: Literal["group-message-sent", "group-message-received"],
        signed: SignedGroupPayload,
        *,
        epoch: int,
        position: int,
        log_index: int | None = None,
        at: int | None = None,
    ) -> AuditEntry:
        """A group message whose record the group's stream accepted: ours
        (``group-message-sent``) or another member's whose content passed
        every check (``group-message-received``). Records the group, the
        epoch and stream position it was read at, sender, sequence number
        and SHA-256 of ``signed`` (never its content)."""
        p = signed.payload
        fields = GroupMessageEvent(
            group=p.group_id,
            epoch=epoch,
            position=position,
            sender=p.sender,
            seq=p.seq,
            payload_hash=signed.hash,
            log_index=log_index,
        )
        return self._append(kind, fields, at)

    def group_change(
        self,
        change: GroupChange,
        old: GroupState | None,
        *,
        position: int,
        log_index: int | None = None,
        at: int | None = None,
    ) -> AuditEntry:
        """A membership change the group's rules accepted (``group-change``):
        read at ``position`` of the previous epoch's stream (0: we joined by
        its welcome), from ``old`` (``None`` for a creation)."""
        state = change.state
        fields = GroupChangeEvent(
            group=state.group_id,
            epoch=state.epoch,
            position=position,
            author=change.author,
            change_hash=change.hash,
            state_hash=state.hash,
            members=len(state.members),
            action=group_action(old, state, change.author),
            log_index=log_index,
        )
        return self._append("group-change", fields, at)

    def session_started(
        self, *, conversation: bytes, peer: Fingerprint, role: str, at: int | None = None
    ) -> AuditEntry:
        """A new session; ``role`` is ``"initiator"`` or ``"responder"``."""
        fields = SessionEvent(conversation=conversation, peer=peer.digest, role=role)
        return self._append("session-started", fields, at)

    def rejected(
        self,
        reason: Reason,
        detail: str,
        *,
        conversation: bytes | None = None,
        peer: Fingerprint | None = None,
        at: int | None = None,
    ) -> AuditEntry:
        """Something refused: ``reason`` is its stable code (``Reason.REPLAY``),
        ``detail`` its message, made safe to print and cut to 500 characters."""
        fields = Rejection(
            reason=reason,
            detail=clean_detail(detail),
            conversation=conversation,
            peer=peer.digest if peer is not None else None,
        )
        return self._append("rejected", fields, at)

    def checkpoint_seen(
        self, *, origin: str, size: int, root_hash: bytes, at: int | None = None
    ) -> AuditEntry:
        """A relay transparency-log checkpoint we verified."""
        fields = RelayCheckpointSeen(origin=origin, size=size, root_hash=root_hash)
        return self._append("relay-checkpoint-seen", fields, at)

    def prekeys_rotated(self, *, relay: str, count: int, at: int | None = None) -> AuditEntry:
        """Prekeys published at ``relay`` (``count`` one-time keys)."""
        return self._append("prekeys-rotated", PrekeysRotated(relay=relay, count=count), at)

    # --- reading -------------------------------------------------------------------
