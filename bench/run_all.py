"""Run every securechan benchmark in one go and write ``bench/RESULTS.md``.

Usage::

    python bench/run_all.py                 # all, writes bench/RESULTS.md (~6 min on 2 cores)
    python bench/run_all.py --quick         # smoke test (~1.5 min), prints the report
    python bench/run_all.py --only cli,gpg  # some of them
    python bench/run_all.py --raw out.json  # also keep every script's full JSON

Each benchmark is its own script, run here as a subprocess with ``--json``
(``--quick`` passed on), one after the other so they do not compete for the
CPUs:

========== ====================== ===========================================
name       script                 ours vs. the reference measured in that run
========== ====================== ===========================================
signatures bench_signatures.py    composite sign/verify vs. Ed25519 + ML-DSA-65
protocol   bench_protocol.py      send_text + receive vs. its primitives' sum
relay      bench_relay.py         the relay vs. a bare aiohttp handler
tlog       bench_tlog.py          log append/proof/verify vs. raw SHA-256
cli        bench_cli.py           ``securechan send``/``receive`` vs. ``python -c pass``
gpg        bench_gpg.py           ``securechan`` vs. GnuPG on the same 1 KiB
junk       bench_receive_junk.py  ``receive`` with 256 garbage envelopes vs. none
groups     bench_groups.py        a group message / change vs. its primitives' sum
========== ====================== ===========================================

Every row of the report gives our figure, the reference measured in the same
run and their ratio (ours / reference). A benchmark that fails is reported
as failed (with the end of its stderr) and the others still run; the exit
code is then 1. Without ``--output``, a ``--quick`` run prints the report and
leaves the committed ``bench/RESULTS.md`` alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

Row = dict[str, Any]

BENCHMARKS = ("signatures", "protocol", "relay", "tlog", "cli", "gpg", "receive_junk", "groups")
TITLES = {
    "signatures": "Composite signatures vs. their halves (`bench_signatures.py`)",
    "protocol": "Session protocol vs. its raw primitives (`bench_protocol.py`)",
    "relay": "Relay throughput vs. a bare aiohttp handler (`bench_relay.py`)",
    "tlog": "Transparency log vs. raw SHA-256 (`bench_tlog.py`)",
    "cli": "CLI cold start vs. the bare interpreter (`bench_cli.py`)",
    "gpg": "securechan vs. GnuPG, same 1 KiB message (`bench_gpg.py`)",
    "receive_junk": "receive under 256 garbage envelopes vs. none (`bench_receive_junk.py`)",
    "groups": "Groups vs. their raw primitives (`bench_groups.py`)",
}


# --- the machine ------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), "")  # fmt: skip
    os_name = next(
        (line.split("=", 1)[1].strip('"') for line in _read("/etc/os-release").splitlines()
         if line.startswith("PRETTY_NAME=")),
        platform.system(),
    )  # fmt: skip
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = backend.openssl_version_text()
    except Exception:  # the report must not die on a library detail
        openssl = "unknown"
    try:
        gpg = subprocess.run(["gpg", "--version"], capture_output=True, text=True, check=False)
        gpg_version = gpg.stdout.splitlines()[0] if gpg.stdout else "not installed"
    except OSError:
        gpg_version = "not installed"
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = (
        " (with uncommitted changes)" if _git("status", "--porcelain", "--", "securechan") else ""
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "ram": f"{int(mem) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "os": f"{os_name}, kernel {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "securechan": f"{_version('securechan')}, git {commit or 'unknown'}{dirty}",
        "cryptography": f"{_version('cryptography')} ({openssl})",
        "PyNaCl": _version("PyNaCl"),
        "aiohttp": _version("aiohttp"),
        "click": _version("click"),
        "SQLite": sqlite3.sqlite_version,
        "GnuPG": gpg_version,
    }


def load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}/{five:.2f}"


# --- running the scripts ----------------------------------------------------------


def run_script(name: str, quick: bool) -> tuple[dict[str, Any] | None, str, float]:
    """Run ``bench_<name>.py --json``; the parsed JSON (or None), an error, seconds."""
    argv = [sys.executable, str(HERE / f"bench_{name}.py"), "--json"]
    if quick:
        argv.append("--quick")
    t0 = time.perf_counter()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=3600)
    except subprocess.TimeoutExpired:
        return None, "timed out after an hour", time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        return None, f"exit {out.returncode}, no JSON on stdout:\n{tail}", elapsed
    error = f"exit {out.returncode}" if out.returncode != 0 else ""
    return data, error, elapsed


# --- rows: ours, the reference from the same run, the ratio -----------------------


def row(name: str, ours: float, ref_name: str, ref: float | None, unit: str, note: str = "") -> Row:
    return {
        "name": name,
        "ours": ours,
        "reference_name": ref_name,
        "reference": ref,
        "ratio": ours / ref if ref else None,
        "unit": unit,
        "note": note,
    }


def rows_signatures(d: dict[str, Any]) -> list[Row]:
    out = []
    for op in ("sign", "verify"):
        s = d["summary"][op]
        out.append(
            row(
                f"hybrid {op} (200-byte document)",
                s["hybrid_us"],
                f"Ed25519 ({s['faster_ed25519']}) + ML-DSA-65 {op}, summed",
                s["components_sum_us"],
                "µs",
                f"{s['hybrid_over_ed25519']:.1f}x Ed25519 alone",
            )
        )
    return out


def rows_protocol(d: dict[str, Any]) -> list[Row]:
    out = []
    for name, s in d["summary"].items():
        short = name.replace("Protocol, ", "").split(":")[0]
        out.append(
            row(
                f"1 KiB text, {short}: send_text + receive",
                s["protocol_median_us"],
                "sum of the primitives it must run",
                s["floor_us"],
                "µs",
                f"target <= {s['target_ratio']}; "
                f"CPU-time ratio {s['protocol_over_floor_cpu_time']:.2f}",
            )
        )
    return out


def rows_groups(d: dict[str, Any]) -> list[Row]:
    out = []
    for name, s in d["summary"].items():
        out.append(
            row(
                name,
                s["measured_median_us"],
                "sum of the primitives it must run",
                s["floor_us"],
                "µs",
                (f"target <= {s['target_ratio']}; " if s["target_ratio"] else "")
                + f"CPU-time ratio "
                f"{s['ratio_cpu_time']:.2f}; the group code alone "
                f"{s['group_code_share']:.2f}x",
            )
        )
    return out


def rows_relay(d: dict[str, Any]) -> list[Row]:
    r, c = d["results"]["relay"], d["results"]["ceiling"]
    cfg = d["configuration"]
    load_note = f"{cfg['senders']} senders, {cfg['envelope_bytes'] // 1024} KiB envelopes"
    durable = "every 2xx stored once" if d["durability"]["ok"] else "DURABILITY CHECK FAILED"
    return [
        row(
            "signed durable sends",
            r["requests_per_s"],
            "bare aiohttp handler",
            c["requests_per_s"],
            "requests/s (higher is better)",
            f"{load_note}; target >= 0.40; {durable}",
        ),
        row("p50 latency", r["p50_ms"], "bare aiohttp handler", c["p50_ms"], "ms"),
        row("p99 latency", r["p99_ms"], "bare aiohttp handler", c["p99_ms"], "ms", "target < 50"),
    ]


def rows_tlog(d: dict[str, Any]) -> list[Row]:
    ver32 = next(v for v in d["verification"] if v["leaf_bytes"] == 32)
    sha_us = ver32["median_s"]["SHA-256 per leaf"] / ver32["leaves"] * 1e6
    ref = "one SHA-256 of a 32-byte leaf"
    out = []
    for a in d["appends"]:
        out.append(
            row(
                f"append, batches of {a['batch']:,}, synchronous={a['synchronous']}",
                1e6 / a["overall_leaves_per_s"],
                ref,
                sha_us,
                "µs per leaf",
                f"{a['leaves']:,} leaves, {a['overall_leaves_per_s']:,.0f} leaves/s",
            )
        )
        out.append(
            row(
                f"append, one commit per leaf, synchronous={a['synchronous']}",
                a["single_append_median_us"],
                ref,
                sha_us,
                "µs per leaf",
            )
        )
    for name, p in d["proofs"].items():
        out.append(row(name, p["median_us"], ref, sha_us, "µs", f"p95 {p['p95_us']:.0f} µs"))
    for v in d["verification"]:
        m = v["median_s"]
        out.append(
            row(
                f"verify a whole log, {v['leaves']:,} leaves of {v['leaf_bytes']} B",
                m["merkle root (securechan)"] * 1000,
                "SHA-256 of each leaf's data",
                m["SHA-256 per leaf"] * 1000,
                "ms",
                f"streaming SHA-256 of the same bytes: {m['SHA-256 streaming'] * 1000:.1f} ms",
            )
        )
    return out


def rows_given(d: dict[str, Any]) -> list[Row]:
    """bench_cli.py and bench_gpg.py already give rows (in seconds): shown in ms."""
    out = []
    for r in d["rows"]:
        ms = row(
            r["name"].split(": ", 1)[-1],
            r["ours"] * 1000,
            r["reference_name"],
            r["reference"] * 1000 if r["reference"] is not None else None,
            "ms, whole process",
            r.get("note", ""),
        )
        if r.get("ours_name"):
            ms["name"] = f"{ms['name']} (`{r['ours_name']}`)"
        out.append(ms)
    return out


def rows_junk(d: dict[str, Any]) -> list[Row]:
    """bench_receive_junk.py gives rows in seconds (CLI and in-process)."""
    return [
        row(r["name"], r["ours"] * 1e3, r["reference_name"], r["reference"] * 1e3, "ms", r["note"])
        for r in d["rows"]
    ]


EXTRACT: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "signatures": rows_signatures,
    "protocol": rows_protocol,
    "relay": rows_relay,
    "tlog": rows_tlog,
    "cli": rows_given,
    "gpg": rows_given,
    "receive_junk": rows_junk,
    "groups": rows_groups,
}


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def details(name: str, d: dict[str, Any]) -> list[str]:
    """A few lines of context under a benchmark's table."""
    if name == "cli":
        imp = d["results"]['python -c "import securechan"']["median_s"]
        return [
            f"Median of {d['runs']} interleaved rounds. Key files at `--kdf {d['kdf']}`; one "
            f"Argon2id unlock takes {d['key_unlock_s'] * 1000:.0f} ms of each `send` and "
            f'`receive` (in-process median). `python -c "import securechan"`: '
            f"{imp * 1000:.0f} ms.",
        ]
    if name == "gpg":
        if d["gpg"] is None:
            return ["gpg is not installed: its rows are skipped (`apt-get install gnupg`)."]
        return [
            f"{d['gpg']}; keys: {d['gpg_key']}; median of {d['runs']} interleaved rounds. "
            "gpg writes its message to a file; `securechan send` posts it to the relay, "
            "which commits it durably and logs it, and checks the receipt: see the "
            "script's docstring for why these are the pairs compared.",
        ]
    if name == "receive_junk":
        return [
            f"Median of {d['runs']} rounds per phase, alternating between a clean world and "
            "an attacked one. The 2x limit is on the `securechan receive` command "
            f"({met(d['ok'])}); the warm in-process ratios are reported as measured.",
        ]
    if name == "relay":
        cfg, v = d["configuration"], d["verdict"]
        return [
            f"{cfg['rounds']} round(s) per target of {cfg['duration_s']:g} s, "
            f"{cfg['senders']} concurrent senders on {cfg['queues']} queues; "
            f"relay / ceiling {v['ratio']:.2f} (target 0.40: {met(v['ratio_met'])}), p99 target "
            f"{met(v['p99_met'])}"
            + ("; the run was noisy (other processes used CPU)." if v.get("noisy") else "."),
        ]
    if name == "protocol":
        return [f"{d['repeats']} interleaved repeats; message on the wire and per-part sizes: "
                "run the script without `--json`."]  # fmt: skip
    if name == "groups":
        b = d["bytes"]
        return [
            f"{d['repeats']} interleaved repeats. Per group message to 10 members: a "
            f"{b['stream blob, message record']}-byte stream blob and 10 pairwise envelopes of "
            f"{b['pairwise envelope, group message (sizes seen)'][0]} bytes; "
            f"{b['log leaves per group message (1 stream item + pairwise sends)']} log leaves "
            f"({b['log tile bytes per group message']:.0f} tile bytes)."
        ]
    if name == "tlog":
        return [
            "Append and proof rows are given per leaf or per proof, next to one SHA-256 of "
            "a 32-byte leaf timed in the same run (the unit of work a verifier repeats)."
        ]
    return []


def fmt(x: float | None) -> str:
    if x is None:
        return "skipped"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def report(
    env: dict[str, str],
    quick: bool,
    runs: dict[str, tuple[dict[str, Any] | None, str, float, str, str]],
) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `python bench/run_all.py`"
        + (" --quick (a smoke test: few repeats)" if quick else "")
        + ". Every figure is a median from one run on the machine below; each row's reference "
        "was measured in the same run, and the ratio is ours / reference (for times, above 1 "
        "means slower than the reference; for requests/s, below 1 means fewer). The machine "
        "was shared with other work, so the absolute figures are noisy: trust the ratios more "
        "than the absolutes, and re-run on your own machine.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "## Results", ""]
    failed = []
    for name in runs:
        data, error, elapsed, before, after = runs[name]
        lines += [f"### {TITLES[name]}", ""]
        if data is None:
            failed.append(name)
            lines += ["**Failed**:", "", "```", error, "```", ""]
            continue
        lines += [
            "| measured | ours | reference | ref. figure | ratio | unit | note |",
            "|---|---:|---|---:|---:|---|---|",
        ]
        try:
            rows = EXTRACT[name](data)
        except (KeyError, TypeError, ValueError, StopIteration, ZeroDivisionError) as e:
            failed.append(name)
            lines += ["", f"**Could not read the script's JSON**: {e!r}", ""]
            continue
        for r in rows:
            lines.append(
                f"| {r['name']} | {fmt(r['ours'])} | {r['reference_name']} "
                f"| {fmt(r['reference'])} | {fmt(r['ratio'])} | {r['unit']} | {r['note']} |"
            )
        lines += [""]
        lines += details(name, data)
        note = f" (exit status: {error})" if error else ""
        lines += [
            f"Ran for {elapsed:.0f} s; load average {before} before, {after} after{note}.",
            "",
        ]
    lines += [
        "## Reproducing",
        "",
        "```sh",
        "python3 -m venv .venv && .venv/bin/pip install -e .",
        "apt-get install gnupg          # optional: without gpg its rows are skipped",
        ".venv/bin/python bench/run_all.py",
        "```",
        "",
        "Each script's docstring says what it measures and how; run one alone with",
        "`python bench/bench_<name>.py` for its full tables.",
    ]
    if failed:
        lines += ["", f"**Failed in this run**: {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every script's --quick mode")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--output", help="report file ('-' for stdout; default bench/RESULTS.md)")
    parser.add_argument("--raw", type=Path, help="also write every script's JSON here")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    output = args.output or ("-" if args.quick else str(HERE / "RESULTS.md"))

    env = machine()
    runs: dict[str, tuple[dict[str, Any] | None, str, float, str, str]] = {}
    for name in chosen:
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        before = load()
        data, error, elapsed = run_script(name, args.quick)
        runs[name] = (data, error, elapsed, before, load())
        status = "ok" if data is not None else "FAILED"
        print(f"[run_all] {name}: {status} in {elapsed:.0f} s {error}", file=sys.stderr)
    text = report(env, args.quick, runs)
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(f"[run_all] wrote {output}", file=sys.stderr)
    if args.raw:
        raw = {"machine": env, "quick": args.quick}
        raw |= {name: r[0] for name, r in runs.items()}
        args.raw.write_text(json.dumps(raw, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0 if all(r[0] is not None for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
