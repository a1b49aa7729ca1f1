"""Benchmark the relay: durable, signed sends against a bare aiohttp handler (the ceiling).

Usage::

    python bench/bench_relay.py [--json] [--quick] [--rounds N] [--duration S]

Two servers run on 127.0.0.1, each a single process as deployed, each on a
port it picks itself (``--port 0``, read back from its start-up line):

* **relay**: the real ``securechan relay serve --synchronous FULL`` (the
  console script next to ``sys.executable``) on a fresh data folder, with a
  ``--config`` TOML whose ``[limits]`` raise the per-queue and per-client rate
  limits and the queue depth far above what the benchmark can reach, so that
  no limit throttles it. Everything else is the default: SQLite in WAL mode,
  ``synchronous=FULL``, group commit, signatures checked, nonces recorded.
* **ceiling**: a bare aiohttp app (a small inline script run with
  ``sys.executable -c``) whose POST handler reads the body and answers 201
  ``{}``, served with the same ``AppRunner`` settings as the relay (no access
  log). Nothing can answer an HTTP request on this machine much faster with
  aiohttp, so it bounds what the relay could reach.

**One load generator for both**: an asyncio aiohttp client in its own process
(this script re-run with a hidden flag), with 50 concurrent senders in a
closed loop (each sends its next request when the previous one is answered),
spread over 10 queues. Each sender posts 6 KiB envelopes, the size of a 1 KiB
text message on the wire, each one distinct (as ciphertexts are: the relay's
transparency log appends one leaf per distinct envelope), to
``/v1/send/{sid}`` of a queue that was secured with a sender key when it was
created. Every request is signed when it is
sent, as a real client does (``relay_auth.sign_request``: fresh timestamp and
nonce, SHA-256 of the body, Ed25519), and carries a distinct ``X-Message-Id``.
The ceiling receives exactly the same requests and ignores the headers, so
the client does the same work against both targets. The signing cost per
request is also timed on its own (median of batches, as in
``bench/bench_signatures.py``), to show how much of the client's budget it
takes. With two or more CPUs, both servers are pinned to one CPU and the load
generator (and this script) to another, so server and client each get a core.

Rounds are interleaved (ceiling, relay, ceiling, relay ...), so slow drift
affects both alike. Each round is a fresh load-generator process: a warm-up,
then a measured window. Requests/s counts the 2xx answers received in the
window; requests/s is the median over the rounds. Latencies are pooled over
the rounds: each is the time from just before the request is handed to
aiohttp until its answer has been read, so it includes the client's own
queueing. CPU use of the server process (all its threads) and of the load
generator is read from the kernel over the same window.

After the runs, the script reads the relay's ``/metrics`` and fetches every
envelope back with the recipients' keys: the envelopes stored must be
exactly those that got a 2xx answer (none missing, none extra).

Target (issue 4): relay at least 40% of the ceiling's requests/s, with p99
under 50 ms at that load. If ``wrk`` is installed, it is also run against the
ceiling (same body, 50 connections, one thread on the client core) to show
the absolute ceiling of the server side; it cannot drive the relay, whose
requests need a fresh signature each.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from securechan.primitives import Ed25519SigningKey
from securechan.protocol.relay_auth import b64e, sign_request
from securechan.transport import RelayClient, RetryPolicy

SENDERS = 50
QUEUES = 10
ENVELOPE_BYTES = 6 * 1024
TARGET_RATIO = 0.40
TARGET_P99_MS = 50.0
REQUEST_TIMEOUT_S = 30.0
NOISE_LIMIT = 0.15  # other processes' CPU (cores) above which the report warns
BUSY = 0.90  # a process using this much of a core is the bottleneck

# name -> (rounds per target, warm-up s, measured s, wrk s, signing batches)
MODES = {
    "default": (3, 1.5, 7.0, 7.0, 15),
    "quick": (1, 0.5, 2.0, 0.0, 5),
}

# Limits raised so that no rate limit or depth quota throttles the benchmark.
RELAY_LIMITS = {
    "queue_rate": 1e9,
    "queue_burst": 1_000_000_000,
    "client_rate": 1e9,
    "client_burst": 1_000_000_000,
    "max_depth": 1_000_000_000,
    "client_byte_rate": 1e12,
    "client_byte_burst": 1_000_000_000_000,
    "fetch_limit": 1000,
}

SEND_ROUTE = "/v1/send/{sid}"

CEILING_SCRIPT = """
import asyncio, signal
from aiohttp import web

async def send(request):
    await request.read()
    return web.json_response({}, status=201)

async def main():
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/send/{sid}", send)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()

try:  # the same event loop as `securechan relay serve` uses
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = string.rep("x", {size})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def progress(message: str) -> None:
    print(f"[bench_relay] {message}", file=sys.stderr, flush=True)


# --- the load generator (runs in its own process) ------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds a process has run, all its threads (``/proc/PID/task/*/schedstat``)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (everything but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load_generator(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop senders against one target; the result as a JSON-able dict."""
    base = spec["url"]
    queues = [(q["path"], Ed25519SigningKey(bytes.fromhex(q["seed"]))) for q in spec["queues"]]
    senders = int(spec["senders"])
    size = int(spec["size"])
    server_pid = int(spec["server_pid"])
    latencies: list[float] = []
    window_errors: Counter[str] = Counter()
    all_errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    acked: dict[str, list[str]] = {path: [] for path, _ in queues}
    sent = 0

    connector = aiohttp.TCPConnector(limit=senders)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        t_warm = t0 + float(spec["warmup"])
        t_end = t_warm + float(spec["duration"])

        async def sender(i: int) -> None:
            nonlocal sent
            path, key = queues[i % len(queues)]
            url = base + path
            filler = os.urandom(size - 16)
            done = acked[path]
            while time.perf_counter() < t_end:
                msg_id = os.urandom(16)
                # Every envelope is distinct, as real ciphertexts are: the relay's
                # log keeps one leaf per distinct envelope, so repeating a body
                # would skip the log's appends and commits.
                body = msg_id + filler
                headers = {
                    "Authorization": sign_request(key, "POST", path, body, now=int(time.time())),
                    "X-Message-Id": b64e(msg_id),
                    "Content-Type": "application/octet-stream",
                }
                status = 0
                error = ""
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    error = type(e).__name__
                end = time.perf_counter()
                sent += 1
                statuses[status] += 1
                ok = 200 <= status < 300
                if ok:
                    done.append(msg_id.hex())
                else:
                    error = error or f"HTTP {status}"
                    all_errors[error] += 1
                if t_warm <= end <= t_end:
                    if ok:
                        latencies.append(end - start)
                    else:
                        window_errors[error] += 1

        async def sample_at(when: float) -> tuple[float, float | None, float, float | None]:
            await asyncio.sleep(max(0.0, when - time.perf_counter()))
            return (
                time.perf_counter(),
                process_cpu_seconds(server_pid),
                own_cpu_seconds(),
                machine_busy_seconds(),
            )

        tasks = [asyncio.create_task(sender(i)) for i in range(senders)]
        first, last = await asyncio.gather(sample_at(t_warm), sample_at(t_end))
        await asyncio.gather(*tasks)

    window = last[0] - first[0]
    server_cpu = None if first[1] is None or last[1] is None else (last[1] - first[1]) / window
    client_cpu = (last[2] - first[2]) / window
    other_cpu = None
    if server_cpu is not None and first[3] is not None and last[3] is not None:
        other_cpu = max(0.0, (last[3] - first[3]) / window - server_cpu - client_cpu)
    return {
        "window_s": window,
        "duration_s": float(spec["duration"]),
        "ok_in_window": len(latencies),
        "latencies_s": latencies,
        "window_errors": dict(window_errors),
        "all_errors": dict(all_errors),
        "statuses": {str(k): v for k, v in statuses.items()},
        "requests": sent,
        "acked": acked,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "other_cpu": other_cpu,
    }


def loadgen_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text("utf-8"))
    result = asyncio.run(load_generator(spec))
    sys.stdout.write(json.dumps(result))
    return 0


# --- processes -------------------------------------------------------------------


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def start_server(name: str, argv: list[str], log: Path, cpu: int | None) -> Server:
    """Start a server that prints ``listening on URL`` on stdout; wait for it."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=pin_to(cpu),
        )
    assert proc.stdout is not None  # noqa: S101 (Popen with stdout=PIPE)
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + 30
    while True:
        match = re.search(rb"listening on (http://\S+)\r?\n", buffer)
        if match:
            return Server(name, proc, match[1].decode().rstrip("/"), log)
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            tail = log.read_text("utf-8", "replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {buffer.decode(errors='replace')}{tail}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            buffer += chunk


def relay_command() -> list[str]:
    script = Path(sys.executable).parent / "securechan"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from securechan.cli import main; main()"]


def run_loadgen(spec: dict[str, Any], tmp: Path, cpu: int | None, timeout: float) -> dict[str, Any]:
    spec_path = tmp / "loadgen.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--loadgen", str(spec_path)],
        capture_output=True,
        timeout=timeout,
        preexec_fn=pin_to(cpu),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- measurements ------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class TargetResult:
    name: str
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rps_per_round(self) -> list[float]:
        return [r["ok_in_window"] / r["duration_s"] for r in self.rounds]

    @property
    def rps(self) -> float:
        return statistics.median(self.rps_per_round)

    @property
    def latencies_ms(self) -> list[float]:
        return sorted(x * 1000 for r in self.rounds for x in r["latencies_s"])

    @property
    def window_errors(self) -> int:
        return sum(sum(r["window_errors"].values()) for r in self.rounds)

    @property
    def all_errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.rounds:
            total.update(r["all_errors"])
        return dict(total)

    def cpu(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds if r[key] is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "requests_per_s": self.rps,
            "requests_per_s_per_round": self.rps_per_round,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else math.nan,
            "samples": len(lat),
            "errors_in_window": self.window_errors,
            "errors_all_phases": self.all_errors,
            "requests_all_phases": sum(r["requests"] for r in self.rounds),
            "server_cpu": self.cpu("server_cpu"),
            "client_cpu": self.cpu("client_cpu"),
            "other_cpu": self.cpu("other_cpu"),
            "other_cpu_per_round": [r["other_cpu"] for r in self.rounds],
        }


def signing_cost(batches: int) -> dict[str, float]:
    """Microseconds per ``sign_request`` over a 6 KiB body: median and min of batches."""
    key = Ed25519SigningKey(bytes(range(32)))
    body = os.urandom(ENVELOPE_BYTES)
    path = "/v1/send/" + b64e(bytes(16))
    n = 2000
    samples = []
    for _ in range(batches):
        now = int(time.time())
        start = time.perf_counter_ns()
        for _ in range(n):
            sign_request(key, "POST", path, body, now=now)
        samples.append((time.perf_counter_ns() - start) / n / 1000)
    return {"median_us": statistics.median(samples), "min_us": min(samples), "batch": n}


def fsync_cost(folder: Path, n: int) -> float:
    """Median milliseconds of writing 4 KiB and fsync-ing it in ``folder``."""
    path = folder / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(n):
            start = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def filesystem_of(path: Path) -> str:
    """``fstype on device`` of the mount holding ``path``."""
    best = ("", "unknown", "unknown")
    real = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        return math.nan
    return float(m[1]) * _WRK_UNITS[m[2]]


def run_wrk(wrk: str, url: str, tmp: Path, cpu: int | None, duration: float) -> dict[str, Any]:
    """wrk against the ceiling: a 1 s warm-up, then the measured run."""
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(size=ENVELOPE_BYTES), "utf-8")
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    base = [wrk, "-t1", f"-c{SENDERS}", "--latency", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], capture_output=True, preexec_fn=pin_to(cpu), check=False)
    done = subprocess.run(
        [*base, f"-d{max(1, round(duration))}s", url],
        capture_output=True,
        text=True,
        preexec_fn=pin_to(cpu),
        check=False,
    )
    out = done.stdout
    result: dict[str, Any] = {
        "version": (version.stdout + version.stderr).strip().splitlines()[0],
        "duration_s": max(1, round(duration)),
        "raw": out,
    }
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    result["requests_per_s"] = float(rps[1]) if rps else math.nan
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _wrk_ms(m[1]) if m else math.nan
    m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    result["max_ms"] = _wrk_ms(m[1]) if m else math.nan
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m[1])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    result["errors"] = errors
    return result


# --- the relay: set-up, metrics and the durability check ---------------------------


@dataclass
class BenchQueue:
    rid: bytes
    sid: bytes
    recipient: Ed25519SigningKey
    sender: Ed25519SigningKey

    @property
    def path(self) -> str:
        return f"/v1/send/{b64e(self.sid)}"


async def create_queues(url: str, n: int) -> list[BenchQueue]:
    out = []
    async with RelayClient(url, retry=RetryPolicy(attempts=1)) as client:
        for _ in range(n):
            recipient = Ed25519SigningKey.generate()
            sender = Ed25519SigningKey.generate()
            ids = await client.create_queue(recipient, sender_key=sender.public)
            out.append(BenchQueue(ids.rid, ids.sid, recipient, sender))
    return out


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
            samples.append((m[1], labels, float(m[3])))
    return samples


def summarise_metrics(text: str) -> dict[str, Any]:
    samples = parse_metrics(text)

    def total(name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        )

    send_statuses: Counter[str] = Counter()
    for n, lab, v in samples:
        if n == "securechan_relay_requests_total" and lab.get("route") == SEND_ROUTE:
            send_statuses[lab.get("status", "?")] += int(v)
    count = total("securechan_relay_request_seconds_count", route=SEND_ROUTE)
    seconds = total("securechan_relay_request_seconds_sum", route=SEND_ROUTE)
    within_50ms = total("securechan_relay_request_seconds_bucket", route=SEND_ROUTE, le="0.05")
    commit_metrics = {
        n + ("{" + ",".join(f"{k}={v}" for k, v in lab.items()) + "}" if lab else ""): v
        for n, lab, v in samples
        if "commit" in n.lower() or n.endswith("write_jobs")
    }
    return {
        "send_statuses": dict(send_statuses),
        "envelopes_stored_total": total("securechan_relay_envelopes_stored_total"),
        "auth_failures_total": total("securechan_relay_auth_failures_total"),
        "rate_limited_total": total("securechan_relay_rate_limited_total"),
        "rejected_total": total("securechan_relay_rejected_total"),
        "send_handler_mean_ms": seconds / count * 1000 if count else math.nan,
        "send_handled_within_50ms": within_50ms / count if count else math.nan,
        "commit_metrics": commit_metrics,
    }


async def read_metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


async def fetch_all(url: str, queues: list[BenchQueue]) -> dict[str, Any]:
    """Every envelope of every queue, as (msg_id hex, seq, size) per send path."""
    stored: dict[str, list[tuple[str, int, int]]] = {}
    retry = RetryPolicy(attempts=3, timeout=120.0)
    async with RelayClient(url, retry=retry) as client:
        for q in queues:
            items: list[tuple[str, int, int]] = []
            after = 0
            while True:
                page = await client.fetch(q.rid, q.recipient, after=after, limit=1000)
                if not page:
                    break
                items += [(e.msg_id.hex(), e.seq, len(e.data)) for e in page]
                after = page[-1].seq
            stored[q.path] = items
    return stored


def check_durability(
    acked: dict[str, list[str]], stored: dict[str, list[tuple[str, int, int]]]
) -> dict[str, Any]:
    missing = extra = duplicates = bad_order = bad_size = 0
    for path, ids in acked.items():
        items = stored.get(path, [])
        stored_ids = [i for i, _, _ in items]
        seqs = [s for _, s, _ in items]
        duplicates += len(stored_ids) - len(set(stored_ids))
        duplicates += len(ids) - len(set(ids))
        bad_order += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        bad_size += sum(1 for _, _, n in items if n != ENVELOPE_BYTES)
        missing += len(set(ids) - set(stored_ids))
        extra += len(set(stored_ids) - set(ids))
    return {
        "acked_2xx": sum(len(v) for v in acked.values()),
        "stored": sum(len(v) for v in stored.values()),
        "missing": missing,
        "extra": extra,
        "duplicates": duplicates,
        "out_of_order": bad_order,
        "wrong_size": bad_size,
        "ok": missing == extra == duplicates == bad_order == bad_size == 0,
    }


# --- environment and report ----------------------------------------------------------


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


def event_loop_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return type(loop).__name__
    finally:
        loop.close()


def source_version() -> str:
    """The git commit of the tree measured, and whether the package has local changes."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "securechan"],
        capture_output=True,
        text=True,
        check=False,
    )
    changed = " + uncommitted changes in securechan/" if dirty.stdout.strip() else ""
    return head.stdout.strip() + changed


def environment() -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "securechan": metadata.version("securechan"),
        "source": source_version(),
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "pynacl": metadata.version("PyNaCl"),
        "prometheus_client": metadata.version("prometheus-client"),
        "event_loop": event_loop_name(),
        "cpu": cpu_model(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def markdown(out: dict[str, Any]) -> str:
    env = out["environment"]
    cfg = out["configuration"]
    ceiling = out["results"]["ceiling"]
    relay = out["results"]["relay"]
    verdict = out["verdict"]
    sign = out["signing"]
    pinning = (
        f"servers pinned to CPU {cfg['server_cpu']}, the load generator (its own process) "
        f"to CPU {cfg['client_cpu']}: server and client each get a core"
        if cfg["client_cpu"] is not None
        else "fewer than 2 CPUs: nothing pinned, server and client share the CPU"
    )
    lines = [
        "# securechan relay benchmark",
        "",
        f"- Python: {env['python']} ({env['event_loop']}); securechan {env['securechan']} "
        f"({env['source']}); "
        f"aiohttp {env['aiohttp']}; SQLite {env['sqlite']}; PyNaCl {env['pynacl']}; "
        f"prometheus-client {env['prometheus_client']}",
        f"- CPU: {env['cpu']}, {env['cpus']} logical CPUs; {pinning}",
        f"- Platform: {env['platform']}",
        f"- Relay data folder: {cfg['data_fs']}; write 4 KiB + fsync there: median "
        f"{cfg['fsync_ms']:.2f} ms",
        f"- Mode: {cfg['mode']}. {cfg['rounds']} interleaved round(s) per target, each "
        f"{cfg['warmup_s']:g} s warm-up + {cfg['duration_s']:g} s measured; "
        f"{cfg['senders']} concurrent senders (closed loop, one aiohttp client process) over "
        f"{cfg['queues']} secured queues; {cfg['envelope_bytes']}-byte envelopes; every request "
        "signed when sent (SC1, fresh nonce) with a distinct X-Message-Id, to both targets.",
        "- Relay: `securechan relay serve --port 0 --synchronous FULL --config relay.toml` "
        "(single process); [limits] raised so nothing throttles the benchmark: "
        + ", ".join(f"{k} = {v:g}" for k, v in cfg["relay_limits"].items())
        + ". Signatures checked, nonces recorded, SQLite WAL, synchronous=FULL, group commit.",
        "- Ceiling: bare aiohttp app (single process) whose POST handler reads the body and "
        "answers 201 {}; same AppRunner settings as the relay.",
        "",
        "| target | requests/s (median) | per round | p50 ms | p99 ms | max ms "
        "| errors | server CPU | client CPU | other processes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("ceiling (bare aiohttp)", ceiling), ("relay", relay)):
        per_round = ", ".join(f"{x:.0f}" for x in r["requests_per_s_per_round"])
        lines.append(
            f"| {name} | {r['requests_per_s']:.0f} | {per_round} | {fmt(r['p50_ms'], '.2f')} "
            f"| {fmt(r['p99_ms'], '.2f')} | {fmt(r['max_ms'], '.1f')} "
            f"| {r['errors_in_window']} | {fmt(_pct(r['server_cpu']), '.0f')}% "
            f"| {fmt(_pct(r['client_cpu']), '.0f')}% | {fmt(_pct(r['other_cpu']), '.0f')}% |"
        )
    wrk = out.get("wrk")
    if wrk:
        lines.append(
            f"| ceiling with wrk (1 thread, {cfg['senders']} connections) "
            f"| {wrk['requests_per_s']:.0f} | {wrk['duration_s']} s | {fmt(wrk['p50_ms'], '.2f')} "
            f"| {fmt(wrk['p99_ms'], '.2f')} | {fmt(wrk['max_ms'], '.1f')} | {wrk['errors']} "
            "| | | |"
        )
    lines.append("")
    lines.append(
        f"- relay / ceiling (same load generator): **{verdict['ratio']:.2f}** "
        f"(target ≥ {TARGET_RATIO:.2f}): **{'met' if verdict['ratio_met'] else 'NOT met'}**"
    )
    lines.append(
        f"- relay p99 at that load: **{fmt(relay['p99_ms'], '.1f')} ms** "
        f"(target < {TARGET_P99_MS:g} ms): **{'met' if verdict['p99_met'] else 'NOT met'}**"
    )
    caveat = (
        " (not trustworthy: other processes kept the machine busy, see Noise below)"
        if verdict["noisy"]
        else ""
    )
    lines.append(f"- Target (both): **{'MET' if verdict['met'] else 'NOT MET'}**{caveat}")
    if wrk:
        lines.append(
            "- For scale: relay / wrk ceiling = "
            f"{relay['requests_per_s'] / wrk['requests_per_s']:.2f}; Python-client ceiling "
            f"/ wrk ceiling = {ceiling['requests_per_s'] / wrk['requests_per_s']:.2f} "
            f"({wrk['version']})."
        )
    elif cfg["wrk"] == "absent":
        lines.append("- wrk is not installed: no absolute (wrk) ceiling in this run.")
    else:
        lines.append("- wrk is not run in --quick mode.")
    share = sign["median_us"] * relay["requests_per_s"] / 1e6
    lines.append(
        f"- Client signing cost (`sign_request`, {cfg['envelope_bytes']}-byte body, timed apart): "
        f"median {sign['median_us']:.1f} µs, min {sign['min_us']:.1f} µs per request; at the "
        f"relay's {relay['requests_per_s']:.0f} requests/s that is {share:.1%} of the load "
        "generator's core (it signs the ceiling's requests too)."
    )
    per_request = [
        f"{name} {r['client_cpu'] * 1e6 / r['requests_per_s']:.0f} µs"
        for name, r in (("ceiling", ceiling), ("relay", relay))
        if r["client_cpu"] is not None and r["requests_per_s"] > 0
    ]
    if per_request:
        lines.append(
            f"- Load generator CPU per request: {', '.join(per_request)} "
            f"(signing is {sign['median_us']:.0f} µs of it)."
        )
    m = out["metrics"]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(m["send_statuses"].items()))
    lines.append(
        f"- Relay /metrics after the run: sends by status {{{statuses}}}; envelopes stored "
        f"{m['envelopes_stored_total']:.0f}; auth failures {m['auth_failures_total']:.0f}; "
        f"rate-limited {m['rate_limited_total']:.0f}; rejected {m['rejected_total']:.0f}; "
        f"mean time in the send handler {fmt(m['send_handler_mean_ms'], '.2f')} ms, "
        f"{fmt(_pct(m['send_handled_within_50ms']), '.1f')}% within 50 ms."
    )
    if m["commit_metrics"]:
        counters = m["commit_metrics"]
        commits = ", ".join(f"{k} = {v:g}" for k, v in counters.items())
        batch = ""
        db_commits = counters.get("securechan_relay_db_commits")
        if db_commits:
            jobs = counters.get("securechan_relay_db_write_jobs", math.nan)
            batch = f"; relay.db write jobs per commit (mean batch): {jobs / db_commits:.1f}"
        log_commits = counters.get("securechan_relay_log_commits")
        if log_commits:
            batch += (
                f"; envelopes stored per log commit: "
                f"{m['envelopes_stored_total'] / log_commits:.1f}"
            )
        lines.append(f"- Commit counters in /metrics: {commits}{batch}.")
    else:
        lines.append(
            "- Commits: /metrics exports no commit counter (SqliteStorage.commits is not "
            "exported), so the group-commit batch size is not reported."
        )
    d = out["durability"]
    lines.append(
        f"- Durability bookkeeping (fetched back with the recipients' keys): "
        f"{d['acked_2xx']} sends answered 2xx, {d['stored']} envelopes stored; "
        f"missing {d['missing']}, extra {d['extra']}, duplicates {d['duplicates']}, "
        f"out of order {d['out_of_order']}, wrong size {d['wrong_size']}: "
        f"**{'OK' if d['ok'] else 'MISMATCH'}**."
    )
    errs = relay["errors_all_phases"]
    if errs or ceiling["errors_all_phases"]:
        lines.append(
            f"- Errors over all phases: relay {errs or 'none'}; "
            f"ceiling {ceiling['errors_all_phases'] or 'none'}."
        )
    lines.append(
        f"- Servers stopped with SIGTERM: relay exit {out['exit_codes']['relay']}, "
        f"ceiling exit {out['exit_codes']['ceiling']}."
    )
    for name, r in (("ceiling", ceiling), ("relay", relay)):
        bound = []
        if (r["client_cpu"] or 0) >= BUSY:
            bound.append(f"the load generator (client CPU {r['client_cpu']:.0%})")
        if (r["server_cpu"] or 0) >= BUSY:
            bound.append(f"the server (server CPU {r['server_cpu']:.0%})")
        what = " and ".join(bound) if bound else "neither CPU (both below 90%): waiting"
        lines.append(f"- The {name} run is limited by {what}.")
    disturbed = [
        f"{name} round {i + 1} ({x:.0%})"
        for name, r in (("ceiling", ceiling), ("relay", relay))
        for i, x in enumerate(r["other_cpu_per_round"])
        if x is not None and x > NOISE_LIMIT
    ]
    if disturbed:
        medians = [r["other_cpu"] for r in (ceiling, relay) if r["other_cpu"] is not None]
        if medians and max(medians) > NOISE_LIMIT:
            verdict_text = "the medians are affected too: run again on an idle machine"
        else:
            verdict_text = "the medians over rounds are robust to that"
        lines.append(
            "- **Noise**: other processes on the machine used more than "
            f"{NOISE_LIMIT:.0%} of a core during {', '.join(disturbed)}; {verdict_text} "
            f"(load average before the run: {cfg['loadavg']})."
        )
    lines.append(
        "- Latency is measured by the client, from handing the request to aiohttp until the "
        "answer is read; CPU is time on a CPU over the measured window (100% = one core; "
        "the server figure covers all its threads, SQLite's writer included; 'other "
        "processes' is the rest of the machine's busy time, i.e. noise from outside the "
        "benchmark)."
    )
    return "\n".join(lines)


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


# --- main -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = "quick" if args.quick else "default"
    rounds, warmup, duration, wrk_s, sign_batches = MODES[mode]
    rounds = args.rounds or rounds
    duration = args.duration or duration
    if args.duration:
        wrk_s = wrk_s and duration

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # this process: the signing timing, set-up

    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "relay-data"
        data.mkdir(mode=0o700)
        config = tmp / "relay.toml"
        config.write_text(
            "[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in RELAY_LIMITS.items()), "utf-8"
        )
        configuration = {
            "mode": mode,
            "rounds": rounds,
            "warmup_s": warmup,
            "duration_s": duration,
            "senders": SENDERS,
            "queues": QUEUES,
            "envelope_bytes": ENVELOPE_BYTES,
            "server_cpu": server_cpu,
            "client_cpu": client_cpu,
            "relay_limits": RELAY_LIMITS,
            "data_fs": filesystem_of(data),
            "fsync_ms": fsync_cost(data, 50 if mode == "default" else 10),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "wrk": "absent" if shutil.which("wrk") is None else ("run" if wrk_s else "skipped"),
        }

        progress("starting the relay and the bare aiohttp app")
        relay_argv = [
            *relay_command(),
            "relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data",
            str(data),
            "--synchronous",
            "FULL",
            "--config",
            str(config),
        ]
        servers: dict[str, Server] = {}
        try:
            servers["relay"] = start_server("relay", relay_argv, tmp / "relay.log", server_cpu)
            servers["ceiling"] = start_server(
                "ceiling", [sys.executable, "-c", CEILING_SCRIPT], tmp / "ceiling.log", server_cpu
            )
            relay_url = servers["relay"].url
            queues = asyncio.run(create_queues(relay_url, QUEUES))
            queue_spec = [
                {"path": q.path, "seed": q.sender.seed_bytes_secret().hex()} for q in queues
            ]

            progress("timing sign_request")
            signing = signing_cost(sign_batches)

            results = {"ceiling": TargetResult("ceiling"), "relay": TargetResult("relay")}
            for r in range(rounds):
                for name in ("ceiling", "relay"):
                    progress(f"round {r + 1}/{rounds}: {name} ({warmup:g} s + {duration:g} s)")
                    spec = {
                        "url": servers[name].url,
                        "queues": queue_spec,
                        "senders": SENDERS,
                        "size": ENVELOPE_BYTES,
                        "warmup": warmup,
                        "duration": duration,
                        "server_pid": servers[name].proc.pid,
                    }
                    timeout = warmup + duration + REQUEST_TIMEOUT_S + 30
                    results[name].rounds.append(run_loadgen(spec, tmp, client_cpu, timeout))

            wrk_result = None
            wrk = shutil.which("wrk")
            if wrk and wrk_s > 0:
                progress(f"wrk against the bare app (1 s + {wrk_s:g} s)")
                url = servers["ceiling"].url + queues[0].path
                wrk_result = run_wrk(wrk, url, tmp, client_cpu, wrk_s)

            progress("reading /metrics and fetching every envelope back")
            metrics = summarise_metrics(asyncio.run(read_metrics(relay_url)))
            acked: dict[str, list[str]] = {q.path: [] for q in queues}
            for rnd in results["relay"].rounds:
                for path, ids in rnd["acked"].items():
                    acked[path] += ids
            stored = asyncio.run(fetch_all(relay_url, queues))
            durability = check_durability(acked, stored)
        finally:
            exit_codes = {name: server.stop() for name, server in servers.items()}

    ceiling = results["ceiling"].summary()
    relay = results["relay"].summary()
    ratio = relay["requests_per_s"] / ceiling["requests_per_s"]
    ratio_met = ratio >= TARGET_RATIO
    p99_met = relay["p99_ms"] < TARGET_P99_MS
    return {
        "environment": environment(),
        "configuration": configuration,
        "results": {"ceiling": ceiling, "relay": relay},
        "verdict": {
            "ratio": ratio,
            "ratio_met": ratio_met,
            "p99_met": p99_met,
            "met": ratio_met and p99_met and relay["errors_in_window"] == 0,
            "noisy": any(
                r["other_cpu"] is not None and r["other_cpu"] > NOISE_LIMIT
                for r in (ceiling, relay)
            ),
        },
        "signing": signing,
        "wrk": {k: v for k, v in wrk_result.items() if k != "raw"} if wrk_result else None,
        "metrics": metrics,
        "durability": durability,
        "exit_codes": exit_codes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quick", action="store_true", help="short smoke-test run (< 15 s)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per target")
    parser.add_argument("--duration", type=float, default=0, help="measured seconds per round")
    parser.add_argument("--loadgen", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        return loadgen_main(args.loadgen)

    started = time.perf_counter()
    out = run(args)
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(markdown(out))
        print(f"\n(ran for {out['elapsed_s']:.1f} s)")
    return 0 if out["durability"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
