"""Passphrases as a person types them (issue 13): three tries at a prompt, one
from a file or the environment, a one-line mismatch error, the weak-passphrase
warning and the measured cost of each ``--kdf`` at ``init``.

Each test drives the real ``securechan`` console script on a pseudo-terminal
(the prompts read the terminal, as a person's would) and types the answers.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from securechan.identity import Keystore
from securechan.primitives import KDF_INTERACTIVE
from tests.test_e2e_relay import _command, _env

GOOD = "four random words, typed well"


class Pty:
    """The console script on a pseudo-terminal, driven like a person: wait
    for a prompt, type a line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.out = ""
        self._seen = 0

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program closed the terminal
            return False
        if not chunk:
            return False
        self.out += chunk.decode("utf-8", "replace")
        return True

    def expect(self, text: str, timeout: float = 60) -> None:
        """Wait until ``text`` appears after what was already matched."""
        deadline = time.monotonic() + timeout
        while text not in self.out[self._seen :]:
            if time.monotonic() > deadline or not self._read(0.5):
                self.close()
                pytest.fail(f"never saw {text!r}; the terminal showed:\n{self.out}")
        self._seen = self.out.index(text, self._seen) + len(text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode("utf-8") + b"\r")

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.5):
            if self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                break
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"the command did not end; the terminal showed:\n{self.out}")
        os.close(self.master)
        assert "Traceback" not in self.out, self.out
        return code


@pytest.fixture
def home(tmp_path: Path) -> Path:
    Keystore(tmp_path / "home").create("tehran", GOOD, kdf=KDF_INTERACTIVE)
    return tmp_path / "home"


def _sign(home: Path, tmp_path: Path, env: dict[str, str]) -> Pty:
    doc = tmp_path / "doc.txt"
    doc.write_text("the agreed text\n")
    return Pty([*_command(), "--home", str(home), "sign", str(doc)], env)


def test_a_prompt_gives_three_tries(home: Path, tmp_path: Path) -> None:
    term = _sign(home, tmp_path, _env())
    for left in (2, 1):
        term.expect("Passphrase:")
        term.type("wrong guess")
        term.expect(f"securechan: wrong passphrase, try again ({left} left)")
    term.expect("Passphrase:")
    term.type(GOOD)
    assert term.finish() == 0, term.out
    assert (tmp_path / "doc.txt.sig").exists()


def test_three_wrong_passphrases_exit_1_on_one_line(home: Path, tmp_path: Path) -> None:
    term = _sign(home, tmp_path, _env())
    for _ in range(3):
        term.expect("Passphrase:")
        term.type("wrong guess")
    assert term.finish() == 1, term.out
    assert "securechan: wrong passphrase, or the key file was altered (3 tries)" in term.out
    assert term.out.count("Passphrase:") == 3
    assert not (tmp_path / "doc.txt.sig").exists()


def test_a_passphrase_from_the_environment_gets_one_try(home: Path, tmp_path: Path) -> None:
    # A script does not type again: a wrong $SECURECHAN_PASSPHRASE fails at once,
    # even with a terminal on stdin, and nothing is prompted.
    term = _sign(home, tmp_path, _env("wrong guess"))
    assert term.finish() == 1, term.out
    assert "Passphrase:" not in term.out and "try again" not in term.out


def test_a_passphrase_file_gets_one_try(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("wrong guess\n")
    doc = tmp_path / "doc.txt"
    doc.write_text("x")
    argv = [*_command(), "--home", str(home), "--passphrase-file", str(secret), "sign", str(doc)]
    term = Pty(argv, _env())
    assert term.finish() == 1, term.out
    assert "try again" not in term.out


def _init(tmp_path: Path, *extra: str) -> Pty:
    argv = [*_command(), "--home", str(tmp_path / "new"), "init", "--name", "cairo", *extra]
    return Pty([*argv, "--kdf", "interactive"], _env())


def test_mismatched_confirmation_is_one_line_and_exits_2(tmp_path: Path) -> None:
    term = _init(tmp_path)
    for left in (2, 1, 0):
        term.expect("New passphrase:")
        term.type(GOOD)
        term.expect("Repeat for confirmation:")
        term.type(GOOD + "!")
        if left:
            term.expect(f"securechan: the passphrases do not match, try again ({left} left)")
    assert term.finish() == 2, term.out
    assert "securechan: the passphrases did not match (3 tries)" in term.out
    assert "Error:" not in term.out  # click's own format
    assert not (tmp_path / "new" / "identity.key").exists()


def test_a_weak_passphrase_is_questioned_at_init(tmp_path: Path) -> None:
    term = _init(tmp_path)
    term.expect("New passphrase:")
    term.type("x")
    term.expect("Repeat for confirmation:")
    term.type("x")
    term.expect("securechan: warning: weak passphrase: it is 1 character long (under 12)")
    term.expect("Use it anyway? [y/N]:")
    term.type("n")
    assert term.finish() == 2, term.out
    assert "securechan: choose a stronger passphrase (or give --allow-weak)" in term.out
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").glob("identity.*"))


def test_allow_weak_and_the_measured_kdf_costs(tmp_path: Path) -> None:
    term = _init(tmp_path, "--allow-weak")
    term.expect("New passphrase:")
    term.type("password123")
    term.expect("Repeat for confirmation:")
    term.type("password123")
    assert term.finish() == 0, term.out
    assert "securechan: warning: weak passphrase" in term.out
    assert "Use it anyway?" not in term.out
    # The chosen profile measured, the others scaled from that measurement.
    line = next(x for x in term.out.splitlines() if x.startswith("Argon2id 'interactive' took"))
    assert "s with --kdf moderate" in line and "s with --kdf sensitive" in line, line
    assert (tmp_path / "new" / "identity.key").exists()


def test_a_script_is_warned_but_not_stopped(tmp_path: Path) -> None:
    argv = [*_command(), "--home", str(tmp_path / "new"), "init", "--name", "cairo"]
    proc = subprocess.run(
        [*argv, "--kdf", "interactive"],
        env=_env("x"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "securechan: warning: weak passphrase: it is 1 character long" in proc.stderr
    assert "Argon2id 'interactive' took" in proc.stderr


@pytest.mark.parametrize(
    ("passphrase", "weak"),
    [
        ("x", True),
        ("Password123!", True),
        ("p a s s w o r d 1 2", True),
        ("aaaaaaaaaaaaaaaaaaaa", True),
        ("abcdefghijkl", True),  # 12 lower-case letters: about 56 bits
        ("correct horse battery staple", False),
        ("tehran's long test passphrase", False),
        ("Gx7!qR2#vL9$", False),
        ("رمز عبور طولانی من", False),
    ],
)
def test_the_documented_rule(passphrase: str, weak: bool) -> None:
    from securechan.cli.passphrase import weakness

    assert (weakness(passphrase) is not None) is weak, weakness(passphrase)


def test_id_passwd_three_tries_and_the_weak_question(home: Path) -> None:
    term = Pty([*_command(), "--home", str(home), "id", "passwd", "--kdf", "interactive"], _env())
    term.expect("Current passphrase:")
    term.type("wrong guess")
    term.expect("securechan: wrong passphrase, try again (2 left)")
    term.expect("Current passphrase:")
    term.type(GOOD)
    term.expect("New passphrase:")
    term.type("short")
    term.expect("Repeat for confirmation:")
    term.type("short")
    term.expect("securechan: warning: weak passphrase: it is 5 characters long (under 12)")
    term.expect("Use it anyway? [y/N]:")
    term.type("y")
    assert term.finish() == 0, term.out
    assert "Passphrase changed." in term.out
    Keystore(home).unlock("short")  # the new one opens the key file


def test_id_passwd_never_takes_the_new_passphrase_from_the_environment(home: Path) -> None:
    # $SECURECHAN_PASSPHRASE holds the current passphrase; at a terminal the
    # new one is asked for (before, the current one was silently reused).
    argv = [*_command(), "--home", str(home), "id", "passwd", "--kdf", "interactive"]
    term = Pty(argv, _env(GOOD))
    term.expect("New passphrase:")
    term.type("five random words, typed again")
    term.expect("Repeat for confirmation:")
    term.type("five random words, typed again")
    assert term.finish() == 0, term.out
    assert "Current passphrase:" not in term.out
    Keystore(home).unlock("five random words, typed again")
