"""Passphrases at the command line: prompts with three tries, the weak-passphrase
rule, and what each ``--kdf`` costs on this machine (docs/CLI.md, "Passphrases").

* A passphrase typed at a prompt gets three tries, as sudo and gpg give: a wrong
  one prints ``securechan: wrong passphrase, try again (2 left)``; after the
  third the command fails with exit 1 (:class:`BadPassphrase`). A passphrase
  from ``--passphrase-file`` or ``$SECURECHAN_PASSPHRASE`` gets one try: a
  script does not type it again.
* A new passphrase is typed twice; a mismatch prints one ``securechan:`` line and
  asks again, three times, then fails with exit 2 (:class:`UsageError`).
* :func:`weakness` is the documented rule ``init`` and ``id passwd`` warn on.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import click

from securechan.errors import BadPassphrase, UsageError
from securechan.terminal_text import inline


class _App(Protocol):
    """What this module needs of ``cli.core._App`` (which imports this module)."""

    passphrase_file: Path | None

    def passphrase(self, *, confirm: bool = False, prompt: str = "Passphrase") -> str: ...


__all__ = ["MIN_BITS", "MIN_LENGTH", "TRIES", "interactive", "prompt_new", "unlock", "weakness"]

_T = TypeVar("_T")

TRIES = 3
MIN_LENGTH = 12
"""Fewer characters than this is weak, whatever they are."""
MIN_BITS = 60
"""An estimate (length x log2 of the character classes used) under this is weak."""

# The most common passwords of the public breach lists (SecLists' top entries),
# compared after lower-casing and removing digits, spaces and punctuation, so
# "Password123!" and "p a s s w o r d" count as "password".
_COMMON = frozenset(
    [
        "password",
        "passw",
        "passphrase",
        "qwerty",
        "qwertyuiop",
        "azerty",
        "asdf",
        "asdfgh",
        "asdfghjkl",
        "zxcvbn",
        "zxcvbnm",
        "abc",
        "abcdef",
        "abcdefg",
        "letmein",
        "welcome",
        "admin",
        "administrator",
        "root",
        "toor",
        "login",
        "master",
        "secret",
        "dragon",
        "monkey",
        "football",
        "baseball",
        "iloveyou",
        "princess",
        "sunshine",
        "shadow",
        "superman",
        "batman",
        "trustno",
        "starwars",
        "whatever",
        "freedom",
        "qazwsx",
        "changeme",
        "default",
        "securechan",
        "test",
        "guest",
        "hello",
        "love",
    ]
)
# Symbols: printable ASCII that is neither a letter nor a digit (33 with space).
_POOLS = (
    (str.islower, 26),
    (str.isupper, 26),
    (str.isdigit, 10),
)
_SYMBOLS = 33
_NON_ASCII = 100  # a rough, low count for letters of other scripts


def estimated_bits(passphrase: str) -> float:
    """length x log2(the size of the character classes used): lower-case,
    upper-case, digits, ASCII symbols and space, anything else. An upper
    bound for a person's choice, so the rule is a floor, not a promise."""
    pool = 0
    chars = set(passphrase)
    for test, size in _POOLS:
        if any(c.isascii() and test(c) for c in chars):
            pool += size
    if any(c.isascii() and not c.isalnum() for c in chars):
        pool += _SYMBOLS
    if any(not c.isascii() for c in chars):
        pool += _NON_ASCII
    return len(passphrase) * math.log2(pool) if pool > 1 else 0.0


def weakness(passphrase: str) -> str | None:
    """Why ``passphrase`` is weak, or None. Weak: under :data:`MIN_LENGTH`
    characters, or one of the most common passwords once digits, spaces and
    punctuation are removed, or fewer than :data:`MIN_BITS` estimated bits
    (:func:`estimated_bits`), or one repeated character."""
    if len(passphrase) < MIN_LENGTH:
        count = len(passphrase)
        return f"it is {count} character{'s' if count != 1 else ''} long (under {MIN_LENGTH})"
    core = "".join(c for c in passphrase.lower() if c.isalpha())
    if len(set(passphrase)) <= 2:
        return "it repeats one or two characters"
    if core in _COMMON:
        return "it is a common password with a few changes"
    bits = estimated_bits(passphrase)
    if bits < MIN_BITS:
        return f"it has about {bits:.0f} bits (fewer than {MIN_BITS}): use four random words"
    return None


def interactive(app: _App) -> bool:
    """Whether the passphrase comes from a prompt (not a file or the environment)."""
    if app.passphrase_file is not None or os.environ.get("SECURECHAN_PASSPHRASE"):
        return False
    return sys.stdin.isatty()


def _say(message: str) -> None:
    click.echo(f"securechan: {inline(message)}", err=True)


def prompt_new(prompt: str) -> str:
    """A new passphrase typed twice at the terminal; three tries to type the
    same twice, then :class:`UsageError` (exit 2)."""
    for left in range(TRIES - 1, -1, -1):
        first: str = click.prompt(prompt, hide_input=True, err=True, type=str)
        second: str = click.prompt("Repeat for confirmation", hide_input=True, err=True, type=str)
        if first == second:
            return first
        if left:
            _say(f"the passphrases do not match, try again ({left} left)")
    raise UsageError(f"the passphrases did not match ({TRIES} tries)")


def unlock(app: _App, open_: Callable[[str], _T], *, prompt: str = "Passphrase") -> _T:
    """``open_(passphrase)``, with three tries at a prompt and one otherwise.

    ``open_`` raises :class:`BadPassphrase` for a wrong passphrase; it is
    asked again only then, and only at a terminal."""
    if not interactive(app):
        return open_(app.passphrase(prompt=prompt))
    tries = 0
    while True:
        tries += 1
        try:
            return open_(app.passphrase(prompt=prompt))
        except BadPassphrase:
            if tries >= TRIES:
                raise BadPassphrase(
                    f"wrong passphrase, or the key file was altered ({TRIES} tries)"
                ) from None
            _say(f"wrong passphrase, try again ({TRIES - tries} left)")
