"""atheris harness: ``Session.receive`` on an established session.

Bob holds a session with Alice (the world of ``make_corpus.py``). The first
input byte picks how far in the fuzzer's bytes go:

* mode 0: the rest is a whole ratchet message, delivered as is;
* mode 1: the rest is a *padded plaintext*, ratchet-encrypted under Alice's
  current sending state, so unpadding and payload parsing of authenticated
  bytes are reached (a peer that misbehaves);
* mode 2: the rest is a ``Payload`` record, signed by Alice, padded and
  encrypted, so the checks after the signature (addressing, conversation,
  sequence and hash chain, receipts) are reached with hostile values.

Invariants: only ``MessageRejected`` or ``MalformedInput`` escape (the
contract in ``Session.receive``'s docstring); a refused input leaves Bob's
state byte for byte as it was (``to_bytes()``); an accepted one advances the
generation by one, and Bob is then reloaded for the next input.

    python fuzz/fuzz_session.py -max_total_time=600 fuzz/corpus/session fuzz/seeds/session
"""

from __future__ import annotations

from _fixtures import ALICE, BOB, NOW, check, load_world, run

from securechan import wire
from securechan.errors import MalformedInput, MessageRejected, SecurechanError
from securechan.protocol import Session
from securechan.protocol.padding import pad
from securechan.protocol.payload import CONTEXT_MESSAGE, SIGNED_PAYLOAD, Payload
from securechan.protocol.ratchet import ratchet_encrypt
from securechan.protocol.session import MESSAGE

WORLD = load_world()
ALICE_STATE = Session.from_bytes(ALICE, WORLD.alice, now=NOW)._st
BOB_BYTES = WORLD.bob
_bob = Session.from_bytes(BOB, BOB_BYTES, now=NOW)
_BOB_GENERATION = _bob.generation


def _encrypt(plaintext: bytes) -> bytes:
    """A ratchet message from Alice's (unchanged) state carrying ``plaintext``."""
    _, header, ciphertext, _ = ratchet_encrypt(
        ALICE_STATE.ratchet, plaintext, ALICE_STATE.transcript_hash
    )
    return wire.encode(MESSAGE, {"header": header.to_bytes(), "ciphertext": ciphertext})


def _message(data: bytes) -> bytes | None:
    mode, rest = (data[0] % 3, data[1:]) if data else (0, b"")
    if mode == 0:
        return rest
    if mode == 1:
        return _encrypt(rest)
    try:
        payload_bytes = Payload.from_bytes(rest).to_bytes()
    except MalformedInput:
        return None  # fuzz_wire.py covers the decoder itself
    signed = wire.encode(
        SIGNED_PAYLOAD,
        {
            "payload": payload_bytes,
            "signature": ALICE.sign(payload_bytes, context=CONTEXT_MESSAGE),
        },
    )
    return _encrypt(pad(signed))


def test_one_input(data: bytes) -> None:
    global _bob
    message = _message(data)
    if message is None:
        return
    try:
        _bob.receive(message, now=NOW)
    except (MessageRejected, MalformedInput):
        check(_bob.to_bytes(now=NOW) == BOB_BYTES, "a refused message changed the session")
        return
    except SecurechanError as e:
        raise AssertionError(f"receive raised {type(e).__name__}, outside its contract") from e
    check(_bob.generation == _BOB_GENERATION + 1, "an accepted message did not count")
    _bob = Session.from_bytes(BOB, BOB_BYTES, now=NOW)


if __name__ == "__main__":
    run(test_one_input)
