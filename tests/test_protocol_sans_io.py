"""``securechan/protocol/`` is sans-I/O (DESIGN.md, STYLE.md "Pure core"):
no files, sockets, processes, clocks or global randomness. Checked on the
source of every module of the package, new ones included: the only imports
outside securechan are pure standard-library modules (time comes in as
``now=``, randomness as ``rand=``, keys through ``securechan.primitives``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parent.parent / "securechan" / "protocol"
PURE = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "typing"}
PURE |= {"unicodedata", "struct", "itertools", "functools", "math", "bisect", "hashlib"}
PURE |= {"re", "base64", "binascii"}


@pytest.mark.parametrize("path", sorted(PROTOCOL.glob("*.py")), ids=lambda p: p.name)
def test_protocol_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == "securechan" or name.startswith("securechan."):
                continue
            assert name in PURE, f"{path.name} imports {name}: protocol/ is sans-I/O"


def test_the_split_modules_are_checked() -> None:
    names = {p.name for p in PROTOCOL.glob("*.py")}
    assert {"peer_chain.py", "session_state.py", "ratchet_record.py", "ratchet_cache.py"} <= names
