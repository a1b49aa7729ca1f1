"""The stored session and ratchet states as typed records (issue 12, item 3).

``Session`` (0x0080) and ``RatchetState`` (0x0061) are ``@wire.record``
dataclasses now; the byte format did not change. The proof is a fixture
written by the old, hand-written encoders (``tests/vectors/session_state_v1.json``,
made by :func:`make_fixture` on commit fa76571, before the conversion): the
new code loads it, writes the very same bytes back, and the loaded sessions
go on working (the held messages open with the skipped keys that were stored,
with and without an ML-KEM seed, and fill the gap the old state recorded).
Schema equality with the hand-written schemas is in ``tests/test_wire_records.py``.

Regenerate (only if the format changes on purpose, with a version bump):
``PYTHONPATH=. python tests/test_state_records.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from securechan import wire
from securechan.protocol import MessageReceived, PrekeyStore, ReplayGuard, Session
from securechan.protocol.session import RatchetMessage
from tests.conftest import NOW, fixed_identity

ALICE = fixed_identity("tehran")
BOB = fixed_identity("washington")
FIXTURE = Path(__file__).parent / "vectors" / "session_state_v1.json"


def make_fixture() -> dict[str, Any]:
    """Two sessions whose states hold every list the format has: skipped
    keys with and without an ML-KEM seed, messages held ahead of a gap,
    sent hashes, recent ratchet keys of both sides."""
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW).add_one_time(BOB, 1, now=NOW)
    sa, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="A1")
    contacts = {ALICE.fingerprint: ALICE.public}
    sb, _, _, _ = Session.accept(BOB, store, ReplayGuard(), first, contact=contacts.get, now=NOW)

    def send(s: Session, text: str) -> bytes:
        return s.send_text(text, now=NOW).envelope

    held = [send(sa, "A2"), send(sa, "A3")]  # first chain: no epoch steps
    sb.receive(send(sa, "A4"), now=NOW)  # seq 4 ahead; 2 and 3 missing
    sa.receive(send(sb, "B1"), now=NOW)
    held.append(send(sa, "A5"))  # second chain: skipped key with a seed
    sb.receive(send(sa, "A6"), now=NOW)
    return {
        "note": "written by the hand-written encoders of commit fa76571 (before issue 12 item 3)",
        "now": NOW,
        "alice": sa.to_bytes(now=NOW).hex(),
        "bob": sb.to_bytes(now=NOW).hex(),
        "held_for_bob": [h.hex() for h in held],
        "held_texts": ["A2", "A3", "A5"],
    }


def _fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def test_states_written_by_the_old_encoders_load_and_write_back_identically() -> None:
    fx = _fixture()
    for me, key in ((ALICE, "alice"), (BOB, "bob")):
        old = bytes.fromhex(fx[key])
        session = Session.from_bytes(me, old, now=fx["now"])
        assert session.to_bytes(now=fx["now"]) == old


def test_a_loaded_old_state_opens_its_held_messages() -> None:
    fx = _fixture()
    bob = Session.from_bytes(BOB, bytes.fromhex(fx["bob"]), now=fx["now"])
    alice = Session.from_bytes(ALICE, bytes.fromhex(fx["alice"]), now=fx["now"])
    assert bob.received_through == 1
    texts = []
    for h in fx["held_for_bob"]:
        for e in bob.receive(bytes.fromhex(h), now=fx["now"]):
            if isinstance(e, MessageReceived):
                texts.append(e.content)
    assert texts == fx["held_texts"]
    assert bob.received_through == 6
    # And the conversation goes on both ways.
    reply = bob.send_text("B2 after the upgrade", now=fx["now"]).envelope
    events = alice.receive(reply, now=fx["now"])
    assert [e.content for e in events if isinstance(e, MessageReceived)] == ["B2 after the upgrade"]
    again = alice.send_text("A7", now=fx["now"]).envelope
    assert wire.peek_type(again) == wire.schema_of(RatchetMessage).type_id
    events = bob.receive(again, now=fx["now"])
    assert [e.content for e in events if isinstance(e, MessageReceived)] == ["A7"]


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(make_fixture(), indent=1) + "\n")
