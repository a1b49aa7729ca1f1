"""Benchmark securechan's composite ML-DSA-65 + Ed25519 signatures.

Note on imports: inside the ``securechan`` package only
``securechan/primitives.py`` may import ``cryptography`` or ``nacl``. That rule
does not apply to ``bench/``. This script imports both libraries directly
because it times the raw primitives (Ed25519 from libsodium and from OpenSSL,
ML-DSA-65 from OpenSSL, SHA-512) as the floor that the hybrid is compared with.

Usage::

    python bench/bench_signatures.py [--json] [--quick]

Everything is measured in one run, on this machine. Each operation runs in
batches sized to take a fixed amount of time. Each batch gives one
microseconds-per-operation figure (``time.perf_counter_ns``). We report the
median and the minimum of those figures over several repeats. The repeats are
interleaved (round-robin over all operations), so slow drift such as CPU
frequency changes or a noisy neighbour affects every operation alike.

All keys come from fixed seeds. Before timing anything, the script checks that
the raw Ed25519 message it builds is byte-for-byte the composite M' the hybrid
signs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import cryptography
import nacl
import nacl.bindings
import nacl.signing
from cryptography.hazmat.backends.openssl.backend import backend as _openssl_backend
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from securechan.primitives import (
    COMPOSITE_LABEL,
    COMPOSITE_PREFIX,
    ED25519_SIGNATURE_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    HybridSigningKey,
)

CONTEXT = b"securechan/v1/document"
MESSAGE = bytes(range(200))  # the 200-byte document the hybrid signs
ED25519_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
MLDSA65_SEED = bytes(range(32))

# name -> (batch target in ms, repeats)
MODES = {
    "default": (100.0, 25),
    "quick": (20.0, 5),
}


@dataclass
class Result:
    name: str
    batch: int
    samples_us: list[float]

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def min_us(self) -> float:
        return min(self.samples_us)


def composite_m_prime(message: bytes, context: bytes) -> bytes:
    """M' = Prefix || Label || len(ctx) || ctx || SHA-512(M), built the way the hybrid builds it."""
    prehash = hashlib.sha512(message).digest()
    return COMPOSITE_PREFIX + COMPOSITE_LABEL + bytes([len(context)]) + context + prehash


def build_operations() -> dict[str, Callable[[], object]]:
    """Set up the keys and signatures, check them, and return zero-argument callables."""
    m_prime = composite_m_prime(MESSAGE, CONTEXT)

    # Ed25519 through PyNaCl, low level (what securechan.primitives calls) and high level.
    nacl_pk, nacl_sk = nacl.bindings.crypto_sign_seed_keypair(ED25519_SEED)
    nacl_sig = nacl.bindings.crypto_sign(m_prime, nacl_sk)[:ED25519_SIGNATURE_SIZE]
    nacl_signed = nacl_sig + m_prime
    nacl_signing_key = nacl.signing.SigningKey(ED25519_SEED)
    nacl_verify_key = nacl_signing_key.verify_key

    # Ed25519 through cryptography (OpenSSL).
    ossl_sk = ed25519.Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    ossl_pk = ossl_sk.public_key()
    ossl_sig = ossl_sk.sign(m_prime)

    # ML-DSA-65 through cryptography (OpenSSL), with the same context the hybrid uses.
    mldsa_sk = mldsa.MLDSA65PrivateKey.from_seed_bytes(MLDSA65_SEED)
    mldsa_pk = mldsa_sk.public_key()
    mldsa_sig = mldsa_sk.sign(m_prime, COMPOSITE_LABEL)

    # The hybrid.
    hybrid_sk = HybridSigningKey(ED25519_SEED, MLDSA65_SEED)
    hybrid_pk = hybrid_sk.public_key
    hybrid_sig = hybrid_sk.sign(MESSAGE, context=CONTEXT)

    # Check that the raw operations are the ones inside the hybrid. Ed25519 is
    # deterministic, so the hybrid's Ed25519 half must equal our raw signatures
    # over M' only if our M' is exactly the hybrid's M'.
    checks = {
        "PyNaCl and cryptography derive the same Ed25519 public key": (
            nacl_pk == ossl_pk.public_bytes_raw()
        ),
        "PyNaCl and cryptography produce the same Ed25519 signature": nacl_sig == ossl_sig,
        "nacl.signing and nacl.bindings agree": (
            nacl_signing_key.sign(m_prime).signature == nacl_sig
        ),
        "the hybrid's Ed25519 half is Ed25519(M') for our M'": (
            hybrid_sig[MLDSA65_SIGNATURE_SIZE:] == nacl_sig
        ),
        "the hybrid's ML-DSA-65 public key is ours": (
            hybrid_pk.mldsa65_bytes == mldsa_pk.public_bytes_raw()
        ),
        "the hybrid's Ed25519 public key is ours": hybrid_pk.ed25519_bytes == nacl_pk,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError("benchmark set-up is inconsistent: " + "; ".join(failed))
    # These raise if the signatures do not verify.
    mldsa_pk.verify(hybrid_sig[:MLDSA65_SIGNATURE_SIZE], m_prime, COMPOSITE_LABEL)
    mldsa_pk.verify(mldsa_sig, m_prime, COMPOSITE_LABEL)
    hybrid_pk.verify(hybrid_sig, MESSAGE, context=CONTEXT)

    sha512 = hashlib.sha512
    crypto_sign = nacl.bindings.crypto_sign
    crypto_sign_open = nacl.bindings.crypto_sign_open

    return {
        "SHA-512 of the 200-byte message (floor)": lambda: sha512(MESSAGE).digest(),
        "Ed25519 sign, PyNaCl nacl.bindings": lambda: crypto_sign(m_prime, nacl_sk),
        "Ed25519 sign, PyNaCl nacl.signing": lambda: nacl_signing_key.sign(m_prime),
        "Ed25519 sign, cryptography (OpenSSL)": lambda: ossl_sk.sign(m_prime),
        "Ed25519 verify, PyNaCl nacl.bindings": lambda: crypto_sign_open(nacl_signed, nacl_pk),
        "Ed25519 verify, PyNaCl nacl.signing": lambda: nacl_verify_key.verify(m_prime, nacl_sig),
        "Ed25519 verify, cryptography (OpenSSL)": lambda: ossl_pk.verify(ossl_sig, m_prime),
        "ML-DSA-65 sign, cryptography (OpenSSL)": lambda: mldsa_sk.sign(m_prime, COMPOSITE_LABEL),
        "ML-DSA-65 verify, cryptography (OpenSSL)": lambda: mldsa_pk.verify(
            mldsa_sig, m_prime, COMPOSITE_LABEL
        ),
        "Hybrid sign (HybridSigningKey.sign)": lambda: hybrid_sk.sign(MESSAGE, context=CONTEXT),
        "Hybrid verify (HybridVerifyKey.verify)": lambda: hybrid_pk.verify(
            hybrid_sig, MESSAGE, context=CONTEXT
        ),
        "(harness: empty call)": lambda: None,
    }


def time_batch(fn: Callable[[], object], n: int) -> int:
    """Nanoseconds for ``n`` calls of ``fn``."""
    loop = range(n)
    start = time.perf_counter_ns()
    for _ in loop:
        fn()
    return time.perf_counter_ns() - start


def calibrate(fn: Callable[[], object], target_ns: float) -> int:
    """A batch size that takes about ``target_ns``."""
    n = 1
    while True:
        elapsed = time_batch(fn, n)
        if elapsed >= target_ns / 10 or n >= 1 << 24:
            break
        n *= 2
    return max(1, math.ceil(n * target_ns / max(elapsed, 1)))


def run(ops: dict[str, Callable[[], object]], target_ms: float, repeats: int) -> list[Result]:
    target_ns = target_ms * 1e6
    for fn in ops.values():  # warm up
        time_batch(fn, 3)
    results = [Result(name, calibrate(fn, target_ns), []) for name, fn in ops.items()]
    fns = list(ops.values())
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for result, fn in zip(results, fns, strict=True):
                ns = time_batch(fn, result.batch)
                result.samples_us.append(ns / result.batch / 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


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


def environment() -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "cryptography": cryptography.__version__,
        "openssl": _openssl_backend.openssl_version_text(),
        "pynacl": metadata.version("PyNaCl"),
        "libsodium": libsodium_version(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
    }


@dataclass
class Comparison:
    """The hybrid against its raw components, for one of sign / verify."""

    faster_ed25519: str
    faster_ed25519_speedup: float
    ed25519_us: float
    mldsa65_us: float
    hybrid_us: float

    @property
    def components_sum_us(self) -> float:
        return self.ed25519_us + self.mldsa65_us

    def as_dict(self) -> dict[str, object]:
        return {
            "faster_ed25519": self.faster_ed25519,
            "faster_ed25519_speedup": self.faster_ed25519_speedup,
            "ed25519_us": self.ed25519_us,
            "mldsa65_us": self.mldsa65_us,
            "components_sum_us": self.components_sum_us,
            "hybrid_us": self.hybrid_us,
            "hybrid_over_sum": self.hybrid_us / self.components_sum_us,
            "hybrid_over_ed25519": self.hybrid_us / self.ed25519_us,
            "hybrid_over_mldsa65": self.hybrid_us / self.mldsa65_us,
        }


HYBRID_OPS = {
    "sign": "Hybrid sign (HybridSigningKey.sign)",
    "verify": "Hybrid verify (HybridVerifyKey.verify)",
}


def summarise(results: list[Result]) -> dict[str, Comparison]:
    """Compare medians. 'Ed25519' is whichever of PyNaCl / cryptography was faster."""
    by_name = {r.name: r.median_us for r in results}
    summary = {}
    for op, hybrid_name in HYBRID_OPS.items():
        ed = {
            "PyNaCl (libsodium)": by_name[f"Ed25519 {op}, PyNaCl nacl.bindings"],
            "cryptography (OpenSSL)": by_name[f"Ed25519 {op}, cryptography (OpenSSL)"],
        }
        faster, slower = sorted(ed, key=ed.__getitem__)
        summary[op] = Comparison(
            faster_ed25519=faster,
            faster_ed25519_speedup=ed[slower] / ed[faster],
            ed25519_us=ed[faster],
            mldsa65_us=by_name[f"ML-DSA-65 {op}, cryptography (OpenSSL)"],
            hybrid_us=by_name[hybrid_name],
        )
    return summary


def markdown(
    env: dict[str, str], mode: str, results: list[Result], summary: dict[str, Comparison]
) -> str:
    m_prime_len = len(composite_m_prime(MESSAGE, CONTEXT))
    lines = [
        "# securechan signature benchmark",
        "",
        f"- Python: {env['python']}",
        f"- cryptography: {env['cryptography']} ({env['openssl']})",
        f"- PyNaCl: {env['pynacl']}; libsodium: {env['libsodium']}",
        f"- CPU: {env['cpu']}",
        f"- Platform: {env['platform']}",
        f"- Mode: {mode}. Raw Ed25519 and ML-DSA-65 sign/verify the {m_prime_len}-byte "
        f"composite M'. The hybrid signs a {len(MESSAGE)}-byte message with "
        f"context={CONTEXT.decode()!r}.",
        "",
        "| operation | median µs | min µs | batch x repeats "
        "| hybrid ÷ (Ed25519 + ML-DSA-65) | hybrid ÷ Ed25519 | hybrid ÷ ML-DSA-65 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    hybrid_rows = {name: op for op, name in HYBRID_OPS.items()}
    for r in results:
        ratios = ["", "", ""]
        if r.name in hybrid_rows:
            c = summary[hybrid_rows[r.name]]
            ratios = [
                f"{c.hybrid_us / c.components_sum_us:.2f}x",
                f"{c.hybrid_us / c.ed25519_us:.1f}x",
                f"{c.hybrid_us / c.mldsa65_us:.2f}x",
            ]
        lines.append(
            f"| {r.name} | {r.median_us:.2f} | {r.min_us:.2f} | "
            f"{r.batch} x {len(r.samples_us)} | " + " | ".join(ratios) + " |"
        )
    lines.append("")
    for op, c in summary.items():
        lines.append(
            f"- Ed25519 {op}: {c.faster_ed25519} is faster, by "
            f"{c.faster_ed25519_speedup:.2f}x (medians, nacl.bindings vs. cryptography). "
            f"The ratios use it: {c.ed25519_us:.2f} + {c.mldsa65_us:.2f} = "
            f"{c.components_sum_us:.2f} µs for the components, {c.hybrid_us:.2f} µs for the hybrid."
        )
    lines.append(
        "- The hybrid calls PyNaCl's nacl.bindings for Ed25519 and cryptography for ML-DSA-65. "
        "It also hashes the message with SHA-512 and builds M'."
    )
    lines.append(
        "- ML-DSA-65 signing is hedged (randomised) and loops a random number of times "
        "(rejection sampling), so its per-batch times vary; the batch means estimate the "
        "expected cost, and its min is a lucky batch, not a floor."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="short smoke-test run (< 5 s)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "default"
    target_ms, repeats = MODES[mode]
    ops = build_operations()
    started = time.perf_counter()
    results = run(ops, target_ms, repeats)
    elapsed = time.perf_counter() - started
    env = environment()
    summary = summarise(results)

    if args.json:
        out = {
            "environment": env,
            "mode": mode,
            "batch_target_ms": target_ms,
            "repeats": repeats,
            "elapsed_s": round(elapsed, 2),
            "message_bytes": len(MESSAGE),
            "m_prime_bytes": len(composite_m_prime(MESSAGE, CONTEXT)),
            "context": CONTEXT.decode(),
            "results": {
                r.name: {
                    "median_us": r.median_us,
                    "min_us": r.min_us,
                    "batch": r.batch,
                    "samples_us": r.samples_us,
                }
                for r in results
            },
            "summary": {op: c.as_dict() for op, c in summary.items()},
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(markdown(env, mode, results, summary))
        print(f"\n(timed for {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
