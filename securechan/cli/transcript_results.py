"""``verify-transcript --json``: the result type of a verified group
transcript (docs/CLI.md, "JSON output"; re-exported by
:mod:`securechan.cli.results`, whose conventions it follows)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from securechan.timestamps import iso_utc

if TYPE_CHECKING:
    from securechan.audit.group_transcript_verify import TranscriptEntry, VerifiedTranscript

__all__ = ["TranscriptVerified", "content_summary"]

_NONE: frozenset[str] = frozenset()


def content_summary(content: Any) -> str:
    """A group message's content in one string: a text as is, a file chunk
    described."""
    text = getattr(content, "text", None)
    if isinstance(text, str):
        return text
    return (
        f"[file {content.name!r}, {content.size} bytes, chunk {content.index + 1} "
        f"of {content.count}, SHA-512 {content.sha512.hex()}]"
    )


def _group_entry(e: TranscriptEntry) -> dict[str, Any]:
    return {
        "number": e.number,
        "status": e.status,
        "epoch": e.epoch,
        "position": e.position,
        "log_index": e.log_index,
        "author": e.author.fingerprint.digest.hex() if e.author is not None else None,
        "author_name": e.author.name if e.author is not None else None,
        "seq": e.seq,
        "sent_at": iso_utc(e.sent_at) if e.sent_at is not None else None,
        "message_id": e.message_id,
        "content": content_summary(e.content) if e.content is not None else None,
        "reason": e.reason,
        "head": e.head.hex(),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptVerified:
    """``verify-transcript``: a valid group transcript (or statement of one
    group message, ``statement`` true and ``message`` its entry): the
    member lists per epoch, every entry in order, the final head."""

    statement: bool
    group_id: str
    joined: bool
    log_origin: str
    tree_size: int
    final_head: str
    final_epoch: int
    epochs: tuple[Mapping[str, Any], ...]
    entries: tuple[Mapping[str, Any], ...]
    message: Mapping[str, Any] | None

    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "valid",
        "statement",
        "group_id",
        "joined",
        "log_origin",
        "tree_size",
        "final_head",
        "final_epoch",
        "epochs",
        "entries",
        "message",
    )
    JSON_OPTIONAL: ClassVar[frozenset[str]] = _NONE

    @classmethod
    def of(cls, v: VerifiedTranscript) -> TranscriptVerified:
        s = v.statement_or_none()
        return cls(
            statement=s is not None,
            group_id=v.group_id.hex(),
            joined=v.joined,
            log_origin=v.checkpoint.origin,
            tree_size=v.checkpoint.size,
            final_head=v.final_head.hex(),
            final_epoch=v.final_state.epoch,
            epochs=tuple(
                {
                    "epoch": st.epoch,
                    "state_hash": st.hash.hex(),
                    "members": [
                        {"fingerprint": m.fingerprint.hex(), "admin": m.admin} for m in st.members
                    ],
                }
                for st in v.states
            ),
            entries=tuple(_group_entry(e) for e in v.entries),
            message=_group_entry(s.message) if s is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True,
            "statement": self.statement,
            "group_id": self.group_id,
            "joined": self.joined,
            "log_origin": self.log_origin,
            "tree_size": self.tree_size,
            "final_head": self.final_head,
            "final_epoch": self.final_epoch,
            "epochs": [dict(e) for e in self.epochs],
            "entries": [dict(e) for e in self.entries],
            "message": dict(self.message) if self.message is not None else None,
        }
