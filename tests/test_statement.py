"""Statements (issue 5 item 5, issue 11 finding 4): one message proven to a
third party offline.

Real relay process, real homes, real ``securechan`` subprocesses: the sender
and the recipient each export the same message; ``statement verify`` runs
with no keystore (a home folder that does not exist) and prints which claims
the file proves (authorship and logging; delivery only with the recipient's
signed receipt); any changed byte, a wrong key, another envelope, an
untrusted relay key or a missing witness makes it fail with a one-line error
and a documented exit code.

The issue 11 tests play the sender as attacker, with its own client: it
signs payloads, seals them under keys and transcripts of its choosing,
posts them to the real relay (so they are logged), and hand-builds
statements around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan import armor, wire
from securechan.audit.note import NoteSigner, VerifierKey, keep_signatures
from securechan.audit.receipt import Receipt as LogReceipt
from securechan.audit.statement import (
    LogPlacement,
    Statement,
    message_id,
    verify_statement,
)
from securechan.client.logview import pinned_keys
from securechan.errors import BadSignature, SecurechanError, UntrustedKey, VerificationFailed
from securechan.identity.keys import Identity
from securechan.primitives import (
    Ed25519SigningKey,
    MlKemKeyPair,
    X25519KeyPair,
    random_bytes,
    sha256,
)
from securechan.protocol import handshake as hs
from securechan.protocol.padding import pad
from securechan.protocol.payload import ContentType, Payload, SignedPayload, text_body
from securechan.protocol.payload import Receipt as MessageReceipt
from securechan.protocol.ratchet import RatchetState, RootStep, ratchet_encrypt
from securechan.protocol.session import MESSAGE, Session
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import (
    Pair,
    RelayProcess,
    _command,
    _env,
    one_line_error,
    texts,
    transcript,
)

# The end-to-end module's fixtures: one relay per module, fresh homes per test.
relay = e2e.relay
pristine = e2e.pristine
people = e2e.people
pair = e2e.pair


def _log_key(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/relay", timeout=10) as r:  # noqa: S310 (loopback)
        key = json.load(r)["log_verifier_key"]
    assert isinstance(key, str)
    return key


def _verify(tmp_path: Path, path: Path, *args: str) -> object:
    """``statement verify`` as a third party: no keystore, no passphrase."""
    import subprocess

    proc = subprocess.run(
        [*_command(), "--home", str(tmp_path / "nobody"), "statement", "verify", str(path), *args],
        capture_output=True,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert not (tmp_path / "nobody").exists(), "verify must not create a home"
    return proc


def _exchange(pair: Pair, line: str) -> str:
    """tehran sends ``line``; washington receives it; return its message id."""
    pair.t.ok("send", "washington", line)
    got = texts(pair.w.items("receive"))
    assert [x["text"] for x in got] == [line]
    rows = [r for r in pair.t.json("history", "washington") if r["summary"] == line]
    assert len(rows) == 1
    mid = rows[0]["id"]
    # Both sides show the same id for the same message.
    assert [r["id"] for r in pair.w.json("history", "tehran") if r["summary"] == line] == [mid]
    return str(mid)


@pytest.fixture
def exported(pair: Pair, relay: RelayProcess, tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Sender's and recipient's statements of one message, its id, the log key."""
    pair.t.ok("send", "washington", "Tehran: opening the channel")
    texts(pair.w.items("receive"))
    mid = _exchange(pair, "Tehran: we accept the ceasefire terms of 3 March.")
    by_sender, by_recipient = tmp_path / "by-tehran.statement", tmp_path / "by-washington.statement"
    pair.t.ok("statement", "export", mid, "-o", by_sender)
    pair.w.ok("statement", "export", mid, "-o", by_recipient)
    return by_sender, by_recipient, mid, _log_key(relay.url)


def test_statement_round_trip_cli(exported: tuple[Path, Path, str, str], tmp_path: Path) -> None:
    by_sender, by_recipient, mid, log_key = exported
    proc = _verify(tmp_path, by_sender, "--trust-relay", log_key, "--json")
    assert proc.returncode == 0, transcript(proc)
    out = json.loads(proc.stdout)
    assert out["valid"] is True
    assert out["message_id"] == mid
    assert out["from"]["name"] == "tehran"
    assert out["to"]["name"] == "washington"
    assert out["content"] == "Tehran: we accept the ceasefire terms of 3 March."
    assert out["seq"] > 1  # after the opening message (and protocol housekeeping)
    log = out["log"]
    assert log is not None
    assert log["relay_key_trusted"] is True
    assert log["origin"] == VerifierKey.from_text(log_key).name
    assert 0 <= log["leaf_index"] < log["tree_size"]

    # The text form says the same, and warns when no relay key was given.
    proc = _verify(tmp_path, by_sender)
    assert proc.returncode == 0, transcript(proc)
    assert "VALID" in proc.stdout
    assert "tehran" in proc.stdout
    assert "washington" in proc.stdout
    assert "ceasefire" in proc.stdout
    assert "--trust-relay" in proc.stderr

    # The recipient can reveal the same message: same id, same content, and
    # the same signature; it asks its relay for the envelope's receipt
    # (GET /v1/log/proof/leaf), so it shows the same place in the same log.
    proc = _verify(tmp_path, by_recipient, "--trust-relay", log_key, "--json")
    assert proc.returncode == 0, transcript(proc)
    out_r = json.loads(proc.stdout)
    assert out_r["message_id"] == mid
    assert out_r["from"] == out["from"]
    assert out_r["payload_sha256"] == out["payload_sha256"]
    assert out_r["log"] is not None
    assert out_r["log"]["leaf_index"] == log["leaf_index"]
    assert out_r["log"]["origin"] == log["origin"]


def test_statement_refuses_an_untrusted_relay_key(
    exported: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    by_sender, _, _, log_key = exported
    name = VerifierKey.from_text(log_key).name
    other = NoteSigner(name, Ed25519SigningKey(bytes(range(32)))).verifier  # PUBLIC TEST DATA
    line = one_line_error(_verify(tmp_path, by_sender, "--trust-relay", other.to_text()), 4)
    assert "relay key you trust" in line
    # A witness the verifier requires but who never cosigned.
    witness = NoteSigner("witness.example", Ed25519SigningKey(bytes(32)), sig_type=4).verifier
    line = one_line_error(
        _verify(
            tmp_path, by_sender, "--trust-relay", log_key, "--trust-witness", witness.to_text()
        ),
        1,
    )
    assert "witness.example" in line


def test_statement_any_changed_byte_fails(
    exported: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    """Change one byte of the file, anywhere: verification fails. In process
    (the CLI is the same two calls) so that thousands of positions run; every
    position of the armour lines and every 3rd of the body is tried."""
    by_sender, _, _, log_key = exported
    text = by_sender.read_text("ascii")
    trusted = VerifierKey.from_text(log_key)
    verify_statement(Statement.from_text(text), trust_relay=trusted)  # the original is fine
    first_body = text.index("\n\n") + 2
    last_body = text.index("-----END")
    positions = [i for i in range(len(text)) if i < first_body or i >= last_body or i % 3 == 0]
    assert len(positions) > 3000
    for i in positions:
        c = text[i]
        for new in {"A" if c != "A" else "B", "\n" if c != "\n" else " "}:
            edited = text[:i] + new + text[i + 1 :]
            with pytest.raises(SecurechanError):
                verify_statement(Statement.from_text(edited), trust_relay=trusted)
    # Appending or prepending anything is an edit too.
    for edited in (text + "\n", "x" + text, text.replace("\n", "\r\n", 1)):
        with pytest.raises(SecurechanError):
            Statement.from_text(edited)
    # The CLI reports an edited file in one line, exit 2 (malformed) or 1.
    bad = tmp_path / "edited.statement"
    # (Not the character already there: a no-op edit verifies, rightly.)
    new = "A" if text[first_body + 10] != "A" else "B"
    bad.write_text(text[: first_body + 10] + new + text[first_body + 11 :], encoding="ascii")
    proc = _verify(tmp_path, bad, "--trust-relay", log_key)
    assert proc.returncode in (1, 2), transcript(proc)
    one_line_error(proc, proc.returncode)


def test_statement_binds_the_envelope(
    pair: Pair, exported: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    """The revealed key must open the logged envelope to exactly the signed
    payload: another message's envelope or key, or a wrong transcript hash,
    fails even though every signature on its own still verifies."""
    by_sender, _, _, log_key = exported
    trusted = VerifierKey.from_text(log_key)
    st_a = Statement.from_text(by_sender.read_text("ascii"))
    mid_b = _exchange(pair, "Tehran: the second point.")
    path_b = tmp_path / "b.statement"
    pair.t.ok("statement", "export", mid_b, "-o", path_b)
    st_b = Statement.from_text(path_b.read_text("ascii"))
    assert message_id(st_b.signed) == mid_b
    verify_statement(st_b, trust_relay=trusted)
    for forged in (
        replace(st_a, envelope=st_b.envelope),
        replace(st_a, message_key=st_b.message_key),
        replace(st_a, envelope=st_b.envelope, message_key=st_b.message_key),
        replace(st_a, transcript=st_b.transcript[:-1] + b"\x00"),
        replace(st_a, receipt=st_b.signed),
        replace(st_a, signed=st_b.signed),
        replace(st_a, placement=st_b.placement),
        replace(st_a, sender=st_a.recipient, recipient=st_a.sender),
    ):
        with pytest.raises(VerificationFailed):
            verify_statement(forged, trust_relay=trusted)
    # Without a placement the statement still proves who said what, but a
    # verifier who names a relay key is refused.
    bare = replace(st_a, placement=None)
    assert verify_statement(bare).log is None
    with pytest.raises(VerificationFailed):
        verify_statement(bare, trust_relay=trusted)
    with pytest.raises(UntrustedKey):
        verify_statement(
            st_a, trust_relay=NoteSigner(trusted.name, Ed25519SigningKey(bytes(32))).verifier
        )


def test_statement_export_errors(pair: Pair, tmp_path: Path) -> None:
    pair.t.ok("send", "washington", "hello")
    out = tmp_path / "s.statement"
    for bad_id in ("zz", "0123", "not-hex-at-all"):
        one_line_error(pair.t.run("statement", "export", bad_id, "-o", out), 2)
    one_line_error(pair.t.run("statement", "export", "00000000000000ff", "-o", out), 2)
    mid = pair.t.json("history", "washington")[-1]["id"]
    pair.t.ok("statement", "export", mid, "-o", out)
    before = out.read_bytes()
    line = one_line_error(pair.t.run("statement", "export", mid, "-o", out), 2)
    assert "exists" in line
    assert out.read_bytes() == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_statement_decoder_fuzz(data: bytes) -> None:
    """Arbitrary bytes and text: only SecurechanError comes out."""
    for parse in (
        lambda: Statement.from_bytes(data),
        lambda: Statement.from_text(data.decode("latin-1")),
        lambda: Statement.from_text(
            "-----BEGIN SECURECHAN STATEMENT-----\nVersion: 1\n\n"
            + data.hex()
            + "\n-----END SECURECHAN STATEMENT-----\n"
        ),
    ):
        with contextlib.suppress(SecurechanError):
            parse()


def test_leaf_receipt_endpoint(exported: tuple[Path, Path, str, str], relay: RelayProcess) -> None:
    """GET /v1/log/proof/leaf: a receipt for a leaf the log holds (it
    verifies), 404 for one it does not, 400 for anything but one lowercase
    hex hash."""
    import urllib.error

    from securechan.audit.receipt import Receipt, envelope_leaf_hash, verify_receipt

    by_sender, _, _, log_key = exported
    st = Statement.from_text(by_sender.read_text("ascii"))
    leaf = envelope_leaf_hash(st.envelope).hex()
    with urllib.request.urlopen(f"{relay.url}/v1/log/proof/leaf?hash={leaf}", timeout=10) as r:  # noqa: S310
        receipt = Receipt.from_json(json.load(r))
    checkpoint = verify_receipt(receipt, st.envelope, VerifierKey.from_text(log_key))
    assert st.placement is not None
    assert receipt.leaf_index == st.placement.leaf_index < checkpoint.size
    statuses = {}
    for query in ("hash=" + "00" * 32, "hash=" + leaf.upper(), "hash=" + leaf[:-1], "x=1", ""):
        try:
            urllib.request.urlopen(f"{relay.url}/v1/log/proof/leaf?{query}", timeout=10)  # noqa: S310
            statuses[query] = 200
        except urllib.error.HTTPError as e:
            statuses[query] = e.code
    assert list(statuses.values()) == [404, 400, 400, 400, 400], statuses


# --- issue 11 finding 4: the sender as attacker -------------------------------------


CEASEFIRE = "Tehran: we accept the ceasefire terms of 3 March."


def _acknowledge(pair: Pair) -> None:
    """washington signs a receipt for everything it has from tehran (the
    library call: the CLI has no command for it); tehran receives it."""

    async def go() -> None:
        async with pair.w.channel() as ch:
            await ch.send_receipt("tehran")

    asyncio.run(go())
    got = pair.t.items("receive")
    assert [x.get("receipt_matches") for x in got if x.get("receipt_matches") is not None] == [True]


def _conversation(ch: Any) -> bytes:
    contact = ch.keystore.contacts.get("washington")
    conv: bytes = ch.db.sessions(contact.fingerprint.digest)[0].conversation
    return conv


def _post(pair: Pair, envelope: bytes) -> LogPlacement:
    """tehran's own client posts a hand-made envelope to washington's queue
    exactly as a send would, and returns the relay's log placement of it."""

    async def go() -> LogPlacement:
        async with pair.t.channel() as ch:
            contact = ch.keystore.contacts.get("washington")
            row = ch.db.sessions(contact.fingerprint.digest)[0]
            with ch.db.transaction():
                msg_id = random_bytes(16)
                for url, sid, sender in ch.outbox.targets(contact, row.peer_grant):
                    ch.db.add_outbox(msg_id, url, sid, sender, envelope, ch.now())
            await ch.flush_outbox()
            for url, text in ch.db.log_receipts(sha256(envelope)):
                # The column holds the Ed25519 and ML-DSA-44 log keys.
                log_key = pinned_keys(ch.db.relay_log(url)[0])[0]
                receipt = LogReceipt.from_json(json.loads(text))
                own = keep_signatures(receipt.checkpoint, [log_key])
                assert own is not None
                return LogPlacement(
                    log_key=log_key.to_text(),
                    leaf_index=receipt.leaf_index,
                    checkpoint=own,
                    inclusion_proof=receipt.inclusion_proof,
                )
        raise AssertionError("the relay logged nothing")

    return asyncio.run(go())


def _identity(pair: Pair) -> Identity:
    return pair.t.keystore().unlock(pair.t.passphrase)


def _forge(
    me: Identity, genuine: Statement, text: str, *, transcript: bytes | None = None
) -> tuple[bytes, bytes, bytes, bytes]:
    """A payload signed by the sender with the genuine one's sequence number
    and link, sealed under a fresh random key and the associated data of
    ``transcript`` (default: a made-up 32-byte "transcript hash"). Returns
    (signed, envelope, key, ad)."""
    g = SignedPayload.from_bytes_unverified(genuine.signed).payload
    conversation = (
        hs.conversation_id(hs.transcript_hash(transcript))
        if transcript is not None
        else g.conversation
    )
    payload = Payload(
        sender=g.sender,
        recipient=g.recipient,
        conversation=conversation,
        seq=g.seq,
        sent_at=g.sent_at,
        content_type=ContentType.TEXT,
        body=text_body(text),
        prev_hash=g.prev_hash,
    )
    signed = SignedPayload.sign(me, payload).to_bytes()
    ad = hs.transcript_hash(transcript) if transcript is not None else random_bytes(32)
    # A ratchet of the sender's own making (random root and peer keys): the
    # message key is random, and the envelope is built exactly as the
    # protocol builds one, whatever goes into the key derivation.
    peer_kem = MlKemKeyPair.generate().public
    ratchet = RatchetState.initiator(
        random_bytes(32),
        peer_dh=X25519KeyPair.generate().public,
        peer_kem=peer_kem,
        first=RootStep.generate(peer_kem),
    )
    _, header, sealed, key = ratchet_encrypt(ratchet, pad(signed), ad)
    envelope = wire.encode(MESSAGE, {"header": header.to_bytes(), "ciphertext": sealed})
    return signed, envelope, key, ad


def _fake_transcript(me: Identity, genuine: Statement, **changes: object) -> tuple[bytes, bytes]:
    """A handshake transcript the sender (the initiator) makes up and signs:
    the genuine one with other fields (a handshake the recipient never had)."""
    rec = wire.decode(hs.TRANSCRIPT, genuine.transcript)
    rec["created"] = rec["created"] + 1
    rec.update(changes)
    fake = wire.encode(hs.TRANSCRIPT, rec)
    return fake, me.sign(fake, context=hs.CONTEXT_HANDSHAKE)


def _write(tmp_path: Path, stmt: Statement, name: str) -> Path:
    path = tmp_path / name
    path.write_text(stmt.to_text(), encoding="ascii")
    return path


def _unbound_file(
    genuine: Statement,
    signed: bytes,
    envelope: bytes,
    key: bytes,
    ad: bytes,
    placement: LogPlacement,
) -> str:
    """The statement format of before issue 11 (0x00D0): whatever
    "transcript hash" the exporter supplied, and the relay's log receipt."""
    old = wire.Schema(
        0x00D0,
        "Statement",
        (
            wire.Field(1, "signed", wire.Kind.BYTES, max_len=1 << 17),
            wire.Field(2, "sender", wire.Kind.BYTES, max_len=16384),
            wire.Field(3, "recipient", wire.Kind.BYTES, max_len=16384),
            wire.Field(4, "envelope", wire.Kind.BYTES, max_len=(1 << 20) + 65536),
            wire.Field(5, "message_key", wire.Kind.BYTES, size=32),
            wire.Field(6, "transcript_hash", wire.Kind.BYTES, size=32),
            wire.Field(7, "log_key", wire.Kind.TEXT, max_len=512),
            wire.Field(8, "leaf_index", wire.Kind.UINT),
            wire.Field(9, "checkpoint", wire.Kind.TEXT, max_len=1 << 16),
            wire.Field(10, "inclusion_proof", wire.Kind.BYTES, max_len=1 << 16),
        ),
    )
    body = wire.encode(
        old,
        {
            "signed": signed,
            "sender": genuine.sender,
            "recipient": genuine.recipient,
            "envelope": envelope,
            "message_key": key,
            "transcript_hash": ad,
            "log_key": placement.log_key,
            "leaf_index": placement.leaf_index,
            "checkpoint": placement.checkpoint,
            "inclusion_proof": b"".join(placement.inclusion_proof),
        },
    )
    p = SignedPayload.from_bytes_unverified(signed).payload
    headers = [("Message", message_id(signed)), ("From", str(p.sender)), ("To", str(p.recipient))]
    return armor.armor("STATEMENT", body, headers)


@pytest.fixture
def acknowledged(pair: Pair, tmp_path: Path) -> tuple[Statement, Statement, str]:
    """tehran's message, received and acknowledged by washington's signed
    receipt; both parties' statements of it, and its id."""
    pair.t.ok("send", "washington", "Tehran: opening the channel")
    texts(pair.w.items("receive"))
    mid = _exchange(pair, CEASEFIRE)
    _acknowledge(pair)
    by_t, by_w = tmp_path / "t.statement", tmp_path / "w.statement"
    pair.t.ok("statement", "export", mid, "-o", by_t)
    pair.w.ok("statement", "export", mid, "-o", by_w)
    return (
        Statement.from_text(by_t.read_text("ascii")),
        Statement.from_text(by_w.read_text("ascii")),
        mid,
    )


def _verdict(proc: Any) -> list[str]:
    """The tool's own verdict lines (before the details marker)."""
    out = proc.stdout.split("--- details")[0]
    return [line for line in out.splitlines() if line.startswith(("PROVES:", "DELIVERY:"))]


def test_statement_of_an_acknowledged_message_proves_both(
    acknowledged: tuple[Statement, Statement, str],
    pair: Pair,
    relay: RelayProcess,
    tmp_path: Path,
) -> None:
    """A genuine statement of a delivered, acknowledged message proves
    authorship, logging and delivery, whichever party exports it."""
    by_t, by_w, mid = acknowledged
    log_key = _log_key(relay.url)
    for who, stmt in (("tehran", by_t), ("washington", by_w)):
        assert stmt.receipt is not None, who
        path = _write(tmp_path, stmt, f"{who}.statement")
        proc = _verify(tmp_path, path, "--trust-relay", log_key, "--json", "--require-delivery")
        assert proc.returncode == 0, transcript(proc)
        out = json.loads(proc.stdout)
        assert out["proves"] == {"authorship": True, "logged": True, "delivery": True}
        assert out["message_id"] == mid
        assert out["delivery"]["up_to_seq"] == out["seq"]
        assert out["from"]["role"] == "initiator" and out["to"]["role"] == "responder"
        proc = _verify(tmp_path, path, "--trust-relay", log_key)
        assert proc.returncode == 0, transcript(proc)
        verdict = _verdict(proc)
        assert len(verdict) == 3, proc.stdout
        assert verdict[0].startswith("PROVES: signed by ")
        assert verdict[1].startswith("PROVES: logged at index ")
        assert verdict[2].startswith("DELIVERY: acknowledged by ")
        # Signer-written text only comes after the marker.
        head, _, details = proc.stdout.partition("--- details")
        assert "ceasefire" not in head and "tehran" not in head
        assert "ceasefire" in details and "from:    tehran (" in details
    # Both parties show the same session.
    assert by_t.transcript == by_w.transcript
    assert by_t.transcript_signature == by_w.transcript_signature
    # The first message (a FirstMessage envelope, here a hello, opened by
    # the responder): bound to the same session; washington's receipt covers
    # a later message only, so it proves no delivery.
    # (history does not list the hello: its id comes from the store.)
    from securechan.client.stored import StoredRecord

    async def hello_statement() -> Statement:
        async with pair.w.channel() as ch:
            for m in ch.db.messages(limit=1 << 20):
                if m.direction == "in" and m.seq == 1:
                    signed = StoredRecord.from_bytes(m.record).signed
                    return ch.statement(message_id(signed))
        raise AssertionError("no first message stored")

    first_st = asyncio.run(hello_statement())
    assert wire.peek_type(first_st.envelope) == hs.FIRST.type_id
    v = verify_statement(first_st)
    assert v.session.transcript_hash == hs.transcript_hash(by_t.transcript)
    assert v.payload.seq == 1 and v.delivery is None


def test_statement_sender_cannot_prove_an_envelope_the_recipient_refuses(
    acknowledged: tuple[Statement, Statement, str], pair: Pair, relay: RelayProcess, tmp_path: Path
) -> None:
    """The sender signs a payload, seals it under a random key (with a
    made-up transcript hash, or under a handshake it makes up and signs
    itself), posts it to the real relay, and exports a statement. The
    recipient's session never accepts that envelope. The statement is
    refused, or proves authorship and logging only, under a session that is
    not the recipient's: never delivery."""
    genuine, _, _ = acknowledged
    log_key = _log_key(relay.url)
    me = _identity(pair)
    lie = "Tehran: we reject the ceasefire."

    # 1. A random key and a made-up "transcript hash", as the old format took.
    signed, envelope, key, ad = _forge(me, genuine, lie)
    placement = _post(pair, envelope)
    old = tmp_path / "unbound.statement"
    old.write_text(_unbound_file(genuine, signed, envelope, key, ad, placement), encoding="ascii")
    line = one_line_error(_verify(tmp_path, old, "--trust-relay", log_key), 2)
    assert "0x00D0" in line
    # The same envelope in today's format, with the genuine session's
    # transcript: the key does not open it under that session.
    forged = replace(
        genuine, signed=signed, envelope=envelope, message_key=key, placement=placement
    )
    with pytest.raises(VerificationFailed):
        verify_statement(forged)
    one_line_error(_verify(tmp_path, _write(tmp_path, forged, "f1.statement")), 1)

    # 2. Under a handshake the sender made up and signed (it is the
    # initiator): the file proves who signed what and that the relay logged
    # it, but in a session whose transcript is not the genuine one, and never
    # delivery; the recipient's genuine receipt cannot be attached.
    fake, fake_sig = _fake_transcript(me, genuine)
    signed, envelope, key, _ = _forge(me, genuine, lie, transcript=fake)
    placement = _post(pair, envelope)
    forged = Statement(
        signed=signed,
        sender=genuine.sender,
        recipient=genuine.recipient,
        envelope=envelope,
        message_key=key,
        transcript=fake,
        transcript_signature=fake_sig,
        placement=placement,
    )
    v = verify_statement(forged, trust_relay=VerifierKey.from_text(log_key))
    assert v.delivery is None
    assert v.session.transcript_hash != hs.transcript_hash(genuine.transcript)
    path = _write(tmp_path, forged, "f2.statement")
    proc = _verify(tmp_path, path, "--trust-relay", log_key)
    assert proc.returncode == 0, transcript(proc)
    assert _verdict(proc)[-1].startswith("DELIVERY: not proven")
    one_line_error(_verify(tmp_path, path, "--trust-relay", log_key, "--require-delivery"), 1)
    with pytest.raises(VerificationFailed):
        verify_statement(replace(forged, receipt=genuine.receipt))
    one_line_error(
        _verify(tmp_path, _write(tmp_path, replace(forged, receipt=genuine.receipt), "f3.s")), 1
    )

    # The recipient's session refused both envelopes: nothing of them shown.
    got = pair.w.items("receive")
    assert lie not in [x.get("text") for x in got]
    assert lie not in [r["summary"] for r in pair.w.json("history", "tehran")]


def test_statement_one_seq_two_payloads_only_one_delivered(
    pair: Pair, relay: RelayProcess, tmp_path: Path
) -> None:
    """The sender restores its session from before a message and sends a
    second, different payload with the same sequence number, in the genuine
    session, through the real relay. Both statements prove authorship (the
    sender did sign both), but only the one the recipient acknowledged
    proves delivery; the other cannot borrow its receipt."""
    pair.t.ok("send", "washington", "Tehran: opening the channel")
    texts(pair.w.items("receive"))

    async def snapshot() -> bytes:
        async with pair.t.channel() as ch:
            data: bytes = ch.state.load_session(_conversation(ch)).to_bytes(now=int(time.time()))
            return data

    saved = asyncio.run(snapshot())
    mid = _exchange(pair, CEASEFIRE)
    _acknowledge(pair)
    path = tmp_path / "genuine.statement"
    pair.t.ok("statement", "export", mid, "-o", path)
    genuine = Statement.from_text(path.read_text("ascii"))
    lie = "Tehran: we reject the ceasefire."

    me = _identity(pair)
    session = Session.from_bytes(me, saved, now=int(time.time()))
    out = session.send_text(
        lie, now=SignedPayload.from_bytes_unverified(genuine.signed).payload.sent_at
    )
    envelope, key, signed = out.envelope, out.key, out.record
    assert (
        SignedPayload.from_bytes_unverified(signed).payload.seq
        == SignedPayload.from_bytes_unverified(genuine.signed).payload.seq
    )
    placement = _post(pair, envelope)
    other = replace(
        genuine,
        signed=signed,
        envelope=envelope,
        message_key=key,
        placement=placement,
        receipt=None,
    )
    log_key = _log_key(relay.url)
    trusted = VerifierKey.from_text(log_key)
    assert verify_statement(genuine, trust_relay=trusted).delivery is not None
    assert verify_statement(other, trust_relay=trusted).delivery is None
    with pytest.raises(VerificationFailed):
        verify_statement(replace(other, receipt=genuine.receipt), trust_relay=trusted)
    results = {}
    for name, stmt in (("genuine", genuine), ("other", other)):
        proc = _verify(tmp_path, _write(tmp_path, stmt, f"{name}.s"), "--trust-relay", log_key)
        assert proc.returncode == 0, transcript(proc)
        results[name] = _verdict(proc)[-1]
    assert results["genuine"].startswith("DELIVERY: acknowledged by ")
    assert results["other"].startswith("DELIVERY: not proven")
    one_line_error(
        _verify(tmp_path, _write(tmp_path, replace(other, receipt=genuine.receipt), "x.s")), 1
    )
    # The recipient's session refuses the second payload with that number,
    # and, holding the key of that ratchet position, reports the sender's
    # rolled-back state (tests/test_rollback.py) instead of a quiet replay.
    proc = pair.w.run("receive", "--json")
    assert proc.returncode == 5, transcript(proc)
    got = e2e.json_stream(proc.stdout)
    assert lie not in [x.get("text") for x in got]
    assert [x.get("rejected") for x in got if "rejected" in x] == ["peer-rolled-back"]


def test_statement_refuses_a_transcript_naming_a_third_party(
    acknowledged: tuple[Statement, Statement, str],
    pair: Pair,
    people: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A transcript between the sender and cairo (or washington and cairo),
    signed by its initiator, does not make a statement of a message to
    washington; nor does a genuine transcript with another signature."""
    genuine, _, _ = acknowledged
    me = _identity(pair)
    cairo = people["cairo"].keystore().unlock(people["cairo"].passphrase)
    rec = wire.decode(hs.TRANSCRIPT, genuine.transcript)
    w_digest = rec["responder"]
    cases = []
    for initiator, responder, signer in (
        (me.fingerprint.digest, cairo.fingerprint.digest, me),
        (cairo.fingerprint.digest, w_digest, cairo),
        (me.fingerprint.digest, me.fingerprint.digest, me),
    ):
        fake, sig = _fake_transcript(signer, genuine, initiator=initiator, responder=responder)
        signed, envelope, key, _ = _forge(me, genuine, "Tehran: the third party.", transcript=fake)
        cases.append(
            replace(
                genuine,
                signed=signed,
                envelope=envelope,
                message_key=key,
                transcript=fake,
                transcript_signature=sig,
                placement=None,
                receipt=None,
            )
        )
    for i, stmt in enumerate(cases):
        with pytest.raises(VerificationFailed, match="names someone else"):
            verify_statement(stmt)
        line = one_line_error(_verify(tmp_path, _write(tmp_path, stmt, f"third{i}.s")), 1)
        assert "someone else" in line
    # The genuine transcript, signed by the responder instead of the initiator.
    washington = pair.w.keystore().unlock(pair.w.passphrase)
    resigned = replace(
        genuine,
        transcript_signature=washington.sign(genuine.transcript, context=hs.CONTEXT_HANDSHAKE),
    )
    with pytest.raises(BadSignature):
        verify_statement(resigned)
    one_line_error(_verify(tmp_path, _write(tmp_path, resigned, "resigned.s")), 1)


def test_statement_receipt_must_cover_exactly_the_message(
    acknowledged: tuple[Statement, Statement, str], pair: Pair
) -> None:
    """Receipts the exporter puts in the file: only the recipient's, in this
    conversation, for exactly this sequence number and payload hash, make a
    delivery claim; any other is refused (the file claims what it cannot
    show), whoever signed it."""
    genuine, _, _ = acknowledged
    assert genuine.receipt is not None
    w = pair.w.keystore().unlock(pair.w.passphrase)
    t = _identity(pair)
    g = SignedPayload.from_bytes_unverified(genuine.signed)
    r = SignedPayload.from_bytes_unverified(genuine.receipt).payload
    seq = g.payload.seq

    def receipt(signer: Identity, up_to: int = seq, chain: bytes = g.hash, **changes: Any) -> bytes:
        body = MessageReceipt(up_to_seq=up_to, chain_hash=chain).to_bytes()
        payload = replace(r, body=body, raw=None, parsed=None, **changes)
        return SignedPayload.sign(signer, payload).to_bytes()

    v = verify_statement(replace(genuine, receipt=receipt(w)))
    assert v.delivery is not None and v.delivery.up_to_seq == seq
    flipped = genuine.receipt[:-1] + bytes([genuine.receipt[-1] ^ 1])
    for bad in (
        receipt(w, seq + 1),  # a later receipt: would need the links in between
        receipt(w, seq - 1),
        receipt(w, chain=bytes(32)),
        receipt(w, conversation=bytes(16)),
        receipt(t, sender=t.fingerprint, recipient=w.fingerprint),  # the sender's own
        flipped,
        genuine.signed,  # the message itself
    ):
        with pytest.raises(VerificationFailed):
            verify_statement(replace(genuine, receipt=bad))
    # Hostile bytes in the new fields (truncated, extended, random): only a
    # SecurechanError comes out, never another exception.
    rng = random.Random(11)  # noqa: S311 (reproducible test mutations, not keys)
    for name in ("transcript", "transcript_signature", "receipt"):
        value: bytes = getattr(genuine, name)
        variants = [value[:i] for i in range(0, len(value), 97)]
        variants += [value + b"\x00", bytes(len(value)), rng.randbytes(len(value))]
        variants += [
            value[:i] + bytes([value[i] ^ (1 << rng.randrange(8))]) + value[i + 1 :]
            for i in range(0, len(value), 53)
        ]
        for bad in variants:
            with pytest.raises(SecurechanError):
                verify_statement(replace(genuine, **{name: bad}))
