"""Benchmark work before authentication: ``receive`` with 256 garbage envelopes waiting.

Usage::

    python bench/bench_receive_junk.py [--json] [--quick] [--runs N] [--junk N]

The attack (issue 11, "Work before authentication"): anyone holding a
delegation's contact card, with no key at all, posts garbage ratchet
envelopes to its contact address. Each is a well-formed ``RatchetMessage``
with a random ratchet key, a random ML-KEM public key and ciphertexts of the
right sizes, ``pn`` and ``n`` at the skip limit (``MAX_SKIP``, with an epoch
ciphertext) and a random body: opening one for real would cost up to
2 x MAX_SKIP chain steps, an X25519 exchange and an ML-KEM decapsulation per
session tried, and before the fix each was held and retried against every
session on every later pass.

Set-up as ``bench_cli.py``, twice: two worlds, each a real ``securechan
relay serve`` on a loopback port and two delegations made and introduced
through the CLI (one message each way, so that both private queues exist).
One world stays clean, the other is attacked. Every round tehran sends one
1 KiB text and washington's ``receive`` is timed, alternately in the clean
world and in the attacked one (so both see the same machine load):

* ``clean``: nothing else waiting (the reference);
* ``junk``: 256 fresh garbage envelopes posted to washington's contact
  address (with only its contact card) before the text;
* ``after``: no new garbage, but what earlier rounds posted is still held
  (the "slower for ten minutes" half of the finding).

``receive`` is timed two ways (``--via``): ``cli``, the whole ``securechan
receive --json`` process an operator runs (start-up and Argon2id unlock
included), and ``library``, a warm in-process ``Channel.receive()``. Each
figure is the median wall-clock time over ``--runs`` rounds per phase. The
limit, ``junk / clean`` and ``after / clean`` at most 2.0, is checked on the
command (exit code 1 otherwise); the in-process ratios are reported as they
are: there the reference is tens of milliseconds, less than the relay takes
to hand out 256 envelopes at all. Every round checks that the text arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cli import TEXT, World  # noqa: E402

from securechan import wire  # noqa: E402
from securechan.client.channel import Channel, Received  # noqa: E402
from securechan.primitives import MlKemKeyPair, X25519KeyPair, random_bytes  # noqa: E402
from securechan.protocol import ratchet, session  # noqa: E402
from securechan.protocol.address import ContactCard  # noqa: E402
from securechan.transport import RelayClient  # noqa: E402

MODES = {"default": 7, "quick": 3}
JUNK = 256
LIMIT = 2.0


def garbage() -> bytes:
    """One garbage ratchet envelope, as someone with no key makes it: fresh
    valid keys (random bytes would already be refused by the parse-time key
    checks), counters at the skip limit, random ciphertexts."""
    n = ratchet.MAX_SKIP
    header = wire.encode(
        ratchet.HEADER,
        {
            "dh": X25519KeyPair.generate().public,
            "kem_pub": MlKemKeyPair.generate().public,
            "root_ct": random_bytes(1088),
            "pn": ratchet.MAX_SKIP,
            "n": n,
            "epoch_ct": random_bytes(1088) if n >= ratchet.PQ_INTERVAL else None,
            "guard": random_bytes(32),
        },
    )
    return wire.encode(session.MESSAGE, {"header": header, "ciphertext": random_bytes(1200)})


# The relay gives each client address its own share and rate on a contact
# address (docs/RELAY.md, "Contact addresses"): the junk is posted from
# several loopback addresses, PER_ADDRESS envelopes from each.
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 40)]
PER_ADDRESS = 40


async def post_junk(card: ContactCard, count: int) -> None:
    """Post ``count`` garbage envelopes to every address of ``card``."""
    for address in card.addresses:
        for k in range(0, count, PER_ADDRESS):
            local = ATTACKERS[(k // PER_ADDRESS) % len(ATTACKERS)]
            connector = aiohttp.TCPConnector(local_addr=(local, 0))
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                RelayClient(address.relay, session=s) as relay,
            ):
                for _ in range(min(PER_ADDRESS, count - k)):
                    await relay.send(address.sid, garbage(), random_bytes(16), sender=None)


class Receiver:
    """One world's tehran (sending, in-process) and washington (receiving,
    timed through the CLI or the library)."""

    def __init__(self, world: World, via: str) -> None:
        self.world, self.via = world, via
        self.t = Channel.open(world.t.home, world.t.passphrase)
        self.w = Channel.open(world.w.home, world.w.passphrase) if via == "library" else None
        contact = self.t.keystore.contacts.get("washington")
        self.card = ContactCard.from_bytes(contact.card or b"")

    async def round(self, label: str) -> float:
        """Tehran sends one text; time washington's receive; check it came."""
        text = f"{label}: {TEXT}"[:1024]
        if (await self.t.send_text("washington", text)).pending:
            raise RuntimeError("the text did not reach the relay")
        if self.w is not None:
            t0 = time.perf_counter()
            got = await self.w.receive()
            elapsed = time.perf_counter() - t0
            ok = [x.text for x in got if isinstance(x, Received)] == [text]
        else:
            run = self.world.w.run("receive", "--json")
            elapsed, ok = run.wall, text in run.out.stdout
        if not ok:
            raise RuntimeError(f"{self.via} {label}: the text was not received")
        return elapsed

    async def close(self) -> None:
        await self.t.close()
        if self.w is not None:
            await self.w.close()


async def measure(clean: World, attacked: World, runs: int, junk: int, via: str) -> dict[str, Any]:
    """Rounds alternate between the clean world and the attacked one, so
    that both see the same machine load."""
    samples: dict[str, list[float]] = {"clean": [], "junk": [], "after": []}
    a, b = Receiver(clean, via), Receiver(attacked, via)
    try:
        await a.round("warm-up")
        await b.round("warm-up")
        for phase in ("junk", "after"):
            for i in range(runs):
                samples["clean"].append(await a.round(f"clean {phase} {i}"))
                if phase == "junk":
                    await post_junk(b.card, junk)
                samples[phase].append(await b.round(f"{phase} {i}"))
    finally:
        await a.close()
        await b.close()
    return samples


def run(runs: int, junk: int, vias: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "environment": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(),
        },
        "runs": runs,
        "junk": junk,
        "samples_s": {},
        "median_s": {},
        "rows": [],
    }
    for via in vias:
        with (
            tempfile.TemporaryDirectory(prefix="securechan-bench-junk-") as tmp,
            World(Path(tmp) / "clean") as clean,
            World(Path(tmp) / "attacked") as attacked,
        ):
            samples = asyncio.run(measure(clean, attacked, runs, junk, via))
        med = {k: statistics.median(v) for k, v in samples.items()}
        out["samples_s"][via] = samples
        out["median_s"][via] = med
        what = "securechan receive (whole process)" if via == "cli" else "Channel.receive()"
        out["rows"].extend(
            {
                "name": f"{what} with {junk} garbage envelopes posted ({phase})",
                "ours": med[phase],
                "reference_name": "the same, nothing else waiting",
                "reference": med["clean"],
                "ratio": med[phase] / med["clean"],
                "unit": "s",
                "limit": LIMIT if via == "cli" else None,
                "note": f"limit {LIMIT:.1f}x" if via == "cli" else "warm, in-process: reported",
            }
            for phase in ("junk", "after")
        )
    # The limit is on the command as an operator runs it: a whole process.
    # In-process, a warm receive of one message takes tens of milliseconds,
    # less than fetching 256 garbage envelopes from the relay at all; that
    # ratio is reported, not held to the limit.
    out["ok"] = all(r["ratio"] <= r["limit"] for r in out["rows"] if r["limit"] is not None)
    return out


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"`receive` against a real relay, median of {out['runs']} rounds per phase; "
        f"{out['junk']} garbage envelopes posted per junk round.",
        "",
        "| receive via | phase | median ms | min ms | max ms | / clean |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for via, phases in out["samples_s"].items():
        med = out["median_s"][via]
        for phase, runs in phases.items():
            lines.append(
                f"| {via} | {phase} | {med[phase] * 1000:.0f} | {min(runs) * 1000:.0f} "
                f"| {max(runs) * 1000:.0f} | {med[phase] / med['clean']:.2f} |"
            )
    lines.append("")
    for row in out["rows"]:
        lines.append(f"{row['name']}: {row['ratio']:.2f}x ({row['note']})")
    lines.append("within the limit" if out["ok"] else f"OVER the {LIMIT:.1f}x limit")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="3 rounds per phase (a smoke test)")
    parser.add_argument("--runs", type=int, default=0, help="rounds per phase (default 7)")
    parser.add_argument("--junk", type=int, default=JUNK, help="garbage envelopes per junk round")
    parser.add_argument(
        "--via",
        choices=("cli", "library", "both"),
        default="both",
        help="time the securechan receive command, Channel.receive(), or both (default)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or MODES["quick" if args.quick else "default"]
    vias = ["cli", "library"] if args.via == "both" else [args.via]
    t0 = time.perf_counter()
    out = run(runs, args.junk, vias)
    out["mode"] = "quick" if args.quick else "default"
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(markdown(out))
        print(f"\n(ran for {out['elapsed_s']} s)")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
