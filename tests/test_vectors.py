"""The published test vectors (tests/vectors/identity.json, docs/PROTOCOL.md §9).

Deterministic values are recomputed and compared exactly; signatures, which
ML-DSA-65 randomises, are checked by verification, and each negative vector
must be refused.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from securechan.errors import BadSignature
from securechan.identity import PublicIdentity, safety_number
from securechan.primitives import HybridVerifyKey

HERE = Path(__file__).parent / "vectors"
VECTORS = json.loads((HERE / "identity.json").read_text())


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_deterministic_values_are_reproduced() -> None:
    fresh = _generator().deterministic()
    for name, party in fresh["parties"].items():
        for key, value in party.items():
            assert VECTORS["parties"][name][key] == value, (name, key)
    assert VECTORS["safety_number"] == fresh["safety_number"]
    for key in ("prefix", "label", "message", "context", "m_prime"):
        assert VECTORS["composite"][key] == fresh["composite"][key]


def test_protocol_key_schedule_is_reproduced() -> None:
    assert VECTORS["protocol"] == _generator().protocol_vectors()


def test_public_identity_files_parse_and_match() -> None:
    idents = {}
    for name in ("alice", "bob"):
        party = VECTORS["parties"][name]
        ident = PublicIdentity.from_text(party["public_identity_file"])
        assert str(ident.fingerprint) == party["fingerprint"]
        assert ident.name == name and ident.created == party["created"]
        idents[name] = ident
    sn = safety_number(idents["alice"], idents["bob"])
    assert str(sn) == VECTORS["safety_number"]["digits"]
    assert " ".join(sn.words) == VECTORS["safety_number"]["words"]


def _alice_key() -> HybridVerifyKey:
    return PublicIdentity.from_text(VECTORS["parties"]["alice"]["public_identity_file"]).public_key


def test_valid_signature_verifies() -> None:
    c = VECTORS["composite"]
    _alice_key().verify(
        bytes.fromhex(c["signature_by_alice"]),
        bytes.fromhex(c["message"]),
        context=c["context"].encode(),
    )


@pytest.mark.parametrize("case", VECTORS["composite"]["invalid"], ids=lambda c: c["why"])
def test_invalid_signatures_are_refused(case: dict[str, str]) -> None:
    c = VECTORS["composite"]
    with pytest.raises(BadSignature):
        _alice_key().verify(
            bytes.fromhex(case["signature"]),
            bytes.fromhex(c["message"]),
            context=c["context"].encode(),
        )


LAMPS = json.loads((HERE / "lamps_composite_mldsa65_ed25519.json").read_text())


def test_lamps_working_group_vector_verifies() -> None:
    """Interoperability: the draft authors' own id-MLDSA65-Ed25519-SHA512 vector."""
    import base64

    pk = HybridVerifyKey(base64.b64decode(LAMPS["pk_base64"]))
    sig = base64.b64decode(LAMPS["s_base64"])
    msg = base64.b64decode(LAMPS["m_base64"])
    ctx = base64.b64decode(LAMPS["ctx_base64"])
    assert LAMPS["label"] == "COMPSIG-MLDSA65-Ed25519-SHA512"
    pk.verify(sig, msg, context=ctx)
    with pytest.raises(BadSignature):
        pk.verify(sig, msg + b"!", context=ctx)
    with pytest.raises(BadSignature):
        pk.verify(sig, msg, context=b"securechan/v1/document")
