"""Pinned contacts, like SSH's ``known_hosts``: a name bound to one key.

The first key seen for a name is pinned (trust on first use). A different key
offered later under the same name is refused with :class:`KeyChanged`, unless
the caller asks to replace it; a replaced contact starts unverified again.
A contact becomes *verified* only when the user confirms the safety number
computed from both identities (``safety.py``), out of band.

The store is one wire record (``ContactsFile``, ``docs/PROTOCOL.md`` §7) in
``contacts.bin``, rewritten atomically under the home folder's lock. Each
change is reported to the event sink after it is on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Self

from securechan import wire
from securechan.errors import (
    BadSignature,
    ContactExists,
    ContactNotFound,
    KeyChanged,
    MalformedInput,
    UsageError,
    VerificationFailed,
)
from securechan.identity._files import atomic_write, home_lock, read_bounded
from securechan.identity.events import EventKind, EventSink, SecurityEvent, discard
from securechan.identity.keys import (
    NAME_MAX,
    PUBLIC_IDENTITY,
    Fingerprint,
    PublicIdentity,
    check_name,
)
from securechan.identity.safety import SafetyNumber, safety_number

__all__ = ["Contact", "Contacts"]

CONTACTS_FILE = "contacts.bin"
MAX_CONTACTS = 4096


@wire.record(0x0020, "Contact")
@dataclass(frozen=True, slots=True, kw_only=True)
class Contact(wire.Record):
    """A pinned contact."""

    name: Annotated[str, wire.text(1, max_len=NAME_MAX)]
    identity: Annotated[PublicIdentity, wire.nested(2, max_len=8192, of=PUBLIC_IDENTITY)]
    verified: Annotated[bool, wire.boolean(3)]
    added: Annotated[int, wire.uint(4)]
    verified_at: Annotated[int | None, wire.uint(5)] = None
    # The contact card (identity + relay addresses), opaque to this layer.
    card: Annotated[bytes | None, wire.bytes_(6, max_len=32768)] = None
    # How it was verified: None for the safety number (and older stores),
    # "code" for pairing by a spoken code (docs/PROTOCOL.md, "Pairing").
    verified_by: Annotated[str | None, wire.text(7, max_len=16)] = None

    @property
    def fingerprint(self) -> Fingerprint:
        """The pinned key's fingerprint."""
        return self.identity.fingerprint

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; the identity's self-signature is checked."""
        contact = wire.decode_record(cls, data)
        check_name(contact.name)
        return contact


@wire.record(0x0021, "ContactsFile")
@dataclass(frozen=True, slots=True, kw_only=True)
class _ContactsFile(wire.Record):
    contacts: Annotated[
        tuple[Contact, ...],
        wire.list_(1, max_len=MAX_CONTACTS * 8400, max_items=MAX_CONTACTS),
    ]


CONTACT = wire.schema_of(Contact)
CONTACTS = wire.schema_of(_ContactsFile)


def _now() -> int:
    return int(time.time())


class Contacts:
    """The contact store of one home folder.

    ``own`` is the owner's fingerprint, when known: adding it as a contact is
    refused. Every method that changes the store takes the home lock, reads,
    changes and rewrites the file atomically, then reports the event.
    """

    def __init__(
        self,
        home: Path | str,
        *,
        own: Fingerprint | None = None,
        events: EventSink = discard,
        clock: Callable[[], int] = _now,
    ) -> None:
        self.home = Path(home)
        self._own = own
        self._events = events
        self._clock = clock

    @property
    def path(self) -> Path:
        """Path of the contact store."""
        return self.home / CONTACTS_FILE

    def _load(self) -> list[Contact]:
        try:
            raw = read_bounded(self.path, MAX_CONTACTS * 8400 + 64)
        except FileNotFoundError:
            return []
        try:
            contacts = list(_ContactsFile.from_bytes(raw).contacts)
        except (MalformedInput, BadSignature) as e:
            raise MalformedInput(f"{self.path} is damaged: {e}") from None
        if len({c.name for c in contacts}) != len(contacts):
            raise MalformedInput(f"{self.path} is damaged: a name appears twice")
        return contacts

    def _save(self, contacts: list[Contact]) -> None:
        data = _ContactsFile(contacts=tuple(contacts)).to_bytes()
        atomic_write(self.path, data, replace=True)

    def _emit(self, kind: EventKind, contact: Contact, old: Fingerprint | None = None) -> None:
        self._events(
            SecurityEvent(
                at=self._clock(),
                kind=kind,
                name=contact.name,
                fingerprint=str(contact.fingerprint),
                old_fingerprint=str(old) if old is not None else None,
            )
        )

    def list(self) -> list[Contact]:
        """All contacts, sorted by name."""
        return sorted(self._load(), key=lambda c: c.name)

    def get(self, name: str) -> Contact:
        """The contact called ``name``; raise :class:`ContactNotFound`."""
        check_name(name)
        for c in self._load():
            if c.name == name:
                return c
        raise ContactNotFound(f"no contact named {name!r}")

    def find(self, fingerprint: Fingerprint) -> Contact | None:
        """The contact pinned to this key, if any."""
        for c in self._load():
            if c.fingerprint == fingerprint:
                return c
        return None

    def add(
        self,
        identity: PublicIdentity,
        *,
        name: str | None = None,
        replace_key: bool = False,
        card: bytes | None = None,
    ) -> Contact:
        """Pin ``identity`` under ``name`` (default: the identity's own name).

        ``card`` is the contact's signed contact card (checked by the caller
        against ``identity``); a newer card for the same key replaces the old.
        Adding the same key under the same name again changes nothing else. A
        different key under a pinned name raises :class:`KeyChanged` (and is
        recorded as refused) unless ``replace_key`` is true. The same key under
        a second name raises :class:`ContactExists`.
        """
        name = check_name(name if name is not None else identity.name)
        if self._own is not None and identity.fingerprint == self._own:
            raise UsageError("that is your own identity, not a contact")
        with home_lock(self.home):
            contacts = self._load()
            for i, c in enumerate(contacts):
                if c.name == name:
                    if c.identity.same_key(identity):
                        if card is not None and card != c.card:
                            contacts[i] = replace(c, card=card)
                            self._save(contacts)
                            return contacts[i]
                        return c
                    new = Contact(
                        name=name, identity=identity, verified=False, added=self._clock(), card=card
                    )
                    if not replace_key:
                        self._emit(EventKind.CONTACT_KEY_CHANGE_REFUSED, new, old=c.fingerprint)
                        raise KeyChanged(name, str(c.fingerprint), str(identity.fingerprint))
                    contacts[i] = new
                    self._save(contacts)
                    self._emit(EventKind.CONTACT_KEY_CHANGED, new, old=c.fingerprint)
                    return new
                if c.identity.same_key(identity):
                    raise ContactExists(f"this identity is already pinned as {c.name!r}")
            if len(contacts) >= MAX_CONTACTS:
                raise UsageError(f"at most {MAX_CONTACTS} contacts")
            new = Contact(
                name=name, identity=identity, verified=False, added=self._clock(), card=card
            )
            contacts.append(new)
            self._save(contacts)
        self._emit(EventKind.CONTACT_ADDED, new)
        return new

    def safety_number(self, name: str, own: PublicIdentity) -> SafetyNumber:
        """The safety number of ``own`` and the contact ``name``."""
        return safety_number(own, self.get(name).identity)

    def verify(self, name: str, given: str, own: PublicIdentity) -> Contact:
        """Mark ``name`` verified if ``given`` is the pair's safety number.

        ``given`` may be the 60 digits or the 28 words. A mismatch is recorded
        and raises :class:`VerificationFailed`; the contact stays as it was.
        """
        with home_lock(self.home):
            contacts = self._load()
            i = next((k for k, c in enumerate(contacts) if c.name == name), None)
            if i is None:
                raise ContactNotFound(f"no contact named {name!r}")
            c = contacts[i]
            if not safety_number(own, c.identity).matches(given):
                self._emit(EventKind.CONTACT_VERIFY_FAILED, c)
                raise VerificationFailed(
                    f"the safety number does not match {name!r}: do not trust this key"
                )
            # The safety number supersedes a code (it is the post-quantum check).
            done = replace(c, verified=True, verified_at=self._clock(), verified_by=None)
            contacts[i] = done
            self._save(contacts)
        self._emit(EventKind.CONTACT_VERIFIED, done)
        return done

    def pin_paired(
        self, identity: PublicIdentity, card: bytes, *, name: str | None = None
    ) -> Contact:
        """Pin ``identity`` with its ``card`` and mark it verified "by code"
        in one atomic write: the outcome of a successful pairing (the code's
        key confirmation covered this card). A name pinned to another key,
        or this key pinned under another name, is refused as by :meth:`add`
        (nothing changes); the same key under the same name gets the new
        card and the mark.
        """
        name = check_name(name if name is not None else identity.name)
        if self._own is not None and identity.fingerprint == self._own:
            raise UsageError("that is your own identity, not a contact")
        now = self._clock()
        with home_lock(self.home):
            contacts = self._load()
            i = next((k for k, c in enumerate(contacts) if c.name == name), None)
            for k, c in enumerate(contacts):
                if k != i and c.identity.same_key(identity):
                    raise ContactExists(f"this identity is already pinned as {c.name!r}")
            added = i is None
            if i is not None and not contacts[i].identity.same_key(identity):
                old = contacts[i]
                refused = Contact(name=name, identity=identity, verified=False, added=now)
                self._emit(EventKind.CONTACT_KEY_CHANGE_REFUSED, refused, old=old.fingerprint)
                raise KeyChanged(name, str(old.fingerprint), str(identity.fingerprint))
            if i is None and len(contacts) >= MAX_CONTACTS:
                raise UsageError(f"at most {MAX_CONTACTS} contacts")
            base = contacts[i] if i is not None else None
            done = Contact(
                name=name,
                identity=identity,
                verified=True,
                added=base.added if base is not None else now,
                verified_at=now,
                card=card,
                verified_by="code",
            )
            if i is None:
                contacts.append(done)
            else:
                contacts[i] = done
            self._save(contacts)
        if added:
            self._emit(EventKind.CONTACT_ADDED, done)
        self._emit(EventKind.CONTACT_VERIFIED, done)
        return done

    def remove(self, name: str) -> Contact:
        """Unpin ``name``; raise :class:`ContactNotFound`."""
        check_name(name)
        with home_lock(self.home):
            contacts = self._load()
            keep = [c for c in contacts if c.name != name]
            if len(keep) == len(contacts):
                raise ContactNotFound(f"no contact named {name!r}")
            gone = next(c for c in contacts if c.name == name)
            self._save(keep)
        self._emit(EventKind.CONTACT_REMOVED, gone)
        return gone
