"""Transcripts of the ``securechan`` command, plus a few real subprocess runs.

Every failing case checks the CLI's contract (``securechan/cli.py``): the exit
code of its error family, exactly one line on stderr starting with
``securechan: ``, no traceback, nothing on stdout, and the files it must not
touch byte-for-byte unchanged.

Identities are made with ``--kdf interactive`` (Argon2id, 64 MiB, 2 passes),
the cheapest setting the keystore accepts, once per module; each test works
on its own copy of those home folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import securechan
from securechan.cli import cli
from tests.ndjson import ndjson, one

KDF = ("--kdf", "interactive")
PASSPHRASES = {
    "a": "alpha's long test passphrase",
    "b": "bravo's long test passphrase",
    "c": "impostor's long test passphrase",
}
FINGERPRINT_RE = re.compile(r"(?:[0-9A-F]{4} ){15}[0-9A-F]{4}")
SAFETY_NUMBER_RE = re.compile(r"\d{5}(?: \d{5}){11}")
DOCUMENT = b"DRAFT JOINT COMMUNIQUE\nThe parties agree to resume talks within thirty days.\n"
# The environment variables the CLI reads: never inherited from the developer's shell.
CLEAN_ENV: dict[str, str | None] = {"SECURECHAN_HOME": None, "SECURECHAN_PASSPHRASE": None}


# --- helpers -------------------------------------------------------------------


def run(
    *args: object, input: str | bytes | None = None, env: dict[str, str] | None = None
) -> Result:
    """Invoke the CLI in-process; an exception that escaped it fails the test.

    Click ends every command with SystemExit; anything else reaching the
    runner would have been a traceback for the user.
    """
    full_env = dict(CLEAN_ENV)
    full_env.update(env or {})
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=full_env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"securechan {' '.join(map(str, args))} raised "
            f"{type(result.exception).__name__}: {result.exception}"
        ) from result.exception
    return result


def transcript(result: Result) -> str:
    return f"exit {result.exit_code}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, transcript(result)
    assert "Traceback" not in result.stderr
    return result


def failed(result: Result, code: int) -> str:
    """Assert the one-line failure contract; return the stderr line."""
    assert result.exit_code == code, transcript(result)
    assert "Traceback" not in result.stderr, transcript(result)
    assert "Traceback" not in result.stdout, transcript(result)
    assert result.stdout == "", transcript(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, transcript(result)
    assert lines[0].startswith("securechan: "), transcript(result)
    return lines[0]


def failed_with(result: Result, codes: set[int]) -> str:
    """Like :func:`failed`, for attacks whose exit code may be either of ``codes``."""
    assert result.exit_code in codes, transcript(result)
    return failed(result, result.exit_code)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the lock file aside)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def edit(text: str, old: str, new: str) -> str:
    """Replace ``old`` once; fail loudly if it is not there (no vacuous edits)."""
    assert old in text, f"{old!r} not in the file"
    return text.replace(old, new, 1)


def _body_rows(lines: list[str]) -> list[int]:
    begin = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN "))
    blank = lines.index("", begin)
    end = next(i for i, line in enumerate(lines) if line.startswith("-----END "))
    return list(range(blank + 1, end))


def b64_length(text: str) -> int:
    """Number of base64 characters in an armoured file's body."""
    lines = text.split("\n")
    return sum(len(lines[i]) for i in _body_rows(lines))


def change_b64_char(text: str, pos: int) -> str:
    """Replace the ``pos``-th base64 character of the body by another one.

    Positions are kept away from the last line, so the result is still
    canonical base64 and the change reaches the decoded record.
    """
    lines = text.split("\n")
    rows = _body_rows(lines)
    assert pos < b64_length(text) - len(lines[rows[-1]]), "stay off the last line"
    for i in rows:
        if pos < len(lines[i]):
            old = lines[i][pos]
            new = "A" if old != "A" else "B"
            lines[i] = lines[i][:pos] + new + lines[i][pos + 1 :]
            changed = "\n".join(lines)
            assert changed != text
            return changed
        pos -= len(lines[i])
    raise AssertionError("unreachable")


def json_out(result: Result) -> Any:
    """The one JSON object a command printed (NDJSON: one line)."""
    ok(result)
    return one(result.stdout)


def json_lines(result: Result) -> list[dict[str, Any]]:
    """What a list command printed: one JSON object per line (NDJSON)."""
    ok(result)
    return ndjson(result.stdout)


# --- fixtures ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Party:
    """One delegation: its home folder, passphrase file and exported identity."""

    name: str
    home: Path
    pw: Path
    pub: Path

    @property
    def opts(self) -> list[str]:
        return ["--home", str(self.home), "--passphrase-file", str(self.pw)]

    @property
    def key(self) -> Path:
        return self.home / "identity.key"

    @property
    def contacts(self) -> Path:
        return self.home / "contacts.bin"

    def fingerprint(self) -> str:
        data = json_out(run("--home", self.home, "id", "show", "--json"))
        assert isinstance(data, dict)
        return str(data["fingerprint"])


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    a: Party  # "alpha"
    b: Party  # "bravo"
    c: Party  # another key that also calls itself "bravo" (an impostor)


_PARTIES = (("a", "alpha"), ("b", "bravo"), ("c", "bravo"))


@pytest.fixture(scope="module")
def pristine_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three identities, made once per module through the CLI itself."""
    root = tmp_path_factory.mktemp("pristine")
    for key, name in _PARTIES:
        pw = root / f"{key}.pass"
        pw.write_text(PASSPHRASES[key] + "\n", encoding="utf-8")
        home = root / key
        ok(run("--home", home, "--passphrase-file", pw, "init", "--name", name, *KDF))
        ok(run("--home", home, "id", "export", "-o", root / f"{key}.pub"))
    return root


@pytest.fixture
def world(pristine_root: Path, tmp_path: Path) -> World:
    root = tmp_path / "w"
    shutil.copytree(pristine_root, root)
    parties = {
        key: Party(name=name, home=root / key, pw=root / f"{key}.pass", pub=root / f"{key}.pub")
        for key, name in _PARTIES
    }
    return World(root=root, **parties)


@pytest.fixture
def paired(world: World) -> World:
    """alpha and bravo have pinned each other (not verified yet)."""
    ok(run("--home", world.a.home, "contact", "add", world.b.pub))
    ok(run("--home", world.b.home, "contact", "add", world.a.pub))
    return world


@pytest.fixture
def signed(paired: World) -> tuple[World, Path, Path]:
    """alpha has signed ``doc.txt``; returns the world, document and signature."""
    doc = paired.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    ok(run(*paired.a.opts, "sign", doc))
    return paired, doc, doc.with_name("doc.txt.sig")


def contact_json(party: Party, name: str) -> dict[str, object]:
    data = json_out(run("--home", party.home, "contact", "show", name, "--json"))
    assert isinstance(data, dict)
    return data


# --- version, init, id ------------------------------------------------------------


def test_version() -> None:
    result = ok(run("--version"))
    assert result.stdout.strip() == f"securechan, version {securechan.__version__}"


def test_init_text_then_id_show(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_text("a passphrase\n", encoding="utf-8")
    result = ok(run("--home", home, "--passphrase-file", pw, "init", "--name", "alpha", *KDF))
    assert result.stdout.splitlines()[0] == "Created identity alpha"
    fp = FINGERPRINT_RE.search(result.stdout)
    assert fp is not None, result.stdout
    assert f"Public identity file: {home / 'identity.pub'}" in result.stdout
    # The secret key file is private to its owner, the folder too.
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    shown = ok(run("--home", home, "id", "show")).stdout
    assert "Name:        alpha" in shown
    assert f"Fingerprint: {fp.group()}" in shown
    assert re.search(r"Created:     \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown)


def test_init_json_then_id_show_json(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_text("a passphrase\n", encoding="utf-8")
    made = json_out(
        run("--home", home, "--passphrase-file", pw, "init", "--name", "alpha", "--json", *KDF)
    )
    assert isinstance(made, dict)
    assert made["name"] == "alpha"
    assert made["home"] == str(home)
    assert FINGERPRINT_RE.fullmatch(str(made["fingerprint"]))

    shown = json_out(run("--home", home, "id", "show", "--json"))
    assert isinstance(shown, dict)
    assert shown["name"] == "alpha"
    assert shown["fingerprint"] == made["fingerprint"]
    assert shown["home"] == str(home)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(shown["created"]))


def test_home_from_environment(tmp_path: Path) -> None:
    home, pw = tmp_path / "envhome", tmp_path / "pass"
    pw.write_text("a passphrase\n", encoding="utf-8")
    env = {"SECURECHAN_HOME": str(home)}
    ok(run("--passphrase-file", pw, "init", "--name", "alpha", *KDF, env=env))
    assert (home / "identity.key").is_file()
    shown = json_out(run("id", "show", "--json", env=env))
    assert isinstance(shown, dict)
    assert shown["home"] == str(home)


def test_id_export_stdout_and_file(world: World) -> None:
    a = world.a
    printed = ok(run("--home", a.home, "id", "export")).stdout
    assert printed == (a.home / "identity.pub").read_text("ascii")
    assert printed.startswith("-----BEGIN SECURECHAN PUBLIC IDENTITY-----\n")
    out = world.root / "exported.pub"
    result = ok(run("--home", a.home, "id", "export", "-o", out))
    assert result.stdout == ""
    assert out.read_text("ascii") == printed
    parsed = securechan.PublicIdentity.from_text(printed)
    assert parsed.name == "alpha"
    assert str(parsed.fingerprint) == a.fingerprint()


def test_id_show_without_identity(tmp_path: Path) -> None:
    line = failed(run("--home", tmp_path / "empty", "id", "show"), 2)
    assert "securechan init" in line


def test_init_refuses_bad_name(tmp_path: Path) -> None:
    pw = tmp_path / "pass"
    pw.write_text("a passphrase\n", encoding="utf-8")
    home = tmp_path / "home"
    failed(run("--home", home, "--passphrase-file", pw, "init", "--name", "../evil", *KDF), 2)
    assert not (home / "identity.key").exists()


def test_init_twice_is_refused_and_changes_nothing(world: World) -> None:
    a = world.a
    before = snapshot(a.home)
    line = failed(run(*a.opts, "init", "--name", "alpha", *KDF), 2)
    assert "--force" in line
    assert snapshot(a.home) == before


def test_init_force_replaces_the_identity(world: World) -> None:
    a = world.a
    old_fp, old_key = a.fingerprint(), a.key.read_bytes()
    made = json_out(run(*a.opts, "init", "--name", "alpha", "--force", "--json", *KDF))
    assert isinstance(made, dict)
    assert made["fingerprint"] != old_fp
    assert a.fingerprint() == made["fingerprint"]
    assert a.key.read_bytes() != old_key
    exported = ok(run("--home", a.home, "id", "export")).stdout
    assert str(securechan.PublicIdentity.from_text(exported).fingerprint) == made["fingerprint"]


# --- passphrase sources -----------------------------------------------------------


def test_no_passphrase_source_without_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # CliRunner's stdin is not a TTY, so the CLI must not try to prompt.
    line = failed(run("--home", home, "init", "--name", "alpha", *KDF), 2)
    assert "--passphrase-file" in line
    assert "SECURECHAN_PASSPHRASE" in line
    assert not (home / "identity.key").exists()


def test_no_passphrase_source_on_sign(world: World) -> None:
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    failed(run("--home", world.a.home, "sign", doc), 2)
    assert not doc.with_name("doc.txt.sig").exists()


def test_passphrase_from_environment(world: World) -> None:
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    home = world.a.home
    failed(run("--home", home, "sign", doc, env={"SECURECHAN_PASSPHRASE": "wrong"}), 1)
    assert not doc.with_name("doc.txt.sig").exists()
    ok(run("--home", home, "sign", doc, env={"SECURECHAN_PASSPHRASE": PASSPHRASES["a"]}))
    assert doc.with_name("doc.txt.sig").is_file()


def test_passphrase_file_takes_only_the_first_line(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_text("first line\r\nsecond line\n", encoding="utf-8")
    ok(run("--home", home, "--passphrase-file", pw, "init", "--name", "alpha", *KDF))
    doc = tmp_path / "doc"
    doc.write_bytes(DOCUMENT)
    ok(run("--home", home, "sign", doc, env={"SECURECHAN_PASSPHRASE": "first line"}))


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"], ids=["empty", "newline", "crlf"])
def test_empty_passphrase_file_is_refused(tmp_path: Path, content: bytes) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_bytes(content)
    line = failed(run("--home", home, "--passphrase-file", pw, "init", "--name", "alpha", *KDF), 2)
    assert "empty" in line
    assert not (home / "identity.key").exists()


def test_passphrase_file_not_utf8_is_refused(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_bytes(b"\xff\xfe not text\n")
    failed(run("--home", home, "--passphrase-file", pw, "init", "--name", "alpha", *KDF), 2)
    assert not (home / "identity.key").exists()


# --- contacts --------------------------------------------------------------------


def test_contact_add_and_list(world: World) -> None:
    a, b = world.a, world.b
    result = ok(run("--home", a.home, "contact", "add", b.pub))
    assert result.stdout.splitlines()[0] == f"Pinned bravo: {b.fingerprint()}"
    assert "Not verified yet" in result.stdout

    listed = json_lines(run("--home", a.home, "contact", "list", "--json"))
    assert isinstance(listed, list)
    assert len(listed) == 1
    assert listed[0]["name"] == "bravo"
    assert listed[0]["identity_name"] == "bravo"
    assert listed[0]["fingerprint"] == b.fingerprint()
    assert listed[0]["verified"] is False
    assert listed[0]["verified_at"] is None

    text = ok(run("--home", a.home, "contact", "list")).stdout
    assert re.fullmatch(rf"bravo\s+UNVERIFIED {re.escape(b.fingerprint())}\n", text)


def test_contact_add_json_and_from_stdin(world: World) -> None:
    a = world.a
    data = json_out(
        run("--home", a.home, "contact", "add", "-", "--json", input=world.b.pub.read_text())
    )
    assert isinstance(data, dict)
    assert data["name"] == "bravo"
    assert data["verified"] is False
    # The same key again under the same name changes nothing.
    before = a.contacts.read_bytes()
    ok(run("--home", a.home, "contact", "add", world.b.pub))
    assert a.contacts.read_bytes() == before


def test_contact_add_under_another_name(world: World) -> None:
    a = world.a
    ok(run("--home", a.home, "contact", "add", world.b.pub, "--name", "washington"))
    assert contact_json(a, "washington")["identity_name"] == "bravo"
    # The same key under a second name is refused.
    before = a.contacts.read_bytes()
    failed(run("--home", a.home, "contact", "add", world.b.pub), 2)
    assert a.contacts.read_bytes() == before


def test_contact_show_both_sides_see_the_same_safety_number(paired: World) -> None:
    a, b = paired.a, paired.b
    from_a = contact_json(a, "bravo")
    from_b = contact_json(b, "alpha")
    assert SAFETY_NUMBER_RE.fullmatch(str(from_a["safety_number"])), from_a
    words = from_a["safety_words"]
    assert isinstance(words, list)
    assert len(words) == 28
    assert all(isinstance(w, str) and w.isalpha() for w in words)
    assert from_a["safety_number"] == from_b["safety_number"]
    assert from_a["safety_words"] == from_b["safety_words"]
    assert from_a["fingerprint"] == b.fingerprint()
    assert from_b["fingerprint"] == a.fingerprint()

    text = ok(run("--home", a.home, "contact", "show", "bravo")).stdout
    assert f"Safety number: {from_a['safety_number']}" in text
    assert "Verified:      NO" in text
    assert " ".join(words[:7]) in text


def test_contact_show_different_pairs_differ(paired: World) -> None:
    ok(run("--home", paired.a.home, "contact", "add", paired.c.pub, "--name", "mallory"))
    real = contact_json(paired.a, "bravo")["safety_number"]
    fake = contact_json(paired.a, "mallory")["safety_number"]
    assert real != fake


def _wrong_digits(number: str) -> str:
    digit = "1" if number[-1] != "1" else "2"
    return number[:-1] + digit


@pytest.mark.parametrize("form", ["digit-changed", "words-swapped", "impostor-number"])
def test_contact_verify_wrong_number_fails_and_changes_nothing(paired: World, form: str) -> None:
    a = paired.a
    shown = contact_json(paired.b, "alpha")  # what bravo reads out over the phone
    if form == "digit-changed":
        given = _wrong_digits(str(shown["safety_number"])).split()
    elif form == "words-swapped":
        words = list(shown["safety_words"])  # type: ignore[call-overload]
        # Neighbours come from the two disjoint PGP lists, so they always differ.
        words[0], words[1] = words[1], words[0]
        assert words != shown["safety_words"]
        given = words
    else:
        ok(run("--home", paired.c.home, "contact", "add", a.pub))
        given = str(contact_json(paired.c, "alpha")["safety_number"]).split()
    before = a.contacts.read_bytes()
    line = failed(run("--home", a.home, "contact", "verify", "bravo", *given), 1)
    assert "bravo" in line
    assert a.contacts.read_bytes() == before
    assert contact_json(a, "bravo")["verified"] is False


def test_contact_verify_malformed_number(paired: World) -> None:
    a = paired.a
    before = a.contacts.read_bytes()
    number = str(contact_json(paired.b, "alpha")["safety_number"])
    failed(run("--home", a.home, "contact", "verify", "bravo", number[:-1]), 2)
    failed(run("--home", a.home, "contact", "verify", "bravo", "not", "a", "number", "42"), 2)
    failed(run("--home", a.home, "contact", "verify", "nobody", number), 2)
    assert a.contacts.read_bytes() == before


@pytest.mark.parametrize(
    "form", ["digit-groups-as-argv", "digits-one-argument", "words-as-argv", "spoken-line"]
)
def test_contact_verify_right_number(paired: World, form: str) -> None:
    a = paired.a
    shown = contact_json(paired.b, "alpha")
    number, words = str(shown["safety_number"]), list(shown["safety_words"])  # type: ignore[call-overload]
    given: Sequence[str] = {
        "digit-groups-as-argv": number.split(),
        "digits-one-argument": [number],
        "words-as-argv": words,
        "spoken-line": [" / ".join(" ".join(words[i : i + 7]) for i in range(0, 28, 7)).upper()],
    }[form]
    result = ok(run("--home", a.home, "contact", "verify", "bravo", *given))
    assert result.stdout == "bravo is verified.\n"
    after = contact_json(a, "bravo")
    assert after["verified"] is True
    assert after["verified_at"] is not None
    listed = ok(run("--home", a.home, "contact", "list")).stdout
    assert re.match(r"bravo\s+verified ", listed)
    assert "Verified:      yes" in ok(run("--home", a.home, "contact", "show", "bravo")).stdout


def test_contact_key_change_is_refused(paired: World) -> None:
    a, b, c = paired.a, paired.b, paired.c
    number = str(contact_json(b, "alpha")["safety_number"])
    ok(run("--home", a.home, "contact", "verify", "bravo", number))
    before = a.contacts.read_bytes()

    line = failed(run("--home", a.home, "contact", "add", c.pub), 4)
    assert b.fingerprint() in line
    assert c.fingerprint() in line
    assert "--replace" in line
    assert a.contacts.read_bytes() == before
    kept = contact_json(a, "bravo")
    assert kept["fingerprint"] == b.fingerprint()
    assert kept["verified"] is True

    result = ok(run("--home", a.home, "contact", "add", c.pub, "--replace"))
    assert c.fingerprint() in result.stdout
    now = contact_json(a, "bravo")
    assert now["fingerprint"] == c.fingerprint()
    assert now["verified"] is False


def _pub_with_char_changed(pub: Path, pos: int) -> str:
    return change_b64_char(pub.read_text("ascii"), pos)


# The public identity body is: record header (3) | claim field (5 + 2015) |
# self-signature field (5 + 3373), so the last ~4500 base64 characters are
# the self-signature.
_PUB_SIGNATURE_CHAR = 5000
_PUB_PUBKEY_CHAR = 1000


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("truncated", 2),
        ("truncated-body", 2),
        ("name-header", 2),
        ("fingerprint-header", 2),
        ("version-2", 2),
        ("unknown-header", 2),
        ("not-ascii", 2),
        ("empty", 2),
        ("self-signature-char", 1),
        ("public-key-char", 1),
    ],
)
def test_contact_add_damaged_identity_file(world: World, damage: str, code: int) -> None:
    a, b = world.a, world.b
    text = b.pub.read_text("ascii")
    bad = world.root / "bad.pub"
    data: bytes
    if damage == "truncated":
        data = text[: len(text) // 2].encode()
    elif damage == "truncated-body":
        lines = text.split("\n")
        data = "\n".join(lines[:10] + lines[-2:]).encode()  # middle lines gone, END kept
    elif damage == "name-header":
        data = edit(text, "Name: bravo", "Name: charlie").encode()
    elif damage == "fingerprint-header":
        line = next(x for x in text.splitlines() if x.startswith("Fingerprint: "))
        group = "0000" if line[13:17] != "0000" else "FFFF"
        data = edit(text, line, line[:13] + group + line[17:]).encode()
    elif damage == "version-2":
        data = edit(text, "Version: 1", "Version: 2").encode()
    elif damage == "unknown-header":
        data = edit(text, "Name: bravo\n", "Name: bravo\nTrust: ultimate\n").encode()
    elif damage == "not-ascii":
        data = edit(text, "Name: bravo", "Name: br\u00e4vo").encode("utf-8")
    elif damage == "empty":
        data = b""
    elif damage == "self-signature-char":
        data = _pub_with_char_changed(b.pub, _PUB_SIGNATURE_CHAR).encode()
    else:
        data = _pub_with_char_changed(b.pub, _PUB_PUBKEY_CHAR).encode()
    bad.write_bytes(data)
    before = snapshot(a.home)
    line = failed(run("--home", a.home, "contact", "add", bad), code)
    if damage == "version-2":
        assert "version 2" in line.lower()
    if damage == "self-signature-char":
        assert "signature" in line
    assert snapshot(a.home) == before
    assert not a.contacts.exists()


def test_contact_add_any_base64_change_is_refused(world: World) -> None:
    """Changing any one base64 character of an identity file never pins it."""
    a, b = world.a, world.b
    text = b.pub.read_text("ascii")
    bad = world.root / "bad.pub"
    before = snapshot(a.home)
    limit = b64_length(text) - 64
    for pos in [*range(0, 40, 3), *range(40, limit, 173)]:
        bad.write_text(change_b64_char(text, pos), encoding="ascii")
        result = run("--home", a.home, "contact", "add", bad)
        failed_with(result, {1, 2})
    assert snapshot(a.home) == before


def test_contact_add_own_identity_is_refused(world: World) -> None:
    a = world.a
    before = snapshot(a.home)
    line = failed(run("--home", a.home, "contact", "add", a.pub), 2)
    assert "own identity" in line
    failed(run("--home", a.home, "contact", "add", a.pub, "--name", "someone"), 2)
    assert snapshot(a.home) == before


def test_contact_remove(paired: World) -> None:
    a = paired.a
    result = ok(run("--home", a.home, "contact", "remove", "bravo"))
    assert result.stdout == ""
    assert "bravo" in result.stderr
    assert json_lines(run("--home", a.home, "contact", "list", "--json")) == []
    before = a.contacts.read_bytes()
    failed(run("--home", a.home, "contact", "remove", "bravo"), 2)
    failed(run("--home", a.home, "contact", "remove", "nobody"), 2)
    failed(run("--home", a.home, "contact", "remove", "../etc"), 2)
    failed(run("--home", a.home, "contact", "show", "bravo"), 2)
    assert a.contacts.read_bytes() == before


def test_contacts_file_damaged(paired: World) -> None:
    a = paired.a
    data = bytearray(a.contacts.read_bytes())
    data[len(data) // 2] ^= 0x01
    a.contacts.write_bytes(bytes(data))
    for args in (("contact", "list"), ("contact", "show", "bravo")):
        failed_with(run("--home", a.home, *args), {1, 2})
    assert a.contacts.read_bytes() == bytes(data)


# --- sign and verify ----------------------------------------------------------------


def test_sign_then_verify_from_contact(signed: tuple[World, Path, Path]) -> None:
    world, doc, sig = signed
    assert sig.read_text("ascii").startswith("-----BEGIN SECURECHAN SIGNATURE-----\n")
    result = ok(run("--home", world.b.home, "verify", doc, "--from", "alpha"))
    fp = world.a.fingerprint()
    assert result.stdout.startswith(f"Good signature by alpha ({fp}), made ")
    # alpha is pinned but not verified: a warning, but still exit 0.
    warning = result.stderr.splitlines()
    assert len(warning) == 1, transcript(result)
    assert warning[0].startswith("securechan: warning: alpha is not verified")

    number = str(contact_json(world.a, "bravo")["safety_number"])
    ok(run("--home", world.b.home, "contact", "verify", "alpha", number))
    result = ok(run("--home", world.b.home, "verify", doc, "--from", "alpha"))
    assert result.stdout.startswith("Good signature by alpha")
    assert result.stderr == ""


def test_sign_output_and_json(paired: World) -> None:
    doc = paired.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    out = paired.root / "elsewhere.sig"
    data = json_out(run(*paired.a.opts, "sign", doc, "-o", out, "--json"))
    assert data == {"signature": str(out), "size": len(DOCUMENT), "signer": "alpha"}
    assert not doc.with_name("doc.txt.sig").exists()
    verdict = json_out(
        run("--home", paired.b.home, "verify", doc, "--sig", out, "--from", "alpha", "--json")
    )
    assert isinstance(verdict, dict)
    assert verdict["valid"] is True
    assert verdict["signer"] == "alpha"
    assert verdict["fingerprint"] == paired.a.fingerprint()
    assert verdict["contact_verified"] is False
    assert verdict["comment"] is None


def test_verify_with_key_file(signed: tuple[World, Path, Path]) -> None:
    world, doc, _ = signed
    empty_home = world.root / "nobody"
    result = ok(run("--home", empty_home, "verify", doc, "--key", world.a.pub))
    assert result.stdout.startswith(f"Good signature by alpha ({world.a.fingerprint()})")
    assert result.stderr == ""
    # The wrong key file is refused.
    failed(run("--home", empty_home, "verify", doc, "--key", world.b.pub), 1)


@pytest.mark.parametrize(
    "change", ["one-byte", "truncated", "appended", "empty", "thirty-to-ninety"]
)
def test_verify_changed_document_fails(signed: tuple[World, Path, Path], change: str) -> None:
    world, doc, sig = signed
    data = bytearray(DOCUMENT)
    if change == "one-byte":
        data[len(data) // 2] ^= 0x20
    elif change == "truncated":
        del data[-1:]
    elif change == "appended":
        data += b"\n"
    elif change == "empty":
        data = bytearray()
    else:
        data = bytearray(edit(DOCUMENT.decode(), "thirty", "ninety").encode())
    doc.write_bytes(bytes(data))
    sig_before = sig.read_bytes()
    line = failed(run("--home", world.b.home, "verify", doc, "--from", "alpha"), 1)
    assert "Good signature" not in line
    failed(run("--home", world.b.home, "verify", doc, "--key", world.a.pub), 1)
    assert sig.read_bytes() == sig_before


def test_verify_signature_with_a_changed_base64_char(signed: tuple[World, Path, Path]) -> None:
    world, doc, sig = signed
    text = sig.read_text("ascii")
    # Inside the composite signature (the last 3373 bytes of the record): BadSignature.
    sig.write_text(change_b64_char(text, 3000), encoding="ascii")
    failed(run("--home", world.b.home, "verify", doc, "--from", "alpha"), 1)
    # Anywhere else: refused as malformed (2) or as a bad signature (1), never accepted.
    limit = b64_length(text) - 64
    for pos in [*range(0, 40, 3), *range(40, limit, 131)]:
        sig.write_text(change_b64_char(text, pos), encoding="ascii")
        failed_with(run("--home", world.b.home, "verify", doc, "--from", "alpha"), {1, 2})


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-text", "version-2", "signer-header"])
def test_verify_damaged_signature_file(signed: tuple[World, Path, Path], damage: str) -> None:
    world, doc, sig = signed
    text = sig.read_text("ascii")
    if damage == "truncated":
        sig.write_text(text[: len(text) // 2], encoding="ascii")
    elif damage == "empty":
        sig.write_bytes(b"")
    elif damage == "not-text":
        sig.write_bytes(b"\xff\xfe\x00" * 100)
    elif damage == "version-2":
        sig.write_text(edit(text, "Version: 1", "Version: 2"), encoding="ascii")
    else:
        sig.write_text(edit(text, "Signer: alpha", "Signer: bravo"), encoding="ascii")
    line = failed(run("--home", world.b.home, "verify", doc, "--from", "alpha"), 2)
    if damage == "version-2":
        assert "version 2" in line.lower()


def test_verify_missing_signature_file(paired: World) -> None:
    doc = paired.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    line = failed(run("--home", paired.b.home, "verify", doc, "--from", "alpha"), 2)
    assert "doc.txt.sig" in line


def test_verify_from_another_contact_fails(signed: tuple[World, Path, Path]) -> None:
    world, doc, _ = signed
    ok(run("--home", world.b.home, "contact", "add", world.c.pub, "--name", "mallory"))
    line = failed(run("--home", world.b.home, "verify", doc, "--from", "mallory"), 1)
    assert world.c.fingerprint() in line  # the key that was expected
    assert world.a.fingerprint() in line  # the key that signed
    failed(run("--home", world.b.home, "verify", doc, "--from", "nobody"), 2)


def test_verify_impostor_signature_fails(signed: tuple[World, Path, Path]) -> None:
    """A key calling itself 'alpha' signs the document: refused for the pinned alpha."""
    world, doc, sig = signed
    impostor_home = world.root / "impostor"
    ok(
        run(
            "--home",
            impostor_home,
            "--passphrase-file",
            world.c.pw,
            "init",
            "--name",
            "alpha",
            *KDF,
        )
    )
    ok(run("--home", impostor_home, "--passphrase-file", world.c.pw, "sign", doc, "-o", sig))
    failed(run("--home", world.b.home, "verify", doc, "--from", "alpha"), 1)


def test_verify_needs_exactly_one_of_from_or_key(signed: tuple[World, Path, Path]) -> None:
    world, doc, _ = signed
    line = failed(run("--home", world.b.home, "verify", doc), 2)
    assert "--from" in line
    assert "--key" in line
    failed(run("--home", world.b.home, "verify", doc, "--from", "alpha", "--key", world.a.pub), 2)


def test_verify_key_file_not_ascii(signed: tuple[World, Path, Path]) -> None:
    world, doc, _ = signed
    bad = world.root / "bad.pub"
    bad.write_bytes(b"\xff\xfe\x00 not an identity")
    failed(run("--home", world.b.home, "verify", doc, "--key", bad), 2)


def test_signed_comment(paired: World) -> None:
    a, b = paired.a, paired.b
    doc = paired.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    sig = doc.with_name("doc.txt.sig")
    ok(run(*a.opts, "sign", doc, "--comment", "draft communique, rev 3"))
    text = sig.read_text("ascii")
    assert "Comment: draft communique, rev 3\n" in text
    result = ok(run("--home", b.home, "verify", doc, "--from", "alpha"))
    assert "Signed comment: draft communique, rev 3" in result.stdout.splitlines()
    verdict = json_out(run("--home", b.home, "verify", doc, "--key", a.pub, "--json"))
    assert isinstance(verdict, dict)
    assert verdict["comment"] == "draft communique, rev 3"

    # Editing the readable Comment header is refused.
    sig.write_text(edit(text, "rev 3", "rev 4, final"), encoding="ascii")
    failed_with(run("--home", b.home, "verify", doc, "--from", "alpha"), {1, 2})

    # Re-encoding the statement with another comment (headers kept consistent)
    # breaks the signature: the comment is covered by it.
    parsed = securechan.DocumentSignature.from_text_unverified(text)
    forged = dataclasses.replace(
        parsed, statement=dataclasses.replace(parsed.statement, comment="rev 4, final")
    )
    sig.write_text(forged.to_text(), encoding="ascii")
    failed(run("--home", b.home, "verify", doc, "--from", "alpha"), 1)


@pytest.mark.parametrize("comment", ["two\nlines", " padded", ""])
def test_sign_refuses_bad_comment(paired: World, comment: str) -> None:
    doc = paired.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    failed(run(*paired.a.opts, "sign", doc, "--comment", comment), 2)
    assert not doc.with_name("doc.txt.sig").exists()


# --- the key file on disk -------------------------------------------------------------


def test_sign_with_wrong_passphrase(world: World) -> None:
    a = world.a
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    wrong = world.root / "wrong.pass"
    wrong.write_text("not the passphrase\n", encoding="utf-8")
    before = snapshot(a.home)
    line = failed(run("--home", a.home, "--passphrase-file", wrong, "sign", doc), 1)
    assert "passphrase" in line
    assert "not the passphrase" not in line  # never echo secret input
    assert snapshot(a.home) == before
    assert not doc.with_name("doc.txt.sig").exists()


# KeyFile body: record header (3) | header field (5 + 100: kdf name, opslimit,
# memlimit, salt at bytes 55..70, fingerprint at 76..107) | sealed (5 + ...).
_KEY_CHARS = {"wire-version": 0, "salt": 80, "fingerprint": 120, "sealed": 400}


@pytest.mark.parametrize(
    ("damage", "codes"),
    [
        ("truncated", {2}),
        ("empty", {2}),
        ("version-2", {2}),
        ("not-ascii", {2}),
        *[(f"char-{where}", {1, 2}) for where in _KEY_CHARS],
        ("char-sealed-end", {1, 2}),
    ],
)
def test_sign_with_damaged_key_file(world: World, damage: str, codes: set[int]) -> None:
    a = world.a
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    text = a.key.read_text("ascii")
    if damage == "truncated":
        bad = text[: len(text) // 2].encode()
    elif damage == "empty":
        bad = b""
    elif damage == "version-2":
        bad = edit(text, "Version: 1", "Version: 2").encode()
    elif damage == "not-ascii":
        bad = edit(text, "Name: alpha", "Name: \u00e4lpha").encode("utf-8")
    elif damage == "char-sealed-end":
        bad = change_b64_char(text, b64_length(text) - 80).encode()
    else:
        bad = change_b64_char(text, _KEY_CHARS[damage.removeprefix("char-")]).encode()
    a.key.write_bytes(bad)
    before = snapshot(a.home)
    line = failed_with(run(*a.opts, "sign", doc), codes)
    if damage == "version-2":
        assert "version 2" in line.lower()
    assert a.key.read_bytes() == bad
    assert snapshot(a.home) == before
    assert not doc.with_name("doc.txt.sig").exists()


@pytest.mark.parametrize(
    ("header", "value"), [("Name", "charlie"), ("Fingerprint", "0000 " * 15 + "0000")]
)
def test_key_file_headers_must_agree_with_the_body(world: World, header: str, value: str) -> None:
    """PROTOCOL.md §3: "A reader MUST check that every header present equals the
    value in the body". A key file whose readable header disagrees with its
    body (Name: the sealed SecretIdentity; Fingerprint: the KeyFileHeader) is
    refused, as public identity and signature files are."""
    a = world.a
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    text = a.key.read_text("ascii")
    bad = re.sub(rf"^{header}: .*$", f"{header}: {value}", text, count=1, flags=re.M)
    assert bad != text
    a.key.write_text(bad, encoding="ascii")
    failed_with(run(*a.opts, "sign", doc), {1, 2})
    assert a.key.read_text("ascii") == bad
    assert not doc.with_name("doc.txt.sig").exists()


def test_missing_public_file(world: World) -> None:
    a = world.a
    (a.home / "identity.pub").unlink()
    failed(run("--home", a.home, "id", "show"), 2)
    failed(run("--home", a.home, "id", "export"), 2)


def test_id_passwd(world: World) -> None:
    a = world.a
    doc = world.root / "doc.txt"
    doc.write_bytes(DOCUMENT)
    new_pw = world.root / "new.pass"
    new_pw.write_text("a brand new passphrase\n", encoding="utf-8")
    fp, old_key = a.fingerprint(), a.key.read_bytes()

    result = ok(run(*a.opts, "id", "passwd", "--new-passphrase-file", new_pw, *KDF))
    assert "Passphrase changed." in result.stderr
    assert a.key.read_bytes() != old_key
    assert a.fingerprint() == fp

    before = snapshot(a.home)
    failed(run(*a.opts, "sign", doc), 1)  # the old passphrase
    assert snapshot(a.home) == before
    ok(run("--home", a.home, "--passphrase-file", new_pw, "sign", doc))
    ok(run("--home", world.b.home, "verify", doc, "--key", a.pub))


def test_id_passwd_wrong_old_passphrase(world: World) -> None:
    a = world.a
    wrong = world.root / "wrong.pass"
    wrong.write_text("not the passphrase\n", encoding="utf-8")
    new_pw = world.root / "new.pass"
    new_pw.write_text("a brand new passphrase\n", encoding="utf-8")
    before = snapshot(a.home)
    cmd = ("id", "passwd", "--new-passphrase-file", new_pw, *KDF)
    failed(run("--home", a.home, "--passphrase-file", wrong, *cmd), 1)
    assert snapshot(a.home) == before


# --- real processes -------------------------------------------------------------------


def _command() -> list[str]:
    """The console script of the running interpreter's environment."""
    bindir = Path(sys.executable).parent
    found = shutil.which("securechan", path=str(bindir))
    if found is not None:
        return [found]
    # No console script (package not installed as such): same entry point.
    return [sys.executable, "-c", "from securechan.cli import main; main()"]


def sh(
    *args: object, home: Path | None = None, input: bytes = b""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAN_")}
    if home is not None:
        env["SECURECHAN_HOME"] = str(home)
    return subprocess.run(
        [*_command(), *map(str, args)],
        input=input.decode(),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_process_version() -> None:
    proc = sh("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"securechan, version {securechan.__version__}"
    assert proc.stderr == ""


def test_process_init_and_id_show(tmp_path: Path) -> None:
    home, pw = tmp_path / "home", tmp_path / "pass"
    pw.write_text("a passphrase\n", encoding="utf-8")
    made = sh("--passphrase-file", pw, "init", "--name", "alpha", "--json", *KDF, home=home)
    assert made.returncode == 0, made.stderr
    fp = json.loads(made.stdout)["fingerprint"]
    assert (home / "identity.key").is_file()
    shown = sh("id", "show", "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["fingerprint"] == fp
    assert json.loads(shown.stdout)["home"] == str(home)


def test_process_failing_verify(signed: tuple[World, Path, Path]) -> None:
    world, doc, _ = signed
    ok_proc = sh("verify", doc, "--from", "alpha", home=world.b.home)
    assert ok_proc.returncode == 0, ok_proc.stderr
    doc.write_bytes(DOCUMENT + b"!")
    proc = sh("verify", doc, "--from", "alpha", home=world.b.home)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("securechan: ")


def test_process_no_passphrase_without_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = sh("init", "--name", "alpha", *KDF, home=home)  # stdin is a pipe
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("securechan: no passphrase")
    assert not (home / "identity.key").exists()


def test_process_key_changed_exit_code(paired: World) -> None:
    proc = sh("contact", "add", paired.c.pub, home=paired.a.home)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


# --- the package: commands load lazily ------------------------------------------------


def test_each_one_line_help_is_the_commands_own() -> None:
    """The top-level group prints its list from COMMANDS without importing the
    modules: each one-line help there must be the command's real first paragraph."""
    import click

    from securechan.cli import COMMANDS

    ctx = click.Context(cli)
    assert sorted(COMMANDS) == cli.list_commands(ctx)
    for name, (_, one_line) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert one_line == first, name


_LOADED = """
import json, sys
from securechan.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("securechan.", "aiohttp")))))
"""


@pytest.mark.parametrize("args", [["--help"], ["id", "show"], ["contact", "list"]])
def test_a_command_imports_only_its_own_module(tmp_path: Path, args: list[str]) -> None:
    """`securechan --help` imports no command module; an offline command only
    its own: neither the client, the relay, the audit log nor aiohttp."""
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    commands = {m for m in loaded if m.startswith("securechan.cli.")}
    own = {
        "--help": set(),
        "id": {"securechan.cli.identity"},
        # and its shell_complete callbacks (light: no client, no audit log)
        "contact": {"securechan.cli.contact", "securechan.cli.completion"},
    }
    # The light parts every command passes through: the fast path that asks
    # a running agent first, its renderer, and the click group (cli.app).
    light = {
        "securechan.cli.app",
        "securechan.cli.core",
        "securechan.cli.fast",
        "securechan.cli.render",
        "securechan.cli.text_input",
    }
    assert commands == light | own[args[0]], loaded
    for heavy in ("securechan.client", "securechan.relay", "securechan.audit", "aiohttp"):
        assert heavy not in loaded, sorted(loaded)
