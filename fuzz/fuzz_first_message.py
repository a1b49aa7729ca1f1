"""atheris harness: ``Session.accept`` (a stranger's first message).

Bob has a prekey store and an empty replay guard; Alice is a pinned contact.
The first input byte picks the mode:

* mode 0: the rest is a whole first message;
* mode 1: the rest replaces only the ratchet message inside the world's
  valid first message, whose handshake (prekey ids, HPKE, sealed and signed
  body) stays intact, so the responder's first ``receive`` is reached.

Invariants: only ``SecurechanError`` subclasses escape; the prekey store and
the replay guard given to ``accept`` are unchanged (``to_bytes()``); a mode-0
input that is accepted is the world's own first message (nobody else can sign
as Alice).

    python fuzz/fuzz_first_message.py -max_total_time=600 \\
        fuzz/corpus/first_message fuzz/seeds/first_message
"""

from __future__ import annotations

from _fixtures import ALICE, BOB, NOW, check, contacts, load_world, run

from securechan import wire
from securechan.errors import SecurechanError
from securechan.protocol import PrekeyStore, ReplayGuard, Session
from securechan.protocol.handshake import FIRST

WORLD = load_world()
STORE = PrekeyStore.from_bytes(WORLD.store)
STORE_BYTES = STORE.to_bytes()
GUARD = ReplayGuard()
GUARD_BYTES = GUARD.to_bytes()
FIRST_FIELDS = wire.decode(FIRST, WORLD.first)
CONTACTS = contacts(ALICE)


def _first(data: bytes) -> bytes:
    mode, rest = (data[0] % 2, data[1:]) if data else (0, b"")
    if mode == 0:
        return rest
    return wire.encode(FIRST, {**FIRST_FIELDS, "message": rest}, check_nested=False)


def test_one_input(data: bytes) -> None:
    try:
        first = _first(data)
    except ValueError:
        return  # longer than the field allows: not a first message at all
    try:
        Session.accept(BOB, STORE, GUARD, first, contact=CONTACTS, now=NOW)
    except SecurechanError:
        pass
    else:
        check(first == WORLD.first, "accepted a first message nobody signed")
    check(STORE.to_bytes() == STORE_BYTES, "accept changed the prekey store it was given")
    check(GUARD.to_bytes() == GUARD_BYTES, "accept changed the replay guard it was given")


if __name__ == "__main__":
    run(test_one_input)
