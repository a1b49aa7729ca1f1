"""Benchmark securechan next to GnuPG: the same 1 KiB message, whole processes.

Usage::

    python bench/bench_gpg.py [--json] [--quick] [--runs N]

Debian's ``gpg`` (if it is on the PATH; otherwise every gpg row is skipped with
a note and the script still exits 0) and ``securechan`` each do, in whole
processes timed with ``time.perf_counter`` around ``subprocess.run``:

1. **encrypt and sign 1 KiB to a pinned recipient.**
   gpg: ``gpg --sign --encrypt -u tehran -r washington -o msg.gpg msg.txt``,
   an OpenPGP message written to a local file.
   securechan: ``securechan send washington <1 KiB text>``: ratchet step,
   composite ML-DSA-65 + Ed25519 signature, padding, AEAD, outbox commit,
   POST to a real relay on loopback (which commits it with
   ``synchronous=FULL`` and adds it to its transparency log), the relay's
   receipt checked, the local audit log appended. securechan has no
   "encrypt to a file" command: a message exists only as a send, so this row
   compares gpg's smallest whole job with securechan's smallest whole job,
   and securechan's includes a network round trip and two durable commits
   that gpg does not make.
2. **decrypt and verify it.** gpg: ``gpg --decrypt -o out.txt msg.gpg``
   (``GOODSIG`` checked on ``--status-fd``). securechan: ``securechan
   receive`` with that one message waiting: fetch, open, verify, store,
   acknowledge to the relay, audit log, print.
3. **detached signature of a 1 KiB file.** gpg: ``gpg --detach-sign``;
   securechan: ``securechan sign`` (no relay involved: the closest pair).
4. **verify that detached signature.** gpg: ``gpg --verify``; securechan:
   ``securechan verify --from tehran`` (no relay, no private key).

Keys are throwaway and made in the run: for gpg, two temporary
``GNUPGHOME`` folders with ``--quick-gen-key ... future-default`` (Ed25519
signing, Curve25519 encryption: GnuPG 2.2's modern choice), each public key
imported into the other home and locally signed (``--quick-lsign-key``: the
recipient is pinned, as securechan's ``contact verify`` pins one);
for securechan, the set-up of ``bench/bench_cli.py`` (two delegations and a
relay on loopback, verified safety numbers, one message each way first).

**Both sides unlock a passphrase-protected private key in every process that
signs or decrypts**: securechan's key file costs one Argon2id derivation
(``--kdf interactive``, the cheapest the keystore accepts); the gpg keys are
passphrase-protected (passphrase given with ``--pinentry-mode loopback
--passphrase-file``) and each home's ``gpg-agent.conf`` sets
``default-cache-ttl 0`` and ``max-cache-ttl 0`` so the agent does not keep
the unlocked key between processes. gpg-agent itself is a long-lived process
(started by the first gpg call, stopped at the end): its work is in the wall
clock but not in the children's CPU figure. gpg-agent protects a key with its
iterated-and-salted S2K, calibrated when the key is made to take about 100 ms
on that machine; it runs on every unlock (with the agent's cache on, which
keeps the passphrase, our trial runs took as long). So one extra row shows
the floor of gpg: a sender key made without a passphrase.

Rounds interleave the two tools (gpg, securechan, gpg, ...), default 15
(``--quick`` 3); each figure is the median wall-clock time over the rounds.
Every output is checked: the decrypted text equals the original, each
verification succeeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cli import MODES, TEXT, World
from gpg_home import Gpg, gpg_version
from process_timing import Timing

GPG_PASSPHRASE = "gpg bench passphrase"  # noqa: S105 - throwaway keys made in the run
ROWS = (
    # (row name, securechan sample, gpg sample)
    ("encrypt + sign 1 KiB to a pinned recipient", "securechan send", "gpg --sign --encrypt"),
    ("decrypt + verify that message", "securechan receive", "gpg --decrypt"),
    ("detached signature of a 1 KiB file", "securechan sign", "gpg --detach-sign"),
    ("verify that detached signature", "securechan verify", "gpg --verify"),
)


def run(runs: int) -> dict[str, Any]:
    exe = shutil.which("gpg")
    samples: dict[str, list[Timing]] = {}

    def add(name: str, t: Timing) -> Timing:
        samples.setdefault(name, []).append(t)
        return t

    with tempfile.TemporaryDirectory(prefix="securechan-bench-gpg-") as tmp:
        root = Path(tmp)
        doc = root / "doc.txt"
        doc.write_text(TEXT)
        msg = root / "msg.txt"
        msg.write_text(TEXT)
        passfile = root / "gpg-passphrase"
        passfile.write_text(GPG_PASSPHRASE + "\n")
        nopass = root / "empty-passphrase"
        nopass.write_text("")
        gt = gw = gn = None
        try:
            if exe is not None:
                gt = Gpg(exe, root / "gnupg-tehran", "tehran", passfile)
                gw = Gpg(exe, root / "gnupg-washington", "washington", passfile)
                fp_t, fp_w = gt.generate(), gw.generate()
                gt.run("--export", "--armor", "-o", root / "t.asc", fp_t)
                gw.run("--export", "--armor", "-o", root / "w.asc", fp_w)
                gt.run("--import", root / "w.asc")
                gw.run("--import", root / "t.asc")
                gt.run("--quick-lsign-key", fp_w)
                gw.run("--quick-lsign-key", fp_t)
                # The floor of gpg: a sender key with no passphrase (no S2K).
                gn = Gpg(exe, root / "gnupg-tehran-nopass", "tehran", nopass)
                gn.generate()
                gn.run("--import", root / "w.asc")
                gn.run("--quick-lsign-key", fp_w)
            with World(root / "securechan") as world:
                for i in range(runs):
                    line = f"round {i}: {TEXT}"[:1024]
                    if gt is not None and gw is not None:
                        msg.write_text(line)
                        add(
                            "gpg --sign --encrypt",
                            gt.run("-u", "tehran", "-r", "washington", "--sign", "--encrypt",
                                   "-o", root / "msg.gpg", msg),
                        )  # fmt: skip
                        dec = add(
                            "gpg --decrypt",
                            gw.run("--status-fd", "1", "-o", root / "out.txt",
                                   "--decrypt", root / "msg.gpg"),
                        )  # fmt: skip
                        if (
                            "GOODSIG" not in dec.out.stdout
                            or (root / "out.txt").read_text() != line
                        ):
                            raise RuntimeError("gpg --decrypt did not verify or give the text back")
                        add(
                            "gpg --detach-sign",
                            gt.run("-u", "tehran", "--detach-sign",
                                   "-o", root / "doc.txt.gpgsig", doc),
                        )  # fmt: skip
                        ver = add(
                            "gpg --verify",
                            gw.run("--status-fd", "1", "--verify", root / "doc.txt.gpgsig", doc),
                        )
                        if "GOODSIG" not in ver.out.stdout:
                            raise RuntimeError("gpg --verify did not report a good signature")
                    add("securechan send", world.t.run("send", "washington", line))
                    got = add("securechan receive", world.w.run("receive", "--json"))
                    if line not in got.out.stdout:
                        raise RuntimeError("securechan receive did not show the message")
                    add("securechan sign", world.t.run("sign", doc, "-o", root / "doc.txt.sig"))
                    add(
                        "securechan verify",
                        world.w.run(
                            "verify", doc, "--sig", root / "doc.txt.sig", "--from", "tehran"
                        ),
                    )
                if gn is not None:
                    for _ in range(runs):
                        add(
                            "gpg --sign --encrypt, key without passphrase",
                            gn.run("-u", "tehran", "-r", "washington", "--sign", "--encrypt",
                                   "-o", root / "msg.gpg", msg),
                        )  # fmt: skip
        finally:
            for g in (gt, gw, gn):
                if g is not None:
                    g.stop_agent()

    results = {
        name: {
            "median_s": statistics.median(t.wall for t in ts),
            "min_s": min(t.wall for t in ts),
            "cpu_median_s": statistics.median(t.cpu for t in ts),
            "runs": len(ts),
        }
        for name, ts in samples.items()
    }
    rows: list[dict[str, Any]] = []
    for label, ours, ref in ROWS:
        row: dict[str, Any] = {
            "name": f"vs GnuPG: {label}",
            "ours_name": ours,
            "ours": results[ours]["median_s"],
            "reference_name": ref,
            "reference": None,
            "ratio": None,
            "unit": "s",
            "note": "",
        }
        if ref in results:
            row["reference"] = results[ref]["median_s"]
            row["ratio"] = row["ours"] / row["reference"]
        else:
            row["note"] = "gpg not installed: row skipped"
        rows.append(row)
    cached = "gpg --sign --encrypt, key without passphrase"
    if cached in results:
        rows.append(
            {
                "name": "vs GnuPG: encrypt + sign, gpg sender key without passphrase",
                "ours_name": "securechan send",
                "ours": results["securechan send"]["median_s"],
                "reference_name": cached,
                "reference": results[cached]["median_s"],
                "ratio": results["securechan send"]["median_s"] / results[cached]["median_s"],
                "unit": "s",
                "note": "gpg without its S2K; securechan cannot store a key unencrypted",
            }
        )
    return {
        "gpg": gpg_version(exe) if exe else None,
        "gpg_key": "future-default (Ed25519 sign, Curve25519 encrypt), passphrase-protected",
        "runs": runs,
        "results": results,
        "rows": rows,
    }


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"securechan next to GnuPG ({out['gpg'] or 'gpg not installed'}), whole processes, "
        f"median of {out['runs']} interleaved runs.",
        "",
        "| operation | securechan ms | gpg ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for r in out["rows"]:
        ref = f"{r['reference'] * 1000:.0f}" if r["reference"] is not None else "skipped"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        lines.append(f"| {r['name']} | {r['ours'] * 1000:.0f} | {ref} | {ratio} |")
    if out["gpg"] is None:
        lines += ["", "gpg is not installed: the gpg rows are skipped (apt-get install gnupg)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="3 runs (a smoke test)")
    parser.add_argument("--runs", type=int, default=0, help="rounds (default 15)")
    args = parser.parse_args(argv)
    runs = args.runs or MODES["quick" if args.quick else "default"]
    t0 = time.perf_counter()
    out = run(runs)
    out["mode"] = "quick" if args.quick else "default"
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(markdown(out))
        print(f"\n(ran for {out['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
