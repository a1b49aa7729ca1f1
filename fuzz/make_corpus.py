"""Write the seed corpora of the atheris harnesses to ``fuzz/seeds/``.

    python fuzz/make_corpus.py

Seeds come from two places:

* the committed test vectors (``tests/vectors/identity.json``: identity
  claims and public identity files; ``tests/vectors/lamps_*.json``: composite
  signatures, used as raw bytes) and the published signed-note vectors that
  ``tests/test_note.py`` checks against;
* valid messages generated here with the fixed test identities of
  ``_fixtures.py``: a session world (prekey store, first message, both sides of
  a session, undelivered messages) saved to ``seeds/state/world.json`` so that
  the session harnesses attack exactly the state these messages belong to,
  plus one valid record of every wire type, armoured files, signed notes and
  relay requests.

Every run replaces ``fuzz/seeds/`` (the world is new each time: run the
harnesses after this script). The harnesses' own discoveries go to
``fuzz/corpus/<harness>/``, which this script leaves alone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

from _fixtures import (
    ALICE,
    BOB,
    CAROL,
    CHECKPOINT,
    LOG_KEY,
    LOG_NAME,
    NOW,
    REPO,
    SEEDS,
    WITNESS_KEY,
    WITNESS_NAME,
    WITNESS_VKEY,
    WORLD_FILE,
    World,
    build_world,
)

from securechan import wire
from securechan.audit.checkpoint import add_cosignature, cosign_checkpoint, sign_checkpoint
from securechan.audit.note import NoteSigner
from securechan.client import channel
from securechan.documents import sign_document
from securechan.identity import Keystore
from securechan.identity.contacts import CONTACTS, Contact
from securechan.identity.keystore import KEY_FILE_SCHEMA
from securechan.primitives import KDF_INTERACTIVE, Ed25519SigningKey
from securechan.protocol import PrekeyStore, ReplayGuard, Session
from securechan.protocol.address import ContactAddress, ContactCard, QueueGrant
from securechan.protocol.handshake import FIRST
from securechan.protocol.padding import pad
from securechan.protocol.payload import (
    CONTEXT_MESSAGE,
    SIGNED_PAYLOAD,
    TEXT_BODY,
    ContentType,
    FileChunk,
    Payload,
    Receipt,
    SignedPayload,
    text_body,
)
from securechan.protocol.ratchet import RatchetHeader, state_to_bytes
from securechan.protocol.relay_auth import b64e, sign_request
from securechan.protocol.sealed import seal_state
from securechan.protocol.session import MESSAGE

VECTORS = REPO / "tests" / "vectors"

# Published signed-note vectors (golang.org/x/mod/sumdb/note, c2sp.org), as
# in tests/test_note.py.
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
C2SP_COSIGNED = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 "
    "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+"
    "mbIUBkBIfZ+qnA==\n"
)
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"


class Corpus:
    """One harness's seed folder; file names are content hashes."""

    def __init__(self, name: str) -> None:
        self.path = SEEDS / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, data: bytes | str) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        (self.path / hashlib.sha1(raw, usedforsecurity=False).hexdigest()).write_bytes(raw)
        self.count += 1


def _card() -> ContactCard:
    addr = ContactAddress(relay="http://127.0.0.1:8470", sid=bytes(range(16)), key=bytes(32))
    return ContactCard.make(ALICE, (addr,), now=NOW)


def _key_file_text() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store = Keystore(Path(tmp) / "home", clock=lambda: NOW)
        store.create("alice", "fuzz corpus passphrase", kdf=KDF_INTERACTIVE)
        return store.key_path.read_text("ascii")


def _dearmored_body(text: str) -> bytes:
    lines = text.split("\n")
    start = lines.index("") + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("-----END"))
    return base64.b64decode("".join(lines[start:end]))


def wire_seeds(out: Corpus, world: World, world_bob: Session, key_file: str) -> None:
    """One valid record of every wire type."""
    vectors = json.loads((VECTORS / "identity.json").read_text("utf-8"))
    for party in vectors["parties"].values():
        out.add(bytes.fromhex(party["identity_claim"]))
    out.add(ALICE.public.to_bytes())
    out.add(BOB.secret_bytes())
    contact = Contact(name="alice", identity=ALICE.public, verified=True, added=NOW, card=None)
    out.add(contact.to_bytes())
    out.add(
        wire.encode(
            CONTACTS,
            {
                "contacts": [
                    contact.to_bytes(),
                    dataclasses.replace(contact, name="carol", identity=CAROL.public).to_bytes(),
                ]
            },
        )
    )
    sig = sign_document(ALICE, io.BytesIO(b"minutes\n"), now=NOW, comment="final")
    out.add(sig.statement.to_bytes())
    out.add(sig.to_bytes())
    key_body = _dearmored_body(key_file)
    out.add(key_body)
    out.add(wire.decode(KEY_FILE_SCHEMA, key_body)["header"])
    store = PrekeyStore.from_bytes(world.store)
    bundle = store.bundle(NOW)
    out.add(bundle.to_bytes())
    out.add(bundle.signed_prekey.to_bytes())
    out.add(store.to_bytes())
    out.add(world.first)
    out.add(world.guard)
    out.add(ReplayGuard().to_bytes())
    for message in world.messages:
        out.add(message)
        out.add(RatchetHeader.from_bytes(wire.decode(MESSAGE, message)["header"]).to_bytes())
    out.add(state_to_bytes(world_bob._st.ratchet))
    out.add(world_bob.to_bytes(now=NOW))
    payload = _payload(world_bob, seq=1, prev_hash=bytes(32), body=text_body("seed"))
    out.add(payload.to_bytes())
    out.add(SignedPayload.sign(ALICE, payload).to_bytes())
    out.add(wire.encode(TEXT_BODY, {"text": "seed"}))
    chunk = FileChunk(
        file_id=bytes(16), name="a.txt", size=3, sha512=bytes(64), index=0, count=1, data=b"abc"
    )
    out.add(chunk.to_bytes())
    out.add(Receipt(up_to_seq=3, chain_hash=bytes(32)).to_bytes())
    out.add(
        seal_state(
            BOB.storage_key(), world_bob.to_bytes(), kind="session", object_id=b"fuzz", generation=2
        )
    )
    card = _card()
    out.add(card.addresses[0].to_bytes())
    out.add(card.to_bytes())
    out.add(
        QueueGrant(relay="https://relay.example/x", sid=bytes(16), sender_seed=bytes(32)).to_bytes()
    )
    reg = {
        "relay": "http://127.0.0.1:8470",
        "relay_key": bytes(32),
        "rid": bytes(16),
        "sid": bytes(range(16)),
        "recipient_seed": bytes(32),
        "address_key": bytes(32),
    }
    out.add(wire.encode(channel._REG, reg))
    out.add(wire.encode(channel._REGS, {"items": [reg, reg]}))
    out.add(wire.encode(channel._RECORD, {"signed": b"x", "contact": "alice"}))


def _payload(bob: Session, *, seq: int, prev_hash: bytes, body: bytes) -> Payload:
    """A payload from Alice to Bob in the world's conversation."""
    return Payload(
        sender=ALICE.fingerprint,
        recipient=BOB.fingerprint,
        conversation=bob.conversation,
        seq=seq,
        sent_at=NOW,
        content_type=ContentType.TEXT,
        body=body,
        prev_hash=prev_hash,
    )


def armor_seeds(out: Corpus, key_file: str) -> None:
    vectors = json.loads((VECTORS / "identity.json").read_text("utf-8"))
    for party in vectors["parties"].values():
        out.add(party["public_identity_file"])
    out.add(ALICE.public.to_text())
    out.add(sign_document(ALICE, io.BytesIO(b"doc"), now=NOW, comment="final").to_text())
    out.add(sign_document(BOB, io.BytesIO(b""), now=NOW).to_text())
    out.add(_card().to_text())
    out.add(key_file)
    out.add("Subject: fwd\r\n\r\n" + ALICE.public.to_text().replace("\n", "\r\n") + "-- \r\n")


def session_seeds(out: Corpus, bob: Session, alice: Session, messages: list[bytes]) -> None:
    """Mode byte 0: raw message; 1: padded plaintext; 2: payload record."""
    for m in messages:
        out.add(b"\x00" + m)
    seq, prev = bob.received_through + 1, bob._st.received.last_hash
    payloads = [
        _payload(bob, seq=seq, prev_hash=prev, body=text_body("next")),
        _payload(bob, seq=seq + 3, prev_hash=bytes(32), body=text_body("gap")),
        dataclasses.replace(
            _payload(bob, seq=seq, prev_hash=prev, body=b""), content_type=ContentType.HELLO
        ),
        dataclasses.replace(
            _payload(
                bob,
                seq=seq,
                prev_hash=prev,
                body=Receipt(up_to_seq=alice.sent_count, chain_hash=bytes(32)).to_bytes(),
            ),
            content_type=ContentType.RECEIPT,
        ),
    ]
    for p in payloads:
        out.add(b"\x02" + p.to_bytes())
        signed = wire.encode(
            SIGNED_PAYLOAD,
            {
                "payload": p.to_bytes(),
                "signature": ALICE.sign(p.to_bytes(), context=CONTEXT_MESSAGE),
            },
        )
        out.add(b"\x01" + pad(signed))


def first_message_seeds(out: Corpus, first: bytes, messages: list[bytes]) -> None:
    """Mode byte 0: whole first message; 1: the inner ratchet message only."""
    out.add(b"\x00" + first)
    inner = wire.decode(FIRST, first)["message"]
    out.add(b"\x01" + inner)
    for m in messages[:2]:
        out.add(b"\x01" + m)


def note_seeds(out: Corpus) -> None:
    signed = sign_checkpoint(LOG_KEY, LOG_NAME, CHECKPOINT)
    line = cosign_checkpoint(WITNESS_KEY, WITNESS_NAME, CHECKPOINT, timestamp=NOW)
    cosigned = add_cosignature(signed, line, WITNESS_VKEY)
    for text in (
        signed,
        cosigned,
        CHECKPOINT.to_text(),
        line,
        line.removesuffix("\n"),
        GO_NOTE,
        C2SP_COSIGNED,
        GO_VKEY,
        GO_SKEY,
        WITNESS_VKEY.to_text(),
        NoteSigner(WITNESS_NAME, WITNESS_KEY).to_text_secret(),
    ):
        out.add(text)


def relay_auth_seeds(out: Corpus) -> None:
    """Mode byte 0: Authorization header; 1: base64url; 2: envelope JSON;
    3: a relay request body (JSON)."""
    key = Ed25519SigningKey(hashlib.sha256(b"securechan test relay client").digest())
    out.add(b"\x00" + sign_request(key, "GET", "/v1/queues/x/messages", b"", now=NOW).encode())
    out.add(b"\x00" + sign_request(key, "POST", "/v1/queues", b"{}", now=NOW).encode())
    for raw in (bytes(16), bytes(range(32)), b"", b"\xff"):
        out.add(b"\x01" + b64e(raw).encode())
    envelope = {"seq": 1, "msg_id": b64e(bytes(16)), "data": b64e(b"envelope"), "received": NOW}
    out.add(b"\x02" + json.dumps(envelope).encode())
    out.add(b"\x02" + json.dumps({"type": "message", **envelope}).encode())
    for body in (
        {"recipient_key": b64e(key.public), "sender_key": None, "contact": True},
        {"sender_key": b64e(key.public)},
        {"up_to": 7},
        {"signed": b64e(b"blob"), "one_time": [b64e(b"a"), b64e(b"b")], "replace_one_time": False},
    ):
        out.add(b"\x03" + json.dumps(body).encode())


def main() -> None:
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    WORLD_FILE.parent.mkdir(parents=True)
    world = build_world()
    WORLD_FILE.write_text(world.to_json(), "utf-8")
    bob = Session.from_bytes(BOB, world.bob, now=NOW)
    alice = Session.from_bytes(ALICE, world.alice, now=NOW)
    key_file = _key_file_text()
    names = ("wire", "armor", "session", "first_message", "note", "relay_auth")
    corpora = {name: Corpus(name) for name in names}
    wire_seeds(corpora["wire"], world, bob, key_file)
    armor_seeds(corpora["armor"], key_file)
    session_seeds(corpora["session"], bob, alice, list(world.messages))
    first_message_seeds(corpora["first_message"], world.first, list(world.messages))
    note_seeds(corpora["note"])
    relay_auth_seeds(corpora["relay_auth"])
    for name, corpus in corpora.items():
        print(f"{corpus.count:4d} seeds in fuzz/seeds/{name}/")
    print(f"session world in {WORLD_FILE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
