"""The ``securechan`` command group (click): parse, prompt, print. No
protocol logic here. ``securechan.cli.main`` comes here unless the command
went through a running agent (``cli/fast.py``).

Exit codes (``docs/CLI.md``): 0 ok; 1 verification or policy failure; 2 usage,
bad input or a local file problem; 3 relay or network failure; 4 untrusted or
changed key. Expected errors print one line on stderr; never a traceback.

The package: :mod:`securechan.cli.core` (the group class, global options, the
one error-to-exit-code mapping ``_exit_code``, printing helpers) and one
module per command group. The top-level group below names every command and
its one-line help; a command's module is imported only when it runs, so
``securechan --help`` loads neither the client nor the relay.
"""

from __future__ import annotations

from pathlib import Path

import click

import securechan
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
    _fail,
    _Group,
    _LazyGroup,
    _read_text,
    pass_app,
)

__all__ = [
    "CARD_FILE",
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

# name -> ("module:attribute", the first paragraph of the command's help).
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": (
        "securechan.cli.agent:agent",
        "Keep your key unlocked for a while in one background process.",
    ),
    "contact": (
        "securechan.cli.contact:contact",
        "Pin, verify and list contacts (like SSH's known_hosts).",
    ),
    "demo": (
        "securechan.cli.demo:demo",
        "Play the back-channel on this machine, attacks included.",
    ),
    "group": (
        "securechan.cli.group:group",
        "Talk in groups of up to 20 members with one common transcript.",
    ),
    "history": (
        "securechan.cli.messaging:history",
        "Show the stored conversation (with CONTACT, or all).",
    ),
    "id": ("securechan.cli.identity:id_group", "Show or export your identity."),
    "init": (
        "securechan.cli.identity:init",
        "Create your identity (hybrid ML-DSA-65 + Ed25519) in the home folder.",
    ),
    "log": (
        "securechan.cli.log:log_group",
        "Show and verify your local audit log (no passphrase needed).",
    ),
    "outbox": (
        "securechan.cli.outbox:outbox",
        "List the messages waiting to be posted, or cancel one.",
    ),
    "pair": (
        "securechan.cli.pair:pair",
        "Exchange and verify contacts by reading a one-time code aloud.",
    ),
    "policy": (
        "securechan.cli.policy:policy",
        "Which witnesses must cosign a relay's log (docs/AUDIT.md, Witnesses).",
    ),
    "receive": ("securechan.cli.messaging:receive", "Fetch, verify, store and print new messages."),
    "register": (
        "securechan.cli.messaging:register",
        "Create your contact address at each relay and publish prekeys.",
    ),
    "relay": ("securechan.cli.relay:relay", "Run a mediator's relay."),
    "send": (
        "securechan.cli.messaging:send",
        "Send MESSAGE (or '-' for stdin, or --file F) to CONTACT or --group NAME.",
    ),
    "sign": ("securechan.cli.documents:sign", "Write a detached signature of FILE to FILE.sig."),
    "statement": (
        "securechan.cli.statement:statement",
        "Export one message as a statement a third party verifies offline.",
    ),
    "status": (
        "securechan.cli.messaging:status",
        "Relays, queues, sessions and envelopes waiting to be sent.",
    ),
    "verify": (
        "securechan.cli.documents:verify",
        "Check that FILE was signed by --from NAME (or --key PUBFILE).",
    ),
    "witness": (
        "securechan.cli.witness:witness",
        "Cosign a relay's transparency log as a witness (C2SP tlog-cosignature).",
    ),
}


@click.group(
    cls=_LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(securechan.__version__, prog_name="securechan")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SECURECHAN_HOME",
    help="Home folder (default: $SECURECHAN_HOME, else the user data folder).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the passphrase from the first line of this file.",
)
@click.pass_context
def cli(ctx: click.Context, home: Path | None, passphrase_file: Path | None) -> None:
    """securechan: a signed, end-to-end encrypted back-channel."""
    ctx.obj = _App(home, passphrase_file)


def main() -> None:
    """The whole command line, in this process (click)."""
    try:
        cli.main(prog_name="securechan")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
