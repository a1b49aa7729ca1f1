"""Rough edges a new user meets (issue 13): every option has a help text,
``relay serve`` on a busy port, ``verify --from`` yourself, re-adding a
verified contact, and shell completion of contact names and message ids.
Everything runs the real console script (a subprocess; the relay and the
completion protocol included)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import securechan
from securechan.identity import Keystore
from securechan.primitives import KDF_INTERACTIVE
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import Pair, _command, _env

relay, pristine, people, pair = e2e.relay, e2e.pristine, e2e.people, e2e.pair

PASS = "a passphrase long enough for init"  # noqa: S105 - a test identity's


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *map(str, args)],
        env=env if env is not None else _env(PASS),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


# --- every option has a help text ------------------------------------------------------


def _options_without_help() -> Iterator[str]:
    from securechan.cli import cli

    def walk(cmd: click.Command, ctx: click.Context, path: str) -> Iterator[str]:
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip():
                yield f"{path} {'/'.join(p.opts)}"
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                yield from walk(
                    sub, click.Context(sub, parent=ctx, info_name=name), f"{path} {name}"
                )

    yield from walk(cli, click.Context(cli, info_name="securechan"), "securechan")


def test_every_option_of_every_command_has_a_help_text() -> None:
    assert list(_options_without_help()) == []


def test_the_help_texts_reach_the_user() -> None:
    out = run("relay", "serve", "--help").stdout
    assert "PEM certificate chain" in out and "PEM private key" in out, out
    out = run("id", "passwd", "--help").stdout
    assert "Read the new passphrase from the first line" in out, out


# --- relay serve on a busy port --------------------------------------------------------


def test_relay_serve_on_a_busy_port_fails_before_creating_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "relay-data"
        proc = run("relay", "serve", "--port", port, "--data", data, env=_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"securechan: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert proc.stdout == ""
    assert not data.exists(), sorted(data.rglob("*"))  # no relay key, no relay.db


# --- verify --from yourself; re-adding a verified contact ------------------------------


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "tehran", tmp_path / "washington"
    Keystore(a).create("tehran", PASS, kdf=KDF_INTERACTIVE)
    Keystore(b).create("washington", PASS, kdf=KDF_INTERACTIVE)
    return a, b


def test_verify_from_your_own_name(homes: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = homes
    doc = tmp_path / "draft.txt"
    doc.write_text("the agreed text\n")
    assert run("--home", a, "sign", doc).returncode == 0
    proc = run("--home", a, "verify", doc, "--from", "tehran", env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Good signature by tehran ("), proc.stdout
    assert proc.stderr == ""  # you are not an unverified contact of yourself
    # Changed by one byte, it fails as for anyone else.
    doc.write_text("the agreed text!\n")
    assert run("--home", a, "verify", doc, "--from", "tehran", env=_env()).returncode == 1
    # A name that is neither a contact nor you is still "no contact named".
    proc = run("--home", a, "verify", doc, "--from", "cairo", env=_env())
    assert proc.returncode == 2 and "no contact named 'cairo'" in proc.stderr, proc.stderr


def test_re_adding_a_verified_contact_says_it_is_verified(homes: tuple[Path, Path]) -> None:
    a, b = homes
    exported = run("--home", b, "id", "export", env=_env()).stdout
    pub = a.parent / "washington.pub"
    pub.write_text(exported)
    first = run("--home", a, "contact", "add", pub, env=_env())
    assert "Not verified yet" in first.stdout, first.stdout
    number = securechan.safety_number(Keystore(a).public_identity(), Keystore(b).public_identity())
    verify = run("--home", a, "contact", "verify", "washington", str(number), env=_env())
    assert verify.returncode == 0, verify.stderr
    again = run("--home", a, "contact", "add", pub, env=_env())
    assert again.returncode == 0, again.stderr
    assert "Not verified yet" not in again.stdout, again.stdout
    assert "Already verified (" in again.stdout, again.stdout
    listed = run("--home", a, "contact", "list", env=_env()).stdout
    assert "verified  " in listed and "UNVERIFIED" not in listed, listed


# --- shell completion ------------------------------------------------------------------


def complete(home: Path, line: str, shell: str = "bash") -> list[str]:
    """What the shell would offer for the last word of ``line``, through
    click's completion protocol (the real environment variables)."""
    words = line.split(" ")
    env = {
        **_env(),
        "_SECURECHAN_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": f"securechan --home {home} {line}",
        "COMP_CWORD": str(len(words) + 2),
    }
    proc = subprocess.run(
        _command(), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [row.split(",", 1)[1] for row in proc.stdout.splitlines() if row.startswith("plain,")]


def test_completion_of_contact_names_needs_no_passphrase(homes: tuple[Path, Path]) -> None:
    a, b = homes
    pub = a.parent / "washington.pub"
    pub.write_text(run("--home", b, "id", "export", env=_env()).stdout)
    run("--home", a, "contact", "add", pub, env=_env())
    before = sorted(p.name for p in a.iterdir())
    assert complete(a, "contact show w") == ["washington"]
    assert complete(a, "contact show ") == ["washington"]
    assert complete(a, "contact show x") == []
    assert complete(a, "send ") == ["washington"]
    assert complete(a, "history wa") == ["washington"]
    assert sorted(complete(a, "verify doc --from ")) == ["tehran", "washington"]
    assert sorted(p.name for p in a.iterdir()) == before  # nothing created or unlocked
    # A home that does not exist completes to nothing, quietly, and stays absent.
    assert complete(a.parent / "nowhere", "contact show ") == []
    assert not (a.parent / "nowhere").exists()


def test_completion_of_message_ids(pair: Pair) -> None:
    t, w = pair.t, pair.w
    t.ok("send", "washington", "first")
    t.ok("send", "washington", "second")
    w.ok("receive")
    # history --json: one array today, NDJSON after issue 13's "codes" part.
    rows = [r for x in w.items("history") for r in (x if isinstance(x, list) else [x])]
    ids = {r["id"] for r in rows if r.get("direction") != "out" and "id" in r}
    assert len(ids) == 2, ids
    offered = complete(w.home, "statement export ")
    assert ids <= set(offered), (ids, offered)
    one = sorted(ids)[0]
    assert complete(w.home, f"statement export {one[:6]}") == [one]
    # The id completed is one 'statement export' accepts.
    out = w.home.parent / "statement.txt"
    w.ok("statement", "export", one, "-o", out)
    assert out.exists()


# --- identity names: ASCII only, and the refusal says why ------------------------------


@pytest.mark.parametrize(
    ("name", "odd"),
    [
        ("تهران", "U+062A"),  # Arabic script
        ("tehr\u0430n", "U+0430"),  # a Cyrillic a (U+0430) inside: passes for "tehran"
        ("washington\u202e", "U+202E"),  # a bidi override
    ],
)
def test_a_non_ascii_name_is_refused_with_the_reason(tmp_path: Path, name: str, odd: str) -> None:
    proc = run("--home", tmp_path / "h", "init", "--name", name, "--kdf", "interactive")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("securechan: a name is 1-64 ASCII"), lines
    assert f"{odd} is not ASCII" in lines[0], lines
    assert "can look like these" in lines[0] and "THREAT-MODEL.md" in lines[0], lines
    assert not (tmp_path / "h" / "identity.key").exists()
