"""The contact pin store (securechan.identity.contacts) with real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechan.errors import (
    ContactExists,
    ContactNotFound,
    KeyChanged,
    MalformedInput,
    UsageError,
    VerificationFailed,
)
from securechan.identity import Contacts, EventKind, Identity, safety_number
from securechan.identity.events import SecurityEvent
from tests.conftest import NOW, fixed_identity, snapshot


@pytest.fixture(scope="module")
def me() -> Identity:
    return fixed_identity("tehran")


@pytest.fixture(scope="module")
def them() -> Identity:
    return fixed_identity("washington")


@pytest.fixture
def book(tmp_path: Path, me: Identity, events: list[SecurityEvent]) -> Contacts:
    return Contacts(tmp_path / "home", own=me.fingerprint, events=events.append, clock=lambda: NOW)


def test_add_get_list_remove(book: Contacts, them: Identity, events: list[SecurityEvent]) -> None:
    c = book.add(them.public)
    assert (c.name, c.verified, c.added) == ("washington", False, NOW)
    assert book.get("washington") == c
    assert book.list() == [c]
    assert book.find(them.fingerprint) == c
    assert book.add(them.public) == c  # idempotent: no second event
    other = fixed_identity("geneva")
    book.add(other.public, name="mediator")
    assert [x.name for x in book.list()] == ["mediator", "washington"]
    assert book.remove("washington").fingerprint == them.fingerprint
    with pytest.raises(ContactNotFound):
        book.get("washington")
    with pytest.raises(ContactNotFound):
        book.remove("washington")
    assert [e.kind for e in events] == [
        EventKind.CONTACT_ADDED,
        EventKind.CONTACT_ADDED,
        EventKind.CONTACT_REMOVED,
    ]


def test_changed_key_is_refused_and_recorded(
    book: Contacts, them: Identity, events: list[SecurityEvent]
) -> None:
    book.add(them.public)
    impostor = fixed_identity("washington-impostor")
    fake = Identity(name="washington", created=NOW, key=impostor._key)
    before = snapshot(book.home)
    with pytest.raises(KeyChanged) as info:
        book.add(fake.public)
    assert info.value.old_fingerprint == str(them.fingerprint)
    assert info.value.new_fingerprint == str(fake.fingerprint)
    assert str(them.fingerprint) in str(info.value) and str(fake.fingerprint) in str(info.value)
    assert snapshot(book.home) == before
    assert events[-1].kind is EventKind.CONTACT_KEY_CHANGE_REFUSED
    assert events[-1].old_fingerprint == str(them.fingerprint)
    # Also refused when the changed key arrives under an explicit name.
    with pytest.raises(KeyChanged):
        book.add(impostor.public, name="washington")


def test_replace_key_resets_verification(
    book: Contacts, me: Identity, them: Identity, events: list[SecurityEvent]
) -> None:
    book.add(them.public)
    book.verify("washington", str(safety_number(me.public, them.public)), me.public)
    new = fixed_identity("washington-2")
    c = book.add(new.public, name="washington", replace_key=True)
    assert c.fingerprint == new.fingerprint and not c.verified
    assert events[-1].kind is EventKind.CONTACT_KEY_CHANGED
    assert events[-1].old_fingerprint == str(them.fingerprint)


def test_one_key_one_name(book: Contacts, them: Identity) -> None:
    book.add(them.public)
    with pytest.raises(ContactExists):
        book.add(them.public, name="usa")


def test_own_identity_is_not_a_contact(book: Contacts, me: Identity) -> None:
    with pytest.raises(UsageError, match="own identity"):
        book.add(me.public, name="me")
    assert book.list() == []


def test_verify(book: Contacts, me: Identity, them: Identity, events: list[SecurityEvent]) -> None:
    book.add(them.public)
    sn = safety_number(me.public, them.public)
    wrong = sn.digits[:-1] + str((int(sn.digits[-1]) + 1) % 10)
    before = snapshot(book.home)
    with pytest.raises(VerificationFailed):
        book.verify("washington", wrong, me.public)
    assert snapshot(book.home) == before
    assert events[-1].kind is EventKind.CONTACT_VERIFY_FAILED
    assert not book.get("washington").verified
    c = book.verify("washington", sn.words_text, me.public)
    assert c.verified and c.verified_at == NOW
    assert book.get("washington").verified
    assert events[-1].kind is EventKind.CONTACT_VERIFIED
    with pytest.raises(ContactNotFound):
        book.verify("nobody", str(sn), me.public)


def test_bad_names_are_refused(book: Contacts, them: Identity) -> None:
    for bad in ("../x", "", "a b", "/etc/passwd"):
        with pytest.raises(MalformedInput):
            book.add(them.public, name=bad)
        with pytest.raises(MalformedInput):
            book.get(bad)


def test_damaged_store_is_refused(book: Contacts, them: Identity) -> None:
    book.add(them.public)
    data = book.path.read_bytes()
    for damaged in (data[:-1], data + b"\x00", data[:100], b"", b"\x01\x00\x21"):
        book.path.write_bytes(damaged)
        try:
            contacts = book.list()
        except MalformedInput:
            continue
        # The only damaged form that may parse is an empty list record.
        assert contacts == [] and damaged == b"\x01\x00\x21"
    # A flipped byte inside the pinned identity breaks its self-signature.
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    book.path.write_bytes(bytes(bad))
    with pytest.raises(MalformedInput):
        book.list()


def test_persistence_across_instances(book: Contacts, them: Identity, me: Identity) -> None:
    book.add(them.public)
    again = Contacts(book.home, own=me.fingerprint)
    assert again.get("washington").fingerprint == them.fingerprint
