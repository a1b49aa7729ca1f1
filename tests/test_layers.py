"""Architecture rules, checked on the source: layers point down, crypto stays fenced.

* Only ``securechan/primitives.py`` imports ``cryptography`` or ``nacl``.
* Only the ``securechan/cli/`` package (the top layer) imports ``click``.
* ``import securechan`` loads neither click nor aiohttp (CLI start-up cost).
* Each module imports only modules of its own layer or below (DESIGN.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "securechan"

# Lower number = lower layer. A module may import only its rank or lower.
RANKS = {
    "errors": 0,
    "timestamps": 0,
    "strict_json": 1,
    "primitives": 1,
    "wire": 2,
    "armor": 2,
    "terminal_text": 2,
    "identity": 3,
    "documents": 4,
    "protocol": 4,
    "audit": 5,
    "transport": 6,
    "relay": 6,
    "client": 7,
    "testing": 7,
    "demo": 8,
    "cli": 9,
    "__init__": 8,
    "__main__": 9,
}


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_module_has_a_layer() -> None:
    for path in _modules():
        assert _layer(path) in RANKS, f"{path} is in no layer: add it to RANKS and DESIGN.md"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_layering(path: Path) -> None:
    layer = _layer(path)
    for name in _imports(path):
        top = name.split(".")[0]
        if top in ("cryptography", "nacl"):
            assert path.name == "primitives.py", f"{path} imports {name}"
        if top == "click":
            assert layer == "cli", f"{path} imports click"
        if top == "aiohttp":
            assert layer in ("relay", "transport", "client", "testing", "cli"), (
                f"{path} imports aiohttp"
            )
        if top == "securechan" and name != "securechan":
            target = name.split(".")[1]
            assert RANKS[target] <= RANKS[layer], f"{path} ({layer}) imports {name}: upward arrow"


def test_import_securechan_stays_light() -> None:
    code = (
        "import sys, securechan; print(sorted(m for m in ('click', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_listed() -> None:
    import securechan

    for name in securechan.__all__:
        assert hasattr(securechan, name), name
    for name in (
        "Identity",
        "PublicIdentity",
        "Keystore",
        "Contacts",
        "sign_document",
        "verify_document",
        "safety_number",
        "SecurechanError",
    ):
        assert name in securechan.__all__
