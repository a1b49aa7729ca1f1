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
import re
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


def verify_consistency_spec(m: int, n: int, proof: list[bytes], old: bytes, new: bytes) -> bool:
    """RFC 9162 §2.1.4.2, step by step."""
    if m > n:
        return False
    if m == n:
        return not proof and old == new
    if m == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if m & (m - 1) == 0:
        path.insert(0, old)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old and sr == new and sn == 0


def vkey_of(name: str, sig_type: int, public: bytes) -> str:
    raw = bytes([sig_type]) + public
    kid = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    return f"{name}+{kid.hex()}+{b64(raw)}"


class SpecWitness:
    """c2sp.org/tlog-witness add-checkpoint, from the spec, for one log.

    ``mode`` forces an answer for the tests: ``None`` (follow the spec),
    a status code, ``"forge-pq"`` (a cosignature whose ML-DSA-44 bytes are
    damaged), ``"strip-pq"`` (the Ed25519 line only).
    """

    def __init__(self, name: str, log_vkey: str) -> None:
        self.name = name
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.pq = mldsa.MLDSA44PrivateKey.generate()
        self.ed_vkey = vkey_of(name, 0x04, self.ed.public_key().public_bytes_raw())
        self.pq_vkey = vkey_of(name, 0x06, self.pq.public_key().public_bytes_raw())
        self.log_name, self.log_id, t, self.log_public = parse_vkey(log_vkey)
        assert t == 0x01
        self.size, self.root = 0, hashlib.sha256(b"").digest()
        self.mode: int | str | None = None
        self.seen: list[tuple[int, int]] = []  # (old, status) of each request

    def answer(self, body: bytes) -> tuple[int, str, bytes]:
        status, ctype, out = self._answer(body)
        old = body.split(b"\n", 1)[0]
        self.seen.append((int(old[4:]) if old[4:].isdigit() else -1, status))
        return status, ctype, out

    def _answer(self, body: bytes) -> tuple[int, str, bytes]:
        if isinstance(self.mode, int):
            return self.mode, "text/plain", b"forced\n"
        head, sep, note = body.partition(b"\n\n")
        lines = head.split(b"\n")
        if not sep or not re.fullmatch(rb"old (0|[1-9][0-9]*)", lines[0]):
            return 400, "text/plain", b"bad\n"
        old = int(lines[0][4:])
        try:
            proof = [base64.b64decode(x, validate=True) for x in lines[1:]]
            text_s, _, sigs = note.decode().rpartition("\n\n")
            text = text_s + "\n"
            origin, size_s, root_s = text.split("\n")[:3]
            size, root = int(size_s), base64.b64decode(root_s)
        except ValueError:
            return 400, "text/plain", b"bad\n"
        if origin != self.log_name:
            return 404, "text/plain", b"unknown\n"
        good = False
        for line in sigs.rstrip("\n").split("\n"):
            name, _, sig64 = line[len(DASH) :].partition(" ")
            raw = base64.b64decode(sig64)
            if name == self.log_name and raw[:4] == self.log_id:
                pub = ed25519.Ed25519PublicKey.from_public_bytes(self.log_public)
                try:
                    pub.verify(raw[4:], text.encode())
                except Exception:
                    return 403, "text/plain", b"bad signature\n"
                good = True
        if not good:
            return 403, "text/plain", b"no signature\n"
        if old > size:
            return 400, "text/plain", b"old > size\n"
        if old != self.size:
            return 409, "text/x.tlog.size", f"{self.size}\n".encode()
        if size == 0 and root != hashlib.sha256(b"").digest():
            return 422, "text/plain", b"empty\n"
        if old == 0 and proof:
            return 422, "text/plain", b"proof from 0\n"
        if old > 0 and not verify_consistency_spec(old, size, proof, self.root, root):
            return 422, "text/plain", b"inconsistent\n"
        self.size, self.root = size, root
        return 200, "text/plain; charset=utf-8", self._cosign(text, origin, size, root).encode()

    def _cosign(self, text: str, origin: str, size: int, root: bytes) -> str:
        stamp = int(time.time())
        ed_msg = b"cosignature/v1\ntime " + str(stamp).encode() + b"\n" + text.encode()
        ed_kid = parse_vkey(self.ed_vkey)[1]
        pq_kid = parse_vkey(self.pq_vkey)[1]
        ed_sig = ed_kid + struct.pack(">Q", stamp) + self.ed.sign(ed_msg)
        name = self.name.encode()
        pq_msg = (
            b"subtree/v1\n\x00"
            + bytes([len(name)])
            + name
            + struct.pack(">Q", stamp)
            + bytes([len(origin.encode())])
            + origin.encode()
            + struct.pack(">QQ", 0, size)
            + root
        )
        pq_raw = bytearray(self.pq.sign(pq_msg))
        if self.mode == "forge-pq":
            pq_raw[100] ^= 1
        pq_sig = pq_kid + struct.pack(">Q", stamp) + bytes(pq_raw)
        out = f"{DASH}{self.name} {b64(ed_sig)}\n"
        if self.mode != "strip-pq":
            out += f"{DASH}{self.name} {b64(pq_sig)}\n"
        return out

    def serve(self) -> tuple[ThreadingHTTPServer, int]:
        """Serve POST /add-checkpoint on 127.0.0.1 in a thread; (server, port)."""
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.path != "/add-checkpoint":
                    status, ctype, out = 404, "text/plain", b"no such path\n"
                else:
                    status, ctype, out = witness.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, server.server_address[1]
