"""Run a harness's target without atheris: random and mutated inputs, for a
fixed time. For machines where atheris does not install; no coverage
feedback, so it finds less than atheris in the same time.

    python fuzz/run_plain.py fuzz_wire --seconds 600 [--corpus fuzz/seeds/wire ...]

Each round takes a seed (from the corpus folders, default
``fuzz/seeds/<name without fuzz_>``) or fresh ``os.urandom`` bytes and applies
1-8 mutations (bit flips, byte changes, truncation, insertion, deletion,
duplication of a slice, splicing with another seed). An exception escaping
the target is written to ``fuzz/crashes/<harness>-<sha1>`` and counted; the
run goes on. The last line gives executions per second.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import random
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf[pos:pos] = os.urandom(rng.randint(1, 16))
        elif op == 4 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 6 and seeds:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
    return bytes(buf)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", help="module name, e.g. fuzz_wire")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--corpus", type=Path, action="append", default=[])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    target = importlib.import_module(args.harness).test_one_input
    folders = args.corpus or [HERE / "seeds" / args.harness.removeprefix("fuzz_")]
    seeds = [p.read_bytes() for folder in folders if folder.is_dir() for p in folder.iterdir()]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)  # noqa: S311 - test input, not cryptography
    crashes = HERE / "crashes"
    execs = found = 0
    slowest = 0.0
    started = time.monotonic()
    deadline = started + args.seconds
    print(f"{args.harness}: {len(seeds)} seeds, random seed {seed}", flush=True)
    while time.monotonic() < deadline:
        if seeds and rng.random() < 0.9:
            data = _mutate(rng, rng.choice(seeds), seeds)
        else:
            data = _mutate(rng, os.urandom(rng.randint(0, 512)), seeds)
        t0 = time.perf_counter()
        try:
            target(data)
        except Exception:
            found += 1
            crashes.mkdir(exist_ok=True)
            name = f"{args.harness}-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"
            (crashes / name).write_bytes(data)
            print(f"crash -> fuzz/crashes/{name}\n{traceback.format_exc()}", flush=True)
        slowest = max(slowest, time.perf_counter() - t0)
        execs += 1
    elapsed = time.monotonic() - started
    print(
        f"{args.harness}: {execs} execs in {elapsed:.0f} s = {execs / elapsed:.0f} exec/s, "
        f"{found} crashes, slowest input {slowest * 1000:.1f} ms"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
