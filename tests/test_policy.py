"""Witness policy on the client (issue 5 item 4): a checkpoint counts as
witnessed only with the cosignatures the delegation's policy requires, and a
statement then carries the witnessed checkpoint.

A real relay configured with one witness key; real CLI runs for the
delegation; the witness cosigns through the library's witness round.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechan.audit.note import NoteSigner, VerifierKey
from securechan.audit.witness_store import WitnessHome, WitnessKey
from securechan.client.witness import witness_round
from securechan.primitives import Ed25519SigningKey
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import Pair, RelayProcess, one_line_error, texts
from tests.test_statement import _log_key, _verify

WITNESS = WitnessKey(
    "witness.example/geneva", Ed25519SigningKey(bytes(range(1, 33)))
)  # PUBLIC TEST DATA

pristine = e2e.pristine
people = e2e.people
pair = e2e.pair


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay whose operator lists the witness."""
    root = tmp_path_factory.mktemp("relay")
    (root / "data").mkdir()
    (root / "data" / "witnesses.txt").write_text(WITNESS.verifier.to_text() + "\n", "utf-8")
    r = RelayProcess(root / "data", root / "relay.log")
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _cosign(relay: RelayProcess, tmp_path: Path) -> int:
    log_key = VerifierKey.from_text(_log_key(relay.url))
    result = asyncio.run(
        witness_round(
            relay.url, WitnessHome(tmp_path / "witness"), WITNESS, log_key, clock=time.time
        )
    )
    assert result.status in ("cosigned", "unchanged")
    return result.checkpoint.size


def test_only_cosigned_checkpoints_count_and_statements_carry_them(
    pair: Pair, relay: RelayProcess, tmp_path: Path
) -> None:
    t, w = pair.t, pair.w
    t.ok("send", "washington", "Tehran: the first point.")
    assert [x["text"] for x in texts(w.items("receive"))] == ["Tehran: the first point."]
    key = WITNESS.verifier.to_text()

    set_ = t.json("policy", "set", "--relay", relay.url, "--witness", key)
    assert set_ == {"relay": relay.url, "witnesses": [key], "required": 1}
    # Not cosigned yet: nothing is witnessed, whatever the relay signed.
    shown = t.json("policy", "show")
    assert shown[0]["relay"] == relay.url
    assert "witnessed_size" not in shown[0]
    mid = t.json("history", "washington")[-1]["id"]
    out = tmp_path / "plain.statement"
    assert t.json("statement", "export", mid, "-o", out)["witnessed"] is False

    size = _cosign(relay, tmp_path)
    shown = t.json("policy", "show")
    assert shown[0]["witnessed_size"] == size
    assert [c["witness"] for c in shown[0]["cosigned_by"]] == [WITNESS.verifier.name]

    out = tmp_path / "witnessed.statement"
    assert t.json("statement", "export", mid, "-o", out)["witnessed"] is True
    proc = _verify(
        tmp_path, out, "--trust-relay", _log_key(relay.url), "--trust-witness", key, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    log = json.loads(proc.stdout)["log"]
    assert log["tree_size"] == size
    assert [c["witness"] for c in log["cosigned_by"]] == [WITNESS.verifier.name]
    # The plain statement does not satisfy a verifier who requires the witness.
    one_line_error(_verify(tmp_path, tmp_path / "plain.statement", "--trust-witness", key), 1)

    # A later send makes a newer, uncosigned checkpoint: the witnessed one stays.
    t.ok("send", "washington", "Tehran: the second point.")
    assert t.json("policy", "show")[0]["witnessed_size"] == size


def test_policy_set_refusals(pair: Pair, relay: RelayProcess) -> None:
    t = pair.t
    log_type = NoteSigner("witness.example/x", Ed25519SigningKey(bytes(32))).verifier.to_text()
    key = WITNESS.verifier.to_text()
    for args in (
        ("--relay", relay.url, "--witness", log_type),  # a signing key, not a cosignature key
        ("--relay", relay.url, "--witness", key, "--require", "2"),
        ("--relay", relay.url, "--witness", key, "--witness", key),
        ("--relay", "http://127.0.0.1:1", "--witness", key),
        ("--relay", relay.url, "--witness", "not a key"),
    ):
        one_line_error(t.run("policy", "set", *args), 2)
    # Removing the policy: no witnesses.
    t.ok("policy", "set", "--relay", relay.url, "--witness", key)
    assert t.json("policy", "set", "--relay", relay.url)["witnesses"] == []
    assert t.json("policy", "show")[0]["witnesses"] == []
