"""The README's promises: its library example runs as written, and its
quick-start lines are the ones .ci/run executes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_library_example_runs_as_written(tmp_path: Path) -> None:
    section = README.split("## Library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    lines = code.group(1).strip().splitlines()
    assert len(lines) <= 10, "the README promises a 10-line example"
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"safety number: (\d{5} ){11}\d{5}", out.stdout)
    assert "signature by tehran verified" in out.stdout


def test_quick_start_has_two_commands() -> None:
    block = README.split("<!-- quickstart", 1)[1].split("<!-- /quickstart -->", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2
    assert commands[0].endswith("securechan demo")
    assert commands[1].endswith("pytest")


def test_benchmark_command_writes_a_report(tmp_path: Path) -> None:
    """The README's `bench/run_all.py` (one cheap benchmark of it, --quick)."""
    assert "bench/run_all.py" in README
    report = tmp_path / "RESULTS.md"
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent.parent / "bench" / "run_all.py"),
            "--quick",
            "--only",
            "signatures",
            "--output",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = report.read_text("utf-8")
    assert "## Machine" in text
    assert re.search(r"\| cpu \| .+ \|", text)
    # A row: our figure, the reference from the same run, and the ratio.
    assert re.search(
        r"\| hybrid sign \(200-byte document\) \| [\d,.]+ \| .+ \| [\d,.]+ \| [\d.]+ \|", text
    )
