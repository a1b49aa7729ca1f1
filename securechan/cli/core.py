"""The CLI's core: the group class, global options, the error-to-exit-code
mapping, printing helpers. Every command module builds on this one."""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

import securechan
from securechan.cli.render import columns, json_text
from securechan.cli.text_input import read_text
from securechan.errors import (
    AgentUnavailable,
    ContactExists,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    NotFound,
    RelayError,
    RolledBack,
    SecurechanError,
    StorageError,
    UntrustedKey,
    UsageError,
    VerificationFailed,
)
from securechan.terminal_text import inline
from securechan.timestamps import iso_utc

if TYPE_CHECKING:  # typed, but not imported at start-up
    from securechan.agent.homelock import HomeLock
    from securechan.client.channel import Channel, UnknownPolicy

_T = TypeVar("_T")

EXIT_OK = 0
EXIT_VERIFY = 1
EXIT_USAGE = 2
EXIT_NETWORK = 3
EXIT_UNTRUSTED = 4
EXIT_ROLLBACK = 5  # a rolled-back state: ours (send refused) or a peer's (receive)
# sysexits.h EX_SOFTWARE: an exception outside the error tree (a bug). Input
# from a peer or a relay must never reach this; the safety net below still
# keeps it to one line, with no traceback and no echo of the input.
EXIT_INTERNAL = 70
_PROGRESS_MIN = 4 * 1024 * 1024
CARD_FILE = "identity.card"
_MAX_PASSPHRASE = 4096


def _exit_code(exc: SecurechanError) -> int:
    """The one place that maps the error tree to exit codes."""
    if isinstance(exc, RelayError | AgentUnavailable):
        return EXIT_NETWORK
    if isinstance(exc, UntrustedKey):  # includes KeyChanged
        return EXIT_UNTRUSTED
    if isinstance(exc, RolledBack):  # before StorageError, its base
        return EXIT_ROLLBACK
    if isinstance(exc, VerificationFailed):  # BadSignature, BadPassphrase
        return EXIT_VERIFY
    if isinstance(
        exc,
        MalformedInput
        | UsageError
        | NotFound  # includes ContactNotFound
        | NoIdentity
        | IdentityExists
        | ContactExists
        | StorageError,
    ):
        return EXIT_USAGE
    return EXIT_VERIFY


# The terminal's width (stdout, or stderr with err=True), or None for a pipe.
_columns = columns


def _fail(message: str, code: int) -> NoReturn:
    # Error messages embed peer and relay data (an unknown sender's name, a
    # relay's error body, a file name): rendered on one line, controls visible.
    click.echo(f"securechan: {inline(message, width=_columns(err=True), indent=12)}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """A group that turns expected errors into one line and an exit code."""

    def main(  # click overloads main() on standalone_mode; we take both
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run like click, but report usage errors on one line too."""
        run = super().main
        if not standalone_mode:
            return run(args, prog_name, complete_var, False, **extra)
        try:
            code = run(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except click.ClickException as e:
            hint = ""
            if isinstance(e, click.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            _fail(f"{e.format_message()}{hint}", e.exit_code)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SecurechanError as e:
            _fail(str(e), _exit_code(e))
        except OSError as e:
            name = f" {e.filename}" if e.filename else ""
            _fail(f"cannot access{name}: {e.strerror or e}", EXIT_USAGE)
        except sqlite3.Error as e:
            _fail(f"local database error: {e}", EXIT_USAGE)
        except UnicodeDecodeError:
            # Safety net: every text input is decoded through _read_text,
            # which names the file; this only stops a traceback.
            _fail("an input file is not valid text", EXIT_USAGE)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            # Last safety net (issue 11, "peer keys"): whatever a peer or a
            # relay sent, the user sees one line and a documented code, not a
            # traceback. Only the exception's type is shown: its text may
            # carry peer-controlled bytes or secrets. SECURECHAN_DEBUG=1
            # re-raises, for developers.
            if os.environ.get("SECURECHAN_DEBUG") == "1":
                raise
            _fail(
                f"internal error ({type(e).__name__}); please report it "
                "(SECURECHAN_DEBUG=1 shows the traceback)",
                EXIT_INTERNAL,
            )


class _LazyGroup(_Group):
    """The top-level group: it knows each command's name, module and one-line
    help, and imports the module only when that command runs or shows its
    help (click's "lazily loading subcommands" pattern). ``securechan --help``
    and a simple command stay light; ``tests/test_cli.py`` checks that each
    one-line help here is the command's own."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # name -> ("module:attribute", the first paragraph of its help)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.lazy_commands[cmd_name][0].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click prints them, from the one-line helps: no module is imported."""
        stubs = {
            name: click.Command(name, help=text) for name, (_, text) in self.lazy_commands.items()
        }
        shown = sorted({**self.commands, **stubs}.items())
        rows = [(name, cmd) for name, cmd in shown if not cmd.hidden]
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


_read_text = read_text


class _App:
    """What the global options set: the home folder and passphrase source."""

    def __init__(self, home: Path | None, passphrase_file: Path | None) -> None:
        self.home = home if home is not None else securechan.default_home()
        self.passphrase_file = passphrase_file
        self.home_lock: HomeLock | None = None  # held while a command works in-process

    @property
    def keystore(self) -> securechan.Keystore:
        return securechan.Keystore(self.home, events=self._record_event)

    def _record_event(self, event: securechan.SecurityEvent) -> None:
        # Every identity and contact change goes to the audit log. No identity
        # here (no passphrase): the next opening with it signs these entries.
        from securechan.audit.log import AuditLog

        with AuditLog.open(self.home) as log:
            log.record(event)

    def passphrase(self, *, confirm: bool = False, prompt: str = "Passphrase") -> str:
        """From --passphrase-file, else $SECURECHAN_PASSPHRASE, else a prompt."""
        if self.passphrase_file is not None:
            with open(self.passphrase_file, "rb") as f:
                raw = f.readline(_MAX_PASSPHRASE + 1)
            if len(raw.rstrip(b"\r\n")) > _MAX_PASSPHRASE:
                raise MalformedInput(f"{self.passphrase_file}: the passphrase is over 4096 bytes")
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise MalformedInput(f"{self.passphrase_file} is not UTF-8 text") from None
            if not line:
                raise MalformedInput(f"{self.passphrase_file}: the first line is empty")
            return line
        env = os.environ.get("SECURECHAN_PASSPHRASE")
        if env:
            return env
        if not sys.stdin.isatty():
            raise UsageError(
                "no passphrase: use --passphrase-file or SECURECHAN_PASSPHRASE, "
                "or run in a terminal"
            )
        if confirm:  # three tries, one-line errors (securechan/cli/passphrase.py)
            from securechan.cli.passphrase import prompt_new

            return prompt_new(prompt)
        value: str = click.prompt(prompt, hide_input=True, err=True, type=str)
        return value


def _emit_json(data: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout: every ``--json`` output is
    NDJSON (newline-delimited JSON, one object a line; docs/CLI.md, "JSON
    output"). A command printing many results calls this once per result
    (:func:`_emit_json_lines`); an array is never printed, so a stream can be
    read line by line as it comes. The text is :func:`render.json_text`'s,
    which the fast path through the agent prints too."""
    if not isinstance(data, Mapping):
        raise TypeError("--json prints one object per line, never an array")
    click.echo(json_text(data))


def _emit_json_lines(items: Iterable[Mapping[str, Any]]) -> None:
    """Many results: one object per line (NDJSON), none for no results."""
    for item in items:
        _emit_json(item)


def _iso(ts: int | None) -> str | None:
    return iso_utc(ts)


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON on stdout, one object a line (NDJSON)."
    )(f)


class _RelayUrl(click.ParamType):  # type: ignore[type-arg]
    """A relay URL option, checked when the option is read
    (:func:`securechan.transport.check_relay_url`): a malformed one is a
    usage error (exit 2) at once, before any passphrase or network."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from securechan.transport import check_relay_url

        try:
            return check_relay_url(str(value))
        except SecurechanError as e:
            self.fail(str(e), param, ctx)


RELAY_URL = _RelayUrl()


def _kdf_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--kdf``: the Argon2id cost of a new key file (``securechan.KDF_PROFILES``)."""
    return click.option(
        "--kdf",
        type=click.Choice(sorted(securechan.KDF_PROFILES)),
        default="moderate",
        show_default=True,
        help="Argon2id cost for the key file.",
    )(f)


@contextmanager
def _progress(size: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for big files, when stderr is a terminal."""
    if size < _PROGRESS_MIN or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


pass_app = click.make_pass_decorator(_App)


def _channel(app: _App, *, unknown: UnknownPolicy = "refuse") -> Channel:
    """The client, unlocked (imported here: only messaging commands pay for it)."""
    from securechan.agent.homelock import HomeLock
    from securechan.cli.passphrase import unlock
    from securechan.client.channel import Channel

    # One writer per home (docs/AGENT.md): while this command works
    # in-process it holds the home's shared lock, so no agent starts under
    # it; a running agent makes this fail (HomeInUse) before any prompt.
    if app.home_lock is None and app.home.is_dir():
        app.home_lock = HomeLock(app.home, exclusive=False)
    return unlock(app, lambda secret: Channel.open(app.home, secret, unknown_senders=unknown))


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    import asyncio

    return asyncio.run(coro)
