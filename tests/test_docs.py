"""The documentation's promises: its examples run, its commands exist.

* Every fenced ```python block in ``docs/*.md`` that is preceded by a line
  ``<!-- runnable -->`` (or ``<!-- runnable: relay -->``) runs as written, in a
  fresh temporary folder, as ``python -c`` in a subprocess. A ``relay`` block
  gets a real ``securechan relay serve`` on a free loopback port, named by the
  environment variable ``RELAY_URL`` (the docs read it with
  ``os.environ.get("RELAY_URL", "http://127.0.0.1:8470")``, so a reader with a
  relay on the default port runs the same code).
* ``docs/CLI-REFERENCE.md`` is exactly what ``tools/gen_cli_reference.py``
  renders from the click commands now. When it fails, regenerate it:
  ``python tools/gen_cli_reference.py``.
* Every ``securechan ...`` line in the shell blocks of the guides names real
  commands and real options (no invented flags).

The README's own example and quick-start lines are checked by
``tests/test_readme.py``.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from securechan.cli import cli

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MARKER = re.compile(
    r"^<!-- runnable(?:: (?P<needs>[a-z ,]+))? -->\n```python\n(?P<code>.*?)^```", re.M | re.S
)
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console|shell)\n(.*?)^```", re.M | re.S)
# Guides whose shell blocks are checked against the command tree.
GUIDES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def runnable_blocks() -> list[tuple[str, int, str, bool]]:
    out = []
    for path in sorted(DOCS.glob("*.md")):
        for i, m in enumerate(MARKER.finditer(path.read_text("utf-8")), 1):
            needs = {n.strip() for n in (m.group("needs") or "").split(",") if n.strip()}
            out.append((path.name, i, m.group("code"), "relay" in needs))
    return out


BLOCKS = runnable_blocks()


def _securechan() -> str:
    found = shutil.which("securechan", path=str(Path(sys.executable).parent))
    assert found is not None, f"no securechan console script next to {sys.executable}"
    return found


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real relay on a free loopback port, for the blocks that need one."""
    root = tmp_path_factory.mktemp("docs-relay")
    with open(root / "relay.log", "wb") as log:
        proc = subprocess.Popen(
            [_securechan(), "relay", "serve", "--port", "0", "--data", str(root / "data")],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=_env(),
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout or ():
            lines.put(line)
        lines.put(None)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    url = ""
    deadline = time.monotonic() + 30
    while not url:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"the relay did not start:\n{(root / 'relay.log').read_text()}")
        m = re.match(r"listening on (http://127\.0\.0\.1:\d+)$", line.strip())
        url = m.group(1) if m else ""
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pumper.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_docs_have_runnable_blocks() -> None:
    names = {name for name, *_ in BLOCKS}
    assert "LIBRARY.md" in names, "docs/LIBRARY.md should mark its examples runnable"


@pytest.mark.parametrize(
    ("doc", "index", "code", "needs_relay"),
    BLOCKS,
    ids=[f"{name}-{i}" for name, i, _, _ in BLOCKS],
)
def test_runnable_block(
    doc: str,
    index: int,
    code: str,
    needs_relay: bool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    env = _env()
    if needs_relay:
        env["RELAY_URL"] = request.getfixturevalue("relay_url")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, f"docs/{doc}, runnable block {index} failed:\n{out.stderr}"


# --- the generated CLI reference ---------------------------------------------------


def _generator() -> object:
    path = REPO / "tools" / "gen_cli_reference.py"
    spec = importlib.util.spec_from_file_location("gen_cli_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    rendered: str = _generator().render()  # type: ignore[attr-defined]
    committed = (DOCS / "CLI-REFERENCE.md").read_text("utf-8")
    if committed != rendered:
        old, new = committed.splitlines(), rendered.splitlines()
        first = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
            min(len(old), len(new)),
        )
        pytest.fail(
            "docs/CLI-REFERENCE.md no longer matches the commands' --help "
            f"(first difference at line {first + 1}). Regenerate it with:\n"
            "    python tools/gen_cli_reference.py"
        )


# --- command lines in the guides --------------------------------------------------


def _check_command_line(line: str) -> str | None:
    """None if ``line`` (after 'securechan') uses only real commands and options."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    cmd: click.Command = cli
    path = ["securechan"]
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if tok in {"|", "||", "&&", ";", ">", ">>", "<", "&", ")"}:
            break
        if tok.startswith("-") and tok != "-":
            name = tok.split("=", 1)[0]
            params = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            if name in {"-h", "--help"}:
                i += 1
                continue
            if name not in params:
                return f"{' '.join(path)} has no option {name}"
            param = params[name]
            takes_value = isinstance(param, click.Option) and not (param.is_flag or param.count)
            i += 2 if takes_value and "=" not in tok else 1
            continue
        if isinstance(cmd, click.Group):
            sub = cmd.get_command(click.Context(cmd), tok)  # the root loads lazily
            if sub is None:
                return f"{' '.join(path)} has no command {tok!r}"
            cmd = sub
            path.append(tok)
        i += 1
    if isinstance(cmd, click.Group) and len(path) > 1 and "--help" not in tokens:
        return f"{' '.join(path)} is a group: name one of its commands"
    return None


def command_lines() -> list[tuple[str, str]]:
    out = []
    for path in GUIDES:
        if path.name in {"CLI-REFERENCE.md"}:
            continue
        for block in SHELL_BLOCK.findall(path.read_text("utf-8")):
            for raw in block.splitlines():
                line = raw.strip().removeprefix("$ ")
                if line.startswith("securechan "):
                    out.append((path.name, line))
    return out


LINES = command_lines()


@pytest.mark.parametrize(("doc", "line"), LINES, ids=[f"{d}:{ln[:60]}" for d, ln in LINES])
def test_guide_command_lines_exist(doc: str, line: str) -> None:
    problem = _check_command_line(line)
    assert problem is None, f"{doc}: `{line}`: {problem}"


def test_the_checker_catches_invented_flags() -> None:
    assert _check_command_line("securechan send washington hi") is None
    assert _check_command_line("securechan --home h receive --follow --timeout 5") is None
    assert _check_command_line("securechan send washington hi --sign") is not None
    assert _check_command_line("securechan contact frobnicate x") is not None
    assert _check_command_line("securechan contact") is not None
