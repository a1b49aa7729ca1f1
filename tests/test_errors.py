"""The error contract (docs/ERRORS.md): one exception tree, stable codes.

Every exception class the package defines is a SecurechanError (or on the
short allowlist below, each with its reason); every class of the tree has its
own stable code; docs/ERRORS.md lists exactly the codes of ``errors.Reason``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

import securechan
from securechan import errors
from securechan.errors import Reason, SecurechanError

ROOT = Path(__file__).resolve().parent.parent
ERRORS_DOC = ROOT / "docs" / "ERRORS.md"

# Exception classes deliberately outside the tree, by (package prefix, name).
ALLOWED_OUTSIDE = {
    # Wraps an exception no stage of the receive pipeline expects (a bug, a
    # database constraint). It must not be a SecurechanError: every
    # ``except SecurechanError`` there means "the peer's or the relay's
    # fault", and a bug must never be counted as one. It is reported as
    # ``internal-error`` (reason_of). The client split may move it to another
    # client module, hence the prefix.
    ("securechan.client", "Unexpected"),
    # Test infrastructure (tests/conftest.py's PostgreSQL server): never
    # raised by securechan itself; the fixture turns it into a skip or, in
    # CI, a failure.
    ("securechan.testing.postgres", "PostgresUnavailable"),
    # The agent's JSON-RPC error answer (docs/AGENT.md, Errors): built and
    # turned into an error frame inside the agent's server loop; what a
    # client raises for one is a class of the tree (agent_client.raise_for).
    ("securechan.agent.rpc", "RpcError"),
    # The thin command line's (issue 14): importing the error tree costs a
    # command through the agent more than the rest of its imports, so the
    # light socket client, the fast path and the strict JSON reader's hook
    # signal with these. None leaves its module's callers: agent_client maps
    # NoAgent and AgentAnswer onto the tree (AgentUnavailable, raise_for),
    # cli/fast.py prints a _Failure as one line and its exit code, and
    # strict_json turns _Refused into MalformedInput.
    ("securechan.client.agent_socket", "NoAgent"),
    ("securechan.client.agent_socket", "AgentAnswer"),
    ("securechan.cli.fast", "_Failure"),
    ("securechan.strict_json", "_Refused"),
}


def _modules() -> list[str]:
    # By file, not pkgutil.walk_packages: securechan/relay/ has no
    # __init__.py, and the walk would skip it.
    pkg = Path(securechan.__file__).parent
    names = []
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] == "__main__":  # running it would start the CLI
            continue
        names.append(".".join(parts))
    return names


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return list(found.values())


def _allowed(cls: type[BaseException]) -> bool:
    return any(
        cls.__module__.startswith(prefix) and cls.__qualname__ == name
        for prefix, name in ALLOWED_OUTSIDE
    )


def test_the_walk_sees_the_package() -> None:
    # The walk must reach the relay, the client and the CLI, or the next
    # test proves nothing.
    names = {f"{c.__module__}.{c.__qualname__}" for c in _exception_classes()}
    for expected in (
        "securechan.errors.MalformedInput",
        "securechan.relay.storage.QueueFull",
        "securechan.relay.tlog_witness.CosignatureRefused",
        "securechan.relay.api.ApiError",
        "securechan.strict_json._Refused",
    ):
        assert expected in names


def test_every_exception_is_in_the_tree() -> None:
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _exception_classes()
        if not issubclass(c, SecurechanError) and not _allowed(c)
    ]
    assert outside == [], "derive these from a class of securechan.errors (docs/ERRORS.md)"


def test_the_allowlist_is_not_stale() -> None:
    # An entry whose class is gone (or joined the tree) is removed.
    outside = {
        (c.__module__, c.__qualname__)
        for c in _exception_classes()
        if not issubclass(c, SecurechanError)
    }
    for prefix, name in ALLOWED_OUTSIDE:
        assert any(m.startswith(prefix) and n == name for m, n in outside), (prefix, name)


def _tree() -> list[type[SecurechanError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, SecurechanError)
    ]


def test_each_public_class_has_its_own_code() -> None:
    seen: dict[Reason, str] = {}
    for cls in _exception_classes():
        if not issubclass(cls, SecurechanError):
            continue
        assert isinstance(cls.code, Reason), cls
        if cls.__qualname__.startswith("_"):
            continue  # a private class may report its public parent's code
        assert "code" in vars(cls), f"{cls.__qualname__} has no code of its own"
        assert cls.code not in seen, f"{cls.__qualname__} reuses {seen[cls.code]}'s code"
        seen[cls.code] = cls.__qualname__


def test_codes_are_stable_kebab_case() -> None:
    for reason in Reason:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", reason.value), reason
    assert len({r.value for r in Reason}) == len(Reason)


def test_reason_of() -> None:
    from securechan.relay.storage import QueueFull

    assert errors.reason_of(errors.ContactNotFound("x")) == "contact-not-found"
    assert errors.reason_of(QueueFull()) == "queue-full"
    assert errors.reason_of(ValueError("a bug")) == "internal-error"


def test_usage_and_not_found_are_not_malformed_input() -> None:
    # A usage mistake must never look like a peer's malformed bytes (the
    # receive pipeline counts MalformedInput against the peer).
    assert not issubclass(errors.UsageError, errors.MalformedInput)
    assert not issubclass(errors.NotFound, errors.MalformedInput)
    # Existing ``except ContactNotFound`` keep working; NotFound catches it too.
    assert issubclass(errors.ContactNotFound, errors.NotFound)


def test_exit_codes_of_usage_and_not_found() -> None:
    from securechan.cli import _exit_code

    assert _exit_code(errors.UsageError("x")) == 2
    assert _exit_code(errors.NotFound("x")) == 2
    assert _exit_code(errors.ContactNotFound("x")) == 2


# --- docs/ERRORS.md -----------------------------------------------------------


def _documented_tree() -> list[tuple[str, str, str]]:
    """(indented class name, code, exit code) rows of the tree table."""
    text = ERRORS_DOC.read_text(encoding="utf-8")
    part = text.split("<!-- tree:begin -->")[1].split("<!-- tree:end -->")[0]
    rows = []
    for line in part.splitlines():
        m = re.fullmatch(r"\| `([^`]+)` \| `([a-z-]+)` \| (\d+) \|.*\|", line.strip())
        if m:
            rows.append((m[1], m[2], m[3]))
    return rows


def _documented_other_codes() -> list[str]:
    text = ERRORS_DOC.read_text(encoding="utf-8")
    part = text.split("<!-- other:begin -->")[1].split("<!-- other:end -->")[0]
    return re.findall(r"^\| `([a-z-]+)` \|", part, re.M)


def _walk(cls: type[SecurechanError], depth: int) -> list[tuple[int, type[SecurechanError]]]:
    out = [(depth, cls)]
    for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
        if sub.__module__.startswith("securechan") and not sub.__name__.startswith("_"):
            out += _walk(sub, depth + 1)
    return out


def _public_tree() -> list[tuple[int, type[SecurechanError]]]:
    _exception_classes()  # imports every module, so every subclass exists
    return _walk(SecurechanError, 0)


def expected_tree_rows() -> list[tuple[str, str, str]]:
    """The table docs/ERRORS.md must hold, from the classes themselves
    (``PYTHONPATH=. python -c 'import tests.test_errors as t; t.print_table()'``
    prints it, descriptions included)."""
    from securechan.cli import _exit_code

    rows = []
    for depth, cls in _public_tree():
        exit_code = _exit_code(cls.__new__(cls))
        rows.append(("\u00b7 " * depth + cls.__name__, cls.code.value, str(exit_code)))
    return rows


def print_table() -> None:  # pragma: no cover - a helper for editing the doc
    classes = [cls for _, cls in _public_tree()]
    for (name, code, exit_code), cls in zip(expected_tree_rows(), classes, strict=True):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        if cls.__module__ != "securechan.errors":
            doc += f" (`{cls.__module__}`)"
        print(f"| `{name}` | `{code}` | {exit_code} | {doc} |")


def test_errors_doc_lists_the_tree() -> None:
    assert _documented_tree() == expected_tree_rows()


def test_errors_doc_lists_every_code_and_invents_none() -> None:
    class_codes = {cls.code.value for _, cls in _public_tree()}
    others = _documented_other_codes()
    assert len(others) == len(set(others))
    assert set(others).isdisjoint(class_codes)
    documented = {code for _, code, _ in _documented_tree()} | set(others)
    assert documented == {r.value for r in Reason}


def test_cli_md_links_the_contract() -> None:
    assert "ERRORS.md" in (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("cls", _tree(), ids=lambda c: c.__name__)
def test_every_class_has_a_one_line_docstring(cls: type[SecurechanError]) -> None:
    assert cls.__doc__ and cls.__doc__.strip().splitlines()[0].endswith(".")


def test_old_entries_keep_their_class_names(tmp_path: Path) -> None:
    """A log written before the codes (reasons were class names) still
    verifies, and ``log show --json`` shows the old reason as it was next to
    a new entry's code."""
    from click.testing import CliRunner

    from securechan.audit.log import AuditLog
    from securechan.cli import cli
    from tests.conftest import NOW, fixed_identity

    home = tmp_path / "home"
    me = fixed_identity("tehran")
    with AuditLog.open(home, me) as log:
        # What a client before 2dec72b wrote: the Python class name.
        log.rejected("SplitView", "two roots for size 7", at=NOW)  # type: ignore[arg-type]
        log.rejected(Reason.SPLIT_VIEW, "two roots for size 8", at=NOW + 1)
        log.checkpoint(at=NOW + 2)
    pub = tmp_path / "tehran.pub"
    pub.write_text(me.public.to_text(), encoding="utf-8")

    verified = CliRunner().invoke(cli, ["--home", str(home), "log", "verify", "--key", str(pub)])
    assert verified.exit_code == 0, verified.output
    shown = CliRunner().invoke(cli, ["--home", str(home), "log", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    entries = [json.loads(line) for line in shown.output.splitlines()]
    reasons = [e["fields"]["reason"] for e in entries if e["kind"] == "rejected"]
    assert reasons == ["SplitView", "split-view"]
