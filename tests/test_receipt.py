"""Relay receipts (``securechan.audit.receipt``): the leaf, the JSON form, verification.

The relay's side runs against a real relay in ``tests/test_relay_tlog.py``;
here the receipt is built from a :class:`MemoryTree` and a checkpoint signed
in the test, so that every refusal can be provoked on purpose.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from securechan.audit.checkpoint import Checkpoint, sign_checkpoint
from securechan.audit.merkle import MemoryTree, leaf_hash
from securechan.audit.note import SIG_ED25519, VerifierKey
from securechan.audit.receipt import (
    ENVELOPE_LEAF_CONTEXT,
    Receipt,
    envelope_leaf,
    envelope_leaf_hash,
    verify_receipt,
)
from securechan.errors import BadSignature, MalformedInput, ProofFailed, VerificationFailed
from securechan.primitives import Ed25519SigningKey

# PUBLIC TEST DATA: the key is derived from a public string.
KEY = Ed25519SigningKey(hashlib.sha256(b"securechan test receipt log").digest())
ORIGIN = "log.example/receipts"
LOG = VerifierKey(name=ORIGIN, sig_type=SIG_ED25519, public_key=KEY.public)
ENVELOPES = [b"envelope %d" % i for i in range(7)]


def receipt_for(index: int, size: int = len(ENVELOPES)) -> Receipt:
    tree = MemoryTree(envelope_leaf_hash(e) for e in ENVELOPES[:size])
    cp = Checkpoint(origin=ORIGIN, size=size, root_hash=tree.root())
    return Receipt(
        leaf_index=index,
        checkpoint=sign_checkpoint(KEY, ORIGIN, cp),
        inclusion_proof=tuple(tree.inclusion_proof(index, size)),
    )


def test_leaf_is_the_context_then_the_envelope_hash() -> None:
    data = envelope_leaf(b"abc")
    assert data == b"securechan/v1/envelope" + hashlib.sha256(b"abc").digest()
    assert len(data) == len(ENVELOPE_LEAF_CONTEXT) + 32 == 54
    assert envelope_leaf_hash(b"abc") == hashlib.sha256(b"\x00" + data).digest()
    assert envelope_leaf_hash(b"abc") == leaf_hash(data)
    with pytest.raises(TypeError):
        envelope_leaf("abc")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", range(1, len(ENVELOPES) + 1))
def test_every_receipt_verifies_for_its_envelope_only(size: int) -> None:
    for index in range(size):
        r = receipt_for(index, size)
        assert verify_receipt(r, ENVELOPES[index], LOG).size == size
        assert Receipt.from_json(r.to_json()) == r
        for other in ENVELOPES[:size]:
            if other != ENVELOPES[index]:
                with pytest.raises(ProofFailed):
                    verify_receipt(r, other, LOG)


def test_a_wrong_index_key_or_proof_is_refused() -> None:
    r = receipt_for(3)
    with pytest.raises(ProofFailed):
        verify_receipt(Receipt(**{**_fields(r), "leaf_index": 2}), ENVELOPES[3], LOG)
    with pytest.raises(ProofFailed):  # beyond the checkpoint's tree
        verify_receipt(Receipt(**{**_fields(r), "leaf_index": 7}), ENVELOPES[3], LOG)
    for i in range(len(r.inclusion_proof)):
        proof = list(r.inclusion_proof)
        proof[i] = bytes([proof[i][0] ^ 1]) + proof[i][1:]
        with pytest.raises(ProofFailed):
            verify_receipt(
                Receipt(**{**_fields(r), "inclusion_proof": tuple(proof)}), ENVELOPES[3], LOG
            )
    with pytest.raises(ProofFailed):
        verify_receipt(
            Receipt(**{**_fields(r), "inclusion_proof": r.inclusion_proof[:-1]}), ENVELOPES[3], LOG
        )
    other = Ed25519SigningKey(hashlib.sha256(b"another log").digest())
    with pytest.raises(BadSignature):
        verify_receipt(
            r, ENVELOPES[3], VerifierKey(name=ORIGIN, sig_type=1, public_key=other.public)
        )
    # The same key under another name is another log: its checkpoints do not count.
    other_cp = Checkpoint(
        origin="log.example/other", size=1, root_hash=envelope_leaf_hash(ENVELOPES[0])
    )
    renamed = sign_checkpoint(KEY, "log.example/other", other_cp)
    with pytest.raises(VerificationFailed):
        verify_receipt(
            Receipt(leaf_index=0, checkpoint=renamed, inclusion_proof=()), ENVELOPES[0], LOG
        )


def test_every_byte_of_the_checkpoint_is_covered() -> None:
    r = receipt_for(5)
    raw = r.checkpoint.encode()
    for i in range(len(raw)):
        bent = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        try:
            text = bent.decode()
        except UnicodeDecodeError:
            continue
        with pytest.raises((MalformedInput, VerificationFailed)):
            verify_receipt(Receipt(**{**_fields(r), "checkpoint": text}), ENVELOPES[5], LOG)


def _fields(r: Receipt) -> dict[str, Any]:
    return {
        "leaf_index": r.leaf_index,
        "checkpoint": r.checkpoint,
        "inclusion_proof": r.inclusion_proof,
    }


GOOD_HASH = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("why", "change"),
    [
        ("not an object", lambda d: [d]),
        ("missing field", lambda d: {k: v for k, v in d.items() if k != "inclusion_proof"}),
        ("extra field", lambda d: {**d, "size": 7}),
        ("index a bool", lambda d: {**d, "leaf_index": True}),
        ("index a float", lambda d: {**d, "leaf_index": 1.0}),
        ("index negative", lambda d: {**d, "leaf_index": -1}),
        ("index 2**64", lambda d: {**d, "leaf_index": 2**64}),
        ("checkpoint not text", lambda d: {**d, "checkpoint": 5}),
        ("checkpoint empty", lambda d: {**d, "checkpoint": ""}),
        ("proof not a list", lambda d: {**d, "inclusion_proof": GOOD_HASH}),
        ("proof item not text", lambda d: {**d, "inclusion_proof": [5]}),
        (
            "hash 31 bytes",
            lambda d: {**d, "inclusion_proof": [base64.b64encode(bytes(31)).decode()]},
        ),
        ("hash unpadded", lambda d: {**d, "inclusion_proof": [GOOD_HASH.rstrip("=")]}),
        ("hash base64url", lambda d: {**d, "inclusion_proof": ["_" * 43 + "="]}),
        ("hash non-canonical", lambda d: {**d, "inclusion_proof": ["A" * 42 + "B="]}),
        ("66 hashes", lambda d: {**d, "inclusion_proof": [GOOD_HASH] * 66}),
    ],
)
def test_from_json_refuses(why: str, change: Any) -> None:
    with pytest.raises(MalformedInput):
        Receipt.from_json(change(receipt_for(1).to_json()))
