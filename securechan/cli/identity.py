"""``securechan init`` and ``securechan id``: your identity."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

import securechan
from securechan.cli.core import (
    CARD_FILE,
    _App,
    _emit_json,
    _Group,
    _iso,
    _json_option,
    _kdf_option,
    _read_text,
    pass_app,
)
from securechan.errors import IdentityExists, UsageError
from securechan.terminal_text import inline

_ALLOW_WEAK = click.option(
    "--allow-weak",
    is_flag=True,
    help="Accept a weak passphrase without asking (docs/CLI.md, Passphrases).",
)


def _check_strength(secret: str, *, allow_weak: bool, asked: bool) -> None:
    """Warn about a weak passphrase (securechan/cli/passphrase.py has the rule).

    At a terminal, ask before using it, as gpg's pinentry does; declining
    exits 2. Without a terminal (a file or the environment), or with
    --allow-weak, the warning alone: scripts are not stopped."""
    from securechan.cli.passphrase import weakness

    why = weakness(secret)
    if why is None:
        return
    click.echo(f"securechan: warning: weak passphrase: {why}", err=True)
    if asked and not allow_weak and not click.confirm("Use it anyway?", default=False, err=True):
        raise UsageError("choose a stronger passphrase (or give --allow-weak)")


def _kdf_report(kdf: str, seconds: float) -> str:
    """The measured cost of ``kdf`` and, scaled by passes x memory from that
    measurement (Argon2id's cost is linear in both), the other profiles'."""
    chosen = securechan.KDF_PROFILES[kdf]
    work = chosen.opslimit * chosen.memlimit
    others = ", ".join(
        f"{seconds * p.opslimit * p.memlimit / work:.1f} s with --kdf {name}"
        for name, p in sorted(securechan.KDF_PROFILES.items())
        if name != kdf
    )
    return (
        f"Argon2id '{kdf}' took {seconds:.1f} s on this machine (each unlock costs as much); "
        f"about {others}"
    )


@click.command()
@click.option("--name", required=True, help="Your delegation's name, e.g. tehran.")
@click.option("--force", is_flag=True, help="Replace an existing identity (it is lost).")
@_kdf_option
@_ALLOW_WEAK
@_json_option
@pass_app
def init(app: _App, name: str, force: bool, kdf: str, allow_weak: bool, as_json: bool) -> None:
    """Create your identity (hybrid ML-DSA-65 + Ed25519) in the home folder."""
    store = app.keystore
    securechan.identity.check_name(name)
    if store.has_identity() and not force:
        raise IdentityExists(f"{store.key_path} exists; use --force to replace it")
    from securechan.cli.passphrase import interactive

    asked = interactive(app)
    secret = app.passphrase(confirm=True, prompt="New passphrase")
    _check_strength(secret, allow_weak=allow_weak, asked=asked)
    started = time.monotonic()
    ident = store.create(name, secret, kdf=securechan.KDF_PROFILES[kdf], force=force)
    click.echo(_kdf_report(kdf, time.monotonic() - started), err=True)
    from securechan.audit.log import AuditLog

    # The new identity signs the log at once, so 'log verify' holds after init.
    with AuditLog.open(store.home, ident) as log:
        log.checkpoint()
    if as_json:
        from securechan.cli.results import IdentityCreated

        created = IdentityCreated(
            name=ident.name, fingerprint=str(ident.fingerprint), home=str(store.home)
        )
        _emit_json(created.to_json())
        return
    click.echo(f"Created identity {inline(ident.name)}")
    click.echo(f"Fingerprint: {ident.fingerprint}")
    click.echo(f"Public identity file: {inline(str(store.public_path))}")


@click.group(name="id", cls=_Group)
def id_group() -> None:
    """Show or export your identity."""


@id_group.command(name="show")
@_json_option
@pass_app
def id_show(app: _App, as_json: bool) -> None:
    """Show your name and fingerprint."""
    store = app.keystore
    pub = store.public_identity()
    from securechan.cli.results import IdentityInfo

    info = IdentityInfo(
        name=pub.name, fingerprint=str(pub.fingerprint), created=pub.created, home=str(store.home)
    )
    if as_json:
        _emit_json(info.to_json())
        return
    click.echo(f"Name:        {inline(pub.name)}")
    click.echo(f"Fingerprint: {pub.fingerprint}")
    click.echo(f"Created:     {_iso(pub.created)}")
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
@click.option(
    "--new-passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the new passphrase from the first line of this file (else a prompt).",
)
@_kdf_option
@_ALLOW_WEAK
@pass_app
def id_passwd(app: _App, new_passphrase_file: Path | None, kdf: str, allow_weak: bool) -> None:
    """Change the passphrase that encrypts your key file."""
    from securechan.cli.passphrase import prompt_new, unlock

    store = app.keystore

    def checked(secret: str) -> str:
        store.unlock(secret)  # BadPassphrase: asked again at a prompt
        return secret

    # Checked first (three tries at a prompt), so a typo is caught before
    # the new passphrase is asked for.
    old = unlock(app, checked, prompt="Current passphrase")
    if new_passphrase_file is None:
        # Never $SECURECHAN_PASSPHRASE: it holds the current passphrase.
        if not sys.stdin.isatty():
            raise UsageError(
                "give the new passphrase with --new-passphrase-file, or run in a terminal"
            )
        new = prompt_new("New passphrase")
    else:
        new = _App(app.home, new_passphrase_file).passphrase(confirm=True)
    _check_strength(new, allow_weak=allow_weak, asked=new_passphrase_file is None)
    store.change_passphrase(old, new, kdf=securechan.KDF_PROFILES[kdf])
    click.echo("Passphrase changed.", err=True)
