"""Benchmark a group transcript export: requests and wall time (issue 17).

Usage::

    python bench/bench_group_export.py [--json] [--quick] [--messages N] [--repeats R]

A real ``securechan relay serve`` (the console script next to
``sys.executable``, SQLite, ``synchronous=FULL``) on 127.0.0.1 and two real
homes (cheapest Argon2id) in a temporary folder: alpha creates a group with
bravo and sends N group messages (default 1,000) through the library's
``Channel.send_group`` (bravo receives after every 20); the relay's
transparency log holds those items and the pairwise envelopes between
them, as it would in use. Then, interleaved
``R`` times (default 3), on the same rows and the same signed checkpoint:

* **per item** (what ``group export`` did before: one ``GET
  /v1/log/proof/inclusion`` per stream item, each checked);
* **paged** (what it does now: ``GET /v1/streams/{id}/items?size=N``, the
  items' proofs with each page of 200, each checked; ``item_proofs``);

and, once, the whole ``export_group`` (checkpoint, proofs, bundle build and
offline verification, file written). Requests are counted at the relay (its
``securechan_relay_requests_total`` by route, read from ``/metrics`` before
and after); times are wall clock, medians over the repeats. The load
average (``os.getloadavg``) is printed with the figures: the machine is
shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from securechan.audit.checkpoint import open_checkpoint
from securechan.client.channel import Channel
from securechan.client.db_groups import TranscriptRow
from securechan.client.group_record import export_group, item_proofs
from securechan.identity import Keystore
from securechan.primitives import KDF_INTERACTIVE
from securechan.transport import RetryPolicy

PASSPHRASE = "a long passphrase for the export bench"  # noqa: S105 (a throwaway home)
PATIENT = RetryPolicy(attempts=5, base=0.1, cap=1.0, timeout=30.0)


def start_relay(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The relay on a free port: the process and its URL."""
    exe = Path(sys.executable).with_name("securechan")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "securechan"]
    cmd += ["relay", "serve", "--host", "127.0.0.1", "--port", "0", "--data", str(data)]
    out = data.parent / "relay.out"
    with out.open("wb") as f:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.DEVNULL)
    for _ in range(3000):
        for line in out.read_text("utf-8", errors="replace").splitlines():
            if line.startswith("listening on "):
                return proc, line.removeprefix("listening on ").strip()
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError("the relay did not start")


async def requests_by_route(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for row in text.splitlines():
        if row.startswith("securechan_relay_requests_total{"):
            route = row.split('route="')[1].split('"')[0]
            out[route] = out.get(route, 0.0) + float(row.split()[-1])
    return out


async def measured(
    http: aiohttp.ClientSession, url: str, fn: Callable[[], Awaitable[Any]]
) -> tuple[float, dict[str, int]]:
    """Wall seconds of ``fn`` and the requests it made, by route (the
    /metrics read itself left out)."""
    before = await requests_by_route(http, url)
    start = time.perf_counter()
    await fn()
    seconds = time.perf_counter() - start
    after = await requests_by_route(http, url)
    used = {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}
    used.pop("/metrics", None)
    return seconds, used


async def run(messages: int, repeats: int, root: Path, url: str) -> dict[str, Any]:
    chs: dict[str, Channel] = {}
    for name in ("alpha", "bravo"):
        ks = Keystore(root / name)
        ks.create(name, PASSPHRASE, kdf=KDF_INTERACTIVE)
        chs[name] = Channel(ks, ks.unlock(PASSPHRASE), retry=PATIENT)
    try:
        cards = {n: await ch.register(url) for n, ch in chs.items()}
        for name, ch in chs.items():
            for other, card in cards.items():
                if other != name:
                    ch.keystore.contacts.add(card.identity, card=card.to_bytes())
        alpha = chs["alpha"]
        await alpha.group_create("talks", ["bravo"])
        for ch in chs.values():
            await ch.receive()
        start = time.perf_counter()
        for n in range(messages):
            await alpha.send_group("talks", text=f"statement {n} of the talks")
            if n % 20 == 19:  # bravo reads, as a member does (and frees alpha's
                await chs["bravo"].receive()  # first-contact share of its queue)
        send_seconds = time.perf_counter() - start
        await chs["bravo"].receive()

        row = alpha.group_client.row("talks")
        rows: list[TranscriptRow] = []
        while page := alpha.ctx.db.transcript(row.group_id, after=rows[-1].id if rows else 0):
            rows.extend(page)
        rows = [t for t in rows if t.position > 0]
        relay = await alpha.ctx.relay(row.relay)
        key = await alpha.logs.key(row.relay)
        checkpoint = open_checkpoint(await relay.log_checkpoint(), key)
        per_item: list[float] = []
        paged: list[float] = []
        requests: dict[str, dict[str, int]] = {}
        async with aiohttp.ClientSession() as http:
            for _ in range(repeats):
                for name, flag, into in (("per_item", False, per_item), ("paged", True, paged)):

                    def proofs(f: bool = flag) -> Awaitable[object]:
                        return item_proofs(relay, rows, checkpoint, paged=f)

                    seconds, used = await measured(http, url, proofs)
                    into.append(seconds)
                    requests[name] = used
            out = root / "talks.sctr"
            export_seconds, export_requests = await measured(
                http, url, lambda: export_group(alpha, "talks", out)
            )
        return {
            "messages": messages,
            "stream_items": len(rows),
            "log_size": checkpoint.size,
            "send_seconds_per_message": send_seconds / messages,
            "proofs_per_item_seconds": statistics.median(per_item),
            "proofs_paged_seconds": statistics.median(paged),
            "proofs_per_item_requests": requests["per_item"],
            "proofs_paged_requests": requests["paged"],
            "export_seconds": export_seconds,
            "export_requests": export_requests,
            "bundle_bytes": out.stat().st_size,
            "repeats": repeats,
        }
    finally:
        for ch in chs.values():
            await ch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="100 messages, 1 repeat")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    messages, repeats = (100, 1) if args.quick else (args.messages, args.repeats)
    root = Path(tempfile.mkdtemp(prefix="bench-group-export-"))
    proc, url = start_relay(root / "relay-data")
    try:
        load_before = os.getloadavg()
        result = asyncio.run(run(messages, repeats, root, url))
        result["load_average_before"] = load_before
        result["load_average_after"] = os.getloadavg()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result
    per, pag = r["proofs_per_item_seconds"], r["proofs_paged_seconds"]
    print(f"group export of {r['messages']} messages ({r['stream_items']} stream items,")
    print(
        f"log size {r['log_size']}), median of {r['repeats']}; load average before "
        f"{r['load_average_before'][0]:.2f}, after {r['load_average_after'][0]:.2f}"
    )
    print(
        f"  proofs, one request per item: {sum(r['proofs_per_item_requests'].values())} "
        f"requests {r['proofs_per_item_requests']}, {per:.2f} s"
    )
    print(
        f"  proofs, with the stream pages: {sum(r['proofs_paged_requests'].values())} "
        f"requests {r['proofs_paged_requests']}, {pag:.2f} s ({per / pag:.1f}x faster)"
    )
    print(
        f"  whole export (paged): {sum(r['export_requests'].values())} requests "
        f"{r['export_requests']}, {r['export_seconds']:.2f} s, bundle {r['bundle_bytes']} bytes"
    )
    print(f"  (setup: {r['send_seconds_per_message'] * 1000:.0f} ms per group message sent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
