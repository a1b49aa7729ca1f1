"""The agent's JSON answers as :class:`Channel`'s result types, for
:class:`~securechan.client.agent_client.AgentClient` (docs/AGENT.md, Library).

Imported only by the typed methods of the agent's client, on their first
call: it loads the result types, and through them the protocol's and the
cryptography (about 0.2 s, once). ``AgentClient.call`` returns the raw JSON
and loads nothing of this, so the thin command line (cli/fast.py) stays
light.

The JSON of a received item carries less than a :class:`Received`: its
``conversation`` and ``hash`` come back empty and a receipt's ``receipt`` as
``None`` (its ``receipt_matches`` and notes are kept); a file's
``file_data`` is read back from where the agent saved it (``download``).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from securechan.client.results import (
    AgentStatus,
    Cancelled,
    ContactInfo,
    QueuedMessage,
    Received,
    Rejected,
    SendResult,
    StatementExported,
    Status,
)
from securechan.errors import AgentUnavailable, Reason
from securechan.protocol.address import ContactCard
from securechan.protocol.payload import ContentType

__all__ = [
    "agent_status",
    "cancelled",
    "contact_card",
    "contact_info",
    "history_rows",
    "outbox_now",
    "queued_messages",
    "received_item",
    "send_result",
    "statement_exported",
]

History = list[tuple[str, str, int, int, str, str]]


def _seconds(text: str) -> int:
    """An ``iso_utc`` string back to Unix seconds."""
    at = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
    return int(at.timestamp())


def _checked(build: Any, obj: Any, what: str) -> Any:
    """``build(obj)``, or :class:`AgentUnavailable` for an answer that does
    not have the documented shape (the agent broke the protocol)."""
    try:
        return build(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise AgentUnavailable(f"the agent's {what} answer is malformed: {e!r}") from None


def received_item(obj: dict[str, Any]) -> Received | Rejected:
    def build(o: dict[str, Any]) -> Received | Rejected:
        if "rejected" in o:
            return Rejected(
                reason=Reason(o["rejected"]),
                error=str(o["error"]),
                held=bool(o["held"]),
                evidence=tuple(str(e) for e in o.get("evidence", ())),
                relay=o.get("relay"),
            )
        data = Path(o["file"]).read_bytes() if o.get("file") else None
        return Received(
            contact=str(o["contact"]),
            fingerprint=str(o["fingerprint"]),
            verified=bool(o["verified"]),
            conversation=b"",
            seq=int(o["seq"]),
            sent_at=_seconds(o["sent_at"]),
            content_type=ContentType[str(o["type"]).upper()],
            text=o.get("text"),
            file_name=o.get("file_name"),
            file_data=data,
            receipt_matches=o.get("receipt_matches"),
            notes=tuple(str(n) for n in o.get("notes", ())),
        )

    item: Received | Rejected = _checked(build, obj, "receive")
    return item


def send_result(obj: dict[str, Any]) -> SendResult:
    def build(o: dict[str, Any]) -> SendResult:
        return SendResult(
            contact=str(o["contact"]),
            seqs=tuple(int(s) for s in o["seqs"]),
            delivered=int(o["delivered"]),
            pending=int(o["pending"]),
        )

    result: SendResult = _checked(build, obj, "send")
    return result


def history_rows(items: list[dict[str, Any]]) -> History:
    """As :meth:`Channel.history` returns them: (contact, direction, seq,
    sent_at, summary, message id)."""

    def build(rows: list[dict[str, Any]]) -> History:
        return [
            (
                str(o["contact"]),
                str(o["direction"]),
                int(o["seq"]),
                _seconds(o["sent_at"]),
                str(o["summary"]),
                str(o["id"]),
            )
            for o in rows
        ]

    rows: History = _checked(build, items, "history")
    return rows


def statement_exported(obj: dict[str, Any]) -> StatementExported:
    def build(o: dict[str, Any]) -> StatementExported:
        return StatementExported(
            file=str(o["file"]),
            message_id=str(o["message_id"]),
            log=bool(o["log"]),
            witnessed=bool(o["witnessed"]),
            delivery_receipt=bool(o["delivery_receipt"]),
        )

    result: StatementExported = _checked(build, obj, "statementExport")
    return result


def agent_status(obj: dict[str, Any]) -> AgentStatus:
    def build(o: dict[str, Any]) -> AgentStatus:
        channel = o.get("channel")
        errors = o.get("relay_errors")
        return AgentStatus(
            home=str(o["home"]),
            pid=int(o["pid"]),
            locked=bool(o["locked"]),
            expires_in=int(o["expires_in"]),
            idle_ttl=float(o["idle_ttl"]),
            max_ttl=float(o["max_ttl"]),
            unknown_senders=str(o["unknown_senders"]),
            pending=int(o["pending"]),
            channel=None if channel is None else Status.from_mapping(channel),
            relay_errors=None if errors is None else {str(k): str(v) for k, v in errors.items()},
        )

    result: AgentStatus = _checked(build, obj, "status")
    return result


def contact_info(obj: dict[str, Any]) -> ContactInfo:
    def build(o: dict[str, Any]) -> ContactInfo:
        words = o.get("safety_words")
        verified_at = o.get("verified_at")
        return ContactInfo(
            name=str(o["name"]),
            identity_name=str(o["identity_name"]),
            fingerprint=str(o["fingerprint"]),
            verified=bool(o["verified"]),
            added=_seconds(o["added"]),
            verified_at=None if verified_at is None else _seconds(verified_at),
            safety_number=o.get("safety_number"),
            safety_words=None if words is None else tuple(str(w) for w in words),
        )

    result: ContactInfo = _checked(build, obj, "pair")
    return result


def queued_messages(obj: dict[str, Any]) -> list[QueuedMessage]:
    """``outbox``'s items as :meth:`Channel.queued` returns them."""

    def build(o: dict[str, Any]) -> list[QueuedMessage]:
        return [
            QueuedMessage(
                id=str(x["id"]),
                contact=None if x["contact"] is None else str(x["contact"]),
                kind=str(x["kind"]),
                size=int(x["size"]),
                file_name=None if x["file_name"] is None else str(x["file_name"]),
                seqs=tuple(int(s) for s in x["seqs"]),
                parts=int(x["parts"]),
                posted=int(x["posted"]),
                created=_seconds(x["created"]),
                relays=tuple(str(r) for r in x["relays"]),
            )
            for x in o["items"]
        ]

    items: list[QueuedMessage] = _checked(build, obj, "outbox")
    return items


def outbox_now(obj: dict[str, Any]) -> int:
    """The agent's clock when it listed the outbox (for the items' age)."""
    now: int = _checked(lambda o: _seconds(o["now"]), obj, "outbox")
    return now


def cancelled(obj: dict[str, Any]) -> Cancelled:
    def build(o: dict[str, Any]) -> Cancelled:
        return Cancelled(
            id=str(o["id"]),
            contact=str(o["contact"]),
            kind=str(o["kind"]),
            parts=int(o["parts"]),
            withdrawn=int(o["withdrawn"]),
            posted=int(o["posted"]),
            in_flight=int(o["in_flight"]),
            retired=bool(o["retired"]),
        )

    result: Cancelled = _checked(build, obj, "outboxCancel")
    return result


def contact_card(obj: dict[str, Any]) -> ContactCard:
    """``register``'s card, as :meth:`Channel.register` returns it."""
    from securechan.errors import MalformedInput

    def build(o: dict[str, Any]) -> ContactCard:
        try:
            return ContactCard.from_text(str(o["card"]))
        except MalformedInput as e:
            raise ValueError(str(e)) from None

    card: ContactCard = _checked(build, obj, "register")
    return card
