"""Benchmark the command line's cold start: whole ``securechan send`` and ``receive`` processes.

Usage::

    python bench/bench_cli.py [--json] [--quick] [--runs N]

What a delegation's operator waits for is a whole process: Python starting,
the imports, the passphrase-derived key unlock (Argon2id), the local database,
the relay round trips, the fsyncs. This script times exactly that, with
``time.perf_counter`` around ``subprocess.run`` of the console script next to
``sys.executable``, against a real ``securechan relay serve`` (default
settings: SQLite WAL, ``synchronous=FULL``, transparency log on) on a free
loopback port.

Set-up, all through the CLI itself: two delegations (``tehran`` and
``washington``) each run ``init --kdf interactive`` (the cheapest Argon2id
the keystore accepts, 64 MiB and 2 passes: every timed command that needs the
private key pays it once, see the ``key unlock`` figure), ``register``,
``id export``; each ``contact add``\\ s the other and ``contact verify``\\ s
the safety number. One message each way then establishes the session, so the
timed runs are the steady state (no handshake).

Timed, in every round, in this order (the three references rotate):

* ``python -c pass``: the interpreter alone (the reference for every row);
* ``python -c "import securechan"``: the library's import;
* ``securechan --version``: the console script and click;
* ``securechan send washington <1 KiB text>``: unlock, ratchet, sign, seal,
  outbox commit, post to the relay (which commits it durably and logs it),
  receipt verified against the relay's signed checkpoint, audit log entry;
* ``securechan receive`` as washington, with that one message waiting: fetch,
  open, verify, store, acknowledge, audit log, print;
* ``securechan receive`` with nothing waiting.

Then, with an agent running for each home (``securechan agent start``,
docs/AGENT.md), in the same rounds: ``python -c pass`` again (the reference
for these rows), ``securechan --version``, ``send`` (1 KiB), ``receive``
with one message and with nothing waiting, all through the agent (the thin
command line), and GnuPG's ``gpg --sign --encrypt`` of the same text twice:
through a gpg-agent holding the passphrase (gpg-agent caches the passphrase,
not the key, so each signature still runs the key's S2K) and with a key that
has no passphrase (gpg's floor). The CPU time the agents and the relay
spend per send through the agent is read from their ``/proc`` counters
around the send rows (the sender's agent, the relay, and the recipient's
agent, which the relay's push wakes on the same cores). Then washington's
agent is stopped and tehran sends again, beside ``python -c pass`` (the row
"recipient's agent stopped": in reality the recipient is on another
machine); washington receives those messages in-process at the end.

Each figure is the median over the rounds (default 15, ``--quick`` 3) of the
wall-clock time; the children's CPU time (user + system, from
``getrusage(RUSAGE_CHILDREN)``) is also given: a busy machine inflates it much
less than the wall clock. Every run's exit code and output are checked (the
message received is the one sent). ``bench/bench_gpg.py`` reuses this set-up.

What is measured is the console script next to the interpreter that runs
this file, and the output says which install that is: securechan imported
from site-packages (``pip install .``, what the README and ``.ci/run``
install) or from a source tree (``pip install -e .`` or PYTHONPATH), and
whether pip wrote a console script that imports ``re`` (pip before 25
does; ``re`` and the ``enum`` it loads cost about 6 ms of start-up here, more
than the whole fast path through the agent imports). The children run with
bytecode caches as any install has them (PYTHONDONTWRITEBYTECODE is dropped
from their environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_timing import Timing, clean_env, timed

MODES = {"default": 15, "quick": 3}
KDF = "interactive"
# A 1 KiB text, printable, fixed (the same size the protocol benchmark uses).
TEXT = ("Draft communique, paragraph 7: " + "the parties agree to continue talks. " * 40)[:1024]
# Throwaway identities made in the run.
PASSPHRASES = {"tehran": "tehran bench passphrase", "washington": "washington bench passphrase"}


def securechan_command() -> list[str]:
    """The console script next to the running interpreter (as installed)."""
    found = shutil.which("securechan", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit(f"no securechan console script next to {sys.executable}: pip install -e .")
    return [found]


class Relay:
    """``securechan relay serve --port 0`` in a child process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        log = open(self.root / "relay.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = proc = subprocess.Popen(
            [*securechan_command(), "relay", "serve", "--port", "0", "--data", self.root / "data"],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in proc.stdout or ():
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"the relay did not start: {self.root / 'relay.log'}")
            m = re.match(r"listening on (https?://\S+)$", line.strip())
            if m:
                self.url = m.group(1)
                return self.url

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self._log.close()


@dataclass
class Delegation:
    name: str
    home: Path

    @property
    def passphrase(self) -> str:
        return PASSPHRASES[self.name]

    def argv(self, *args: object) -> list[str]:
        return [*securechan_command(), "--home", str(self.home), *map(str, args)]

    def run(self, *args: object, cwd: Path | None = None) -> Timing:
        return timed(self.argv(*args), clean_env(self.passphrase), cwd or self.home.parent)


@dataclass
class World:
    """A relay on loopback and two delegations that have verified each other."""

    root: Path
    relay: Relay = field(init=False)
    t: Delegation = field(init=False)
    w: Delegation = field(init=False)

    def __post_init__(self) -> None:
        self.relay = Relay(self.root)
        self.t = Delegation("tehran", self.root / "tehran")
        self.w = Delegation("washington", self.root / "washington")

    def __enter__(self) -> World:
        self.root.mkdir(parents=True, exist_ok=True)
        url = self.relay.start()
        try:
            self._introduce(url)
        except BaseException:
            self.relay.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.relay.stop()

    def _introduce(self, url: str) -> None:
        files = {}
        for p in (self.t, self.w):
            p.run("init", "--name", p.name, "--kdf", KDF)
            p.run("register", "--relay", url)
            files[p.name] = self.root / f"{p.name}.id"
            p.run("id", "export", "-o", files[p.name])
        for p, other in ((self.t, self.w), (self.w, self.t)):
            p.run("contact", "add", files[other.name])
        numbers = {
            p.name: json.loads(p.run("contact", "show", o.name, "--json").out.stdout)
            for p, o in ((self.t, self.w), (self.w, self.t))
        }
        self.t.run("contact", "verify", "washington", numbers["washington"]["safety_number"])
        self.w.run("contact", "verify", "tehran", numbers["tehran"]["safety_number"])
        # One message each way: the session exists, both private queues too.
        for a, b in ((self.t, self.w), (self.w, self.t)):
            a.run("send", b.name, f"{a.name}: opening the channel")
            got = b.run("receive", "--json").out.stdout
            if f"{a.name}: opening the channel" not in got:
                raise RuntimeError(f"set-up message not received: {got}")


def installation() -> dict[str, Any]:
    """What is measured: where securechan is imported from (an install in
    site-packages, as ``pip install .`` makes it, or a source tree: an
    editable install or PYTHONPATH), and whether the console script that pip
    wrote imports ``re`` (pip before 25 does: about 6 ms here on its own)."""
    import sysconfig

    import securechan

    module = Path(securechan.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    script = Path(securechan_command()[0]).read_text("utf-8", errors="replace").splitlines()
    try:
        from importlib.metadata import version

        pip = version("pip")
    except Exception:  # no pip in this environment
        pip = "none"
    return {
        "securechan_from": str(module),
        "kind": "installed (site-packages)" if module.is_relative_to(site) else "source tree",
        "script_imports_re": any(line.strip() == "import re" for line in script[:8]),
        "pip": pip,
    }


def summarise(samples: dict[str, list[Timing]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, runs in samples.items():
        walls = [r.wall for r in runs]
        cpus = [r.cpu for r in runs]
        out[name] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "cpu_median_s": statistics.median(cpus),
            "runs": len(runs),
        }
    return out


def reference_cases(cwd: Path) -> dict[str, Callable[[], Timing]]:
    env = clean_env()
    py = sys.executable
    return {
        "python -c pass": lambda: timed([py, "-c", "pass"], env, cwd),
        'python -c "import securechan"': lambda: timed([py, "-c", "import securechan"], env, cwd),
        "securechan --version": lambda: timed([*securechan_command(), "--version"], env, cwd),
    }


# Measured while both homes' agents run (docs/AGENT.md): the thin command
# line, beside python -c pass and gpg through a gpg-agent holding the
# passphrase, all in the same rounds.
AGENT_REFERENCE = "python -c pass (agent phase)"
AGENT_ROWS = (
    "through the agent: securechan --version",
    "through the agent: securechan send (1 KiB text)",
    "through the agent: securechan receive (1 message)",
    "through the agent: securechan receive (nothing waiting)",
    "gpg --sign --encrypt through gpg-agent (passphrase cached)",
    "gpg --sign --encrypt, key without passphrase",
)


def _gpg_pair(root: Path) -> dict[str, Callable[[Path, Path], Timing]]:
    """Timed ``gpg --sign --encrypt`` of a file, asking for no passphrase:
    once through a gpg-agent that caches tehran's passphrase (gpg-agent
    caches the passphrase, not the key, so each signature still runs the
    key's S2K) and once with a key that has no passphrase (gpg's floor).
    Empty without gpg."""
    exe = shutil.which("gpg")
    if exe is None:
        return {}
    from gpg_home import Gpg

    passfile, nopass = root / "gpg-passphrase", root / "gpg-nopass"
    passfile.write_text("bench gpg passphrase\n")
    nopass.write_text("")
    first = root / "gpg-first.txt"
    first.write_text("the first message caches the passphrase")
    gw = Gpg(exe, root / "gnupg-w", "washington", passfile)
    fp_w = gw.generate()
    gw.run("--export", "--armor", "-o", root / "w.asc", fp_w)
    out: dict[str, Callable[[Path, Path], Timing]] = {}
    for row, home, pw in ((AGENT_ROWS[4], "gnupg-t", passfile), (AGENT_ROWS[5], "gnupg-n", nopass)):
        g = Gpg(exe, root / home, "tehran", pw)
        (g.home / "gpg-agent.conf").write_text("default-cache-ttl 600\nmax-cache-ttl 7200\n")
        g.generate()
        g.run("--import", root / "w.asc")
        g.run("--quick-lsign-key", fp_w)
        # Once with the passphrase, which the agent then caches.
        g.run(
            "-u", "tehran", "-r", "washington", "--sign", "--encrypt", "-o", root / "m.gpg", first
        )
        _gpgs.append(g)

        def sign_encrypt(src: Path, dst: Path, env: dict[str, str] = g.env) -> Timing:
            argv = [exe, "--batch", "--quiet", "--yes", "-u", "tehran", "-r", "washington"]
            return timed([*argv, "--sign", "--encrypt", "-o", str(dst), str(src)], env, root)

        out[row] = sign_encrypt
    _gpgs.append(gw)
    return out


_gpgs: list[Any] = []


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux
    ``/proc``; 0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_pid(d: Delegation) -> int:
    return int(json.loads(d.run("agent", "status", "--json").out.stdout)["pid"])


# The CPU time the long-running processes spend per send through the agent
# (their /proc counters over the send rows' rounds): the sender's agent,
# the relay, and the recipient's agent (woken by the relay's push).
SERVER_CPU = ("sender's agent", "relay", "recipient's agent")
# Sends through the agent while the recipient's agent is stopped (in
# reality the recipient is on another machine; here it shares the cores).
SOLO_ROW = "through the agent: securechan send (1 KiB text), recipient's agent stopped"
SOLO_REFERENCE = "python -c pass (recipient's agent stopped)"


def _server_cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: process_cpu(pid) for name, pid in pids.items()}


def _add_cpu(total: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
    for name in after:
        total[name] = total.get(name, 0.0) + after[name] - before[name]


def agent_phase(
    world: World,
    root: Path,
    runs: int,
    samples: dict[str, list[Timing]],
    server_cpu: dict[str, dict[str, float]],
) -> None:
    """Start both homes' agents, then time the thin command line beside
    python -c pass and gpg through a caching gpg-agent, in the same rounds;
    then sends with the recipient's agent stopped. ``server_cpu`` gets the
    CPU milliseconds per send of the agents and the relay."""
    runtime = Path(tempfile.mkdtemp(prefix="sc-bench-", dir="/tmp"))
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)  # short socket paths
    gpgs = _gpg_pair(root)
    msg = root / "gpg-msg.txt"
    env = clean_env()
    py = sys.executable
    world.t.run("agent", "start")
    world.w.run("agent", "start")
    pids = {
        SERVER_CPU[0]: agent_pid(world.t),
        SERVER_CPU[1]: world.relay.proc.pid if world.relay.proc is not None else 0,
        SERVER_CPU[2]: agent_pid(world.w),
    }
    both: dict[str, float] = {}
    try:
        for i in range(runs):
            samples.setdefault(AGENT_REFERENCE, []).append(timed([py, "-c", "pass"], env, root))
            version = timed([*securechan_command(), "--version"], env, root)
            samples.setdefault(AGENT_ROWS[0], []).append(version)
            line = f"agent round {i}: {TEXT}"[:1024]
            before = _server_cpu(pids)
            samples.setdefault(AGENT_ROWS[1], []).append(world.t.run("send", "washington", line))
            time.sleep(0.05)  # the recipient's agent's pass the push woke
            _add_cpu(both, before, _server_cpu(pids))
            got = world.w.run("receive", "--json")
            if line not in got.out.stdout:
                raise RuntimeError(f"the agent's receive did not show round {i}: {got.out}")
            samples.setdefault(AGENT_ROWS[2], []).append(got)
            samples.setdefault(AGENT_ROWS[3], []).append(world.w.run("receive", "--json"))
            msg.write_text(line)
            for row, gpg in gpgs.items():
                samples.setdefault(row, []).append(gpg(msg, root / "m.gpg"))
        server_cpu["recipient's agent running"] = {k: v * 1000 / runs for k, v in both.items()}
        world.w.run("agent", "stop")
        del pids[SERVER_CPU[2]]
        solo: dict[str, float] = {}
        lines = []
        for i in range(runs):
            samples.setdefault(SOLO_REFERENCE, []).append(timed([py, "-c", "pass"], env, root))
            lines.append(f"solo round {i}: {TEXT}"[:1024])
            before = _server_cpu(pids)
            samples.setdefault(SOLO_ROW, []).append(world.t.run("send", "washington", lines[-1]))
            _add_cpu(solo, before, _server_cpu(pids))
        server_cpu["recipient's agent stopped"] = {k: v * 1000 / runs for k, v in solo.items()}
        got = world.w.run("receive", "--json").out.stdout
        if any(line not in got for line in lines):
            raise RuntimeError("a send made while the recipient's agent was stopped is missing")
    finally:
        for p in (world.t, world.w):
            subprocess.run(
                p.argv("agent", "stop"),
                env=clean_env(),
                check=False,
                stdout=subprocess.DEVNULL,  # keep --json output one document
                stderr=subprocess.DEVNULL,  # washington's was stopped already
            )
        for g in _gpgs:
            g.stop_agent()
        shutil.rmtree(runtime, ignore_errors=True)


def key_unlock_seconds(home: Path, passphrase: str, repeats: int) -> float:
    """In-process median of one Argon2id unlock of a key file (the KDF share)."""
    from securechan.identity import Keystore

    store = Keystore(home)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        store.unlock(passphrase)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(runs: int) -> dict[str, Any]:
    samples: dict[str, list[Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="securechan-bench-cli-") as tmp:
        root = Path(tmp)
        with World(root) as world:
            refs = reference_cases(root)
            names = list(refs)
            for i in range(runs):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    samples.setdefault(name, []).append(refs[name]())
                line = f"round {i}: {TEXT}"[:1024]
                sent = world.t.run("send", "washington", line)
                samples.setdefault("securechan send (1 KiB text)", []).append(sent)
                got = world.w.run("receive", "--json")
                if line not in got.out.stdout:
                    raise RuntimeError(f"receive did not show the message of round {i}")
                samples.setdefault("securechan receive (1 message)", []).append(got)
                empty = world.w.run("receive", "--json")
                samples.setdefault("securechan receive (nothing waiting)", []).append(empty)
            unlock = key_unlock_seconds(world.t.home, world.t.passphrase, max(3, runs // 2))
            server_cpu: dict[str, dict[str, float]] = {}
            agent_phase(world, root, runs, samples, server_cpu)
    results = summarise(samples)
    ref = results["python -c pass"]["median_s"]
    imp = results['python -c "import securechan"']["median_s"]
    rows = []
    for name in (
        'python -c "import securechan"',
        "securechan --version",
        "securechan send (1 KiB text)",
        "securechan receive (1 message)",
        "securechan receive (nothing waiting)",
        *(n for n in AGENT_ROWS if n in results),
        SOLO_ROW,
    ):
        ours = results[name]["median_s"]
        if name in AGENT_ROWS:  # against the reference measured beside it
            ref = results[AGENT_REFERENCE]["median_s"]
        elif name == SOLO_ROW:
            ref = results[SOLO_REFERENCE]["median_s"]
        rows.append(
            {
                "name": f"CLI cold start: {name}",
                "ours": ours,
                "reference_name": _reference(name),
                "reference": ref,
                "ratio": ours / ref,
                "unit": "s",
                "note": f"over import securechan: {ours / imp:.2f}x" if ours != imp else "",
            }
        )
    return {
        "environment": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(),
        },
        "installation": installation(),
        "runs": runs,
        "kdf": KDF,
        "key_unlock_s": unlock,
        "results": results,
        "server_cpu_ms_per_send": server_cpu,
        "rows": rows,
    }


def _reference(name: str) -> str:
    if name in AGENT_ROWS:
        return AGENT_REFERENCE
    return SOLO_REFERENCE if name == SOLO_ROW else "python -c pass"


def markdown(out: dict[str, Any]) -> str:
    inst = out["installation"]
    lines = [
        f"CLI cold start, whole processes, median of {out['runs']} runs "
        f"(key files at --kdf {out['kdf']}; one Argon2id unlock takes "
        f"{out['key_unlock_s'] * 1000:.0f} ms in-process).",
        f"securechan from {inst['securechan_from']} ({inst['kind']}); pip {inst['pip']}; "
        f"the console script {'imports' if inst['script_imports_re'] else 'does not import'} re.",
        "",
        "| command | median ms | min ms | child CPU ms | / python -c pass |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in out["results"].items():
        ref = out["results"][_reference(name)]["median_s"]
        lines.append(
            f"| `{name}` | {r['median_s'] * 1000:.0f} | {r['min_s'] * 1000:.0f} "
            f"| {r['cpu_median_s'] * 1000:.0f} | {r['median_s'] / ref:.2f} |"
        )
    lines += ["", "CPU ms per send through the agent, besides the command's own process:"]
    for when, cpu in out["server_cpu_ms_per_send"].items():
        lines.append(f"- {when}: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
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
