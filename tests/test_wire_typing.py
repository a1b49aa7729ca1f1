"""``mypy --strict`` checks the field names of wire records (issue 12, item 3,
"Must show").

A record declared with ``@wire.record`` is a plain dataclass to the type
checker: a misspelt field is an unknown attribute when read and an unexpected
keyword when built. The test writes small modules that use real records of
the package, runs mypy on them with the project's configuration, and requires
the misspellings to be reported (and the correct spellings to pass). The dict
API the records replaced (``wire.decode(SCHEMA, data)["name"]``) is shown
passing with a misspelling: that is the gap the declarations close.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("SECURECHAN_REQUIRE_MYPY"):
    import mypy  # noqa: F401  (.ci/run sets the variable: there this test never skips)
else:
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the test extra)")

ROOT = Path(__file__).resolve().parent.parent

_HEAD = """\
from securechan import wire
from securechan.audit.log_records import MESSAGE, MessageEvent
from securechan.client.generations import _ENTRY, _Entry
from securechan.documents import DocumentSignature, DocumentStatement
from securechan.identity.contacts import Contact
from securechan.identity.keys import PublicIdentity
"""

GOOD = (
    _HEAD
    + """

def seq_of(data: bytes) -> int:
    return MessageEvent.from_bytes(data).seq


def event(conversation: bytes, digest: bytes, peer: bytes) -> bytes:
    return MessageEvent(conversation=conversation, seq=1, payload_hash=digest, peer=peer).to_bytes()


def contact(identity: PublicIdentity) -> Contact:
    return Contact(name="alice", identity=identity, verified=False, added=0)


def signature(statement: DocumentStatement, sig: bytes) -> bytes:
    return DocumentSignature(statement=statement, signature=sig).to_bytes()


def rolled_back(data: bytes) -> bool:
    return _Entry.from_bytes(data).rolled_back
"""
)

# Each misspelt line and the error mypy must give for it.
BAD = (
    _HEAD
    + """

def seq_of(data: bytes) -> int:
    return MessageEvent.from_bytes(data).seqq  # BAD attr-defined


def event(c: bytes, d: bytes, p: bytes) -> bytes:
    return MessageEvent(conversation=c, seq=1, payload_hsh=d, peer=p).to_bytes()  # BAD call-arg


def contact(identity: PublicIdentity) -> Contact:
    return Contact(name="alice", identiy=identity, verified=False, added=0)  # BAD call-arg


def signature(statement: DocumentStatement, sig: bytes) -> bytes:
    return DocumentSignature(statement=statement, sig=sig).to_bytes()  # BAD call-arg


def rolled_back(data: bytes) -> bool:
    return _Entry.from_bytes(data).rolledback  # BAD attr-defined
"""
)

# The dict API: the same misspelling type-checks (the value is Any).
DICT_API = (
    _HEAD
    + """

def seq_of(data: bytes) -> int:
    return int(wire.decode(MESSAGE, data)["seqq"])


def rolled_back(data: bytes) -> bool:
    return bool(wire.decode(_ENTRY, data)["rolledback"])  # as state.gen was read before
"""
)


def _mypy(tmp_path: Path, cache: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # This tree's securechan, whatever the venv has installed.
    env["MYPYPATH"] = str(ROOT)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            "--no-error-summary",
            "--show-error-codes",
            *map(str, files),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def test_mypy_strict_refuses_misspelt_wire_fields(tmp_path: Path, cache: Path) -> None:
    paths = {}
    for name, text in (("good", GOOD), ("bad", BAD), ("dict_api", DICT_API)):
        paths[name] = tmp_path / f"{name}.py"
        paths[name].write_text(text)
    proc = _mypy(tmp_path, cache, *paths.values())
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if ": error:" in line]

    # Every line marked BAD has the expected error, and nothing else fails.
    expected = {
        i: m.group(1)
        for i, line in enumerate(BAD.splitlines(), start=1)
        if (m := re.search(r"# BAD ([a-z-]+)", line))
    }
    assert len(expected) == 5
    found: dict[int, set[str]] = {}
    for line in errors:
        m = re.match(r"bad\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        assert m, f"unexpected error: {line}\n{out}"
        found.setdefault(int(m.group(1)), set()).add(m.group(2))
    # (A misspelt attribute is also "Returning Any": the line's other error.)
    assert set(found) == set(expected), out
    for line_no, code in expected.items():
        assert code in found[line_no], out
    assert 'has no attribute "seqq"; maybe "seq"?' in out
    assert 'Unexpected keyword argument "payload_hsh" for "MessageEvent"' in out
    assert 'Unexpected keyword argument "identiy" for "Contact"' in out
    assert 'Unexpected keyword argument "sig" for "DocumentSignature"' in out
    assert 'has no attribute "rolledback"; maybe "rolled_back"?' in out
    # The correct spellings and the (unchecked) dict API pass.
    assert proc.returncode == 1, out


def test_mypy_strict_passes_the_correct_spelling_alone(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "good.py"
    path.write_text(GOOD)
    proc = _mypy(tmp_path, cache, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
