"""Security events of the identity layer, in one place.

The keystore and the contact store report every security-relevant change
through an :data:`EventSink`: a callable that receives one
:class:`SecurityEvent`. The local audit log (``securechan.audit``, see
``docs/AUDIT.md``) is the sink in normal use; tests pass a list's ``append``.
The sink is called after the change is durable (or, for a refusal, after the
decision), so it never records something that did not happen.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EventKind", "EventSink", "SecurityEvent", "discard"]


class EventKind(enum.Enum):
    """What happened."""

    IDENTITY_CREATED = "identity-created"
    IDENTITY_REPLACED = "identity-replaced"
    CONTACT_ADDED = "contact-added"
    CONTACT_VERIFIED = "contact-verified"
    CONTACT_VERIFY_FAILED = "contact-verify-failed"
    CONTACT_KEY_CHANGED = "contact-key-changed"
    CONTACT_KEY_CHANGE_REFUSED = "contact-key-change-refused"
    CONTACT_REMOVED = "contact-removed"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent:
    """One event: when, what, about whom, and the key(s) involved.

    ``fingerprint`` is the key concerned; ``old_fingerprint`` is set only for
    key changes. No secret and no plaintext ever appears in an event.
    """

    at: int
    kind: EventKind
    name: str
    fingerprint: str
    old_fingerprint: str | None = None


EventSink = Callable[[SecurityEvent], None]


def discard(event: SecurityEvent) -> None:
    """The sink that drops events (for callers with no audit log)."""
