"""Benchmark securechan's session protocol against its physical floor.

The protocol is ``Session.send_text`` of a 1 KiB text followed by the peer's
``Session.receive`` of the result: build the payload, sign it (composite
ML-DSA-65 + Ed25519), pad it, ratchet-encrypt it, then ratchet-decrypt it,
unpad, parse, check and verify it. Two traffic patterns are measured, each on
its own session pair, established with ``Session.initiate`` and
``Session.accept`` from a ``PrekeyStore``:

* **one chain**: every message goes the same way, so each one is a chain step
  of one sending chain (and every 50th an ML-KEM epoch step);
* **ping-pong**: the direction alternates, so every message starts a new
  sending chain: a root step with fresh X25519 and ML-KEM-768 keys, one
  ML-KEM encapsulation and two X25519 exchanges.

The **floor** of a pattern is the sum of the raw primitive costs that one
message of it necessarily incurs, each timed in the same run from
``securechan.primitives``: one hybrid sign and one hybrid verify of a payload
of the real size, ``message_seal`` and ``message_open`` of the real padded
plaintext, four HMAC-SHA256 chain steps, two HKDF message-key derivations and
two SHA-256 of the signed payload; plus, for one chain, the epoch step's
ML-KEM encapsulation and decapsulation divided by 50, and for ping-pong, one
ML-KEM-768 and one X25519 key generation, one ML-KEM encapsulation and one
decapsulation, two X25519 exchanges and the root HKDF of both sides.
``protocol / floor`` is what
the protocol costs over the cryptography it cannot avoid (target: at most
1.3x). The script also reports the bytes a message adds on the wire, part by
part, and the size of the first message.

Usage::

    python bench/bench_protocol.py [--json] [--quick] [--profile]

As in ``bench/bench_signatures.py``: each operation runs in batches sized to
take a fixed time; each batch gives one microseconds-per-operation figure
(``time.perf_counter_ns``); we report the median and the minimum over several
repeats, and the repeats are interleaved (round-robin over the protocol
patterns and every primitive), so slow drift affects the protocol and its floor
alike. Each batch also records this process's CPU time
(``time.process_time_ns``), which a busy machine inflates much less than the
wall clock; the ratio is given from both, and per repeat (its median and
quartiles show how much noise moves it). ML-DSA signing is randomised
(rejection sampling), so the operations that sign get longer batches.
``--profile`` adds a cProfile run (CPU time) of each pattern and lists where
the time outside the primitives goes.

Long-term keys come from fixed seeds. The ratchet draws fresh randomness (as
it must), so message contents are not reproducible, but their sizes are.
Before timing anything the script checks that the floor signs with the
sender's key, over a payload the receiver accepts, and that the ping-pong
pattern really makes a root step per message while the one-chain pattern
does not.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cryptography
import nacl
from cryptography.hazmat.backends.openssl.backend import backend as _openssl_backend

from securechan import wire
from securechan.identity import Identity
from securechan.primitives import (
    HYBRID_SIGNATURE_SIZE,
    MESSAGE_AEAD_OVERHEAD,
    HybridSigningKey,
    MlKemKeyPair,
    X25519KeyPair,
    hkdf_sha256,
    hmac_sha256,
    message_open,
    message_seal,
    mlkem_encapsulate,
    sha256,
)
from securechan.protocol import MessageReceived, PrekeyStore, ReplayGuard, Session
from securechan.protocol import handshake as hs
from securechan.protocol.padding import pad
from securechan.protocol.payload import (
    CONTEXT_MESSAGE,
    PAYLOAD,
    SIGNED_PAYLOAD,
    TEXT_BODY,
    SignedPayload,
)
from securechan.protocol.ratchet import HEADER, PQ_INTERVAL, RatchetHeader
from securechan.protocol.session import MESSAGE

NOW = 1_790_000_000
# 1 KiB of ASCII text (1024 UTF-8 bytes), NFC and without NUL as TEXT requires.
_PANGRAM = "The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow. "
TEXT = (_PANGRAM * (1024 // len(_PANGRAM) + 1))[:1024]
SEEDS = {  # name -> (Ed25519 seed, ML-DSA-65 seed)
    "tehran": (bytes(range(32)), bytes(range(32, 64))),
    "washington": (bytes(range(64, 96)), bytes(range(96, 128))),
}
WARMUP_MESSAGES = PQ_INTERVAL + 10  # the one-chain pattern starts past its first epoch

# name -> (batch target in ms for plain operations, for signing ones, repeats)
MODES = {
    "default": (40.0, 250.0, 40),
    "quick": (10.0, 50.0, 8),
}

ONE_CHAIN = "Protocol, one chain: send_text + receive"
PING_PONG = "Protocol, ping-pong: send_text + receive, alternating"
SIGN = "Hybrid sign (HybridSigningKey.sign)"
VERIFY = "Hybrid verify (HybridVerifyKey.verify)"
SEAL = "message_seal"
OPEN = "message_open"
HMAC = "HMAC-SHA256 chain step (hmac_sha256)"
HKDF_MK = "HKDF-SHA256, 32-byte message key (hkdf_sha256)"
HKDF_ROOT = "HKDF-SHA256, 64-byte root step (hkdf_sha256)"
SHA = "SHA-256 of the signed payload (sha256)"
KEM_KEYGEN = "ML-KEM-768 keygen (MlKemKeyPair.generate)"
DH_KEYGEN = "X25519 keygen (X25519KeyPair.generate)"
ENCAPS = "ML-KEM-768 encapsulate (mlkem_encapsulate)"
DECAPS = "ML-KEM-768 decapsulate (MlKemKeyPair.decapsulate)"
DH = "X25519 exchange (X25519KeyPair.exchange)"
EMPTY = "(harness: empty call)"
SIGNING_OPS = (ONE_CHAIN, PING_PONG, SIGN)

# What one message necessarily costs: operation -> count per message.
_PER_MESSAGE = {SIGN: 1, VERIFY: 1, SEAL: 1, OPEN: 1, HMAC: 4, HKDF_MK: 2, SHA: 2}
FLOORS: dict[str, dict[str, float]] = {
    ONE_CHAIN: {
        **_PER_MESSAGE,
        # The epoch step: one encapsulation and one decapsulation every PQ_INTERVAL.
        ENCAPS: 1 / PQ_INTERVAL,
        DECAPS: 1 / PQ_INTERVAL,
    },
    PING_PONG: {
        **_PER_MESSAGE,
        KEM_KEYGEN: 1,
        DH_KEYGEN: 1,
        ENCAPS: 1,
        DECAPS: 1,
        DH: 2,  # the sender's and the receiver's
        HKDF_ROOT: 2,  # idem: both sides derive the new root and chain keys
    },
}
TARGET_RATIO = 1.3


@dataclass
class Result:
    name: str
    batch: int
    samples_us: list[float]  # wall clock (perf_counter)
    cpu_samples_us: list[float] = field(default_factory=list)  # this process's CPU time

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def cpu_median_us(self) -> float:
        return statistics.median(self.cpu_samples_us)

    @property
    def min_us(self) -> float:
        return min(self.samples_us)


# --- set-up ------------------------------------------------------------------


def identity(name: str) -> Identity:
    ed_seed, mldsa_seed = SEEDS[name]
    return Identity(name=name, created=NOW, key=HybridSigningKey(ed_seed, mldsa_seed))


@dataclass
class Parties:
    alice: Identity
    bob: Identity
    store: PrekeyStore  # Bob's, with a signed prekey and one-time prekeys

    def contact(self, fingerprint: object) -> Any:
        return self.alice.public if fingerprint == self.alice.fingerprint else None


def parties() -> Parties:
    alice, bob = identity("tehran"), identity("washington")
    store = PrekeyStore.new(bob).rotate(bob, now=NOW).add_one_time(bob, 4, now=NOW)
    return Parties(alice, bob, store)


def session_pair(p: Parties) -> tuple[Session, Session]:
    """An established pair (Alice initiates with a one-time prekey, Bob accepts)."""
    sa, first = Session.initiate(p.alice, p.bob.public, p.store.bundle(NOW), now=NOW)
    sb, p.store, _, events = Session.accept(
        p.bob, p.store, ReplayGuard(), first, contact=p.contact, now=NOW
    )
    if not events or not isinstance(events[0], MessageReceived):
        raise RuntimeError("the first message was not received")
    return sa, sb


def deliver(sender: Session, receiver: Session) -> tuple[bytes, MessageReceived]:
    """One 1 KiB text message, checked."""
    msg = sender.send_text(TEXT, now=NOW).envelope
    events = receiver.receive(msg, now=NOW)
    event = events[0]
    if len(events) != 1 or not isinstance(event, MessageReceived) or event.content != TEXT:
        raise RuntimeError(f"the message did not arrive intact: {events!r}")
    return msg, event


def header_of(msg: bytes) -> RatchetHeader:
    return RatchetHeader.from_bytes(wire.decode(MESSAGE, msg)["header"])


@dataclass
class Setup:
    ops: dict[str, Callable[[], object]]
    one_chain: tuple[Session, Session]
    ping_pong: tuple[Session, Session]
    sample: dict[str, tuple[bytes, MessageReceived]]  # pattern -> a message and its event
    epoch0: tuple[bytes, MessageReceived]  # a one-chain message before its first epoch step
    floor_sizes: dict[str, int]


def build_operations() -> Setup:
    """Establish the sessions, build the floor's inputs from real messages,
    check them, and return zero-argument callables."""
    p = parties()

    # One chain: Alice -> Bob only. Send past the first epoch step, so the
    # timed messages carry an epoch ciphertext as most of a long chain does.
    oa, ob = session_pair(p)
    # Bob replies once: Alice's first chain has no epoch steps (PROTOCOL.md
    # §13), her next one, measured here, has them.
    deliver(ob, oa)
    epoch0 = deliver(oa, ob)
    for _ in range(WARMUP_MESSAGES):
        one_chain_sample = deliver(oa, ob)
    headers = [header_of(deliver(oa, ob)[0]) for _ in range(3)]
    if len({h.dh for h in headers}) != 1 or len({h.root_ct for h in headers}) != 1:
        raise RuntimeError("the one-chain pattern made a root step")
    if any(h.epoch_ct is None for h in headers) or header_of(epoch0[0]).epoch_ct is not None:
        raise RuntimeError("unexpected epoch ciphertexts in the one-chain pattern")

    # Ping-pong: alternate; each message starts a new sending chain. Bob
    # speaks first (Alice's first message opened her first chain).
    pa, pb = session_pair(p)
    pp_pair = [pb, pa]
    pp_msgs = []
    for _ in range(4):
        pp_msgs.append(deliver(pp_pair[0], pp_pair[1]))
        pp_pair.reverse()
    pp_headers = [header_of(m) for m, _ in pp_msgs]
    if len({h.dh for h in pp_headers}) != 4 or len({h.kem_pub for h in pp_headers}) != 4:
        raise RuntimeError("the ping-pong pattern did not make a root step per message")
    if any(h.n != 0 for h in pp_headers):
        raise RuntimeError("a ping-pong message was not the first of its chain")

    # The floor's inputs, the sizes of the real ones.
    msg, event = one_chain_sample
    signed = SignedPayload.from_bytes_unverified(event.signed)
    payload_bytes = signed.payload.to_bytes()
    sender_key = HybridSigningKey(*SEEDS["tehran"])
    verify_key = sender_key.public_key
    # The protocol's signature verifies under our key over these bytes, so the
    # floor signs what the protocol signs, with the same key and context.
    verify_key.verify(signed.signature, payload_bytes, context=CONTEXT_MESSAGE)
    floor_sig = sender_key.sign(payload_bytes, context=CONTEXT_MESSAGE)
    verify_key.verify(floor_sig, payload_bytes, context=CONTEXT_MESSAGE)
    padded = pad(event.signed)
    ciphertext_len = len(wire.decode(MESSAGE, msg)["ciphertext"])
    if ciphertext_len != len(padded) + MESSAGE_AEAD_OVERHEAD:
        raise RuntimeError("the padded plaintext is not the size the ciphertext implies")
    # Associated data: the 32-byte transcript hash and the header (with an epoch ct).
    aad = bytes(32) + header_of(msg).to_bytes()
    message_key = bytes(range(32))
    sealed = message_seal(message_key, padded, aad)
    if message_open(message_key, sealed, aad) != padded:
        raise RuntimeError("message_seal / message_open do not round-trip")
    chain_key = bytes(range(1, 33))
    epoch_ss = bytes(range(2, 34))
    root_key = bytes(range(3, 35))
    root_ikm = bytes(range(64))  # X25519 output || ML-KEM shared secret
    kem = MlKemKeyPair(bytes(range(64)))
    kem_ss, kem_ct = mlkem_encapsulate(kem.public)
    if kem.decapsulate(kem_ct) != kem_ss:
        raise RuntimeError("ML-KEM does not round-trip")
    dh_a = X25519KeyPair(bytes(range(4, 36)))
    dh_b_pub = X25519KeyPair(bytes(range(5, 37))).public
    signed_bytes = event.signed

    one_a, one_b = oa, ob

    def one_chain() -> object:
        return one_b.receive(one_a.send_text(TEXT, now=NOW).envelope, now=NOW)

    def ping_pong() -> object:
        sender, receiver = pp_pair
        pp_pair.reverse()
        return receiver.receive(sender.send_text(TEXT, now=NOW).envelope, now=NOW)

    kem_pub = kem.public
    ops: dict[str, Callable[[], object]] = {
        ONE_CHAIN: one_chain,
        PING_PONG: ping_pong,
        SIGN: lambda: sender_key.sign(payload_bytes, context=CONTEXT_MESSAGE),
        VERIFY: lambda: verify_key.verify(floor_sig, payload_bytes, context=CONTEXT_MESSAGE),
        SEAL: lambda: message_seal(message_key, padded, aad),
        OPEN: lambda: message_open(message_key, sealed, aad),
        HMAC: lambda: hmac_sha256(chain_key, b"\x01"),
        HKDF_MK: lambda: hkdf_sha256(
            chain_key, salt=epoch_ss, info=b"securechan/v1/ratchet-message", length=32
        ),
        HKDF_ROOT: lambda: hkdf_sha256(
            root_ikm, salt=root_key, info=b"securechan/v1/ratchet-root", length=64
        ),
        SHA: lambda: sha256(signed_bytes),
        KEM_KEYGEN: MlKemKeyPair.generate,
        DH_KEYGEN: X25519KeyPair.generate,
        ENCAPS: lambda: mlkem_encapsulate(kem_pub),
        DECAPS: lambda: kem.decapsulate(kem_ct),
        DH: lambda: dh_a.exchange(dh_b_pub),
        EMPTY: lambda: None,
    }
    return Setup(
        ops=ops,
        one_chain=(oa, ob),
        ping_pong=(pa, pb),
        sample={ONE_CHAIN: one_chain_sample, PING_PONG: pp_msgs[-1]},
        epoch0=epoch0,
        floor_sizes={
            "signed_payload_bytes": len(payload_bytes),
            "padded_plaintext_bytes": len(padded),
            "aad_bytes": len(aad),
            "sha256_input_bytes": len(signed_bytes),
        },
    )


# --- timing (as in bench_signatures.py) -------------------------------------------


def time_batch(fn: Callable[[], object], n: int) -> int:
    """Nanoseconds for ``n`` calls of ``fn``."""
    loop = range(n)
    start = time.perf_counter_ns()
    for _ in loop:
        fn()
    return time.perf_counter_ns() - start


def time_batch_both(fn: Callable[[], object], n: int) -> tuple[int, int]:
    """Wall-clock and process CPU nanoseconds for ``n`` calls of ``fn``."""
    loop = range(n)
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    for _ in loop:
        fn()
    wall = time.perf_counter_ns() - start
    return wall, time.process_time_ns() - cpu


def calibrate(fn: Callable[[], object], target_ns: float) -> int:
    """A batch size that takes about ``target_ns``."""
    n = 1
    while True:
        elapsed = time_batch(fn, n)
        if elapsed >= target_ns / 10 or n >= 1 << 24:
            break
        n *= 2
    return max(1, math.ceil(n * target_ns / max(elapsed, 1)))


def run(
    ops: dict[str, Callable[[], object]], target_ms: float, sign_target_ms: float, repeats: int
) -> list[Result]:
    for fn in ops.values():  # warm up
        time_batch(fn, 3)
    results = []
    for name, fn in ops.items():
        target_ns = (sign_target_ms if name in SIGNING_OPS else target_ms) * 1e6
        results.append(Result(name, calibrate(fn, target_ns), []))
    fns = list(ops.values())
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for result, fn in zip(results, fns, strict=True):
                wall, cpu = time_batch_both(fn, result.batch)
                result.samples_us.append(wall / result.batch / 1000)
                result.cpu_samples_us.append(cpu / result.batch / 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


# --- sizes ---------------------------------------------------------------------


def _value_bytes(rec: dict[str, Any]) -> int:
    """The bytes of a decoded record's values (UINT fields are 8 bytes)."""
    total = 0
    for value in rec.values():
        if value is None:
            continue
        total += 8 if isinstance(value, int) else len(value)
    return total


def message_sizes(msg: bytes, event: MessageReceived) -> dict[str, int]:
    """Where the bytes of one ratchet message go; the parts sum to its length."""
    outer = wire.decode(MESSAGE, msg)
    header_bytes, ciphertext = outer["header"], outer["ciphertext"]
    header = wire.decode(HEADER, header_bytes)
    signed = wire.decode(SIGNED_PAYLOAD, event.signed)
    payload = wire.decode(PAYLOAD, signed["payload"])
    body = payload["body"]
    text = wire.decode(TEXT_BODY, body)["text"].encode()
    padded_len = len(ciphertext) - MESSAGE_AEAD_OVERHEAD
    metadata_fields = {k: v for k, v in payload.items() if k != "body"}
    sizes = {
        "text": len(text),
        "text body framing": len(body) - len(text),
        "payload fields (sender, recipient, conversation, seq, time, type, prev hash)": (
            _value_bytes(metadata_fields)
        ),
        "payload framing": len(signed["payload"]) - _value_bytes(payload),
        "signature": len(signed["signature"]),
        "signed payload framing": len(event.signed) - _value_bytes(signed),
        "padding: length prefix": 4,
        "padding: Padmé zeros": padded_len - 4 - len(event.signed),
        "AEAD tag": len(ciphertext) - padded_len,
        "ratchet header: X25519 public key": len(header["dh"]),
        "ratchet header: ML-KEM-768 public key": len(header["kem_pub"]),
        "ratchet header: root ML-KEM ciphertext": len(header["root_ct"]),
        "ratchet header: epoch ML-KEM ciphertext": len(header["epoch_ct"] or b""),
        "ratchet header: reuse guard": len(header["guard"]),
        "ratchet header: counters (pn, n)": 8 * sum(isinstance(v, int) for v in header.values()),
        "ratchet header: framing": len(header_bytes) - _value_bytes(header),
        "outer framing (RatchetMessage)": len(msg) - len(header_bytes) - len(ciphertext),
    }
    if sum(sizes.values()) != len(msg):
        raise RuntimeError("the size breakdown does not add up")
    if sizes["signature"] != HYBRID_SIGNATURE_SIZE or padded_len != len(pad(event.signed)):
        raise RuntimeError("unexpected signature or padding size")
    return sizes


def first_message_sizes(p: Parties) -> dict[str, dict[str, int]]:
    """Session.initiate's output, with and without a one-time prekey, for a
    hello and for the 1 KiB text; each one is accepted by Bob as a check."""
    out = {}
    for otk in (True, False):
        bundle = p.store.bundle(NOW, with_one_time=otk)
        for text in (None, TEXT):
            _, first = Session.initiate(p.alice, p.bob.public, bundle, now=NOW, text=text)
            Session.accept(p.bob, p.store, ReplayGuard(), first, contact=p.contact, now=NOW)
            rec = wire.decode(hs.FIRST, first)
            name = (
                ("with" if otk else "without")
                + " one-time prekey, "
                + ("hello" if text is None else "1 KiB text")
            )
            out[name] = {
                "total": len(first),
                "hpke": len(rec["hpke"]),
                "sealed_body": len(rec["sealed_body"]),
                "message": len(rec["message"]),
                "ids and framing": len(first)
                - len(rec["hpke"])
                - len(rec["sealed_body"])
                - len(rec["message"]),
            }
    return out


# --- profile ---------------------------------------------------------------------

# Self time in these is the primitives' (cryptography's Rust and OpenSSL code,
# libsodium, hashlib, hmac), whether or not the floor counts the call.
_PRIMITIVE_MARKERS = (
    "cryptography",
    "_sodium",
    "_hashlib",
    "nacl",
    "hmac.py",
    "mlkem.",
    "mldsa.",
    "x25519.",
    "ed25519.",
)


def _category(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    where = filename + " " + name
    if any(m in where for m in _PRIMITIVE_MARKERS):
        return "primitive"
    if "securechan" in filename:
        return "securechan"
    return "stdlib/builtin"


def profile(fn: Callable[[], object], n: int, top: int = 15) -> dict[str, Any]:
    """cProfile ``n`` calls; attribute self time to primitives (cryptography,
    PyNaCl, hashlib, hmac) or to everything else."""
    # CPU time, not wall time: on a busy machine, time spent descheduled would
    # otherwise land on whichever function happened to be running.
    prof = cProfile.Profile(time.process_time)
    gc.collect()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = []
    for func, (_, ncalls, tottime, cumtime, _) in stats.items():
        rows.append((func, ncalls, tottime, cumtime))
    total = sum(r[2] for r in rows)
    by_cat: dict[str, float] = {}
    for func, _, tottime, _ in rows:
        by_cat[_category(func)] = by_cat.get(_category(func), 0.0) + tottime
    non_prim = sorted(
        (r for r in rows if _category(r[0]) != "primitive"), key=lambda r: r[2], reverse=True
    )
    prim = sorted(
        (r for r in rows if _category(r[0]) == "primitive"), key=lambda r: r[2], reverse=True
    )

    def fmt(func: tuple[str, int, str]) -> str:
        filename, line, name = func
        if filename == "~":
            return name
        path = Path(filename)
        short = "/".join(path.parts[-2:]) if "securechan" in path.parts else path.name
        return f"{short}:{line}({name})"

    non_prim_total = total - by_cat.get("primitive", 0.0)

    def row(r: tuple[Any, int, float, float]) -> dict[str, Any]:
        return {
            "function": fmt(r[0]),
            "calls_per_message": r[1] / n,
            "self_us_per_message": r[2] / n * 1e6,
            "cum_us_per_message": r[3] / n * 1e6,
            "share_of_total": r[2] / total,
            "share_of_non_primitive": r[2] / non_prim_total if non_prim_total else 0.0,
        }

    return {
        "messages": n,
        "total_us_per_message": total / n * 1e6,
        "self_time_by_category_us": {k: v / n * 1e6 for k, v in by_cat.items()},
        "top_non_primitive": [row(r) for r in non_prim[:top]],
        "top_primitive": [row(r) for r in prim[:8]],
    }


# --- environment ---------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def libsodium_version() -> str:
    # PyNaCl's binding does not expose sodium_version_string(); say where it comes from.
    try:
        from nacl._sodium import ffi, lib

        return ffi.string(lib.sodium_version_string()).decode()
    except (ImportError, AttributeError):
        return f"bundled with PyNaCl {nacl.__version__} (the binding does not expose its version)"


def securechan_version() -> str:
    """The installed version, and the git commit of the tree when there is one
    (``+dirty`` if the package has uncommitted changes)."""
    try:
        version = metadata.version("securechan")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "securechan"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}, git {commit}{'+dirty' if dirty else ''}"


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}/{five:.2f}"


def environment() -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "securechan": securechan_version(),
        "cryptography": cryptography.__version__,
        "openssl": _openssl_backend.openssl_version_text(),
        "pynacl": metadata.version("PyNaCl"),
        "libsodium": libsodium_version(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
    }


# --- summary and output ---------------------------------------------------------


@dataclass
class Pattern:
    name: str
    protocol_us: float
    protocol_min_us: float
    floor_parts_us: dict[str, float]  # operation -> count x median
    paired_ratios: list[float]  # protocol / floor within each repeat
    cpu_ratio: float  # the same ratio of medians, from CPU time

    @property
    def floor_us(self) -> float:
        return sum(self.floor_parts_us.values())

    @property
    def ratio(self) -> float:
        return self.protocol_us / self.floor_us

    @property
    def paired_quartiles(self) -> tuple[float, float, float]:
        if len(self.paired_ratios) < 2:
            r = self.paired_ratios[0]
            return r, r, r
        q1, q2, q3 = statistics.quantiles(self.paired_ratios, n=4, method="inclusive")
        return q1, q2, q3

    def as_dict(self) -> dict[str, object]:
        q1, q2, q3 = self.paired_quartiles
        return {
            "protocol_median_us": self.protocol_us,
            "protocol_min_us": self.protocol_min_us,
            "messages_per_s": 1e6 / self.protocol_us,
            "floor_us": self.floor_us,
            "floor_parts_us": self.floor_parts_us,
            "protocol_over_floor": self.ratio,
            "protocol_over_floor_cpu_time": self.cpu_ratio,
            "paired_ratio_median": q2,
            "paired_ratio_quartiles": [q1, q3],
            "overhead_us": self.protocol_us - self.floor_us,
            "target_ratio": TARGET_RATIO,
            "within_target": self.ratio <= TARGET_RATIO,
        }


def summarise(results: list[Result]) -> dict[str, Pattern]:
    """Ratios of medians; and, as a check, the ratio within each repeat (the
    protocol and its floor measured a few seconds apart), whose median and
    quartiles show how much drift and signing noise move the ratio."""
    by_name = {r.name: r for r in results}
    patterns = {}
    for name, floor in FLOORS.items():
        repeats = len(by_name[name].samples_us)
        paired = [
            by_name[name].samples_us[i]
            / sum(k * by_name[op].samples_us[i] for op, k in floor.items())
            for i in range(repeats)
        ]
        patterns[name] = Pattern(
            name=name,
            protocol_us=by_name[name].median_us,
            protocol_min_us=by_name[name].min_us,
            floor_parts_us={op: k * by_name[op].median_us for op, k in floor.items()},
            paired_ratios=paired,
            cpu_ratio=by_name[name].cpu_median_us
            / sum(k * by_name[op].cpu_median_us for op, k in floor.items()),
        )
    return patterns


def _count(k: float) -> str:
    if k == 0:
        return ""
    if k == int(k):
        return f"{int(k)}"
    return f"1/{round(1 / k)}"


def markdown(
    env: dict[str, str],
    mode: str,
    setup: Setup,
    results: list[Result],
    summary: dict[str, Pattern],
    sizes: dict[str, dict[str, int]],
    first: dict[str, dict[str, int]],
    profiles: dict[str, dict[str, Any]] | None,
    sent: dict[str, list[tuple[int, int]]],
) -> str:
    fs = setup.floor_sizes
    lines = [
        "# securechan session protocol benchmark",
        "",
        f"- Python: {env['python']}",
        f"- securechan: {env['securechan']}",
        f"- cryptography: {env['cryptography']} ({env['openssl']})",
        f"- PyNaCl: {env['pynacl']}; libsodium: {env['libsodium']}",
        f"- CPU: {env['cpu']}",
        f"- Platform: {env['platform']}",
        f"- Load average: {env['load']}",
        f"- Mode: {mode}. A message is a {len(TEXT.encode())}-byte text: the hybrid signs "
        f"a {fs['signed_payload_bytes']}-byte Payload record; with its signature it is a "
        f"{fs['sha256_input_bytes']}-byte SignedPayload (hashed with SHA-256), "
        f"{fs['padded_plaintext_bytes']} bytes once padded (sealed, with "
        f"{fs['aad_bytes']} bytes of associated data: transcript hash + ratchet header). "
        "The floor's primitives run on inputs of exactly these sizes.",
        "",
        "## Time",
        "",
        "| operation | median µs | min µs | median CPU µs | batch x repeats "
        "| per message, one chain | per message, ping-pong |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        counts = [_count(FLOORS[p].get(r.name, 0)) for p in (ONE_CHAIN, PING_PONG)]
        lines.append(
            f"| {r.name} | {r.median_us:.2f} | {r.min_us:.2f} | {r.cpu_median_us:.2f} | "
            f"{r.batch} x {len(r.samples_us)} | " + " | ".join(counts) + " |"
        )
    lines += [
        "",
        "| pattern | protocol µs/message | messages/s | floor µs | protocol ÷ floor "
        f"| overhead µs | ≤ {TARGET_RATIO}x? | per-repeat ratio: median [quartiles] "
        "| ratio from CPU time |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in summary.values():
        q1, q2, q3 = p.paired_quartiles
        lines.append(
            f"| {p.name.split(':')[0].removeprefix('Protocol, ')} | {p.protocol_us:.1f} | "
            f"{1e6 / p.protocol_us:.0f} | {p.floor_us:.1f} | {p.ratio:.2f}x | "
            f"{p.protocol_us - p.floor_us:.1f} | {'yes' if p.ratio <= TARGET_RATIO else 'NO'} | "
            f"{q2:.2f}x [{q1:.2f}, {q3:.2f}] | {p.cpu_ratio:.2f}x |"
        )
    lines.append("")
    for p in summary.values():
        parts = sorted(p.floor_parts_us.items(), key=lambda kv: -kv[1])
        lines.append(
            f"- Floor, {p.name.split(':')[0].removeprefix('Protocol, ')}: "
            + " + ".join(f"{v:.1f} ({k.split(' (')[0]})" for k, v in parts)
            + f" = {p.floor_us:.1f} µs."
        )
    lines += [
        "- The floor counts what one message cannot avoid: the sender's and the receiver's "
        "halves of every step. In ping-pong both sides derive the new root key, hence two "
        "root HKDFs; in one chain the ML-KEM epoch step (one encapsulation and one "
        f"decapsulation) is amortised over its {PQ_INTERVAL} messages. message_seal and "
        "message_open include their own HKDF (AEAD key and nonce); the floor's AEAD uses "
        "the one-chain associated data, whose header carries an epoch ciphertext "
        "(ping-pong headers do not: 1093 bytes less to authenticate, well under 1 µs).",
        "- Times are wall-clock (perf_counter), as in bench_signatures.py. The CPU column is "
        "this process's CPU time over the same batches: when the machine is busy it stays "
        "near the unloaded figure while the wall clock grows, so compare the two before "
        "trusting absolute numbers. The ratios compare batches run side by side, so load "
        "moves them much less.",
        "- ML-DSA-65 signing is hedged and loops a random number of times (rejection "
        "sampling), so the protocol and the hybrid sign vary from batch to batch; they get "
        "longer batches, and every repeat interleaves them with the rest. A min is a lucky "
        "batch, not a floor.",
        "- The protocol rows run on live sessions that grow during the run. Messages sent "
        "before and after the timed repeats: one chain, Alice "
        + "{} -> {}".format(*sent["one chain"][0])
        + "; ping-pong, Alice {} -> {} and Bob {} -> {}".format(
            *sent["ping-pong"][0], *sent["ping-pong"][1]
        )
        + ". A session keeps the hashes of its last 4096 sent messages (for receipts), so "
        "the cost of a send rises a little with that count.",
        "",
        "## Bytes on the wire",
        "",
        "| part | one chain, message 1..50 of a chain | one chain, later | ping-pong |",
        "|---|---:|---:|---:|",
    ]
    cols = ["epoch 0", "later epochs", "ping-pong"]
    for part in sizes["epoch 0"]:
        lines.append(f"| {part} | " + " | ".join(str(sizes[c][part]) for c in cols) + " |")
    totals = {c: sum(sizes[c].values()) for c in cols}
    lines.append("| **total on the wire** | " + " | ".join(str(totals[c]) for c in cols) + " |")
    lines.append(
        "| **overhead (total - text)** | "
        + " | ".join(str(totals[c] - sizes[c]["text"]) for c in cols)
        + " |"
    )
    lines += [
        "",
        "| first message (Session.initiate) | total | HPKE | sealed body "
        "| inner ratchet message | ids and framing |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, f in first.items():
        lines.append(
            f"| {name} | {f['total']} | {f['hpke']} | {f['sealed_body']} | {f['message']} | "
            f"{f['ids and framing']} |"
        )
    if profiles:
        lines += ["", "## Profile (cProfile)", ""]
        for pattern, prof in profiles.items():
            cats = prof["self_time_by_category_us"]
            lines += [
                f"### {pattern}: {prof['messages']} messages, "
                f"{prof['total_us_per_message']:.0f} µs/message under the profiler",
                "",
                "Self time per message: "
                + ", ".join(f"{k} {v:.0f} µs" for k, v in sorted(cats.items())),
                "",
                "| function (outside the primitives) | calls/msg | self µs/msg | cum µs/msg "
                "| share of non-primitive | share of total |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for row in prof["top_non_primitive"]:
                lines.append(
                    f"| {row['function']} | {row['calls_per_message']:.1f} | "
                    f"{row['self_us_per_message']:.1f} | {row['cum_us_per_message']:.1f} | "
                    f"{row['share_of_non_primitive']:.1%} | {row['share_of_total']:.1%} |"
                )
            lines += [
                "",
                "| primitive (self time, counted in the floor or not) | calls/msg | self µs/msg |",
                "|---|---:|---:|",
            ]
            for row in prof["top_primitive"]:
                lines.append(
                    f"| {row['function']} | {row['calls_per_message']:.1f} | "
                    f"{row['self_us_per_message']:.1f} |"
                )
            lines.append("")
        lines.append(
            "- cProfile adds a fixed cost to every Python-level call, so it inflates the "
            "share of pure-Python code; use it to rank, and the timings above for sizes. "
            "It measures this process's CPU time."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="short smoke-test run (< 10 s)")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile both patterns (adds a few s)"
    )
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "default"
    target_ms, sign_target_ms, repeats = MODES[mode]
    started = time.perf_counter()
    load_before = load_average()
    setup = build_operations()
    sizes = {
        "epoch 0": message_sizes(*setup.epoch0),
        "later epochs": message_sizes(*setup.sample[ONE_CHAIN]),
        "ping-pong": message_sizes(*setup.sample[PING_PONG]),
    }
    first = first_message_sizes(parties())
    senders = {"one chain": setup.one_chain[:1], "ping-pong": setup.ping_pong}
    sent_before = {k: [s.sent_count for s in v] for k, v in senders.items()}
    results = run(setup.ops, target_ms, sign_target_ms, repeats)
    sent = {
        k: list(zip(sent_before[k], (s.sent_count for s in v), strict=True))
        for k, v in senders.items()
    }
    # The sessions survived: everything sent has been received, in order.
    for sender, receiver in (setup.one_chain, setup.ping_pong[::-1], setup.ping_pong):
        if receiver.received_through != sender.sent_count:
            raise RuntimeError("a session lost messages during the run")
    profiles = None
    if args.profile:
        n = 20 if args.quick else 300
        profiles = {
            "one chain": profile(setup.ops[ONE_CHAIN], n),
            "ping-pong": profile(setup.ops[PING_PONG], n),
        }
    elapsed = time.perf_counter() - started
    env = environment()
    env["load"] = (
        f"{load_before} before, {load_average()} after (1-min/5-min averages, "
        f"{os.cpu_count()} CPUs; other work on the machine adds noise)"
    )
    summary = summarise(results)

    if args.json:
        out = {
            "environment": env,
            "mode": mode,
            "batch_target_ms": target_ms,
            "signing_batch_target_ms": sign_target_ms,
            "repeats": repeats,
            "elapsed_s": round(elapsed, 2),
            "text_bytes": len(TEXT.encode()),
            "floor_input_sizes": setup.floor_sizes,
            "floor_counts_per_message": FLOORS,
            "results": {
                r.name: {
                    "median_us": r.median_us,
                    "min_us": r.min_us,
                    "batch": r.batch,
                    "samples_us": r.samples_us,
                    "cpu_median_us": r.cpu_median_us,
                    "cpu_samples_us": r.cpu_samples_us,
                }
                for r in results
            },
            "summary": {name: p.as_dict() for name, p in summary.items()},
            "message_bytes": sizes,
            "first_message_bytes": first,
            "messages_sent_before_after": sent,
            "profile": profiles,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(markdown(env, mode, setup, results, summary, sizes, first, profiles, sent))
        print(f"\n(ran for {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
