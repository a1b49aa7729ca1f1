"""The session protocol (securechan.protocol.session) against a hostile relay.

What these tests hold the session to, from the module docstrings of
``session.py`` and ``ratchet.py`` and ``/work/shared/SECURITY-TESTS.md``:

* A relay that reorders, drops, delays and re-delivers messages, and parties
  that restart from their stored state at any point: every delivered message is
  shown exactly once, with its sender and content; a re-delivery is refused and
  leaves the state byte-for-byte unchanged; gaps and late arrivals are reported
  with exact sequence numbers (a stateful hypothesis test against a model).
* Forward secrecy: once a message is read, nothing in the receiver's (or the
  sender's) stored state opens it again.
* Post-compromise security: a copy of the state taken at time T stops reading
  once both directions have ratcheted.
* Post-quantum: an adversary holding every X25519 secret, and the root and
  chain keys besides, still cannot derive a message key without the ML-KEM
  shared secret, both at a root step and at an epoch step.
* Files, receipts, and the generation counter.

Rules 2 and 3 of the "five rules" (peer-visible error families, audit log)
belong to layers above the session; here each refusal is checked for its
``MessageRejected`` subclass and for a byte-for-byte unchanged state (rule 1),
and for nothing being returned to the caller (rule 4).
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from securechan import wire
from securechan.errors import (
    DecryptionFailed,
    MessageRejected,
    Reflected,
    Replay,
    VerificationFailed,
)
from securechan.identity import Identity
from securechan.primitives import (
    MlKemKeyPair,
    X25519KeyPair,
    hkdf_sha256,
    message_open,
    random_bytes,
    sha256,
)
from securechan.protocol import (
    ContentType,
    Event,
    FileChunk,
    MessageReceived,
    MessagesMissing,
    OutOfOrder,
    PrekeyStore,
    Receipt,
    ReceiptChecked,
    ReplayGuard,
    Session,
)
from securechan.protocol.handshake import FirstMessage
from securechan.protocol.opening import open_ratchet_message
from securechan.protocol.padding import pad
from securechan.protocol.payload import CHUNK_SIZE, ZERO_HASH, SignedPayload
from securechan.protocol.ratchet import (
    MAX_SKIP,
    PQ_INTERVAL,
    SKIPPED_TTL,
    RatchetHeader,
    _kdf_ck,
    _kdf_rk,
    _message_key,
)
from securechan.protocol.session import MESSAGE
from tests.conftest import NOW, fixed_identity

ALICE = fixed_identity("tehran")  # the initiator
BOB = fixed_identity("washington")  # the responder
IDS = {"A": ALICE, "B": BOB}
PEER = {"A": "B", "B": "A"}
# One prekey store for every test: it is an immutable value, so each accept
# starts from the same store and may take the same one-time key again.
STORE = PrekeyStore.new(BOB).rotate(BOB, now=NOW).add_one_time(BOB, 1, now=NOW)
CONTACTS = {ALICE.fingerprint: ALICE.public}


def _pair(text: str = "A1 hello") -> tuple[Session, Session, bytes]:
    """A fresh session: Alice's first message (carrying ``text``) accepted by
    Bob. Returns both sessions and the ratchet message inside the first one
    (what a relay could re-deliver to Bob's session)."""
    sa, first = Session.initiate(ALICE, BOB.public, STORE.bundle(NOW), now=NOW, text=text)
    sb, _, _, events = Session.accept(
        BOB, STORE, ReplayGuard(), first, contact=CONTACTS.get, now=NOW
    )
    assert [type(e) for e in events] == [MessageReceived]
    assert isinstance(events[0], MessageReceived)
    assert (events[0].seq, events[0].content) == (1, text)
    _check_signed(events[0], "A", "B")
    assert events[0].hash == sa._st.send_last_hash
    return sa, sb, FirstMessage.from_bytes(first).message


def _split(message: bytes) -> tuple[RatchetHeader, bytes]:
    """A ratchet message's header and ciphertext, as the relay sees them."""
    rec = wire.decode(MESSAGE, message)
    return RatchetHeader.from_bytes(rec["header"]), rec["ciphertext"]


def _ad(session: Session, header: RatchetHeader) -> bytes:
    """The associated data of a message: transcript hash, then header."""
    return session._st.transcript_hash + header.to_bytes()


def _reload(me: Identity, session: Session) -> Session:
    """A restart: load the session from its bytes; the bytes must round-trip."""
    blob = session.to_bytes(now=NOW)
    restored = Session.from_bytes(me, blob, now=NOW)
    assert restored.to_bytes(now=NOW) == blob
    assert (restored.generation, restored.sent_count, restored.received_through) == (
        session.generation,
        session.sent_count,
        session.received_through,
    )
    return restored


def _refused(
    me: Identity,
    session: Session,
    message: bytes,
    *expected: type[Exception],
    now: int = NOW,
) -> MessageRejected:
    """Deliver ``message`` and require a refusal (one of ``expected``, if
    given) that leaves ``session`` exactly as it was; then the same for a
    restart from the stored bytes."""
    before, generation = session.to_bytes(now=NOW), session.generation
    with pytest.raises(MessageRejected) as info:
        session.receive(message, now=now)
    if expected:
        assert isinstance(info.value, expected), repr(info.value)
    assert session.to_bytes(now=NOW) == before
    assert session.generation == generation
    restored = Session.from_bytes(me, before, now=NOW)
    with pytest.raises(type(info.value)):
        restored.receive(message, now=now)
    assert restored.to_bytes(now=NOW) == before
    return info.value


def _content(events: list[Event]) -> object:
    """The content of the message a receive call reported (always first)."""
    assert isinstance(events[0], MessageReceived)
    return events[0].content


def _check_signed(event: MessageReceived, sender: str, receiver: str) -> None:
    """The event's signed record is the sender's, for the receiver, and verifies."""
    assert event.hash == sha256(event.signed)
    signed = SignedPayload.from_bytes_unverified(event.signed)
    assert signed.payload.sender == IDS[sender].fingerprint
    assert signed.payload.recipient == IDS[receiver].fingerprint
    assert signed.payload.seq == event.seq
    signed.verify(IDS[sender].public)


# ---------------------------------------------------------------------------
# 1. A hostile relay, as a state machine against a model.

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@dataclass
class _Sent:
    sender: str
    seq: int
    message: bytes
    sent_at: int
    text: str | None = None  # a text message
    receipt: Receipt | None = None  # or a receipt, with what it must say


class Relay(RuleBasedStateMachine):
    """Alice and Bob talk through a relay that reorders, drops, duplicates and
    delays; either may restart from its stored bytes at any step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        sa, sb, first = _pair("[A1]")
        self.sessions = {"A": sa, "B": sb}
        self.generation = {"A": sa.generation, "B": sb.generation}
        # Every message ever sent, by (sender, seq).
        self.sent: dict[tuple[str, int], _Sent] = {
            ("A", 1): _Sent(sender="A", seq=1, message=first, sent_at=NOW, text="[A1]")
        }
        self.in_flight: set[tuple[str, int]] = set()
        self.delivered: set[tuple[str, int]] = {("A", 1)}
        self.dropped: set[tuple[str, int]] = set()
        # The hash of each delivered message, as its receiver reported it
        # (_pair checked that Bob reported this one for the first message).
        self.hashes = {("A", 1): sa._st.send_last_hash}
        # What each receiver has shown to its user, by sender.
        self.shown: dict[str, list[str]] = {"A": [], "B": ["[A1]"]}

    # --- the model ----------------------------------------------------------

    def _highest(self, sender: str) -> int:
        return max((s for who, s in self.delivered if who == sender), default=0)

    def _contiguous(self, sender: str) -> int:
        n = 0
        while (sender, n + 1) in self.delivered:
            n += 1
        return n

    def _sent_count(self, sender: str) -> int:
        return sum(1 for who, _ in self.sent if who == sender)

    def _record_send(
        self, sender: str, message: bytes, *, text: str | None, receipt: Receipt | None
    ) -> None:
        session = self.sessions[sender]
        seq = self._sent_count(sender) + 1
        assert session.sent_count == seq
        assert session.generation == self.generation[sender] + 1
        self.generation[sender] = session.generation
        self.sent[(sender, seq)] = _Sent(
            sender=sender, seq=seq, message=message, sent_at=self.now, text=text, receipt=receipt
        )
        self.in_flight.add((sender, seq))

    # --- rules ----------------------------------------------------------------

    @rule(sender=st.sampled_from("AB"), body=TEXT)
    def send_text(self, sender: str, body: str) -> None:
        seq = self._sent_count(sender) + 1
        text = unicodedata.normalize("NFC", f"[{sender}{seq}] {body}")
        message = self.sessions[sender].send_text(text, now=self.now).envelope
        self._record_send(sender, message, text=text, receipt=None)

    @rule(sender=st.sampled_from("AB"))
    def send_receipt(self, sender: str) -> None:
        # The receipt covers the peer's messages as far as they are contiguous.
        peer = PEER[sender]
        up_to = self._contiguous(peer)
        expected = Receipt(
            up_to_seq=up_to, chain_hash=self.hashes[(peer, up_to)] if up_to else ZERO_HASH
        )
        message = self.sessions[sender].send_receipt(now=self.now).envelope
        self._record_send(sender, message, text=None, receipt=expected)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        # Any message in flight, in either direction: reordering.
        self._deliver(data.draw(st.sampled_from(sorted(self.in_flight)), label="message"))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver_oldest(self, data: st.DataObject) -> None:
        # What an honest relay does: the oldest message of one direction.
        sender = data.draw(st.sampled_from(sorted({who for who, _ in self.in_flight})))
        self._deliver(min(k for k in self.in_flight if k[0] == sender))

    def _deliver(self, key: tuple[str, int]) -> None:
        sender, seq = key
        receiver = PEER[sender]
        sent = self.sent[key]
        session = self.sessions[receiver]
        highest = self._highest(sender)

        events = session.receive(sent.message, now=self.now)

        self.in_flight.remove(key)
        self.delivered.add(key)
        first = events[0]
        assert isinstance(first, MessageReceived)
        assert (first.seq, first.sent_at) == (seq, sent.sent_at)
        _check_signed(first, sender, receiver)
        self.hashes[key] = first.hash
        expected: list[object] = []
        if seq > highest + 1:
            expected.append(MessagesMissing(from_seq=highest + 1, to_seq=seq - 1))
        if seq < highest:
            expected.append(OutOfOrder(seq=seq))
        if sent.text is not None:
            assert first.content_type is ContentType.TEXT
            assert first.content == sent.text
            self.shown[receiver].append(sent.text)
        else:
            assert first.content_type is ContentType.RECEIPT
            assert first.content == sent.receipt
            assert sent.receipt is not None
            assert sent.receipt.up_to_seq <= session.sent_count
            expected.append(ReceiptChecked(up_to_seq=sent.receipt.up_to_seq, matches=True))
        assert events[1:] == expected
        assert session.generation == self.generation[receiver] + 1
        self.generation[receiver] = session.generation

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.in_flight)), label="message")
        self.in_flight.remove(key)
        self.dropped.add(key)

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.delivered)), label="message")
        receiver = PEER[key[0]]
        _refused(IDS[receiver], self.sessions[receiver], self.sent[key].message, now=self.now)

    @rule(seconds=st.integers(min_value=0, max_value=3600))
    def delay(self, seconds: int) -> None:
        # Time passes; whatever is in flight stays there. (At most 120 hours
        # in a run: skipped keys live SKIPPED_TTL, far longer.)
        self.now += seconds
        assert self.now - NOW < SKIPPED_TTL // 4

    @rule(party=st.sampled_from("AB"))
    def restart(self, party: str) -> None:
        self.sessions[party] = _reload(IDS[party], self.sessions[party])

    # --- invariants -----------------------------------------------------------

    @invariant()
    def counts_match_the_model(self) -> None:
        for party in "AB":
            session = self.sessions[party]
            peer = PEER[party]
            assert session.sent_count == self._sent_count(party)
            assert session.received_through == self._contiguous(peer)

    @invariant()
    def shown_exactly_the_delivered(self) -> None:
        # Each delivered message shown once; nothing dropped or in flight shown.
        for receiver in "AB":
            sender = PEER[receiver]
            texts = [
                text
                for k in self.delivered
                if k[0] == sender and (text := self.sent[k].text) is not None
            ]
            assert sorted(self.shown[receiver]) == sorted(texts)
            assert len(set(self.shown[receiver])) == len(self.shown[receiver])
        assert not self.dropped & self.delivered
        assert len(self.sent) < MAX_SKIP // 4  # far from the ratchet's skip window


Relay.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRelay = Relay.TestCase


# ---------------------------------------------------------------------------
# 2. Forward secrecy.


def _next_send_key(session: Session) -> tuple[bytes, bytes, bytes]:
    """The chain key, base key and message key ``session`` will use for its
    next message (its chain must already exist)."""
    r = session._st.ratchet
    assert r.cks is not None and r.send_epoch_ss is not None
    assert not r.send_pending and r.ns // PQ_INTERVAL == r.send_epoch  # no new step
    mk_base, _ = _kdf_ck(r.cks)
    return r.cks, mk_base, _message_key(mk_base, r.send_epoch_ss)


@pytest.mark.parametrize("order", ["in order", "gap filled later"])
def test_forward_secrecy_nothing_in_stored_state_opens_a_read_message(order: str) -> None:
    sa, sb, _ = _pair()
    keys = []
    messages = []
    for i in (2, 3):
        keys.append(_next_send_key(sa))
        messages.append(sa.send_text(f"A{i} secret", now=NOW).envelope)
    # Control: the keys we computed are the real ones.
    for (_, _, mk), m, i in zip(keys, messages, (2, 3), strict=True):
        header, ct = _split(m)
        assert f"A{i} secret".encode() in message_open(
            mk, ct, _ad(sa, header), reuse_guard=header.guard
        )

    delivery = messages if order == "in order" else messages[::-1]
    for m in delivery:
        sb.receive(m, now=NOW)
    assert sb.received_through == 3

    state, sender_state = sb.to_bytes(now=NOW), sa.to_bytes(now=NOW)
    restored = Session.from_bytes(BOB, state, now=NOW)
    assert restored._st.ratchet.skipped == ()
    for m in messages:
        _refused(BOB, restored, m, Replay, DecryptionFailed)
    for secrets in keys:
        for secret in secrets:
            assert secret not in state
            assert secret not in sender_state


def test_forward_secrecy_skipped_key_is_erased_when_used() -> None:
    sa, sb, _ = _pair()
    m2 = sa.send_text("A2", now=NOW).envelope
    m3 = sa.send_text("A3", now=NOW).envelope
    sb.receive(m3, now=NOW)
    (skipped,) = sb._st.ratchet.skipped  # m2's key waits for it
    assert skipped.mk_base in sb.to_bytes(now=NOW)
    sb.receive(m2, now=NOW)
    assert sb._st.ratchet.skipped == ()
    assert skipped.mk_base not in sb.to_bytes(now=NOW)
    _refused(
        BOB, Session.from_bytes(BOB, sb.to_bytes(now=NOW), now=NOW), m2, Replay, DecryptionFailed
    )


# ---------------------------------------------------------------------------
# 3. Post-compromise security.


def _attacker_secrets(*sessions: Session) -> dict[str, set[bytes]]:
    """Every key the copied states hold, by kind."""
    out: dict[str, set[bytes]] = {"root": set(), "dh": set(), "kem": set(), "chain": set()}
    for s in sessions:
        r = s._st.ratchet
        out["root"].add(r.rk)
        out["dh"].update(x for x in (r.dh_self,) if x)
        out["kem"].update(x for x in (r.kem_self, r.recv_kem_seed) if x)
        out["chain"].update(x for x in (r.cks, r.ckr) if x)
        out["kem"].update(k.kem_seed for k in r.skipped)
    return out


def _attacker_opens(secrets: dict[str, set[bytes]], message: bytes, ad_prefix: bytes) -> bool:
    """Try every key schedule the protocol allows with the attacker's keys."""
    header, ct = _split(message)
    ad = ad_prefix + header.to_bytes()
    kem_cts = {header.root_ct} | ({header.epoch_ct} if header.epoch_ct else set())
    sss = {MlKemKeyPair(seed).decapsulate(c) for seed in secrets["kem"] for c in kem_cts}
    chains = set(secrets["chain"])
    for rk in secrets["root"]:
        for dh in secrets["dh"]:
            dh_out = X25519KeyPair(dh).exchange(header.dh)
            for ss in sss:
                chains.add(_kdf_rk(rk, dh_out, ss)[1])
    for ck in chains:
        for _ in range(header.n + 1):
            mk_base, ck = _kdf_ck(ck)
            for ss in sss:
                try:
                    message_open(_message_key(mk_base, ss), ct, ad, reuse_guard=header.guard)
                except VerificationFailed:
                    continue
                return True
    return False


def test_post_compromise_security_after_both_directions_ratchet() -> None:
    sa, sb, _ = _pair()
    r1 = sb.send_text("B1", now=NOW).envelope
    sa.receive(r1, now=NOW)
    m2 = sa.send_text("A2", now=NOW).envelope
    # Time T: the attacker copies both states.
    a_state, b_state = sa.to_bytes(now=NOW), sb.to_bytes(now=NOW)

    sb.receive(m2, now=NOW)
    r2 = sb.send_text("B2 still readable with A's copy", now=NOW).envelope
    sa.receive(r2, now=NOW)
    m3 = sa.send_text("A3 after healing", now=NOW).envelope  # fresh ratchet key of A's
    sb.receive(m3, now=NOW)
    r3 = sb.send_text("B3 after healing", now=NOW).envelope
    sa.receive(r3, now=NOW)
    m4 = sa.send_text("A4 after healing", now=NOW).envelope
    sb.receive(m4, now=NOW)
    r4 = sb.send_text("B4 after healing", now=NOW).envelope
    sa.receive(r4, now=NOW)

    # The copies, fed all traffic in order, read what precedes the healing
    # (so they really are working copies) ...
    old_a = Session.from_bytes(ALICE, a_state, now=NOW)
    old_b = Session.from_bytes(BOB, b_state, now=NOW)
    assert _content(old_a.receive(r2, now=NOW)) == "B2 still readable with A's copy"
    assert _content(old_b.receive(m2, now=NOW)) == "A2"
    # ... and nothing after it, whether in order or straight away.
    for copy_state, copy, me, later in (
        (a_state, old_a, ALICE, (r3, r4)),
        (b_state, old_b, BOB, (m3, m4)),
    ):
        for m in later:
            _refused(me, copy, m, DecryptionFailed)
            _refused(me, Session.from_bytes(me, copy_state, now=NOW), m, DecryptionFailed)

    # Beyond the session's own logic: every key in both copies (after they
    # read what they could), combined in every way the key schedule allows.
    secrets = _attacker_secrets(
        old_a,
        old_b,
        Session.from_bytes(ALICE, a_state, now=NOW),
        Session.from_bytes(BOB, b_state, now=NOW),
    )
    th = sa._st.transcript_hash
    assert _attacker_opens(secrets, r2, th)  # control: the search finds r2's key
    for m in (m3, r3, m4, r4):
        assert not _attacker_opens(secrets, m, th)


# ---------------------------------------------------------------------------
# 4. Post-quantum: every X25519 secret is not enough.

GUESSES = {"zeros": bytes(32), "random": random_bytes(32)}


def test_root_step_key_depends_on_the_ml_kem_secret() -> None:
    sa, sb, _ = _pair()
    before = sb._st.ratchet  # Bob's state before his root step
    r1 = sb.send_text("B1 post-quantum", now=NOW).envelope
    after = sb._st.ratchet
    header, ct = _split(r1)
    ad = _ad(sb, header)

    # Every X25519 secret: both parties' ratchet keys. (What the prekeys'
    # X25519 halves could add is the root key before the step; the adversary
    # is simply handed that, `before.rk`.)
    a_dh, b_dh = sa._st.ratchet.dh_self, after.dh_self
    assert a_dh is not None and b_dh is not None and before.dh_remote is not None
    dh_out = X25519KeyPair(b_dh).exchange(before.dh_remote)
    assert X25519KeyPair(a_dh).exchange(header.dh) == dh_out

    def opens(ss_root: bytes, ss_message: bytes) -> bool:
        _, ck = _kdf_rk(before.rk, dh_out, ss_root)
        mk_base, _ = _kdf_ck(ck)
        try:
            plaintext = message_open(
                _message_key(mk_base, ss_message), ct, ad, reuse_guard=header.guard
            )
        except VerificationFailed:
            return False
        assert b"B1 post-quantum" in plaintext
        return True

    true_ss = after.send_root_ss
    assert true_ss is not None
    # Control: the reproduction is right, and the receiver's ML-KEM key is
    # what yields the secret.
    assert sa._st.ratchet.kem_self is not None
    assert MlKemKeyPair(sa._st.ratchet.kem_self).decapsulate(header.root_ct) == true_ss
    assert opens(true_ss, true_ss)
    for guess in GUESSES.values():
        assert not opens(guess, guess)
        assert not opens(true_ss, guess)  # the message key needs it too
        assert not opens(guess, true_ss)
    assert _content(sa.receive(r1, now=NOW)) == "B1 post-quantum"


def test_epoch_step_key_depends_on_the_epoch_ml_kem_secret() -> None:
    sa, sb, _ = _pair()
    messages = [sb.send_text(f"B{n}", now=NOW).envelope for n in range(PQ_INTERVAL - 1)]
    last_of_epoch_0 = sb._st.ratchet  # about to send n = 49
    messages.append(sb.send_text(f"B{PQ_INTERVAL - 1}", now=NOW).envelope)
    chain = sb._st.ratchet  # about to send n = 50: the attacker has its chain key
    messages.append(sb.send_text(f"B{PQ_INTERVAL}", now=NOW).envelope)
    after = sb._st.ratchet

    h49, ct49 = _split(messages[-2])
    h50, ct50 = _split(messages[-1])
    assert (h49.n, h49.epoch_ct, h50.n) == (PQ_INTERVAL - 1, None, PQ_INTERVAL)
    assert h50.epoch_ct is not None and after.send_epoch == 1
    epoch0_ss, epoch1_ss = chain.send_epoch_ss, after.send_epoch_ss
    assert epoch0_ss is not None and epoch1_ss is not None and epoch0_ss != epoch1_ss
    assert last_of_epoch_0.cks is not None and chain.cks is not None

    def opens(ck: bytes, ss: bytes, header: RatchetHeader, ct: bytes) -> bool:
        mk_base, _ = _kdf_ck(ck)
        try:
            message_open(_message_key(mk_base, ss), ct, _ad(sb, header), reuse_guard=header.guard)
        except VerificationFailed:
            return False
        return True

    # Epoch 0: the chain key and the root step's secret are enough (control).
    assert opens(last_of_epoch_0.cks, epoch0_ss, h49, ct49)
    # Epoch 1: the chain key plus every old secret is not; the new one is.
    for guess in (*GUESSES.values(), epoch0_ss):
        assert not opens(chain.cks, guess, h50, ct50)
    assert opens(chain.cks, epoch1_ss, h50, ct50)
    assert sa._st.ratchet.kem_self is not None
    assert MlKemKeyPair(sa._st.ratchet.kem_self).decapsulate(h50.epoch_ct) == epoch1_ss

    for n, m in enumerate(messages):
        assert _content(sa.receive(m, now=NOW)) == f"B{n}"


def test_a_long_one_way_run_reordered_across_epochs() -> None:
    sa, sb, _ = _pair()
    count = 2 * PQ_INTERVAL + 10
    messages = [(seq, sa.send_text(f"A{seq}", now=NOW).envelope) for seq in range(2, count + 2)]
    random.Random(1).shuffle(messages)  # noqa: S311 - a test shuffle, not a secret
    seen, highest = [], 1
    for seq, m in messages:
        events = sb.receive(m, now=NOW)
        first = events[0]
        assert isinstance(first, MessageReceived) and first.content == f"A{seq}"
        seen.append(seq)
        expected: list[object] = []
        if seq > highest + 1:
            expected.append(MessagesMissing(from_seq=highest + 1, to_seq=seq - 1))
        if seq < highest:
            expected.append(OutOfOrder(seq=seq))
        assert events[1:] == expected
        highest = max(highest, seq)
        sb = _reload(BOB, sb)
    assert sorted(seen) == list(range(2, count + 2))
    assert sb.received_through == count + 1
    assert sb._st.ratchet.skipped == ()


# ---------------------------------------------------------------------------
# 5. Files and receipts.


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_file_arrives_as_ordered_chunks(order: str) -> None:
    sa, sb, _ = _pair()
    data = random_bytes(100_000)
    chunks = [c.envelope for c in sa.send_file("communique.bin", data, now=NOW)]
    assert len(chunks) == -(-len(data) // CHUNK_SIZE) == 4
    got: dict[int, FileChunk] = {}
    numbered = list(enumerate(chunks, 2))
    for seq, m in numbered if order == "in order" else numbered[::-1]:
        events = sb.receive(m, now=NOW)
        first = events[0]
        assert isinstance(first, MessageReceived) and first.seq == seq
        assert first.content_type is ContentType.FILE
        chunk = first.content
        assert isinstance(chunk, FileChunk)
        assert (chunk.index, chunk.count, chunk.name, chunk.size) == (
            seq - 2,
            4,
            "communique.bin",
            len(data),
        )
        got[chunk.index] = chunk
    assert len({c.file_id for c in got.values()}) == 1
    whole = b"".join(got[i].data for i in range(4))
    assert whole == data
    assert hashlib.sha512(whole).digest() == got[0].sha512
    assert sb.received_through == 5


def _receipt_checks(events: Sequence[object]) -> list[ReceiptChecked]:
    return [e for e in events if isinstance(e, ReceiptChecked)]


def test_receipts_follow_the_contiguous_view() -> None:
    sa, sb, _ = _pair()
    # A receipt from the initiator before it heard anything: zero, and true.
    events = sb.receive(sa.send_receipt(now=NOW).envelope, now=NOW)  # Alice's seq 2
    assert _receipt_checks(events) == [ReceiptChecked(up_to_seq=0, matches=True)]

    ms = [sa.send_text(f"A{i}", now=NOW).envelope for i in range(3, 8)]  # seq 3..7
    seen = {}
    for m in (ms[0], ms[1], ms[3]):  # 3, 4, 6: contiguous through 4
        event = sb.receive(m, now=NOW)[0]
        assert isinstance(event, MessageReceived)
        seen[event.seq] = event.hash
    assert sb.received_through == 4
    events = sa.receive(sb.send_receipt(now=NOW).envelope, now=NOW)
    assert _content(events) == Receipt(up_to_seq=4, chain_hash=seen[4])
    assert _receipt_checks(events) == [ReceiptChecked(up_to_seq=4, matches=True)]
    for m in (ms[2], ms[4]):
        sb.receive(m, now=NOW)
    events = sa.receive(sb.send_receipt(now=NOW).envelope, now=NOW)
    assert isinstance(events[0], MessageReceived) and isinstance(events[0].content, Receipt)
    assert events[0].content.up_to_seq <= sa.sent_count
    assert _receipt_checks(events) == [ReceiptChecked(up_to_seq=7, matches=True)]
    assert sb.received_through == sa.sent_count == 7


def test_a_lying_receipt_does_not_match() -> None:
    # The peer's own session is made to lie (we hold its keys); the receipt is
    # then correctly signed and encrypted, and only its content is false.
    sa, sb, _ = _pair()
    for up_to, chain_hash in ((5, sa._st.send_last_hash), (1, bytes(32)), (0, b"\x01" * 32)):
        liar = Session.from_bytes(BOB, sb.to_bytes(now=NOW), now=NOW)
        liar._st = replace(
            liar._st, received=replace(liar._st.received, contiguous=up_to, last_hash=chain_hash)
        )
        checks = _receipt_checks(
            Session.from_bytes(ALICE, sa.to_bytes(now=NOW), now=NOW).receive(
                liar.send_receipt(now=NOW).envelope, now=NOW
            )
        )
        assert checks == [ReceiptChecked(up_to_seq=up_to, matches=False)]


# ---------------------------------------------------------------------------
# 6. Serialisation at every point; the generation counter.


def test_every_step_survives_a_restart_and_counts_a_generation() -> None:
    sa, sb, first = _pair()
    _, other_b, _ = _pair("another conversation")
    stranger = Session.initiate(ALICE, BOB.public, STORE.bundle(NOW), now=NOW)[0]
    foreign = stranger.send_text("for another session", now=NOW).envelope
    sessions, me = {"A": sa, "B": sb}, {"A": ALICE, "B": BOB}
    log: list[tuple[str, bytes]] = [("A", first)]
    generations = {p: [s.generation] for p, s in sessions.items()}

    def step(party: str, action: str, *args: bytes) -> list[bytes]:
        session = _reload(me[party], sessions[party])
        before = session.generation
        out: list[bytes] = []
        if action == "text":
            out = [session.send_text(f"{party}{session.sent_count + 1}", now=NOW).envelope]
        elif action == "file":
            out = [
                c.envelope for c in session.send_file("f.txt", b"x" * (CHUNK_SIZE + 10), now=NOW)
            ]
        elif action == "receipt":
            out = [session.send_receipt(now=NOW).envelope]
        else:
            session.receive(args[0], now=NOW)
        assert session.generation == before + max(1, len(out))
        generations[party].append(session.generation)
        sessions[party] = _reload(me[party], session)
        log.extend((party, m) for m in out)
        return out

    def refuse(party: str, message: bytes, *expected: type[Exception]) -> None:
        sessions[party] = _reload(me[party], sessions[party])
        _refused(me[party], sessions[party], message, *expected)

    (a2,) = step("A", "text")
    (a3,) = step("A", "text")
    step("B", "receive", a3)
    refuse("B", a3, Replay)
    refuse("B", first, Replay)
    refuse("A", a2, Reflected)  # our own message comes back
    header, ct = _split(a2)
    flipped = wire.encode(
        MESSAGE, {"header": header.to_bytes(), "ciphertext": ct[:-1] + bytes([ct[-1] ^ 1])}
    )
    refuse("B", flipped, DecryptionFailed)
    refuse("B", foreign, DecryptionFailed)
    refuse("B", other_b.send_text("B to A in another conversation", now=NOW).envelope)
    step("B", "receive", a2)
    (b1,) = step("B", "text")
    refuse("B", b1, Reflected)
    (b2,) = step("B", "text")
    step("A", "receive", b2)
    step("A", "receive", b1)
    refuse("A", b1, Replay)
    f1, f2 = step("A", "file")
    step("B", "receive", f2)
    step("B", "receive", f1)
    (rb,) = step("B", "receipt")
    step("A", "receive", rb)
    refuse("A", rb, Replay)
    (ra,) = step("A", "receipt")
    step("B", "receive", ra)

    for party, gens in generations.items():
        assert gens == sorted(set(gens)), party
    assert sessions["B"].received_through == sessions["A"].sent_count == 6
    assert sessions["A"].received_through == sessions["B"].sent_count == 3
    # Afterwards every message ever sent is refused by its receiver.
    for party, m in log:
        refuse(PEER[party], m, Replay)


# ---------------------------------------------------------------------------
# Review 2026-12, finding 1: a sender restored from a backup.


def _aead_key_nonce(message_key: bytes, header: RatchetHeader) -> bytes:
    """The ChaCha20-Poly1305 key and nonce a message is sealed under (§13)."""
    return hkdf_sha256(message_key, salt=header.guard, info=b"securechan/v1/message-key", length=44)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def test_restored_sender_never_reuses_an_aead_key_and_nonce() -> None:
    """Alice's home folder is restored from a backup taken one message ago
    and she sends again. The relay holds both ciphertexts at the same ratchet
    position under the same message key; the reuse guard makes the AEAD key
    and nonce differ, so XORing the ciphertexts does not give the XOR of the
    plaintexts. (Before the fix: same key, same nonce, keystream reuse.)"""
    sa, _, _ = _pair()
    backup = sa.to_bytes(now=NOW)
    o1 = sa.send_text("the first text, sent before the restore", now=NOW)
    m1, s1, k1 = o1.envelope, o1.record, o1.key
    restored = Session.from_bytes(ALICE, backup, now=NOW)
    o2 = restored.send_text("a different text, after the restore!!", now=NOW)
    m2, s2, k2 = o2.envelope, o2.record, o2.key
    (h1, c1), (h2, c2) = _split(m1), _split(m2)
    # The rollback is real: same position, same message key.
    assert (h1.dh, h1.n) == (h2.dh, h2.n) and k1 == k2 and s1 != s2
    assert h1.guard != h2.guard
    assert _aead_key_nonce(k1, h1)[:32] != _aead_key_nonce(k2, h2)[:32]
    assert _aead_key_nonce(k1, h1)[32:] != _aead_key_nonce(k2, h2)[32:]
    # The relay's attack: XOR the ciphertexts, compare with the XOR of the
    # (padded) plaintexts: no keystream reuse.
    leak = _xor(c1, c2)
    assert leak[:64] != _xor(pad(s1), pad(s2))[:64]


def test_reused_position_replay_names_the_position_and_tells_rollback_from_replay() -> None:
    """Bob receives Alice's message, keeps its key by ratchet position, and
    then gets (a) the relay's replay of it, (b) what a restored Alice sent at
    the same position. Both are refused as Replay naming the position; the
    kept key opens both (the reuse guard is in the header), and the verified
    signed payload tells a replay (identical) from a rollback (same seq,
    other signed content, valid signature)."""
    sa, sb, _ = _pair()
    backup = sa.to_bytes(now=NOW)
    m1 = sa.send_text("original", now=NOW).envelope
    events = sb.receive(m1, now=NOW)
    got = events[0]
    assert isinstance(got, MessageReceived)
    h1, _ = _split(m1)
    assert (got.chain, got.n) == (h1.dh, h1.n)
    kept = {(got.chain, got.n): got.key}  # what a client stores
    rolled = Session.from_bytes(ALICE, backup, now=NOW).send_text("rewritten", now=NOW).envelope

    for message, same in ((m1, True), (rolled, False)):
        err = _refused(BOB, sb, message, Replay)
        assert isinstance(err, Replay)
        assert (err.chain, err.n) == (h1.dh, h1.n)
        opened = open_ratchet_message(
            message, kept[(err.chain, err.n)], sb.transcript_hash, sender=ALICE.public
        )
        payload = SignedPayload.from_bytes_unverified(opened).payload
        assert payload.seq == 1 + 1  # the first message was seq 1
        assert (opened == got.signed) is same
    # Opening with the key needs the peer's valid signature.
    with pytest.raises(VerificationFailed):
        open_ratchet_message(rolled, got.key, sb.transcript_hash, sender=BOB.public)


# ---------------------------------------------------------------------------
# Review 2026-12, finding 6: keys outliving their schedule.

YEAR = 365 * 24 * 3600


def test_a_state_read_a_year_later_no_longer_holds_a_dropped_messages_key() -> None:
    """The relay drops Alice's m1 and delivers m2: Bob keeps m1's skipped key.
    No later message comes. A year on, Bob's client loads and saves the
    state; a thief who then takes it must not find m1's key, and m1 (the
    relay kept it) must not open. (Before the fix the key stayed in every
    write of the state, pruned only after a later successful decrypt.)"""
    sa, sb, _ = _pair()
    m1 = sa.send_text("dropped by the relay", now=NOW).envelope
    sb.receive(sa.send_text("delivered", now=NOW).envelope, now=NOW)
    (skipped,) = sb._st.ratchet.skipped
    assert skipped.mk_base in sb.to_bytes(now=NOW)  # control: kept while fresh
    stored = sb.to_bytes(now=NOW + SKIPPED_TTL)  # still within its 30 days
    assert skipped.mk_base in stored
    later = Session.from_bytes(BOB, stored, now=NOW + YEAR)
    assert skipped.mk_base not in later.to_bytes(now=NOW + YEAR)
    # Written a year later without a load in between: pruned as well.
    assert skipped.mk_base not in sb.to_bytes(now=NOW + YEAR)
    _refused(BOB, later, m1, Replay, DecryptionFailed, now=NOW + YEAR)


def test_responder_session_holds_no_signed_prekey_secret_after_the_first_message() -> None:
    """Bob's stored session must not carry his signed prekey's secret halves:
    they are needed only for the receiving root step of Alice's first chain
    (which therefore has no epoch steps), and the prekey store deletes them
    on schedule. (Before the fix they were copied into every responder
    session and outlived the prekey.)"""
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW)  # signed prekey only
    sa, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="A1")
    spk_id = FirstMessage.from_bytes(first).signed_prekey_id
    _, pair = store.signed_key(spk_id, now=NOW)
    seed = pair.seed_bytes_secret()  # ML-KEM seed (64) || X25519 secret (32)
    secrets = [seed[:32], seed[32:64], seed[64:]]
    sb, _, _, _ = Session.accept(BOB, store, ReplayGuard(), first, contact=CONTACTS.get, now=NOW)

    def holds_a_secret() -> bool:
        blob = sb.to_bytes(now=NOW)
        return any(s in blob for s in secrets)

    assert not holds_a_secret()
    # Nor later: a long first chain (past an epoch boundary), with messages
    # skipped and kept, then Bob's reply and Alice's next chain.
    run = [sa.send_text(f"A{i}", now=NOW).envelope for i in range(2, PQ_INTERVAL + 5)]
    for m in run[::-1][:3]:
        sb.receive(m, now=NOW)
    assert not holds_a_secret()
    for m in run[::-1][3:]:
        sb.receive(m, now=NOW)
    sa.receive(sb.send_text("B1", now=NOW).envelope, now=NOW)
    sb.receive(sa.send_text("A-next", now=NOW).envelope, now=NOW)
    assert not holds_a_secret()
