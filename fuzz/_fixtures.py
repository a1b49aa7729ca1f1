"""Shared parts of the atheris harnesses: fixed parties, one established
session with valid messages, the mutation helpers and the harness runner.

Everything secret here is PUBLIC TEST DATA: the identities are derived from
public strings, as in ``tests/conftest.py``.

A session cannot be rebuilt byte for byte (ML-KEM encapsulation and AEAD
nonces draw fresh randomness), so ``make_corpus.py`` builds one *world* (a
prekey store, a first message, both sides of a session and messages not yet
delivered) and writes it to ``seeds/state/world.json``. The harnesses load it
when it is there, so the valid messages in the seed corpus decrypt under the
session the harness attacks; without it they build a fresh world (the seeds
then only serve as well-formed shapes to mutate).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from securechan.audit.checkpoint import Checkpoint
from securechan.audit.merkle import leaf_hash
from securechan.audit.note import SIG_COSIGNATURE_V1, SIG_ED25519, VerifierKey
from securechan.identity.keys import Fingerprint, Identity, PublicIdentity
from securechan.primitives import Ed25519SigningKey, HybridSigningKey
from securechan.protocol import PrekeyStore, ReplayGuard, Session
from securechan.protocol.address import QueueGrant

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = HERE / "seeds"
WORLD_FILE = SEEDS / "state" / "world.json"
NOW = 1_790_000_000


def fixed_identity(name: str, created: int = NOW) -> Identity:
    """A deterministic identity whose seeds are derived from its name."""
    ed = hashlib.sha256(f"securechan test {name} ed25519".encode()).digest()
    ml = hashlib.sha256(f"securechan test {name} ml-dsa-65".encode()).digest()
    return Identity(name=name, created=created, key=HybridSigningKey(ed, ml))


ALICE = fixed_identity("alice")
BOB = fixed_identity("bob")
CAROL = fixed_identity("carol")

# A log and a witness for the note and checkpoint harnesses (as tests/test_note.py).
LOG_NAME = "relay.example/log"
LOG_KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test log key").digest())
WITNESS_NAME = "witness.example/w1"
WITNESS_KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test witness key").digest())
LOG_VKEY = VerifierKey(name=LOG_NAME, sig_type=SIG_ED25519, public_key=LOG_KEY.public)
WITNESS_VKEY = VerifierKey(
    name=WITNESS_NAME, sig_type=SIG_COSIGNATURE_V1, public_key=WITNESS_KEY.public
)
CHECKPOINT = Checkpoint(origin=LOG_NAME, size=20852163, root_hash=leaf_hash(b"some root"))


def contacts(*ids: Identity) -> Callable[[Fingerprint], PublicIdentity | None]:
    """A contact lookup that knows exactly ``ids``."""
    table = {i.fingerprint: i.public for i in ids}
    return table.get


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    """Bob's prekey store before the first message, the first message, both
    sessions after one exchange each way, and Alice's messages to Bob that
    Bob has not received yet (in the order sent)."""

    store: bytes
    first: bytes
    alice: bytes
    bob: bytes
    guard: bytes
    messages: tuple[bytes, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "store": self.store.hex(),
                "first": self.first.hex(),
                "alice": self.alice.hex(),
                "bob": self.bob.hex(),
                "guard": self.guard.hex(),
                "messages": [m.hex() for m in self.messages],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> World:
        d = json.loads(text)
        return cls(
            store=bytes.fromhex(d["store"]),
            first=bytes.fromhex(d["first"]),
            alice=bytes.fromhex(d["alice"]),
            bob=bytes.fromhex(d["bob"]),
            guard=bytes.fromhex(d["guard"]),
            messages=tuple(bytes.fromhex(m) for m in d["messages"]),
        )


def build_world() -> World:
    """A fresh world (random ratchet and KEM values, fixed identities)."""
    store = PrekeyStore.new(BOB).rotate(BOB, now=NOW).add_one_time(BOB, 2, now=NOW)
    alice, first = Session.initiate(ALICE, BOB.public, store.bundle(NOW), now=NOW, text="hello")
    bob, _, guard, _ = Session.accept(
        BOB, store, ReplayGuard(), first, contact=contacts(ALICE), now=NOW
    )
    # One message back, so Alice's next messages start a new ratchet chain.
    alice.receive(bob.send_text("reply", now=NOW), now=NOW)
    messages = [
        alice.send_text("one", now=NOW),
        alice.send_receipt(now=NOW),
        *alice.send_file("notes.txt", b"minutes of the meeting\n" * 3, now=NOW),
        alice.send_grant(
            QueueGrant(relay="http://127.0.0.1:8470", sid=bytes(16), sender_seed=bytes(32)),
            now=NOW,
        ),
        alice.send_text("two", now=NOW),
    ]
    return World(
        store=store.to_bytes(),
        first=first,
        alice=alice.to_bytes(now=NOW),
        bob=bob.to_bytes(now=NOW),
        guard=guard.to_bytes(),
        messages=tuple(messages),
    )


def load_world() -> World:
    """The world ``make_corpus.py`` wrote, else a fresh one (with a note)."""
    if WORLD_FILE.is_file():
        return World.from_json(WORLD_FILE.read_text("utf-8"))
    print(
        f"note: {WORLD_FILE} is missing (run fuzz/make_corpus.py); using a fresh world, "
        "so the valid messages of the seed corpus will not decrypt",
        file=sys.stderr,
    )
    return build_world()


def check(condition: bool, message: str) -> None:
    """Fail the harness (atheris reports a crash) when an invariant breaks.

    An explicit raise, not ``assert``: harnesses must hold under ``python -O``.
    """
    if not condition:
        raise AssertionError(message)


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with ``sys.argv`` (libFuzzer flags)."""
    try:
        import atheris  # optional: only the harness scripts need it
    except ImportError:
        sys.exit(
            "atheris is not installed: pip install atheris (see fuzz/README.md); "
            "fuzz/run_plain.py runs the same targets without it"
        )
    # Coverage feedback for the securechan code (and everything it loaded).
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
