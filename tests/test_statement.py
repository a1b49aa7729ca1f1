"""Statements (issue 5 item 5): one message proven to a third party offline.

Real relay process, real homes, real ``securechan`` subprocesses: the sender
and the recipient each export the same message; ``statement verify`` runs
with no keystore (a home folder that does not exist) and prints who said
what to whom and where it sits in the relay's log; any changed byte, a
wrong key, another envelope, an untrusted relay key or a missing witness
makes it fail with a one-line error and a documented exit code.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan.audit.note import NoteSigner, VerifierKey
from securechan.audit.statement import Statement, message_id, verify_statement
from securechan.errors import SecurechanError, UntrustedKey, VerificationFailed
from securechan.primitives import Ed25519SigningKey
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
    bad.write_text(text[: first_body + 10] + "A" + text[first_body + 11 :], encoding="ascii")
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
        replace(st_a, transcript_hash=bytes(32)),
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
