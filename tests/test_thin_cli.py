"""The thin command line stays thin (issue 14, docs/AGENT.md "The thin
command line"): what a command through a running agent imports is pinned,
so a new import on that path fails here instead of slowing every command
unnoticed; and the light helpers it uses instead of the heavy modules
(json_text for json.dumps, the lazy patterns of terminal_text, the C
scanner of strict_json) give exactly what the heavy ones gave.

The processes are real: a relay process, two homes, an agent process, and
each command run as ``python -X importtime`` (the interpreter lists every
module it imports), compared with the bare interpreter's own list.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechan import terminal_text
from securechan.json_text import dumps
from tests.adversary.parties import Party, introduce, make_people, transcript
from tests.adversary.relay import RelayProcess, clean_env, running_relay
from tests.adversary.world import PASSPHRASES

# What the fast path may import beyond the bare interpreter. A module added
# here costs every command through the agent its import time: measure it
# (bench/bench_cli.py) before adding one.
THIN = {
    "__future__",
    "securechan",
    "securechan.lazy",
    "securechan.cli",
    "securechan.cli.fast",
    "securechan.cli.render",
    "securechan.json_text",
    "_json",
    "securechan.terminal_text",
    "securechan.client",
    "securechan.client.agent_socket",
    "_socket",
    "securechan.strict_json",
    "itertools",
    "securechan.client.agent_paths",
    "_sha256",  # Python 3.11
    "_sha2",  # Python 3.12 and later
    "securechan.home",
}
VERSION = {"__future__", "securechan", "securechan.lazy", "securechan.cli"}
# Named, so the failure says what came back: each costs milliseconds.
NEVER = (
    "re",
    "enum",
    "typing",
    "pathlib",
    "urllib",
    "json",
    "socket",
    "hashlib",
    "securechan.errors",
    "click",
    "aiohttp",
    "cryptography",
    "nacl",
    "securechan.client.channel",
    "securechan.client.agent_client",
)
# The console script's own lines, as pip >= 25 writes them (older pip adds
# `import re`: docs/AGENT.md, Measured).
PROBE = (
    "import sys\nfrom securechan.cli import main\nsys.argv[0] = 'securechan'\nsys.exit(main())\n"
)


def _imported(args: list[str], env: dict[str, str]) -> tuple[set[str], Any]:
    """The modules ``python -X importtime -c PROBE args`` imports, and the run."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    names.discard("imported package")
    return names, out


@pytest.fixture(scope="module")
def bare() -> set[str]:
    """What the interpreter imports before any line of ours."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=True,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"imported package"}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with running_relay(tmp_path_factory.mktemp("thin-relay")) as r:
        yield r


@pytest.fixture
def pair(
    relay: RelayProcess,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Party, Party]]:
    runtime = Path(tempfile.mkdtemp(prefix="sc-rt-", dir="/tmp"))  # short socket paths
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    people = make_people(
        tmp_path_factory.mktemp("thin-pristine"),
        tmp_path,
        {"tehran": PASSPHRASES["tehran"], "washington": PASSPHRASES["washington"]},
    )
    t, w = people["tehran"], people["washington"]
    asyncio.run(asyncio.wait_for(introduce(t, relay.url, w, relay.url), 60))
    yield t, w
    t.run("agent", "stop")
    subprocess.run(["rm", "-rf", str(runtime)], check=False)


def _check(loaded: set[str], bare: set[str], allowed: set[str], out: Any) -> None:
    extra = loaded - bare
    assert [m for m in NEVER if m in extra] == [], transcript(out)
    assert extra <= allowed, f"new imports on the thin path: {sorted(extra - allowed)}"


def test_version_imports_only_the_version(bare: set[str]) -> None:
    loaded, out = _imported(["--version"], clean_env())
    assert out.returncode == 0 and out.stdout == "securechan, version 0.1.0\n", out
    _check(loaded, bare, VERSION, out)


def test_commands_through_the_agent_import_only_the_thin_set(
    pair: tuple[Party, Party], bare: set[str]
) -> None:
    t, w = pair
    t.ok("agent", "start")
    env = clean_env(t.passphrase)
    home = ["--home", str(t.home)]
    text = ("Draft communique, paragraph 7: " + "the parties agree. " * 60)[:1024]
    runs = {
        "send": ["send", "washington", text],
        "receive --json (nothing waiting)": ["receive", "--json"],
        "history --json": ["history", "--json"],
        "status": ["status"],
    }
    for name, args in runs.items():
        loaded, out = _imported([*home, *args], env)
        assert out.returncode == 0, (name, transcript(out))
        _check(loaded, bare, THIN, out)
    # A message waiting, received and printed through the agent.
    w.ok("send", "tehran", "an answer, printed by the thin path")
    loaded, out = _imported([*home, "receive"], env)
    assert out.returncode == 0 and "an answer, printed by the thin path" in out.stdout, out
    _check(loaded, bare, THIN, out)
    # An error answer keeps its exit code without importing the error tree.
    loaded, out = _imported([*home, "send", "nobody", "x"], env)
    assert out.returncode == 2 and "no contact named" in out.stderr, transcript(out)
    _check(loaded, bare, THIN, out)
    # History says the same through the light reader and writer as in-process.
    rows = [json.loads(line) for line in t.ok("history", "--json").splitlines()]
    assert rows and rows[-1]["summary"] == "an answer, printed by the thin path"


def test_the_probe_sees_imports(bare: set[str]) -> None:
    # The fence must be able to fail: the in-process command line (no agent)
    # loads click and the rest.
    loaded, out = _imported(["--home", "/nonexistent/securechan-home", "history"], clean_env())
    assert {"click", "re", "securechan.errors"} <= loaded - bare, out


# --- the light helpers give what the heavy ones gave ------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_json_values)
def test_json_text_is_json_dumps(value: Any) -> None:
    expected = json.dumps(
        value, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False
    )
    assert dumps(value) == expected


def test_json_text_refuses_what_json_dumps_refuses() -> None:
    for bad in (float("nan"), float("inf"), [float("-inf")]):
        with pytest.raises(ValueError, match="not JSON compliant"):
            dumps(bad)
    with pytest.raises(TypeError):
        dumps({"x": object()})
    # Keys that are not strings: left to json, which turns them into strings.
    assert dumps({2: "a", 1: None}) == '{"1":null,"2":"a"}'


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_inline_and_block_are_the_regular_expressions(text: str) -> None:
    flagged = re.compile(terminal_text._CLASS)
    expected = flagged.sub(lambda m: terminal_text.escape(m.group()), text)
    assert terminal_text.inline(text) == expected
    lines = re.split(r"\r?\n", text)
    assert terminal_text.block(text) == ("\n" + terminal_text.CONTINUATION).join(
        flagged.sub(lambda m: terminal_text.escape(m.group()), line) for line in lines
    )


def test_no_flagged_character_is_printable() -> None:
    # inline() returns printable text as it is without the pattern: true only
    # if no flagged character is printable. Every code point, checked.
    flagged = re.compile(terminal_text._CLASS)
    printable = [
        hex(c) for c in range(0x110000) if chr(c).isprintable() and flagged.fullmatch(chr(c))
    ]
    assert printable == []
