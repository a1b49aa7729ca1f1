"""Generate tests/vectors/identity.json from the public test-vector keys.

Run: ``python tests/vectors/generate.py`` (writes the JSON next to this file).

The keys in ``keys/test-vectors/`` are PUBLIC TEST DATA: their seeds are
SHA-256 of published strings (see keys/README.md), so anyone can rebuild
them. Everything here is deterministic except ML-DSA-65 signatures, which
FIPS 204 randomises ("hedged" signing): those are recorded once and checked
by verification, not by equality. Negative vectors are made by mutation, each
with the reason it must be refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from securechan import wire  # noqa: E402
from securechan.identity import Identity, safety_number  # noqa: E402
from securechan.identity.keys import IDENTITY_CLAIM  # noqa: E402
from securechan.primitives import (  # noqa: E402
    COMPOSITE_LABEL,
    COMPOSITE_PREFIX,
    MLDSA65_SIGNATURE_SIZE,
    HybridSigningKey,
    sha512,
)

KEYS = ROOT / "keys" / "test-vectors"
OUT = Path(__file__).with_name("identity.json")
CREATED = 1767225600  # 2026-01-01T00:00:00Z
MESSAGE = b"securechan test vector message"
CONTEXT = b"securechan/v1/test-vector"


def load_key(name: str) -> tuple[HybridSigningKey, dict[str, str]]:
    data = json.loads((KEYS / f"{name}.json").read_text())
    key = HybridSigningKey(bytes.fromhex(data["ed25519_seed"]), bytes.fromhex(data["mldsa65_seed"]))
    return key, data


def deterministic() -> dict[str, Any]:
    """The part of the vectors a test recomputes and compares exactly."""
    parties: dict[str, Any] = {}
    idents: dict[str, Identity] = {}
    for name in ("alice", "bob"):
        key, _ = load_key(name)
        ident = Identity(name=name, created=CREATED, key=key)
        idents[name] = ident
        pk = bytes(key.public_key)
        parties[name] = {
            "created": CREATED,
            "public_key_ed25519": pk[1952:].hex(),
            "public_key_sha512": sha512(pk).hex(),
            "fingerprint": str(ident.fingerprint),
            "identity_claim": wire.encode(
                IDENTITY_CLAIM, {"name": name, "created": CREATED, "public_key": pk}
            ).hex(),
        }
    sn = safety_number(idents["alice"].public, idents["bob"].public)
    return {
        "parties": parties,
        # 28 words since issue 11 (finding 3): 14 from each party's own hash,
        # so the spoken form is no longer a 128-bit hash of both halves.
        "safety_number": {"digits": str(sn), "words": " ".join(sn.words)},
        "composite": {
            "prefix": COMPOSITE_PREFIX.decode(),
            "label": COMPOSITE_LABEL.decode(),
            "message": MESSAGE.hex(),
            "context": CONTEXT.decode(),
            "m_prime": (
                COMPOSITE_PREFIX
                + COMPOSITE_LABEL
                + bytes([len(CONTEXT)])
                + CONTEXT
                + sha512(MESSAGE)
            ).hex(),
        },
    }


def protocol_vectors() -> dict[str, Any]:
    """Key-schedule vectors of the session protocol (docs/PROTOCOL.md §17).

    Every input is fixed (SHA-256 of a published label), so every output is
    reproducible; encapsulation and HPKE randomness are not involved.
    """
    from securechan.primitives import MlKemKeyPair, X25519KeyPair, hkdf_sha256, message_seal
    from securechan.protocol import handshake as hs
    from securechan.protocol import ratchet as rt
    from securechan.protocol.padding import pad, padme

    def fixed(label: str, n: int = 32) -> bytes:
        out = b""
        i = 0
        while len(out) < n:
            out += sha256(f"securechan/v1 test vector {label} {i}".encode())
            i += 1
        return out[:n]

    a = X25519KeyPair(fixed("x25519 a"))
    b = X25519KeyPair(fixed("x25519 b"))
    kem = MlKemKeyPair(fixed("ml-kem seed", 64))
    rk, kem_ss = fixed("root key"), fixed("kem shared secret")
    new_rk, ck = rt._kdf_rk(rk, a.exchange(b.public), kem_ss)
    mk_base, next_ck = rt._kdf_ck(ck)
    seed, hpke_out, transcript = fixed("handshake seed"), fixed("hpke", 1168), fixed("tx", 200)
    body_key, root, th = hs._keys(seed, hpke_out, transcript)
    # The reuse guard (§13): the AEAD key and nonce from a message key,
    # salted with the header's 32 random bytes, and a sealed message.
    mk = rt._message_key(mk_base, kem_ss)
    guard, aad, plaintext = fixed("reuse guard"), fixed("associated data", 48), b"hello"
    okm = hkdf_sha256(mk, salt=guard, info=b"securechan/v1/message-key", length=44)
    first_chain = rt.chain_commitment(a.public, kem.public, fixed("root ct", 1088))
    return {
        "x25519_a_public": a.public.hex(),
        "x25519_b_public": b.public.hex(),
        "x25519_shared": a.exchange(b.public).hex(),
        "mlkem768_public_sha256": sha256(kem.public).hex(),
        "kdf_rk": {"rk": rk.hex(), "kem_ss": kem_ss.hex(), "new_rk": new_rk.hex(), "ck": ck.hex()},
        "kdf_ck": {"mk_base": mk_base.hex(), "next_ck": next_ck.hex()},
        "message_key": mk.hex(),
        "reuse_guard": {
            "message_key": mk.hex(),
            "guard": guard.hex(),
            "aead_key": okm[:32].hex(),
            "nonce": okm[32:].hex(),
            "aad": aad.hex(),
            "plaintext": plaintext.hex(),
            "ciphertext": message_seal(mk, plaintext, aad, reuse_guard=guard).hex(),
        },
        "first_chain": {
            "dh": a.public.hex(),
            "kem_pub_sha256": sha256(kem.public).hex(),
            "root_ct_sha256": sha256(fixed("root ct", 1088)).hex(),
            "commitment": first_chain.hex(),
        },
        "conversation_id": {
            "transcript_hash": th.hex(),
            "conversation": hs.conversation_id(th).hex(),
        },
        "handshake": {
            "seed": seed.hex(),
            "hpke_sha256": sha256(hpke_out).hex(),
            "transcript_sha256": sha256(transcript).hex(),
            "body_key": body_key.hex(),
            "root_key": root.hex(),
            "transcript_hash": th.hex(),
        },
        "padme": {str(n): padme(n) for n in (1, 9, 100, 1000, 4500, 5000, 70000)},
        "pad_hello_sha256": sha256(pad(b"hello")).hex(),
    }


def sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def main() -> None:
    data = deterministic()
    data["protocol"] = protocol_vectors()
    alice_key, _ = load_key("alice")
    sig = alice_key.sign(MESSAGE, context=CONTEXT)
    alice = Identity(name="alice", created=CREATED, key=alice_key)
    data["parties"]["alice"]["public_identity_file"] = alice.public.to_text()
    bob_key, _ = load_key("bob")
    bob = Identity(name="bob", created=CREATED, key=bob_key)
    data["parties"]["bob"]["public_identity_file"] = bob.public.to_text()
    data["composite"]["signature_by_alice"] = sig.hex()

    def flip(i: int) -> str:
        b = bytearray(sig)
        b[i] ^= 1
        return b.hex()

    other = alice_key.sign(b"another message", context=CONTEXT)
    data["composite"]["invalid"] = [
        {"why": "one bit flipped in the ML-DSA-65 half", "signature": flip(100)},
        {
            "why": "one bit flipped in the Ed25519 half",
            "signature": flip(MLDSA65_SIGNATURE_SIZE + 10),
        },
        {
            "why": "Ed25519 half taken from a signature over another message",
            "signature": (sig[:MLDSA65_SIGNATURE_SIZE] + other[MLDSA65_SIGNATURE_SIZE:]).hex(),
        },
        {
            "why": "ML-DSA-65 half taken from a signature over another message",
            "signature": (other[:MLDSA65_SIGNATURE_SIZE] + sig[MLDSA65_SIGNATURE_SIZE:]).hex(),
        },
        {
            "why": "post-quantum half stripped (downgrade to Ed25519 only)",
            "signature": sig[MLDSA65_SIGNATURE_SIZE:].hex(),
        },
        {
            "why": "classical half stripped (ML-DSA-65 only)",
            "signature": sig[:MLDSA65_SIGNATURE_SIZE].hex(),
        },
        {
            "why": "valid signature by bob, not alice",
            "signature": bob_key.sign(MESSAGE, context=CONTEXT).hex(),
        },
        {
            "why": "valid signature by alice for another context",
            "signature": alice_key.sign(MESSAGE, context=b"securechan/v1/document").hex(),
        },
    ]
    OUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
