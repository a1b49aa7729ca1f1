"""``securechan demo``: the back-channel on this machine, attacks included."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from securechan.cli.core import EXIT_VERIFY, _columns, _emit_json, _json_option
from securechan.errors import UsageError
from securechan.terminal_text import block, inline


@click.command()
@click.option(
    "--keep", type=click.Path(file_okay=False, path_type=Path), help="Run in DIR and keep it."
)
@_json_option
def demo(keep: Path | None, as_json: bool) -> None:
    """Play the back-channel on this machine, attacks included.

    Two relays (muscat, the mediator; geneva, its witness) run as real
    processes on loopback; tehran and washington talk through muscat, which
    then reads, tampers, replays, drops and forks its log; each attempt must
    be caught. Exit 0 only if every step held. Runs in a temporary folder
    (kept with --keep DIR)."""
    import tempfile

    from securechan.demo import run_demo
    from securechan.primitives import KDF_MODERATE

    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise UsageError(f"{keep} is not empty")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="securechan-demo-") as tmp:
        folder = keep if keep is not None else Path(tmp)
        steps = []
        for step in run_demo(folder, kdf=KDF_MODERATE):
            steps.append(step)
            if not as_json:
                _print_step(step)
    ok = all(s.ok for s in steps)
    if as_json:
        from securechan.cli.results import DemoReport

        report = DemoReport(
            ok=ok,
            seconds=round(time.perf_counter() - t0, 3),
            steps=tuple(s.to_json() for s in steps),
        )
        _emit_json(report.to_json())
    else:
        verdict = "every step held" if ok else "SOME STEPS FAILED"
        click.echo(f"\n{verdict} ({time.perf_counter() - t0:.1f} s)")
    if not ok:
        sys.exit(EXIT_VERIFY)


def _print_step(step: Any) -> None:
    tty = sys.stdout.isatty()
    mark = ("CAUGHT" if step.ok else "MISSED") if step.attack else "ok" if step.ok else "FAILED"
    colour = "green" if step.ok else "red"
    click.echo(f"[{click.style(mark, fg=colour) if tty else mark}] {inline(step.title)}")
    for k, v in step.details.items():  # details quote relays and messages
        head = f"       {inline(k)}: "
        click.echo(head + block(v, width=_columns(), indent=len(head)))
