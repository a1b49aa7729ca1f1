"""The ``securechan`` command: parse, prompt, print. No protocol logic here.

Exit codes (``docs/CLI.md``): 0 ok; 1 verification or policy failure; 2 usage,
bad input or a local file problem; 3 relay or network failure; 4 untrusted or
changed key. Expected errors print one line on stderr; never a traceback.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import click

import securechan
from securechan.errors import (
    ContactExists,
    ContactNotFound,
    IdentityExists,
    MalformedInput,
    NoIdentity,
    RelayError,
    RolledBack,
    SecurechanError,
    StorageError,
    UntrustedKey,
    VerificationFailed,
)
from securechan.terminal_text import block, inline

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
    if isinstance(exc, RelayError):
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
        | NoIdentity
        | IdentityExists
        | ContactNotFound
        | ContactExists
        | StorageError,
    ):
        return EXIT_USAGE
    return EXIT_VERIFY


def _columns(*, err: bool = False) -> int | None:
    """The terminal's width when stdout (or stderr) is a terminal, which wraps
    long lines; None for a pipe or a file, where lines are never cut."""
    stream = sys.stderr if err else sys.stdout
    try:
        columns = os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (OSError, ValueError):
        return None
    return columns or None


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


_MAX_TEXT = 1024 * 1024


def _read_text(source: Path | BinaryIO, what: str) -> str:
    """Read at most 1 MiB of UTF-8 text from a path or a binary file."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            raw = f.read(_MAX_TEXT + 1)
    else:
        raw = source.read(_MAX_TEXT + 1)
    if len(raw) > _MAX_TEXT:
        raise MalformedInput(f"{what} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{what} is not UTF-8 text") from None


class _App:
    """What the global options set: the home folder and passphrase source."""

    def __init__(self, home: Path | None, passphrase_file: Path | None) -> None:
        self.home = home if home is not None else securechan.default_home()
        self.passphrase_file = passphrase_file

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
            raise MalformedInput(
                "no passphrase: use --passphrase-file or SECURECHAN_PASSPHRASE, "
                "or run in a terminal"
            )
        value: str = click.prompt(
            prompt, hide_input=True, confirmation_prompt=confirm, err=True, type=str
        )
        return value


def _emit_json(data: Any) -> None:
    # The exact text, but printed as ASCII (json.dumps' default ensure_ascii):
    # controls, bidi and every other non-ASCII character are \uXXXX escapes,
    # so JSON on a terminal is as harmless as the rendered form.
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))


def _iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


@contextmanager
def _progress(size: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for big files, when stderr is a terminal."""
    if size < _PROGRESS_MIN or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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


pass_app = click.make_pass_decorator(_App)


# --- identity ----------------------------------------------------------------


@cli.command()
@click.option("--name", required=True, help="Your delegation's name, e.g. tehran.")
@click.option("--force", is_flag=True, help="Replace an existing identity (it is lost).")
@click.option(
    "--kdf",
    type=click.Choice(sorted(securechan.KDF_PROFILES)),
    default="moderate",
    show_default=True,
    help="Argon2id cost for the key file.",
)
@_json_option
@pass_app
def init(app: _App, name: str, force: bool, kdf: str, as_json: bool) -> None:
    """Create your identity (hybrid ML-DSA-65 + Ed25519) in the home folder."""
    store = app.keystore
    securechan.identity.check_name(name)
    if store.has_identity() and not force:
        raise IdentityExists(f"{store.key_path} exists; use --force to replace it")
    secret = app.passphrase(confirm=True, prompt="New passphrase")
    ident = store.create(name, secret, kdf=securechan.KDF_PROFILES[kdf], force=force)
    from securechan.audit.log import AuditLog

    # The new identity signs the log at once, so 'log verify' holds after init.
    with AuditLog.open(store.home, ident) as log:
        log.checkpoint()
    if as_json:
        _emit_json(
            {"name": ident.name, "fingerprint": str(ident.fingerprint), "home": str(store.home)}
        )
        return
    click.echo(f"Created identity {inline(ident.name)}")
    click.echo(f"Fingerprint: {ident.fingerprint}")
    click.echo(f"Public identity file: {inline(str(store.public_path))}")


@cli.group(name="id", cls=_Group)
def id_group() -> None:
    """Show or export your identity."""


@id_group.command(name="show")
@_json_option
@pass_app
def id_show(app: _App, as_json: bool) -> None:
    """Show your name and fingerprint."""
    store = app.keystore
    pub = store.public_identity()
    data = {
        "name": pub.name,
        "fingerprint": str(pub.fingerprint),
        "created": _iso(pub.created),
        "home": str(store.home),
    }
    if as_json:
        _emit_json(data)
        return
    click.echo(f"Name:        {inline(pub.name)}")
    click.echo(f"Fingerprint: {pub.fingerprint}")
    click.echo(f"Created:     {data['created']}")
    click.echo(f"Home:        {inline(str(store.home))}")


@id_group.command(name="export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@pass_app
def id_export(app: _App, output: Path | None) -> None:
    """Print your public identity file, for others' 'contact add'.

    After 'register', the file also holds your signed contact card (your
    relay addresses), so it is all another party needs."""
    text = app.keystore.public_identity().to_text()
    card_path = app.home / CARD_FILE
    if card_path.exists():
        text += _read_text(card_path, str(card_path))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="ascii")


@id_group.command(name="passwd")
@click.option("--new-passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kdf", type=click.Choice(sorted(securechan.KDF_PROFILES)), default="moderate")
@pass_app
def id_passwd(app: _App, new_passphrase_file: Path | None, kdf: str) -> None:
    """Change the passphrase that encrypts your key file."""
    old = app.passphrase(prompt="Current passphrase")
    if new_passphrase_file is None and not sys.stdin.isatty():
        # Not $SECURECHAN_PASSPHRASE: it already holds the current passphrase.
        raise MalformedInput(
            "give the new passphrase with --new-passphrase-file, or run in a terminal"
        )
    new = _App(app.home, new_passphrase_file).passphrase(confirm=True, prompt="New passphrase")
    app.keystore.change_passphrase(old, new, kdf=securechan.KDF_PROFILES[kdf])
    click.echo("Passphrase changed.", err=True)


# --- contacts ----------------------------------------------------------------


def _contact_json(
    c: securechan.Contact, sn: securechan.SafetyNumber | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": c.name,
        "identity_name": c.identity.name,
        "fingerprint": str(c.fingerprint),
        "verified": c.verified,
        "added": _iso(c.added),
        "verified_at": _iso(c.verified_at),
    }
    if sn is not None:
        data["safety_number"] = str(sn)
        data["safety_words"] = list(sn.words)
    return data


@cli.group(cls=_Group)
def contact() -> None:
    """Pin, verify and list contacts (like SSH's known_hosts)."""


@contact.command(name="add")
@click.argument("file", type=click.File("rb"))
@click.option("--name", help="Pin under this name (default: the name in the file).")
@click.option("--replace", is_flag=True, help="Accept a changed key for a known name.")
@_json_option
@pass_app
def contact_add(app: _App, file: Any, name: str | None, replace: bool, as_json: bool) -> None:
    """Pin the public identity in FILE ('-' for stdin).

    If FILE also holds a contact card (from 'id export' after 'register'),
    its relay addresses are kept so you can send to this contact."""
    from securechan.protocol.address import ContactCard

    text = _read_text(file, "the identity file")
    ident = securechan.PublicIdentity.from_text(text)
    card: bytes | None = None
    if "-----BEGIN SECURECHAN CONTACT CARD-----" in text:
        parsed = ContactCard.from_text(text)
        if not parsed.identity.same_key(ident):
            raise MalformedInput("the contact card belongs to another identity than the file")
        card = parsed.to_bytes()
    c = app.keystore.contacts.add(ident, name=name, replace_key=replace, card=card)
    if as_json:
        _emit_json(_contact_json(c))
        return
    shown = inline(c.name)
    click.echo(f"Pinned {shown}: {c.fingerprint}")
    click.echo(f"Not verified yet: compare safety numbers with 'securechan contact show {shown}'.")


@contact.command(name="list")
@_json_option
@pass_app
def contact_list(app: _App, as_json: bool) -> None:
    """List pinned contacts."""
    contacts = app.keystore.contacts.list()
    if as_json:
        _emit_json([_contact_json(c) for c in contacts])
        return
    for c in contacts:
        mark = "verified  " if c.verified else "UNVERIFIED"
        click.echo(f"{inline(c.name):<20} {mark} {c.fingerprint}")


@contact.command(name="show")
@click.argument("name")
@_json_option
@pass_app
def contact_show(app: _App, name: str, as_json: bool) -> None:
    """Show a contact's fingerprint and your safety number with it."""
    store = app.keystore
    own = store.public_identity()
    c = store.contacts.get(name)
    sn = securechan.safety_number(own, c.identity)
    if as_json:
        _emit_json(_contact_json(c, sn))
        return
    click.echo(f"Name:          {inline(c.name)}")
    click.echo(f"Fingerprint:   {c.fingerprint}")
    click.echo(f"Verified:      {'yes, ' + str(_iso(c.verified_at)) if c.verified else 'NO'}")
    click.echo(f"Safety number: {sn}")
    click.echo(f"Spoken form:   {sn.words_text}")


@contact.command(name="verify")
@click.argument("name")
@click.argument("safety_number", nargs=-1, required=True)
@_json_option
@pass_app
def contact_verify(app: _App, name: str, safety_number: tuple[str, ...], as_json: bool) -> None:
    """Mark NAME verified if SAFETY-NUMBER (digits or words) matches."""
    store = app.keystore
    c = store.contacts.verify(name, " ".join(safety_number), store.public_identity())
    if as_json:
        _emit_json(_contact_json(c))
        return
    click.echo(f"{inline(c.name)} is verified.")


@contact.command(name="rekey")
@click.argument("name")
@pass_app
def contact_rekey(app: _App, name: str) -> None:
    """Start a new session with NAME at the next send.

    For a conversation whose state was restored from an older copy (send
    refuses it, exit 5): its sessions are never sent on again, and the next
    'send' makes a new handshake with fresh keys. Messages NAME sent on the
    old session still arrive."""

    async def go() -> int:
        async with _channel(app) as ch:
            count: int = ch.rekey(name)
            return count

    count = _run(go())
    click.echo(
        f"Retired {count} session(s) with {inline(name)}; the next send starts a new one.",
        err=True,
    )


@contact.command(name="remove")
@click.argument("name")
@pass_app
def contact_remove(app: _App, name: str) -> None:
    """Unpin a contact."""
    c = app.keystore.contacts.remove(name)
    click.echo(f"Removed {inline(c.name)} ({c.fingerprint}).", err=True)


# --- detached signatures -------------------------------------------------------


def _open_document(path: Path) -> tuple[BinaryIO, int]:
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    return f, os.fstat(f.fileno()).st_size


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default FILE.sig."
)
@click.option("--comment", help="A one-line comment, signed with the document.")
@_json_option
@pass_app
def sign(app: _App, file: Path, output: Path | None, comment: str | None, as_json: bool) -> None:
    """Write a detached signature of FILE to FILE.sig."""
    from securechan.identity._files import atomic_write

    ident = app.keystore.unlock(app.passphrase())
    f, size = _open_document(file)
    with f, _progress(size, "Signing") as progress:
        sig = securechan.sign_document(
            ident, f, now=int(time.time()), comment=comment, progress=progress
        )
    out = output if output is not None else file.with_name(file.name + ".sig")
    atomic_write(out, sig.to_text().encode("utf-8"), replace=True, mode=0o644)
    if as_json:
        _emit_json({"signature": str(out), "size": sig.statement.size, "signer": ident.name})
        return
    click.echo(
        f"Signed {inline(str(file))} ({size} bytes) as {inline(ident.name)}: {inline(str(out))}",
        err=True,
    )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sig", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default FILE.sig."
)
@click.option("--from", "from_name", help="The contact who should have signed.")
@click.option("--key", type=click.File("rb"), help="A public identity file instead.")
@_json_option
@pass_app
def verify(
    app: _App, file: Path, sig: Path | None, from_name: str | None, key: Any, as_json: bool
) -> None:
    """Check that FILE was signed by --from NAME (or --key PUBFILE)."""
    if (from_name is None) == (key is None):
        raise MalformedInput("give exactly one of --from NAME or --key PUBFILE")
    sig_path = sig if sig is not None else file.with_name(file.name + ".sig")
    try:
        sig_text = _read_text(sig_path, str(sig_path))
    except FileNotFoundError:
        raise MalformedInput(f"no signature file {sig_path} (use --sig)") from None
    signature = securechan.DocumentSignature.from_text_unverified(sig_text)
    verified_contact = True
    if from_name is not None:
        c = app.keystore.contacts.get(from_name)
        signer, verified_contact = c.identity, c.verified
    else:
        signer = securechan.PublicIdentity.from_text(_read_text(key, "the --key file"))
    f, size = _open_document(file)
    with f, _progress(size, "Verifying") as progress:
        st = securechan.verify_document(signer, f, signature, progress=progress)
    result = {
        "valid": True,
        "signer": signer.name,
        "fingerprint": str(st.signer_fingerprint),
        "created": _iso(st.created),
        "comment": st.comment,
        "contact_verified": verified_contact if from_name is not None else None,
    }
    if as_json:
        _emit_json(result)
    else:
        click.echo(
            f"Good signature by {inline(signer.name)} ({st.signer_fingerprint}), "
            f"made {result['created']}"
        )
        if st.comment is not None:  # the signer's text: after the verdict, marked
            click.echo(f"Signed comment: {block(st.comment, width=_columns(), indent=16)}")
    if not verified_contact:
        shown = inline(str(from_name))
        click.echo(
            f"securechan: warning: {shown} is not verified; compare safety numbers "
            f"('securechan contact show {shown}')",
            err=True,
        )


# --- relay and messaging ----------------------------------------------------------


@cli.group(cls=_Group)
def relay() -> None:
    """Run a mediator's relay."""


@relay.command(name="serve")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8470; 0 picks a free one).")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data folder (default ./relay-data).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML config file (flags override it).",
)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL"]),
    default=None,
    help="SQLite durability (default FULL: a 2xx survives power loss).",
)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default=None)
def relay_serve(
    host: str | None,
    port: int | None,
    data: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    config_file: Path | None,
    synchronous: str | None,
    log_level: str | None,
) -> None:
    """Serve the relay until SIGTERM or Ctrl-C."""
    import asyncio
    import dataclasses
    import logging

    from securechan.relay.app import RelayConfig
    from securechan.relay.server import load_config_file, options_from, serve

    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if config_file is not None:
        values, limits = load_config_file(config_file)
    flags = {
        "host": host,
        "port": port,
        "data": data,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "synchronous": synchronous,
        "log_level": log_level,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    opts = options_from(values)
    try:
        config = dataclasses.replace(RelayConfig(), **limits)
    except TypeError as e:
        raise MalformedInput(f"bad [limits] in the config: {e}") from None
    logging.basicConfig(
        level=opts.log_level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    run = asyncio.run
    try:  # libuv's event loop when installed (a dependency on POSIX): less CPU per request
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    run(serve(opts, config, announce=lambda line: click.echo(line)))


def _channel(app: _App, *, unknown: str = "refuse") -> Any:
    from securechan.client.channel import Channel

    return Channel.open(app.home, app.passphrase(), unknown_senders=unknown)  # type: ignore[arg-type]


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


@cli.command()
@click.option("--relay", "relays", multiple=True, required=True, help="Relay URL (repeatable).")
@click.option(
    "--relay-fingerprint",
    "fingerprint",
    metavar="HEX",
    help="The fingerprint the relay's operator published ('relay fingerprint:' at start); "
    "refuse the relay if its key differs. Only with one --relay.",
)
@_json_option
@pass_app
def register(app: _App, relays: tuple[str, ...], fingerprint: str | None, as_json: bool) -> None:
    """Create your contact address at each relay and publish prekeys.

    The relay's key is pinned on first use; give --relay-fingerprint to check
    it against the one its operator published instead of trusting the first
    answer."""
    from securechan.identity._files import atomic_write

    if fingerprint is not None and len(relays) != 1:
        raise MalformedInput("--relay-fingerprint goes with exactly one --relay")
    wanted = fingerprint.strip().lower().replace(" ", "") if fingerprint else None
    if wanted is not None and (
        len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted)
    ):
        raise MalformedInput("a relay fingerprint is 64 hex digits")

    async def go() -> Any:
        async with _channel(app) as ch:
            card = None
            for url in relays:
                pin = bytes.fromhex(wanted) if wanted is not None else None
                card = await ch.register(url, pin_fingerprint=pin)
            return card, ch.relay_fingerprints()

    card, keys = _run(go())
    atomic_write(app.home / CARD_FILE, card.to_text().encode("ascii"), replace=True)
    if as_json:
        _emit_json(
            {
                "relays": [a.relay for a in card.addresses],
                "relay_fingerprints": {a.relay: keys.get(a.relay) for a in card.addresses},
            }
        )
        return
    for a in card.addresses:
        click.echo(f"Registered at {inline(a.relay)} (relay fingerprint {keys.get(a.relay)})")
    click.echo("Your contact file now includes these addresses: 'securechan id export'.")


@cli.command()
@click.argument("contact_name", metavar="CONTACT")
@click.argument("message", required=False)
@click.option(
    "--file",
    "file_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Send a file instead of a text.",
)
@_json_option
@pass_app
def send(
    app: _App, contact_name: str, message: str | None, file_path: Path | None, as_json: bool
) -> None:
    """Send MESSAGE (or '-' for stdin, or --file F) to CONTACT."""
    if (message is None) == (file_path is None):
        raise MalformedInput("give a MESSAGE ('-' reads stdin) or --file F")
    contact = app.keystore.contacts.get(contact_name)
    if not contact.verified:
        shown = inline(contact_name)
        click.echo(
            f"securechan: warning: {shown} is not verified; compare safety numbers "
            f"('securechan contact show {shown}')",
            err=True,
        )
    if message == "-":
        message = _read_text(sys.stdin.buffer, "standard input")

    async def go() -> Any:
        async with _channel(app) as ch:
            if file_path is not None:
                data = file_path.read_bytes()
                if len(data) < _PROGRESS_MIN or not sys.stderr.isatty():
                    return await ch.send_file(contact_name, file_path.name, data)
                with click.progressbar(length=1, label="Sending", file=sys.stderr) as bar:

                    def tick(done: int, total: int) -> None:
                        bar.length = total
                        bar.update(done - bar.pos)

                    return await ch.send_file(contact_name, file_path.name, data, progress=tick)
            return await ch.send_text(contact_name, message or "")

    result = _run(go())
    seqs = _seq_range(result.seqs)
    if result.pending and not result.delivered:
        # One line, exit 3: the message is safe in the outbox.
        raise RelayError(
            f"no relay accepted message {seqs} to {result.contact} yet; it is queued "
            "and will be posted by the next send, receive or status"
        )
    if as_json:
        _emit_json(
            {
                "contact": result.contact,
                "seqs": list(result.seqs),
                "delivered": result.delivered,
                "pending": result.pending,
            }
        )
    else:
        state = "sent" if result.pending == 0 else f"sent, {result.pending} envelopes still queued"
        click.echo(f"Message {seqs} to {inline(result.contact)}: {state}", err=True)


def _seq_range(seqs: tuple[int, ...]) -> str:
    """'7', or '3-186' for the consecutive sequence numbers of a file."""
    if not seqs:
        return "?"
    return str(seqs[0]) if len(seqs) == 1 else f"{seqs[0]}-{seqs[-1]}"


def _save_download(folder: Path, name: str, data: bytes) -> Path:
    """Write a received file inside ``folder`` under a sanitised, new name."""
    import os

    from securechan.client.channel import sanitize_filename

    folder.mkdir(parents=True, exist_ok=True)
    clean = sanitize_filename(name)
    stem, dot, ext = clean.rpartition(".")
    if not dot:
        stem, ext = clean, ""
    for i in range(1000):
        candidate = clean if i == 0 else f"{stem} ({i}){dot}{ext}"
        path = folder / candidate
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise StorageError(f"too many files named {clean} in {folder}")


def _show(item: Any, as_json: bool, download: Path) -> None:
    from securechan.client.channel import Rejected

    if isinstance(item, Rejected):
        if as_json:
            out = {"rejected": item.reason, "error": item.error, "held": item.held}
            if item.evidence:
                out["evidence"] = list(item.evidence)
            _emit_json(out)
        elif item.reason == "SplitView":
            error = inline(item.error, width=_columns(err=True), indent=24)
            click.echo(f"securechan: SPLIT VIEW: {error}", err=True)
        elif item.reason == "PeerRolledBack":
            error = inline(item.error, width=_columns(err=True), indent=30)
            click.echo(f"securechan: PEER ROLLED BACK: {error}", err=True)
        else:
            # The error can name a stranger (UnknownSender) or quote a relay.
            held = " (held: pin the sender, then run receive again)" if item.held else ""
            head = f"securechan: refused an envelope: {inline(item.reason)}: "
            error = inline(item.error + held, width=_columns(err=True), indent=len(head))
            click.echo(head + error, err=True)
        return
    saved = None
    if item.file_data is not None:
        saved = _save_download(download, item.file_name or "file", item.file_data)
    if as_json:
        _emit_json(
            {
                "contact": item.contact,
                "fingerprint": item.fingerprint,
                "verified": item.verified,
                "seq": item.seq,
                "sent_at": _iso(item.sent_at),
                "type": item.content_type.name.lower(),
                "text": item.text,
                "file": str(saved) if saved else None,
                "receipt_matches": item.receipt_matches,
                "notes": list(item.notes),
            }
        )
        return
    for note in item.notes:
        click.echo(
            f"securechan: note: {inline(note, width=_columns(err=True), indent=18)}", err=True
        )
    mark = "verified" if item.verified else "UNVERIFIED"
    who = inline(item.contact)
    head = f"[{_iso(item.sent_at)}] {who} ({mark}) #{item.seq}"
    if item.text is not None:
        # The contact's text: controls visible, each further line marked.
        click.echo(f"{head}: {block(item.text, width=_columns(), indent=len(head) + 2)}")
    elif saved is not None:
        # Where it was saved first; the sender's name for it last, so that
        # name cannot pose as the place it was saved.
        said = f"file saved as {saved} (the sender named it: {item.file_name or ''})"
        click.echo(f"{head}: {inline(said, width=_columns(), indent=len(head) + 2)}")
    elif item.receipt_matches is not None:
        verdict = "matches our record" if item.receipt_matches else "DOES NOT MATCH our record"
        click.echo(f"{who}: receipt {verdict}")


@cli.command()
@click.option("--follow", is_flag=True, help="Keep receiving (Ctrl-C to stop).")
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for received files.",
)
@click.option(
    "--unknown",
    type=click.Choice(["refuse", "hold"]),
    default="refuse",
    show_default=True,
    help="First messages from identities you have not pinned.",
)
@click.option("--timeout", type=float, default=None, help="With --follow: stop after N seconds.")
@_json_option
@pass_app
def receive(
    app: _App, follow: bool, download: Path, unknown: str, timeout: float | None, as_json: bool
) -> None:
    """Fetch, verify, store and print new messages.

    Exit 1 at the end if a relay was caught showing two histories (a split
    view), else 5 if a contact sent a second, different message at a place
    already used (its state was rolled back): every message is still stored
    and shown first."""
    import asyncio

    split: list[str] = []
    rolled_back: list[str] = []

    def show(item: Any) -> None:
        _show(item, as_json, download)
        if getattr(item, "reason", None) == "SplitView":
            split.append(item.error)
        if getattr(item, "reason", None) == "PeerRolledBack":
            rolled_back.append(item.error)

    async def go() -> None:
        async with _channel(app, unknown=unknown) as ch:
            if not follow:
                for item in await ch.receive():
                    show(item)
                return
            stop = asyncio.Event()
            if timeout is not None:
                asyncio.get_running_loop().call_later(timeout, stop.set)
            async for item in ch.follow(stop=stop):
                show(item)

    _run(go())
    if split:
        sys.exit(EXIT_VERIFY)
    if rolled_back:
        sys.exit(EXIT_ROLLBACK)


@cli.command()
@click.argument("contact_name", metavar="CONTACT", required=False)
@_json_option
@pass_app
def history(app: _App, contact_name: str | None, as_json: bool) -> None:
    """Show the stored conversation (with CONTACT, or all)."""

    async def go() -> Any:
        async with _channel(app) as ch:
            return ch.history(contact_name)

    rows = _run(go())
    if as_json:
        _emit_json(
            [
                {"id": i, "contact": c, "direction": d, "seq": s, "sent_at": _iso(t), "summary": m}
                for c, d, s, t, m, i in rows
            ]
        )
        return
    for c, d, s, t, m, i in rows:
        arrow = "->" if d == "out" else "<-"
        head = f"[{_iso(t)}] {i} {arrow} {inline(c)} #{s}: "
        click.echo(head + block(m, width=_columns(), indent=len(head)))


@cli.command()
@_json_option
@pass_app
def status(app: _App, as_json: bool) -> None:
    """Relays, queues, sessions and envelopes waiting to be sent."""

    async def go() -> Any:
        async with _channel(app) as ch:
            await ch.flush_outbox()
            return ch.status()

    info = _run(go())
    if as_json:
        _emit_json(info)
        return
    for k, v in info.items():
        shown = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        click.echo(f"{k + ':':<10} {inline(shown)}")


# --- audit log -------------------------------------------------------------------


@cli.group(name="log", cls=_Group)
def log_group() -> None:
    """Show and verify your local audit log (no passphrase needed)."""


def _log_value(value: Any) -> str:
    # Fields hold peer and relay data (a refused sender's name, a relay URL):
    # quoted JSON (ASCII) when empty or spaced, else rendered on one line.
    text = str(value)
    return json.dumps(text) if (not text or " " in text) else inline(text)


@log_group.command(name="show")
@click.option("--since", type=click.IntRange(min=0), default=None, help="Start at entry N.")
@_json_option
@pass_app
def log_show(app: _App, since: int | None, as_json: bool) -> None:
    """Print the entries: index, time, kind and fields (never message text).

    Entries are shown as stored; 'securechan log verify' checks them."""
    from securechan.audit.log import AuditLog

    with AuditLog.open(app.home, read_only=True) as log:
        if as_json:
            rows = [e.describe() for e in log.entries(since)]
            _emit_json([{**r, "time": _iso(r["time"])} for r in rows])
            return
        for entry in log.entries(since):
            fields = " ".join(f"{k}={_log_value(v)}" for k, v in entry.fields.describe().items())
            head = f"{entry.index:>6} {_iso(entry.time)} {inline(entry.kind):<26} "
            click.echo(head + inline(fields, width=_columns(), indent=len(head)))


@log_group.command(name="verify")
@click.option(
    "--key", type=click.File("rb"), help="Verify against this public identity file instead."
)
@_json_option
@pass_app
def log_verify(app: _App, key: Any, as_json: bool) -> None:
    """Check every entry, checkpoint signature and audit.head.

    Exit 0 if the log is intact; exit 1 naming the first bad entry."""
    from securechan.audit.log import AuditLog

    if key is not None:
        ident = securechan.PublicIdentity.from_text(_read_text(key, "the --key file"))
    else:
        ident = app.keystore.public_identity()
    with AuditLog.open(app.home, read_only=True) as log:
        report = log.verify(ident)
    if as_json:
        _emit_json(
            {
                "intact": True,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "last_checkpoint": report.last_checkpoint,
                "unsigned": report.unsigned,
                "head_checkpoint": report.head_checkpoint,
                "identity": ident.name,
                "fingerprint": str(ident.fingerprint),
            }
        )
        return
    if report.last_checkpoint is None:
        signed = "no signed checkpoint yet"
    else:
        signed = f"last signed checkpoint at {report.last_checkpoint}"
        if report.unsigned:
            signed += f" ({report.unsigned} newer entries not signed yet)"
    click.echo(f"log intact: {report.entries} entries, {signed}")


# --- witness (docs/AUDIT.md "Witnesses") -------------------------------------------


@cli.group(cls=_Group)
def witness() -> None:
    """Cosign a relay's transparency log as a witness (C2SP tlog-cosignature)."""


def _witness_home(app: _App) -> Any:
    from securechan.audit.witness_store import WitnessHome

    return WitnessHome(app.home)


@witness.command(name="init")
@click.option("--name", required=True, help="The witness's key name, e.g. witness.example/tehran.")
@click.option("--force", is_flag=True, help="Replace an existing witness key (it is lost).")
@click.option(
    "--kdf",
    type=click.Choice(sorted(securechan.KDF_PROFILES)),
    default="moderate",
    show_default=True,
    help="Argon2id cost for the key file.",
)
@_json_option
@pass_app
def witness_init(app: _App, name: str, force: bool, kdf: str, as_json: bool) -> None:
    """Create the witness key (its own key, not your identity's)."""
    key = _witness_home(app).create_key(
        name, app.passphrase(confirm=True), kdf=securechan.KDF_PROFILES[kdf], force=force
    )
    verifier = key.verifier.to_text()
    if as_json:
        _emit_json({"name": key.name, "verifier_key": verifier})
        return
    click.echo(verifier)
    click.echo(
        "Give this line to the relay's operator (DATA/witnesses.txt or [log] witnesses).",
        err=True,
    )


@witness.command(name="key")
@_json_option
@pass_app
def witness_key(app: _App, as_json: bool) -> None:
    """Print the witness's verifier key (no passphrase needed)."""
    verifier = _witness_home(app).verifier()
    if as_json:
        _emit_json({"name": verifier.name, "verifier_key": verifier.to_text()})
    else:
        click.echo(verifier.to_text())


@witness.command(name="cosign")
@click.option("--relay", "url", required=True, help="The relay's URL.")
@click.option(
    "--log-key",
    required=True,
    metavar="KEY",
    help="The log's verifier key (name+id+key), pinned out of band.",
)
@click.option("--follow", is_flag=True, help="Keep cosigning (Ctrl-C to stop).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="With --follow: seconds between rounds.",
)
@click.option("--timeout", type=float, default=None, help="With --follow: stop after N seconds.")
@_json_option
@pass_app
def witness_cosign(
    app: _App,
    url: str,
    log_key: str,
    follow: bool,
    interval: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Check the relay's newest checkpoint against the last one cosigned; cosign it.

    Exit 1 (and evidence under witness-evidence/) if the log shows another
    history; exit 3 if the relay cannot be reached."""
    import asyncio
    import base64

    from securechan.audit.note import VerifierKey
    from securechan.client.witness import witness_round

    try:
        pinned = VerifierKey.from_text(log_key)
    except MalformedInput as e:
        raise MalformedInput(f"--log-key: {e}") from None
    if pinned.sig_type != 0x01:
        raise MalformedInput("--log-key is the log's Ed25519 (type 0x01) verifier key")
    home = _witness_home(app)
    key = home.unlock(app.passphrase())

    def show(result: Any) -> None:
        cp = result.checkpoint
        root = base64.b64encode(cp.root_hash).decode()
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "origin": cp.origin,
                        "size": cp.size,
                        "root": root,
                        "old_size": result.old_size,
                        "status": result.status,
                        "timestamp": result.timestamp,
                    },
                    sort_keys=True,
                )
            )
        else:
            click.echo(f"{inline(cp.origin)} size {cp.size} root {root}: {inline(result.status)}")

    async def go() -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                show(await witness_round(url, home, key, pinned, clock=time.time))
            except RelayError as e:
                if not follow:
                    raise
                click.echo(f"securechan: warning: {inline(str(e))}", err=True)  # keep following
            if not follow or (deadline is not None and time.monotonic() >= deadline):
                return
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, pause))

    _run(go())


# --- end of witness --------------------------------------------------------------


# --- statements ------------------------------------------------------------------


@cli.group(cls=_Group)
def statement() -> None:
    """Export one message as a statement a third party verifies offline."""


@statement.command(name="export")
@click.argument("message_id")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the statement here (never over an existing file).",
)
@_json_option
@pass_app
def statement_export(app: _App, message_id: str, output: Path, as_json: bool) -> None:
    """Write the statement of MESSAGE-ID (an id from 'history').

    The file reveals that message, its sender and recipient, the session's
    handshake transcript, the key of its envelope (no other message's) and
    the recipient's signed receipt for it, if there is one; give it only to
    whom you mean to."""

    from securechan.client.policy import witnessed_statement

    async def go() -> Any:
        async with _channel(app) as ch:
            return await witnessed_statement(ch, message_id)

    st, witnessed = _run(go())
    text = st.to_text()
    try:
        with open(output, "x", encoding="ascii", newline="\n") as f:
            f.write(text)
    except FileExistsError:
        raise MalformedInput(f"{output} exists; choose another name") from None
    except OSError as e:
        raise StorageError(f"cannot write {output}: {e.strerror}") from None
    from securechan.audit.statement import message_id as _mid

    info = {
        "file": str(output),
        "message_id": _mid(st.signed),
        "log": st.placement is not None,
        "witnessed": witnessed,
        "delivery_receipt": st.receipt is not None,
    }
    if as_json:
        _emit_json(info)
        return
    where = "without a relay log receipt"
    if st.placement is not None:
        where = "with a witnessed log checkpoint" if witnessed else "with its relay log receipt"
    delivery = (
        "the recipient's receipt for it"
        if st.receipt is not None
        else "no receipt from the recipient for exactly this message: delivery not proven"
    )
    click.echo(
        f"Statement of message {info['message_id']} written to {inline(str(output))} "
        f"({where}; {delivery})"
    )


@statement.command(name="verify")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--trust-relay",
    "trust_relay",
    metavar="KEY",
    help="The relay's log verifier key (name+id+key) you trust; the file's must equal it.",
)
@click.option(
    "--trust-witness",
    "trust_witness",
    metavar="KEY",
    multiple=True,
    help="A witness (type 0x04 key) that must have cosigned; repeatable.",
)
@click.option(
    "--require-delivery",
    is_flag=True,
    help="Exit 1 unless the file also proves delivery (the recipient's signed receipt).",
)
@_json_option
def statement_verify(
    file: Any,
    trust_relay: str | None,
    trust_witness: tuple[str, ...],
    require_delivery: bool,
    as_json: bool,
) -> None:
    """Check a statement FILE offline and say which claims it proves:
    PROVES (the sender signed the message in a session between the
    two parties; where the envelope is logged) and DELIVERY (acknowledged by
    the recipient's signed receipt, or not proven). Exit 0 if everything the
    file claims holds (1 with --require-delivery and no delivery proof)."""
    from securechan.audit.note import VerifierKey
    from securechan.audit.statement import Statement, verify_statement

    relay_key = VerifierKey.from_text(trust_relay.strip()) if trust_relay else None
    witnesses = [VerifierKey.from_text(w.strip()) for w in trust_witness]
    st = Statement.from_text(_read_text(file, "the statement file"))
    v = verify_statement(st, trust_relay=relay_key, trust_witnesses=witnesses)
    p = v.payload
    log = v.log
    d = v.delivery
    roles = {
        str(v.session.initiator.fingerprint): "initiator",
        str(v.session.responder.fingerprint): "responder",
    }
    result: dict[str, Any] = {
        "valid": True,
        "proves": {
            "authorship": True,
            "logged": log is not None,
            "delivery": d is not None,
        },
        "message_id": v.message_id,
        "from": {
            "name": v.sender.name,
            "fingerprint": str(v.sender.fingerprint),
            "role": roles[str(v.sender.fingerprint)],
        },
        "to": {
            "name": v.recipient.name,
            "fingerprint": str(v.recipient.fingerprint),
            "role": roles[str(v.recipient.fingerprint)],
        },
        "conversation": p.conversation.hex(),
        "transcript_hash": v.session.transcript_hash.hex(),
        "seq": p.seq,
        "sent_at": _iso(p.sent_at),
        "content_type": p.content_type.name.lower(),
        "content": v.summary(),
        "payload_sha256": v.payload_hash.hex(),
        "prev_hash": p.prev_hash.hex(),
        "log": None
        if log is None
        else {
            "origin": log.checkpoint.origin,
            "relay_key_trusted": log.trusted,
            "leaf_index": log.leaf_index,
            "tree_size": log.checkpoint.size,
            "root_hash": log.checkpoint.root_hash.hex(),
            "cosigned_by": [
                {"witness": c.cosigner.name, "at": _iso(c.timestamp)} for c in log.cosignatures
            ],
        },
        "delivery": None
        if d is None
        else {
            "receipt_id": d.receipt_id,
            "up_to_seq": d.up_to_seq,
            "signed_at": _iso(d.signed_at),
        },
    }
    if as_json:
        _emit_json(result)
    else:
        _print_statement(v, result)
    if require_delivery and d is None:
        raise VerificationFailed("the statement does not prove delivery (no recipient receipt)")


def _print_statement(verified: Any, result: dict[str, Any]) -> None:
    """The verdict first, in the tool's own fixed words (only numbers and
    fingerprints, which the tool computes, are filled in); then, after a
    marked line, what the signers and the relay wrote (names, the message,
    the log's name), which can say anything."""
    from securechan.audit.statement import VerifiedStatement

    v: VerifiedStatement = verified
    log = v.log
    d = v.delivery
    p = v.payload
    click.echo(f"Statement of message {v.message_id}: VALID")
    click.echo(
        f"PROVES: signed by {v.sender.fingerprint} to {v.recipient.fingerprint}, "
        f"message #{p.seq}, in a session whose handshake both are named in"
    )
    if log is None:
        click.echo("PROVES: not logged (the file carries no relay log receipt)")
    else:
        trust = "the relay key you trust" if log.trusted else "a relay key taken from the file"
        click.echo(
            f"PROVES: logged at index {log.leaf_index} of {log.checkpoint.size} "
            f"by the relay log with {trust} (key id {log.log_key.key_id.hex()}), "
            f"{len(log.cosignatures)} witness cosignature(s)"
        )
    if d is None:
        click.echo("DELIVERY: not proven (the file carries no receipt signed by the recipient)")
    else:
        click.echo(
            f"DELIVERY: acknowledged by {v.recipient.fingerprint} "
            f"(its signed receipt {d.receipt_id} covers #{d.up_to_seq} and this message's hash)"
        )
    click.echo("--- details: the text below was written by the signers and the relay ---")
    click.echo(
        f"  from:    {inline(v.sender.name)} ({v.sender.fingerprint}, {result['from']['role']})"
    )
    click.echo(
        f"  to:      {inline(v.recipient.name)} ({v.recipient.fingerprint}, {result['to']['role']})"
    )
    click.echo(
        f"  message: #{p.seq} of conversation {p.conversation.hex()}, "
        f"signed at {result['sent_at']} (sender's clock)"
    )
    click.echo(f"  session: transcript hash {v.session.transcript_hash.hex()}")
    if log is not None:
        click.echo(f"  log:     {inline(log.checkpoint.origin)}")
        for c in log.cosignatures:
            click.echo(f"           cosigned by {inline(c.cosigner.name)} at {_iso(c.timestamp)}")
    if d is not None:
        click.echo(f"  receipt: signed at {result['delivery']['signed_at']} (recipient's clock)")
    if log is not None and not log.trusted:
        click.echo(
            "securechan: warning: the relay key came from the file itself; "
            "pass --trust-relay KEY to check it against the key you trust",
            err=True,
        )
    click.echo(
        "  note:    the fingerprints prove which keys signed; compare them with the "
        "parties' published fingerprints"
    )
    # The signer's own text comes last, after every line of the tool's, and
    # each of its further lines is marked: it cannot pose as a verdict line.
    click.echo(f"  content: {block(v.summary(), width=_columns(), indent=11)}")


# --- witness policy ----------------------------------------------------------------


@cli.group(cls=_Group)
def policy() -> None:
    """Which witnesses must cosign a relay's log (docs/AUDIT.md, Witnesses)."""


@policy.command(name="set")
@click.option("--relay", "relay_url", required=True, help="The relay, as registered.")
@click.option(
    "--witness",
    "witness_keys",
    multiple=True,
    metavar="KEY",
    help="A witness's key line ('securechan witness key' prints it); repeatable. "
    "None: remove the policy.",
)
@click.option("--require", type=int, default=None, help="How many must cosign (default: all).")
@_json_option
@pass_app
def policy_set(
    app: _App, relay_url: str, witness_keys: tuple[str, ...], require: int | None, as_json: bool
) -> None:
    """Require cosignatures on RELAY's checkpoints before they count as witnessed."""
    from securechan.audit.note import VerifierKey
    from securechan.client.policy import set_policy

    keys = [VerifierKey.from_text(k.strip()) for k in witness_keys]

    async def go() -> Any:
        async with _channel(app) as ch:
            if relay_url not in ch.relays() + ch.known_logs():
                raise MalformedInput(f"{relay_url} is none of your or your contacts' relays")
            return set_policy(ch, relay_url, keys, require)

    p = _run(go())
    info = {
        "relay": p.relay,
        "witnesses": [k.to_text() for k in p.witnesses],
        "required": p.required if p.witnesses else 0,
    }
    if as_json:
        _emit_json(info)
    elif p.witnesses:
        click.echo(f"{inline(relay_url)}: {p.required} of {len(p.witnesses)} witnesses must cosign")
    else:
        click.echo(f"{inline(relay_url)}: no witness policy")


@policy.command(name="show")
@_json_option
@pass_app
def policy_show(app: _App, as_json: bool) -> None:
    """Each relay's policy and the newest checkpoint that met it (fetched now)."""
    from securechan.client.policy import get_policy, refresh_witnessed

    async def go() -> Any:
        out = []
        async with _channel(app) as ch:
            for relay_url in ch.relays():
                p = get_policy(ch, relay_url)
                row: dict[str, Any] = {"relay": relay_url, "witnesses": [], "required": 0}
                if p is not None:
                    row["witnesses"] = [k.to_text() for k in p.witnesses]
                    row["required"] = p.required
                    try:
                        cp = await refresh_witnessed(ch, relay_url)
                    except RelayError as e:
                        row["error"] = str(e)
                        cp = None
                    if cp is not None:
                        row["witnessed_size"] = cp.checkpoint.size
                        row["cosigned_by"] = [
                            {"witness": c.cosigner.name, "at": _iso(c.timestamp)}
                            for c in cp.cosignatures
                        ]
                out.append(row)
        return out

    rows = _run(go())
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        relay_shown = inline(row["relay"])
        if not row["witnesses"]:
            click.echo(f"{relay_shown}: no witness policy")
            continue
        seen = row.get("witnessed_size")
        state = f"witnessed up to size {seen}" if seen is not None else "nothing witnessed yet"
        click.echo(
            f"{relay_shown}: {row['required']} of {len(row['witnesses'])} witnesses; {state}"
        )


# --- demo ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--keep", type=click.Path(file_okay=False, path_type=Path), help="Run in DIR and keep it."
)
@_json_option
def demo(keep: Path | None, as_json: bool) -> None:
    """Play the back-channel on this machine, attacks included.

    Two relays (muscat, the mediator; geneva, its witness) run as real
    processes on loopback; tehran and washington talk through muscat, which
    then reads, tampers, replays, drops and forks its log; each attempt must
    be caught. Exit 0 only if every step held. Runs in a temporary folder
    (kept with --keep DIR)."""
    import tempfile

    from securechan.demo import run_demo
    from securechan.primitives import KDF_MODERATE

    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise MalformedInput(f"{keep} is not empty")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="securechan-demo-") as tmp:
        folder = keep if keep is not None else Path(tmp)
        steps = []
        for step in run_demo(folder, kdf=KDF_MODERATE):
            steps.append(step)
            if not as_json:
                _print_step(step)
    ok = all(s.ok for s in steps)
    if as_json:
        _emit_json(
            {
                "ok": ok,
                "seconds": round(time.perf_counter() - t0, 3),
                "steps": [
                    {
                        "id": s.id,
                        "title": s.title,
                        "ok": s.ok,
                        "attack": s.attack,
                        "details": s.details,
                    }
                    for s in steps
                ],
            }
        )
    else:
        verdict = "every step held" if ok else "SOME STEPS FAILED"
        click.echo(f"\n{verdict} ({time.perf_counter() - t0:.1f} s)")
    if not ok:
        sys.exit(EXIT_VERIFY)


def _print_step(step: Any) -> None:
    tty = sys.stdout.isatty()
    mark = ("CAUGHT" if step.ok else "MISSED") if step.attack else "ok" if step.ok else "FAILED"
    colour = "green" if step.ok else "red"
    click.echo(f"[{click.style(mark, fg=colour) if tty else mark}] {inline(step.title)}")
    for k, v in step.details.items():  # details quote relays and messages
        head = f"       {inline(k)}: "
        click.echo(head + block(v, width=_columns(), indent=len(head)))


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="securechan")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
