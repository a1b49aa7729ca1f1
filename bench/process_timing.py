"""Timing one whole process, for the command-line benchmarks
(``bench_cli.py``, ``bench_gpg.py``, ``gpg_home.py``): the wall clock and
the child's CPU time, in an environment stripped of securechan's
variables."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def clean_env(passphrase: str | None = None) -> dict[str, str]:
    # Without PYTHONDONTWRITEBYTECODE: an installed copy has its bytecode
    # (pip compiles it at install time, an editable one on first import), so
    # a child that recompiled every module from source on each run would
    # measure a start-up no user has.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SECURECHAN_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    if passphrase is not None:
        env["SECURECHAN_PASSPHRASE"] = passphrase
    return env


@dataclass
class Timing:
    """Wall-clock and child CPU seconds of one whole process."""

    wall: float
    cpu: float
    out: subprocess.CompletedProcess[str]


def timed(argv: Sequence[str], env: dict[str, str], cwd: Path) -> Timing:
    """Run ``argv`` to completion; raise if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
    return Timing(wall, cpu, out)
