"""Pairing by a spoken code, sans-I/O (securechan/protocol/pairing.py, pair_code.py).

The tests play the relay: every byte between the two sides passes through
the test, which may drop, change, replay or swap it, as a mailbox server
could. The end-to-end tests with a real relay process and the CLI are in
tests/test_pairing_e2e.py.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.errors import MalformedInput, PairingFailed
from securechan.identity.keys import Identity
from securechan.pake import PAKE_MESSAGE_SIZE, Spake2
from securechan.protocol.address import ContactCard
from securechan.protocol.pair_code import (
    DEFAULT_WORDS,
    MAX_WORDS,
    MIN_WORDS,
    PairingCode,
    parse_code,
)
from securechan.protocol.pairing import MAGIC, Pairing, Phase, parse_pair_message

NOW = 1_765_000_000
ALICE = Identity.generate("alice", now=NOW)
BOB = Identity.generate("bob", now=NOW)
MALLORY = Identity.generate("alice", now=NOW)
CARD_A = ContactCard.make(ALICE, (), now=NOW).to_bytes()
CARD_B = ContactCard.make(BOB, (), now=NOW).to_bytes()
CARD_M = ContactCard.make(MALLORY, (), now=NOW).to_bytes()


def _code(nameplate: int = 7) -> PairingCode:
    return PairingCode.make(nameplate, os.urandom(DEFAULT_WORDS))


def _step(src: Pairing, dst: Pairing) -> list[tuple[Phase, bytes]]:
    out = src.outgoing()
    for phase, data in out:
        dst.receive(phase, data)
    return out


def _cross(a: Pairing, b: Pairing) -> None:
    """Both sides' pending messages (one phase each) delivered to the other."""
    out_a, out_b = a.outgoing(), b.outgoing()
    for phase, data in out_a:
        b.receive(phase, data)
    for phase, data in out_b:
        a.receive(phase, data)


def _run(a: Pairing, b: Pairing) -> None:
    for _ in range(3):
        _step(a, b)
        _step(b, a)


# --- codes ------------------------------------------------------------------------


def test_a_default_code_has_forty_bits_and_reads_back() -> None:
    code = _code(42)
    assert code.bits == 40
    text = code.text()
    assert text.startswith("42-") and text.count("-") == DEFAULT_WORDS
    assert parse_code(text) == code
    # What a person types: capitals, spaces, doubled hyphens.
    assert parse_code("  " + text.upper().replace("-", " - ", 2) + "  ") == code


def test_a_swapped_or_foreign_word_is_refused_without_echoing_the_code() -> None:
    code = PairingCode.make(3, bytes([1, 2, 3, 4, 5]))
    words = code.words
    swapped = "-".join(("3", words[1], words[0], *words[2:]))
    with pytest.raises(MalformedInput) as e:
        parse_code(swapped)
    assert words[1] not in str(e.value)
    for bad in ("", "3", "3-", "abc-def", "0-" + "-".join(words), "3-" + "x" * 20, "3-a" * 200):
        with pytest.raises(MalformedInput):
            parse_code(bad)


@given(st.text(max_size=300))
def test_parse_code_refuses_junk_cleanly(text: str) -> None:
    try:
        code = parse_code(text)
    except MalformedInput:
        return
    assert MIN_WORDS <= len(code.secret) <= MAX_WORDS
    assert parse_code(code.text()) == code


@given(st.integers(1, 999_999), st.binary(min_size=MIN_WORDS, max_size=MAX_WORDS))
def test_every_code_round_trips(nameplate: int, secret: bytes) -> None:
    code = PairingCode.make(nameplate, secret)
    assert parse_code(code.text()) == code


# --- the exchange -------------------------------------------------------------------


def test_the_same_code_pairs_both_ways() -> None:
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    _run(a, b)
    assert a.done and b.done
    assert a.peer_card.identity.same_key(BOB.public)
    assert b.peer_card.identity.same_key(ALICE.public)
    assert a.peer_card_bytes == CARD_B and b.peer_card_bytes == CARD_A


def test_a_wrong_code_fails_on_both_sides_before_any_card_is_read() -> None:
    code = PairingCode.make(7, bytes(5))
    wrong = PairingCode.make(7, bytes([0, 0, 0, 0, 1]))
    a, b = Pairing("A", code, CARD_A), Pairing("B", wrong, CARD_B)
    _cross(a, b)  # PAKE messages cross; both now send sealed cards
    card_a, card_b = a.outgoing(), b.outgoing()
    with pytest.raises(PairingFailed, match="code is wrong"):
        b.receive(*card_a[0])
    with pytest.raises(PairingFailed, match="code is wrong"):
        a.receive(*card_b[0])
    assert a.failed and b.failed
    for side in (a, b):
        with pytest.raises(PairingFailed):
            side.peer_card  # noqa: B018


def test_a_different_nameplate_is_a_different_password() -> None:
    secret = os.urandom(5)
    a = Pairing("A", PairingCode.make(7, secret), CARD_A)
    b = Pairing("B", PairingCode.make(8, secret), CARD_B)
    _cross(a, b)
    with pytest.raises(PairingFailed):
        b.receive(*a.outgoing()[0])


def _tamper_at(phase: Phase, change: object) -> tuple[Pairing, Pairing]:
    """Run a pairing with the relay changing A's message of ``phase``."""
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    for _ in range(3):
        for ph, data in a.outgoing():
            b.receive(ph, change(data) if ph == phase else data)  # type: ignore[operator]
        _step(b, a)
    return a, b


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("where", [0, 4, 5, 20, -1])
def test_the_relay_flipping_any_bit_of_any_message_is_caught(phase: Phase, where: int) -> None:
    def flip(data: bytes) -> bytes:
        i = where % len(data)
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

    with pytest.raises(PairingFailed):
        _tamper_at(phase, flip)


@given(st.integers(0, 10**6), st.integers(0, 7))
@settings(max_examples=40, deadline=None)
def test_any_single_bit_flip_in_the_pake_message_fails_the_run(pos: int, bit: int) -> None:
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    ((ph, data),) = a.outgoing()
    i = pos % len(data)
    bad = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
    try:
        b.receive(ph, bad)
    except PairingFailed:
        assert b.failed
        return
    # The element decoded (another valid point): the keys now differ.
    a.receive(*b.outgoing()[0])
    with pytest.raises(PairingFailed):
        _cross(a, b)
    assert not (a.done or b.done)


def test_a_replayed_pake_message_from_an_earlier_run_is_caught() -> None:
    # The relay kept A's PAKE message from an earlier pairing with the same
    # code and plays it into a new run (a code is used once, but a relay
    # could try): the ephemeral scalar behind it is gone, keys differ.
    code = _code()
    old = Pairing("A", code, CARD_A)
    (old_pake,) = old.outgoing()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    a.outgoing()
    b.receive(*old_pake)
    a.receive(*b.outgoing()[0])
    with pytest.raises(PairingFailed):
        b.receive(*a.outgoing()[0])


def test_a_relay_running_a_second_pairing_in_between_is_caught() -> None:
    # The relay pairs A with a mallory of its own, under A's nameplate but
    # without the code's words, and forwards B's messages where it suits it:
    # whatever it splices, no side accepts a card it did not get from the
    # code's holder.
    code = _code()
    guess = PairingCode.make(code.nameplate, os.urandom(5))
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    m = Pairing("B", guess, CARD_M)
    _cross(a, m)  # A runs its PAKE against mallory's guess
    ((_, m_card),) = m.outgoing()
    with pytest.raises(PairingFailed):
        m.receive(*a.outgoing()[0])
    with pytest.raises(PairingFailed):
        a.receive(Phase.CARD, m_card)
    # B, given A's (used) PAKE message and mallory's sealed card, fails too.
    b.outgoing()
    b.receive(Phase.PAKE, MAGIC + bytes([Phase.PAKE]) + a._pake.message())
    with pytest.raises(PairingFailed):
        b.receive(Phase.CARD, m_card)


def test_cards_swapped_between_two_honest_runs_are_caught() -> None:
    # Two pairings at once through one relay, the relay swapping the card
    # messages between them: the card keys are bound to each run's PAKE.
    c1, c2 = _code(1), _code(2)
    a1, b1 = Pairing("A", c1, CARD_A), Pairing("B", c1, CARD_B)
    a2, b2 = Pairing("A", c2, CARD_M), Pairing("B", c2, CARD_B)
    for a, b in ((a1, b1), (a2, b2)):
        _cross(a, b)
    (card1,), (card2,) = a1.outgoing(), a2.outgoing()
    with pytest.raises(PairingFailed):
        b1.receive(*card2)
    b2.receive(*card2)
    assert b2.expecting == Phase.CONFIRM
    del card1


def test_a_reflected_message_is_caught() -> None:
    code = _code()
    a = Pairing("A", code, CARD_A)
    ((phase, data),) = a.outgoing()
    with pytest.raises(PairingFailed):
        a.receive(phase, data)
    assert a.failed


def test_our_own_card_sent_back_is_refused() -> None:
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_A)
    _cross(a, b)
    with pytest.raises(PairingFailed, match="own contact card"):
        a.receive(*b.outgoing()[0])


def test_a_confirmation_from_another_transcript_is_refused() -> None:
    # The relay feeds B's confirmation for a run in which A's card was
    # another: the transcript hash covers both cards.
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    _cross(a, b)
    _cross(a, b)  # cards: both now hold a confirmation to send
    (confirm_a,) = a.outgoing()
    forged = confirm_a[1][:-1] + bytes([confirm_a[1][-1] ^ 1])
    with pytest.raises(PairingFailed, match="confirmation"):
        b.receive(Phase.CONFIRM, forged)
    with pytest.raises(PairingFailed):
        b.peer_card  # noqa: B018


def test_out_of_order_and_after_the_end_is_refused_and_final() -> None:
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    with pytest.raises(PairingFailed, match="out of order"):
        b.receive(Phase.CARD, MAGIC + bytes([Phase.CARD]) + bytes(100))
    assert b.failed
    _run(a, Pairing("B", code, CARD_B))
    assert a.done
    with pytest.raises(PairingFailed):
        a.receive(Phase.CONFIRM, bytes(37))


def test_the_pake_finishes_once() -> None:
    a, b = Spake2("A", b"x"), Spake2("B", b"x")
    assert len(a.message()) == PAKE_MESSAGE_SIZE
    assert a.finish(b.message()) == b.finish(a.message())
    with pytest.raises(PairingFailed):
        a.finish(b.message())


@pytest.mark.parametrize("phase", list(Phase))
@given(data=st.binary(max_size=400))
@settings(max_examples=150, deadline=None)
def test_parse_pair_message_refuses_junk_cleanly(phase: Phase, data: bytes) -> None:
    try:
        msg = parse_pair_message(data, phase)
    except PairingFailed:
        return
    assert msg.phase == phase and data[:4] == MAGIC


@given(st.sampled_from(list(Phase)), st.binary(max_size=200))
@settings(max_examples=60, deadline=None)
def test_any_junk_in_any_phase_fails_the_machine_cleanly(phase: Phase, junk: bytes) -> None:
    code = _code()
    a, b = Pairing("A", code, CARD_A), Pairing("B", code, CARD_B)
    _cross(a, b)
    try:
        b.receive(phase, MAGIC + bytes([phase]) + junk)
    except PairingFailed:
        assert b.failed
        return
    pytest.fail("junk accepted")


def test_the_word_list_vector_of_protocol_md() -> None:
    # docs/PROTOCOL.md §19.8: nameplate 3, secret 01 02 03 04 05.
    code = PairingCode.make(3, bytes([1, 2, 3, 4, 5]))
    assert code.text() == "3-adviser-accrue-aggregate-adrift-almighty"


def test_the_codes_shown_in_the_docs_parse() -> None:
    # docs/GETTING-STARTED.md and `securechan pair --help` show real codes.
    assert parse_code("7-istanbul-revenge-guitarist-python-sardonic").bits == 40
    assert parse_code("7-istanbul-revenge").bits == 16


def test_the_pairing_vectors() -> None:
    # tests/vectors/pairing.json (docs/PROTOCOL.md §19.8): SPAKE2 with fixed
    # scalars, the key schedule, TH and both confirmations. A change in the
    # spake2 package or in any context string shows up here.
    import json
    from pathlib import Path

    from tests.vectors.generate_pairing import build

    committed = json.loads((Path(__file__).parent / "vectors" / "pairing.json").read_text())
    assert build() == committed
    assert committed["key"] != committed["key_b_with_wrong_code"]
