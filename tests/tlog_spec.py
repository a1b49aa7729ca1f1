"""A transparency log written from the C2SP specs alone, for the witness tests.

Nothing here imports securechan: RFC 6962 §2.1 hashing and consistency
proofs (SUBPROOF, §2.1.2), c2sp.org/tlog-checkpoint and c2sp.org/signed-note
(Ed25519, type 0x01), and the verification of c2sp.org/tlog-cosignature
lines (Ed25519 type 0x04, ML-DSA-44 type 0x06), with ``cryptography``
directly. So a test that a securechan witness cosigns this log, or that the
securechan relay talks to a witness built on it, checks securechan against
the specs rather than against itself.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

DASH = "\u2014 "


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def consistency(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PROOF(m, D[n])."""

    def subproof(m: int, d: list[bytes], complete: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if complete else [mth(d)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, d[:k], complete), mth(d[k:])]
        return [*subproof(m - k, d[k:], False), mth(d[:k])]

    return subproof(m, leaves, True) if 0 < m < len(leaves) else []


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class SpecLog:
    """An append-only log with an Ed25519 note key named after its origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes_raw()
        self.key_id = hashlib.sha256(origin.encode() + b"\n\x01" + self.public).digest()[:4]
        self.leaves: list[bytes] = []

    @property
    def vkey(self) -> str:
        raw = bytes([1]) + self.public
        return f"{self.origin}+{self.key_id.hex()}+{b64(raw)}"

    def append(self, n: int) -> None:
        for _ in range(n):
            self.leaves.append(leaf_hash(f"entry {len(self.leaves)}".encode()))

    def text(self, size: int, root: bytes | None = None) -> str:
        root = mth(self.leaves[:size]) if root is None else root
        return f"{self.origin}\n{size}\n{b64(root)}\n"

    def sign(self, text: str, key: ed25519.Ed25519PrivateKey | None = None) -> str:
        sig = (key or self.key).sign(text.encode())
        return f"{text}\n{DASH}{self.origin} {b64(self.key_id + sig)}\n"

    def checkpoint(self, size: int | None = None) -> str:
        return self.sign(self.text(len(self.leaves) if size is None else size))

    def request(self, old: int, size: int | None = None, proof: list[bytes] | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        if proof is None:
            proof = consistency(old, self.leaves[:size])
        lines = [f"old {old}"] + [b64(h) for h in proof]
        return ("\n".join(lines) + "\n\n" + self.checkpoint(size)).encode()


def parse_vkey(vkey: str) -> tuple[str, bytes, int, bytes]:
    """(name, key ID, type, public key) of a C2SP vkey."""
    name, hex_id, rest = vkey.split("+", 2)
    raw = base64.b64decode(rest)
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == hex_id
    return name, bytes.fromhex(hex_id), raw[0], raw[1:]


def verify_cosignature(vkey: str, text: str, line: str) -> int:
    """Verify one cosignature line over a checkpoint text; its timestamp.

    tlog-cosignature: type 0x04 signs ``cosignature/v1\\ntime T\\n`` + text;
    type 0x06 signs the subtree/v1 ``cosigned_message``. AssertionError or
    cryptography's InvalidSignature otherwise.
    """
    name, key_id, sig_type, public = parse_vkey(vkey)
    assert line.startswith(DASH + name + " ")
    raw = base64.b64decode(line[len(DASH) + len(name) + 1 :].rstrip("\n"), validate=True)
    assert raw[:4] == key_id
    (stamp,) = struct.unpack(">Q", raw[4:12])
    sig = raw[12:]
    if sig_type == 0x04:
        assert len(sig) == 64
        msg = b"cosignature/v1\ntime " + str(stamp).encode() + b"\n" + text.encode()
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
    else:
        assert sig_type == 0x06 and len(sig) == 2420 and len(public) == 1312
        origin, size, root = text.split("\n")[:3]
        msg = (
            b"subtree/v1\n\x00"
            + bytes([len(name.encode())])
            + name.encode()
            + struct.pack(">Q", stamp)
            + bytes([len(origin.encode())])
            + origin.encode()
            + struct.pack(">QQ", 0, int(size))
            + base64.b64decode(root)
        )
        mldsa.MLDSA44PublicKey.from_public_bytes(public).verify(sig, msg)
    return int(stamp)
