"""Benchmark securechan's transparency log: appends, proofs, full-log verification.

Three measurements, all in one run on this machine:

1. **Append rate** into :class:`securechan.audit.TreeStore` (SQLite, WAL), for
   ``N`` leaves (1,000,000 by default) given as leaf hashes, in batches of
   ``BATCH`` leaves, one transaction per batch: once with ``synchronous=FULL``
   (the default, an fsync per commit) and once with ``NORMAL``. Each batch is
   one sample; we report the median batch rate and the whole run. A second
   figure times single appends (one transaction per leaf), as a relay that
   commits each envelope before answering would.
2. **Proof generation** at ``N`` leaves: inclusion proofs for random leaves
   against the current size and against random past sizes, consistency proofs
   from random past sizes, and roots at random past sizes; each is a median
   (and 95th percentile) over many random requests. Every generated proof is
   verified once (outside the timing).
3. **Full-log verification**: recomputing the root of the whole log from every
   leaf's data (``merkle.root_from_leaf_data``, SHA-256 of each leaf and of
   each interior node) against plain SHA-256 of the *same bytes* in the same
   run, three ways: one SHA-256 per leaf through ``securechan.primitives.sha256``
   (the reference the target is set against: the same messages a verifier
   hashes first anyway), the same as an inline ``hashlib`` loop (no function
   of ours per leaf: the strictest per-leaf reference), and one streaming
   SHA-256 over all of them. ``speed ratio`` = baseline time / verification
   time (target: at least 50% of per-leaf hashing). Leaf data of 32 bytes (the
   envelope hash the relay logs), 1 KiB and 4 KiB (whole envelopes); the larger
   sizes use fewer leaves (``VERIFY_BYTES`` in total). The previous
   implementation (``map`` over concatenations, one new hash per node) runs
   alongside, for a before/after in the same run. Repeats are interleaved and
   we report medians.

Leaf data comes from a fixed seed. Before timing, the script checks that the
store's root equals the root recomputed from the leaf data.

Usage::

    python bench/bench_tlog.py [--json] [--quick] [--dir DIR]

``--quick`` uses 20,000 leaves and fewer repeats (a smoke test, under ~10 s).
The database lives in a temporary directory under ``--dir`` (default: the
system temporary directory), deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from securechan.audit import merkle
from securechan.audit.merkle import verify_consistency, verify_inclusion
from securechan.audit.tree import TreeStore
from securechan.primitives import sha256

# name -> (leaves, batch, single appends, proof samples, verify repeats, verify bytes)
MODES = {
    "default": (1_000_000, 1_000, 500, 2_000, 5, 256 * 1024 * 1024),
    "quick": (20_000, 1_000, 100, 300, 3, 8 * 1024 * 1024),
}
LEAF_SIZES = (32, 1024, 4096)
SEED = 5


def leaf_data(n: int, size: int, seed: int = SEED) -> list[bytes]:
    """``n`` pseudo-random leaves of ``size`` bytes (fixed seed; not secret)."""
    rng = random.Random(seed)  # noqa: S311 (benchmark data, not keys)
    return [rng.randbytes(size) for _ in range(n)]


# --- 1. appends ------------------------------------------------------------------


@dataclass
class AppendResult:
    synchronous: str
    leaves: int
    batch: int
    total_s: float
    batch_us: list[float]
    single_us: list[float]
    db_bytes: int

    @property
    def median_rate(self) -> float:
        return self.batch / (statistics.median(self.batch_us) / 1e6)

    @property
    def overall_rate(self) -> float:
        return self.leaves / self.total_s


def time_appends(
    folder: Path, synchronous: str, hashes: list[bytes], batch: int, singles: int
) -> tuple[AppendResult, Path]:
    path = folder / f"tree-{synchronous.lower()}.db"
    samples: list[float] = []
    with TreeStore(path, synchronous=synchronous) as store:
        started = time.perf_counter()
        for start in range(0, len(hashes), batch):
            t0 = time.perf_counter_ns()
            store.append_many_leaf_hashes(hashes[start : start + batch])
            samples.append((time.perf_counter_ns() - t0) / 1000)
        total = time.perf_counter() - started
    single: list[float] = []
    extra = folder / f"single-{synchronous.lower()}.db"
    with TreeStore(extra, synchronous=synchronous) as store:
        for h in hashes[:singles]:
            t0 = time.perf_counter_ns()
            store.append_leaf_hash(h)
            single.append((time.perf_counter_ns() - t0) / 1000)
    size = sum(p.stat().st_size for p in folder.glob(f"tree-{synchronous.lower()}.db*"))
    result = AppendResult(synchronous, len(hashes), batch, total, samples, single, size)
    return result, path


# --- 2. proofs -----------------------------------------------------------------------


@dataclass
class Timing:
    name: str
    samples_us: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def p95_us(self) -> float:
        return statistics.quantiles(self.samples_us, n=20)[-1]


def time_proofs(path: Path, leaves: list[bytes], samples: int) -> list[Timing]:
    rng = random.Random(SEED + 1)  # noqa: S311 (benchmark indices)
    n = len(leaves)
    inc_now = Timing(f"inclusion proof, size {n:,}, random leaf")
    inc_past = Timing("inclusion proof, random past size, random leaf")
    cons_now = Timing(f"consistency proof, random size1 -> {n:,}")
    cons_past = Timing("consistency proof, random size1 -> random past size2")
    root_past = Timing("root at a random past size")
    timings = [inc_now, inc_past, cons_now, cons_past, root_past]
    with TreeStore(path) as store:
        root_n = store.root(n)
        for _ in range(samples):
            index = rng.randrange(n)
            t0 = time.perf_counter_ns()
            proof = store.inclusion_proof(index, n)
            inc_now.samples_us.append((time.perf_counter_ns() - t0) / 1000)
            verify_inclusion(merkle.leaf_hash(leaves[index]), index, n, proof, root_n)

            size2 = rng.randint(1, n)
            index = rng.randrange(size2)
            t0 = time.perf_counter_ns()
            proof = store.inclusion_proof(index, size2)
            inc_past.samples_us.append((time.perf_counter_ns() - t0) / 1000)

            size1 = rng.randint(1, n)
            t0 = time.perf_counter_ns()
            cproof = store.consistency_proof(size1, n)
            cons_now.samples_us.append((time.perf_counter_ns() - t0) / 1000)

            a, b = sorted((rng.randint(1, n), rng.randint(1, n)))
            t0 = time.perf_counter_ns()
            store.consistency_proof(a, b)
            cons_past.samples_us.append((time.perf_counter_ns() - t0) / 1000)

            t0 = time.perf_counter_ns()
            root2 = store.root(size2)
            root_past.samples_us.append((time.perf_counter_ns() - t0) / 1000)
            verify_inclusion(merkle.leaf_hash(leaves[index]), index, size2, proof, root2)
            verify_consistency(size1, n, cproof, store.root(size1), root_n)
    return timings


# --- 3. full-log verification -----------------------------------------------------------

_NODE = b"\x01"
_LEAF = b"\x00"


def _level_root_before(level: list[bytes]) -> bytes:
    while len(level) > 1:
        pairs = map(bytes.__add__, level[0::2], level[1::2])
        upper = list(map(sha256, map(_NODE.__add__, pairs)))
        if len(level) & 1:
            upper.append(level[-1])
        level = upper
    return level[0]


def root_before(data: list[bytes], chunk: int = 1 << 16) -> bytes:
    """The MTH as ``merkle.root_from_leaf_data`` computed it before the
    prefix-copy rewrite (commit b7cf7c9): ``map`` over ``0x00 || data`` and
    ``0x01 || left || right`` concatenations, one new hash per message.
    Kept here only to show the before/after in the same run."""
    roots = []
    for start in range(0, len(data), chunk):
        batch = data[start : start + chunk]
        roots.append(_level_root_before(list(map(sha256, map(_LEAF.__add__, batch)))))
    return _level_root_before(roots) if roots else sha256(b"")


def per_leaf_sha256(data: list[bytes]) -> object:
    return list(map(sha256, data))


def per_leaf_hashlib_inline(data: list[bytes]) -> object:
    new = hashlib.sha256
    return [new(d).digest() for d in data]


def streaming_sha256(data: list[bytes]) -> object:
    h = hashlib.sha256()
    update = h.update
    for d in data:
        update(d)
    return h.digest()


@dataclass
class VerifyResult:
    leaf_bytes: int
    leaves: int
    times_s: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.times_s[name])


VERIFY_OPS: dict[str, Callable[[list[bytes]], object]] = {
    "merkle root (securechan)": merkle.root_from_leaf_data,
    "merkle root (before, b7cf7c9)": root_before,
    "SHA-256 per leaf": per_leaf_sha256,
    "SHA-256 per leaf (inline hashlib)": per_leaf_hashlib_inline,
    "SHA-256 streaming": streaming_sha256,
}


def time_verification(data: list[bytes], repeats: int) -> VerifyResult:
    if merkle.root_from_leaf_data(data) != root_before(data):
        raise RuntimeError("the two Merkle root implementations disagree")
    result = VerifyResult(len(data[0]), len(data), {name: [] for name in VERIFY_OPS})
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in VERIFY_OPS.items():
                t0 = time.perf_counter()
                fn(data)
                result.times_s[name].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return result


# --- report ---------------------------------------------------------------------------------


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


def filesystem(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", str(folder)], capture_output=True, text=True, check=True, timeout=10
        ).stdout.splitlines()
        return out[-1].split()[1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def environment(folder: Path) -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "sqlite": sqlite3.sqlite_version,
        "openssl (hashlib)": ssl.OPENSSL_VERSION,
        "cpu": cpu_model(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "db filesystem": filesystem(folder),
    }


def markdown(
    env: dict[str, str],
    mode: str,
    appends: list[AppendResult],
    proofs: list[Timing],
    verifies: list[VerifyResult],
) -> str:
    n = appends[0].leaves
    lines = [
        "# securechan transparency-log benchmark",
        "",
        f"- Python: {env['python']}; SQLite {env['sqlite']}; {env['openssl (hashlib)']}",
        f"- CPU: {env['cpu']} ({env['cpus']} logical CPUs)",
        f"- Platform: {env['platform']}; database on {env['db filesystem']}",
        f"- Mode: {mode}. {n:,} leaves.",
        "",
        "## Appends (TreeStore, WAL)",
        "",
        "| synchronous | batch | median leaves/s (per batch) | whole run leaves/s "
        "| whole run s | single append median µs | p95 µs | file MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in appends:
        single = Timing("", a.single_us)
        lines.append(
            f"| {a.synchronous} | {a.batch:,} | {a.median_rate:,.0f} | {a.overall_rate:,.0f} | "
            f"{a.total_s:.1f} | {single.median_us:,.0f} | {single.p95_us:,.0f} | "
            f"{a.db_bytes / 1e6:.0f} |"
        )
    lines += [
        "",
        f"## Proofs at {n:,} leaves (one query each; {len(proofs[0].samples_us):,} samples)",
        "",
        "| operation | median µs | p95 µs |",
        "|---|---:|---:|",
    ]
    for t in proofs:
        lines.append(f"| {t.name} | {t.median_us:,.0f} | {t.p95_us:,.0f} |")
    lines += [
        "",
        "## Full-log verification (root from all leaf data) vs SHA-256 of the same bytes",
        "",
        "| leaf bytes | leaves | operation | median s | MB/s | speed ratio vs per-leaf "
        "| vs per-leaf (inline) | vs streaming |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for v in verifies:
        total_mb = v.leaf_bytes * v.leaves / 1e6
        per_leaf = v.median("SHA-256 per leaf")
        inline = v.median("SHA-256 per leaf (inline hashlib)")
        stream = v.median("SHA-256 streaming")
        for name in VERIFY_OPS:
            t = v.median(name)
            ratios = ["", "", ""]
            if name.startswith("merkle"):
                ratios = [f"{per_leaf / t:.0%}", f"{inline / t:.0%}", f"{stream / t:.0%}"]
            lines.append(
                f"| {v.leaf_bytes:,} | {v.leaves:,} | {name} | {t:.3f} | {total_mb / t:,.0f} | "
                + " | ".join(ratios)
                + " |"
            )
    lines += [
        "",
        "- Speed ratio = baseline time / verification time; the target is at least 50% "
        "of per-leaf hashing.",
        "- Per leaf, verification hashes the leaf (0x00 prefix) and about one interior node "
        "(65 bytes: two SHA-256 blocks), so small leaves cost several times their bytes; "
        "large leaves approach the cost of hashing their bytes.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="short smoke-test run (< 10 s)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the database")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "default"
    n, batch, singles, proof_samples, repeats, verify_bytes = MODES[mode]
    started = time.perf_counter()
    data32 = leaf_data(n, 32)
    hashes = [merkle.leaf_hash(d) for d in data32]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-tlog-") as tmp:
        folder = Path(tmp)
        env = environment(folder)
        appends = []
        for sync in ("FULL", "NORMAL"):
            result, path = time_appends(folder, sync, hashes, batch, singles)
            appends.append(result)
        with TreeStore(path) as store:
            if store.root() != merkle.root_from_leaf_data(data32):
                raise RuntimeError("the store's root is not the root of the leaf data")
        proofs = time_proofs(path, data32, proof_samples)
    verifies = [time_verification(data32, repeats)]
    for size in LEAF_SIZES[1:]:
        count = min(n, verify_bytes // size)
        verifies.append(time_verification(leaf_data(count, size, SEED + size), repeats))
    elapsed = time.perf_counter() - started

    if args.json:
        out = {
            "environment": env,
            "mode": mode,
            "elapsed_s": round(elapsed, 2),
            "appends": [
                {
                    "synchronous": a.synchronous,
                    "leaves": a.leaves,
                    "batch": a.batch,
                    "total_s": a.total_s,
                    "median_batch_leaves_per_s": a.median_rate,
                    "overall_leaves_per_s": a.overall_rate,
                    "single_append_median_us": statistics.median(a.single_us),
                    "db_bytes": a.db_bytes,
                }
                for a in appends
            ],
            "proofs": {
                t.name: {"median_us": t.median_us, "p95_us": t.p95_us, "samples": len(t.samples_us)}
                for t in proofs
            },
            "verification": [
                {
                    "leaf_bytes": v.leaf_bytes,
                    "leaves": v.leaves,
                    "median_s": {name: v.median(name) for name in VERIFY_OPS},
                    "ratio_vs_per_leaf": v.median("SHA-256 per leaf")
                    / v.median("merkle root (securechan)"),
                    "ratio_vs_per_leaf_inline": v.median("SHA-256 per leaf (inline hashlib)")
                    / v.median("merkle root (securechan)"),
                    "ratio_before_vs_per_leaf": v.median("SHA-256 per leaf")
                    / v.median("merkle root (before, b7cf7c9)"),
                    "ratio_vs_streaming": v.median("SHA-256 streaming")
                    / v.median("merkle root (securechan)"),
                }
                for v in verifies
            ],
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(markdown(env, mode, appends, proofs, verifies))
        print(f"\n(ran for {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
