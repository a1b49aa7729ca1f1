"""Relay start-up time against the envelopes relay.db holds (issue 15).

For each N, a fresh data folder gets one queue holding N envelopes of SIZE
bytes received just now (written straight into relay.db with SQLite while the
relay is stopped), one start that logs them (the first start of a relay that
had no log appends every held envelope), then REPEAT timed starts, each from
spawning ``securechan relay serve`` to its "listening on" line, each
followed by SIGTERM. Run from a source tree:

    PYTHONPATH=$PWD .venv/bin/python bench/bench_relay_startup.py 0 1000 4000
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).with_name("securechan")
SIZE = 256 * 1024
REPEAT = 3


def start(data: Path) -> tuple[subprocess.Popen[bytes], float]:
    out = data.parent / "stdout"
    t0 = time.perf_counter()
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [str(EXE), "relay", "serve", "--port", "0", "--data", str(data)],
            stdout=f,
            stderr=(data.parent / "stderr").open("ab"),
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    while not re.search(r"^listening on ", out.read_text("utf-8", "replace"), re.M):
        if proc.poll() is not None:
            raise SystemExit("the relay did not start: " + (data.parent / "stderr").read_text())
        time.sleep(0.005)
    return proc, time.perf_counter() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise SystemExit("the relay did not stop cleanly")


def fill(db: Path, n: int) -> None:
    conn = sqlite3.connect(db)
    rid = os.urandom(16)
    now = int(time.time())
    conn.execute(
        "INSERT INTO queues (rid, sid, recipient_key, contact, created) VALUES (?, ?, ?, 0, ?)",
        (rid, os.urandom(16), os.urandom(32), now),
    )
    conn.executemany(
        "INSERT INTO envelopes (rid, seq, msg_id, data, received)"
        " VALUES (?, ?, ?, CAST(randomblob(16) || zeroblob(?) AS BLOB), ?)",
        ((rid, i + 1, os.urandom(16), SIZE - 16, now) for i in range(n)),
    )
    conn.commit()
    conn.close()


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [0, 1000]
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            stop(start(data)[0])  # creates relay.db and tlog.db
            fill(data / "relay.db", n)
            proc, first = start(data)  # logs the N envelopes
            stop(proc)
            times = []
            for _ in range(REPEAT):
                proc, t = start(data)
                times.append(t)
                stop(proc)
            size = (data / "relay.db").stat().st_size
            print(
                f"N={n:5d} envelopes ({size / 2**20:7.1f} MiB relay.db): first start {first:.2f} s,"
                f" later starts min {min(times):.2f} s median {statistics.median(times):.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
