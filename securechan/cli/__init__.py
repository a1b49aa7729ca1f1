"""The ``securechan`` command: parse, prompt, print. No protocol logic here.

Exit codes (``docs/CLI.md``): 0 ok; 1 verification or policy failure; 2 usage,
bad input or a local file problem; 3 relay or network failure; 4 untrusted or
changed key; 5 a rolled-back state. Expected errors print one line on
stderr; never a traceback.

:func:`main` first offers the command to a running agent
(:mod:`securechan.cli.fast`: ``send``, ``receive``, ``history``, ``status``
and ``--version``, in a process that loads neither click nor the
cryptography); everything else, and everything when no agent runs, goes to
the click group in :mod:`securechan.cli.app`, which imports a command's
module only when it runs. This package itself is light: the names below are
imported on first use (PEP 562).
"""

from __future__ import annotations

import sys

from securechan.lazy import lazy_attributes

# Not `from typing import TYPE_CHECKING`: importing typing costs start-up
# time on the fast path through the agent; mypy treats this name the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from securechan.cli.app import COMMANDS, cli
    from securechan.cli.core import (
        CARD_FILE,
        EXIT_INTERNAL,
        EXIT_NETWORK,
        EXIT_OK,
        EXIT_ROLLBACK,
        EXIT_UNTRUSTED,
        EXIT_USAGE,
        EXIT_VERIFY,
        _App,
        _emit_json,
        _exit_code,
        _Group,
        _read_text,
        pass_app,
    )

_LAZY = {
    "CARD_FILE": "securechan.cli.core",
    "EXIT_INTERNAL": "securechan.cli.core",
    "EXIT_NETWORK": "securechan.cli.core",
    "EXIT_OK": "securechan.cli.core",
    "EXIT_ROLLBACK": "securechan.cli.core",
    "EXIT_UNTRUSTED": "securechan.cli.core",
    "EXIT_USAGE": "securechan.cli.core",
    "EXIT_VERIFY": "securechan.cli.core",
    "_App": "securechan.cli.core",
    "_Group": "securechan.cli.core",
    "_emit_json": "securechan.cli.core",
    "_exit_code": "securechan.cli.core",
    "_read_text": "securechan.cli.core",
    "pass_app": "securechan.cli.core",
    "COMMANDS": "securechan.cli.app",
    "cli": "securechan.cli.app",
}
__getattr__, __dir__ = lazy_attributes("securechan.cli", _LAZY, globals())


def main() -> None:
    """Console-script entry point: through the agent when one runs and the
    command is one it serves, else the whole command line in this process."""
    if sys.argv[1:] == ["--version"]:  # the lightest answer there is
        from securechan import __version__

        print(f"securechan, version {__version__}")  # as click's version_option
        sys.exit(0)
    from securechan.cli.fast import through_agent

    code = through_agent(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from securechan.cli.app import main as in_process

    in_process()


__all__ = [
    "CARD_FILE",
    "COMMANDS",
    "EXIT_INTERNAL",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_ROLLBACK",
    "EXIT_UNTRUSTED",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "_App",
    "_Group",
    "_emit_json",
    "_exit_code",
    "_read_text",
    "cli",
    "main",
    "pass_app",
]
